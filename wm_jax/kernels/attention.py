"""One attention entry for every attention in wm_jax, the XLA reference, and the impl dispatch.

Layout: q [B, Sq, H, D], k and v [B, Sk, H, D] (channels last, heads before head dim).
Masks are described, never materialised by the caller as a dense [Sq, Sk] array (see
wm_jax/kernels/masks.py): BlockMask (camera adjacency of cross-view rows), SegmentIds (padding),
BlockCausal (frame-causal). `mask` may be None, one spec, or a tuple of specs (all must allow).
Softmax runs in float32; a query row with no allowed key returns zeros.

impl:
  xla               the reference below (dense logits; any mask, any backend)
  splash            TPU: JAX's maintained splash kernel (wm_jax/kernels/splash.py) under
                    shard_map; for what it cannot express (a traced or per-example BlockMask
                    table, two SegmentIds) and for attention_gathered (the kept rows of the
                    masked path, read in-kernel), wm_jax's own Mosaic kernel (flash.py)
  splash_interpret  the same two kernels in Pallas interpret mode (any backend; the CPU tests)
  gpu               wm_jax's kernel body lowered by Pallas Triton, under shard_map
  cudnn             jax.nn.dot_product_attention(implementation='cudnn'): no mask or token-causal,
                    fp16/bf16 only
  pallas_interpret  wm_jax's own TPU kernel in interpret mode (any backend)
  auto              AUTO[backend] for sequences >= AUTO_MIN_SEQ, else xla; when the picked impl
                    cannot do the mask/shape, falls back to xla with one warning per reason.

An impl requested explicitly that cannot do the call raises ValueError naming the reason.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from absl import logging

from wm_jax.kernels import flash
from wm_jax.kernels import masks as masks_lib
from wm_jax.kernels import sharded
from wm_jax.kernels import splash
# Public API: the mask specs live in masks.py and are re-exported here.
from wm_jax.kernels.masks import (  # noqa: F401
    BlockCausal, BlockMask, MaskSpec, SegmentIds, dense_mask)

# Backend -> impl 'auto' picks for long sequences; shorter ones (and CPU) use XLA. The threshold is
# a guess until tools/bench.py attention has been run on the hardware (see README). On GPU, auto
# takes JAX's cuDNN flash attention (no mask, bf16/fp16; XLA otherwise): wm_jax's Triton kernel
# ('gpu') is opt-in until tools/gpu_acceptance.sh has shown it correct and faster on hardware.
AUTO = {"tpu": "splash", "gpu": "cudnn"}
AUTO_MIN_SEQ = 256
# wm_jax's own TPU kernel keeps the whole K/V (forward) and Q/dO (backward) of a head in VMEM.
TPU_VMEM_BUDGET_BYTES = 24 * 2**20


def xla_attention(q, k, v, *, mask: MaskSpec = None, scale: float | None = None):
  """Reference attention in plain XLA: float32 softmax, zeros for fully masked rows."""
  _check_shapes(q, k, v)
  batch, sq, _, dim = q.shape
  sk = k.shape[1]
  scale = dim ** -0.5 if scale is None else scale
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
  allowed = dense_mask(mask, batch, sq, sk)
  if allowed is not None:
    allowed = allowed[:, None]
    logits = jnp.where(allowed, logits, -jnp.inf)
    row_max = jnp.max(logits, axis=-1, keepdims=True)
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    weights = jnp.exp(logits - jax.lax.stop_gradient(row_max))
    weights = jnp.where(allowed, weights, 0.0)
    denom = jnp.sum(weights, axis=-1, keepdims=True)
    probs = weights / jnp.where(denom > 0, denom, 1.0)
  else:
    probs = jax.nn.softmax(logits, axis=-1)
  out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v,
                   preferred_element_type=jnp.float32)
  return out.astype(q.dtype)


def _check_shapes(q, k, v):
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(f"attention wants q, k, v of rank 4 [B, S, H, D]; got {q.shape}, {k.shape}, "
                     f"{v.shape}")
  if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
    raise ValueError(f"attention shapes disagree: q {q.shape}, k {k.shape}, v {v.shape}")


# ---------------------------------------------------------------------------------------------
# What each impl cannot do: a function returning a reason (str) or None.


def _backend():
  """The platform the program is built for: that of the current mesh's devices (abstract TPU
  devices when compiling ahead of time for a topology), else JAX's default backend."""
  mesh = jax.sharding.get_abstract_mesh()
  device = None if mesh is None or mesh.empty else getattr(mesh, "abstract_device", None)
  platform = jax.default_backend() if device is None else device.platform
  return {"cuda": "gpu", "rocm": "gpu"}.get(platform, platform)


def _needs_backend(name):
  def check(q, k, mask):
    if _backend() != name:
      return f"needs a {name.upper()} backend, this is {_backend()!r}"
    return None
  return check


def _own_tpu_kernel_limits(q, k, gathered=False):
  itemsize = jnp.dtype(q.dtype).itemsize
  if gathered:                       # its gathered rows are copied in 32 bits (flash.py)
    itemsize = max(itemsize, 4)
  rows = max(q.shape[1], k.shape[1]) + 128
  # Resident per head, double-buffered: two [S, D] arrays (K/V, or Q/dO in the dkv kernel) and
  # two [S, 1] float32 row statistics, which VMEM pads to 128 lanes.
  need = 2 * rows * (2 * q.shape[-1] * itemsize + 2 * 128 * 4)
  if need > TPU_VMEM_BUDGET_BYTES:
    return (f"sequence {max(q.shape[1], k.shape[1])} x head_dim {q.shape[-1]} needs ~{need >> 20} "
            f"MiB of VMEM, over the {TPU_VMEM_BUDGET_BYTES >> 20} MiB budget of the resident-"
            f"sequence kernel")
  return None


def _gpu_limits(q, k, mask):
  d = q.shape[-1]
  if d < 16 or d & (d - 1):
    return f"head_dim {d} is not a power of two >= 16 (Triton tiles)"
  if q.dtype == jnp.float64:
    return "float64 inputs"
  return None


def _cudnn_limits(q, k, mask):
  specs = masks_lib.as_tuple(mask)
  if any(not (isinstance(s, BlockCausal) and s.block_size == 1) for s in specs):
    kinds = sorted({type(s).__name__ for s in specs})
    return f"cuDNN takes no mask or token-causal only, got {kinds}"
  if q.dtype not in (jnp.bfloat16, jnp.float16):
    return f"cuDNN needs float16/bfloat16 inputs, got {q.dtype}"
  if q.shape[-1] % 8 or q.shape[-1] > 256:
    return f"cuDNN needs head_dim a multiple of 8 and <= 256, got {q.shape[-1]}"
  return None


def _all(*checks):
  def check(q, k, mask):
    for c in checks:
      reason = c(q, k, mask)
      if reason:
        return reason
    return None
  return check


LIMITS: dict[str, Callable] = {
    "xla": lambda q, k, mask: None,
    "pallas_interpret": lambda q, k, mask: None,
    "splash": _needs_backend("tpu"),
    "splash_interpret": lambda q, k, mask: None,
    "gpu": _all(_needs_backend("gpu"), _gpu_limits),
    "cudnn": _all(_needs_backend("gpu"), _cudnn_limits),
}
# impl -> (kernel target, interpret) of wm_jax's own Pallas kernels (flash.py)
PALLAS = {"splash": ("tpu", False), "splash_interpret": ("tpu", True), "gpu": ("gpu", False),
          "pallas_interpret": ("tpu", True)}
# impl -> interpret, for the impls that run JAX's splash kernel where it can express the mask
SPLASH = {"splash": False, "splash_interpret": True}


def uses_splash(impl: str, mask: MaskSpec = None, gathered: bool = False) -> bool:
  """Whether `impl` runs JAX's splash kernel for this call (else wm_jax's own, for PALLAS)."""
  return impl in SPLASH and not gathered and splash.unsupported_reason(mask) is None

_warned: set[str] = set()


def _warn_once(reason):
  if reason not in _warned:
    _warned.add(reason)
    logging.warning("attention falls back to XLA: %s", reason)


def resolve_impl(impl: str, q, k, mask: MaskSpec = None, gathered: bool = False) -> str:
  """The impl that will run: checks an explicit impl, picks and falls back for 'auto'.

  q, k: arrays or ShapeDtypeStructs [B, S, H, D] (for attention_gathered, gathered=True: the
  gathered shapes).
  """
  if impl != "auto" and impl not in LIMITS:
    raise ValueError(f"unknown attention impl {impl!r}; available: {sorted(LIMITS)} or 'auto'")
  explicit = impl != "auto"
  if not explicit:
    impl = AUTO.get(_backend(), "xla")
    if max(q.shape[1], k.shape[1]) < AUTO_MIN_SEQ:
      impl = "xla"
  reason = LIMITS[impl](q, k, mask)
  if reason is None and impl == "splash" and not uses_splash(impl, mask, gathered):
    reason = _own_tpu_kernel_limits(q, k, gathered)
  if reason is None and impl in PALLAS:
    reason = sharded.unsupported_reason(q, mask)
  if reason is None:
    return impl
  if explicit:
    raise ValueError(f"attention impl {impl!r} cannot run this call: {reason}")
  _warn_once(f"impl {impl!r}: {reason}")
  return "xla"


def _cudnn_attention(q, k, v, *, mask, scale):
  causal = bool(masks_lib.as_tuple(mask))
  return jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=causal,
                                      implementation="cudnn")


def attention(q, k, v, *, mask: MaskSpec = None, impl: str = "auto", scale: float | None = None,
              block_sizes: tuple[int, int] | None = None):
  """Multi-head attention, q [B, Sq, H, D], k/v [B, Sk, H, D] -> [B, Sq, H, D].

  impl: 'auto' or one of LIMITS (see the module docstring). block_sizes (block_q, block_k)
  overrides the tiling of wm_jax's own Pallas kernels (tests use tiny blocks); JAX's splash picks
  its own (splash.py).
  """
  _check_shapes(q, k, v)
  masks_lib.validate(mask, q.shape[0], q.shape[1], k.shape[1])
  impl = resolve_impl(impl, q, k, mask)
  if impl == "xla":
    return xla_attention(q, k, v, mask=mask, scale=scale)
  if impl == "cudnn":
    return _cudnn_attention(q, k, v, mask=mask, scale=scale)
  if uses_splash(impl, mask):
    return splash.splash_attention(q, k, v, mask=mask, scale=scale, interpret=SPLASH[impl])
  name, interpret = PALLAS[impl]

  def run(q, k, v, mask):
    target = flash.make_target(name, q.shape[1], k.shape[1], block_sizes=block_sizes,
                               interpret=interpret)
    return flash.flash_attention(q, k, v, mask=mask, scale=scale, target=target)

  return sharded.over_mesh(run, q, k, v, mask)


def attention_gathered(q_full, k_full, v_full, keep_idx, *, kv_idx=None, mask: MaskSpec = None,
                       impl: str = "auto", scale: float | None = None,
                       block_sizes: tuple[int, int] | None = None):
  """attention over the kept tokens: rows keep_idx [B, K] of q_full, kv_idx [B, K'] of k/v_full.

  Equals attention(take(q_full, keep_idx), take(k_full, kv_idx), take(v_full, kv_idx)) -> [B, K,
  H, D]; kv_idx defaults to keep_idx; `mask` is in gathered coordinates. The Pallas impls read
  the rows through the indices inside the kernel (no gathered copy in memory); xla and cudnn
  gather first.
  """
  _check_shapes(q_full, k_full, v_full)
  kv_idx = keep_idx if kv_idx is None else kv_idx
  batch = q_full.shape[0]
  for name, idx in (("keep_idx", keep_idx), ("kv_idx", kv_idx)):
    if idx.ndim != 2 or idx.shape[0] != batch:
      raise ValueError(f"{name} must be [B={batch}, K], got shape {idx.shape}")
  take = lambda x, i: jnp.take_along_axis(x, i[:, :, None, None].astype(jnp.int32), axis=1)
  q_shape = jax.ShapeDtypeStruct((batch, keep_idx.shape[1]) + q_full.shape[2:], q_full.dtype)
  k_shape = jax.ShapeDtypeStruct((batch, kv_idx.shape[1]) + k_full.shape[2:], k_full.dtype)
  masks_lib.validate(mask, batch, keep_idx.shape[1], kv_idx.shape[1])
  impl = resolve_impl(impl, q_shape, k_shape, mask, gathered=True)
  if impl in ("xla", "cudnn"):
    return attention(take(q_full, keep_idx), take(k_full, kv_idx), take(v_full, kv_idx), mask=mask,
                     impl=impl, scale=scale)
  name, interpret = PALLAS[impl]

  def run(q, k, v, mask, keep_idx, kv_idx):
    target = flash.make_target(name, keep_idx.shape[1], kv_idx.shape[1], block_sizes=block_sizes,
                               interpret=interpret)
    return flash.flash_attention_gathered(q, k, v, keep_idx, kv_idx=kv_idx, mask=mask,
                                          scale=scale, target=target)

  return sharded.over_mesh(run, q_full, k_full, v_full, mask, extra=(keep_idx, kv_idx))


def row_keep_to_flat(keep_idx, width: int):
  """Row-wise kept columns [..., h, K] -> flat indices [..., h*K] of a row-major h x W grid."""
  rows = jnp.arange(keep_idx.shape[-2], dtype=jnp.int32)[:, None] * width
  return (keep_idx.astype(jnp.int32) + rows).reshape(*keep_idx.shape[:-2], -1)

