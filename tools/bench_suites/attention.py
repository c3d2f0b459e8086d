"""Attention impls against the XLA reference at MaskGWM's shapes: ms and achieved TFLOP/s.

  python tools/bench.py attention                         # maskgwm_long + maskgwm_mview, bf16
  python tools/bench.py attention --quick                 # tiny shapes, runs in seconds on CPU
  python tools/bench.py attention --configs=mview --impls=xla,gpu --cases=spatial_joint

One JSON line per (config, case, impl, pass) with ms (median of --iters), TFLOP/s and, for
kernel impls, `speedup_vs_xla` (XLA ms / impl ms of the same line set). FLOPs are analytic:
forward 4 * B * H * Sq * Sk * D * (fraction of pairs the mask allows); forward+backward 3x that
(docs/design.md, performance accounting: masked-out attention and recomputation are not counted).

Cases, from a config's video shape (latent = image / 8, tokens = latent / patch 2):
  spatial_joint   one sequence per (frame, view): h*w image tokens + text tokens (SD3 joint attn)
  spatial_masked  the same at mask ratio r with row-wise kept tokens: impls read the kept rows
                  through indices (attention_gathered); xla gathers first
  temporal        one sequence per (view, token): T frames
  crossview       one sequence per (frame, token row): V*w tokens, camera-adjacency BlockMask
                  (each view sees itself and its two neighbours on the ring); multi-view only
The frame counts are this suite's assumption (long: 25 frames of the front camera; mview: 8
frames of 6 cameras); --frames overrides them.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from wm_jax.kernels import attention as attn
from wm_jax.kernels import masks

# Video shapes of the configs (image 288x512 -> latent 36x64 -> tokens 18x32 = 576 per view-frame);
# mask_ratio = config.mask.ratio of maskgwm_long / mview (24 of 32 tokens per row kept)
CONFIGS = {
    "long": dict(frames=25, views=1, image=(288, 512), text=154, heads=24, head_dim=64,
                 mask_ratio=0.25),
    "mview": dict(frames=8, views=6, image=(288, 512), text=154, heads=24, head_dim=64,
                  mask_ratio=0.25),
    "quick": dict(frames=3, views=4, image=(64, 128), text=8, heads=2, head_dim=16,
                  mask_ratio=0.5),
}
PATCH, VAE_DOWN = 2, 8
CASES = ("spatial_joint", "spatial_masked", "temporal", "crossview")
KERNEL_IMPLS = {"cpu": ("pallas_interpret",), "gpu": ("gpu", "cudnn"), "tpu": ("splash",)}


def add_arguments(parser):
  parser.add_argument("--configs", default="long,mview", help="comma list of " + ",".join(CONFIGS))
  parser.add_argument("--cases", default=",".join(CASES))
  parser.add_argument("--impls", default="", help="default: xla + the kernels of this backend")
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--batch", type=int, default=1, help="clips per step")
  parser.add_argument("--frames", type=int, default=0, help="override the config's frames")
  parser.add_argument("--iters", type=int, default=10)
  parser.add_argument("--quick", action="store_true",
                      help="tiny shapes and 2 iterations (CPU; includes the interpret kernel)")


def _ring_adjacency(views):
  a = np.eye(views, dtype=bool)
  for v in range(views):
    a[v, (v + 1) % views] = a[v, (v - 1) % views] = True
  return a


def case_shapes(cfg, case, batch):
  """(sequences, Sq, Sk, mask, keep) for one case of a config; None if it does not apply."""
  h, w = (n // VAE_DOWN // PATCH for n in cfg["image"])
  t, v = cfg["frames"], cfg["views"]
  if case == "spatial_joint":
    s = h * w + cfg["text"]
    return batch * t * v, s, s, None, None
  if case == "spatial_masked":
    keep = int(round(w * (1 - cfg["mask_ratio"])))
    s = h * keep + cfg["text"]
    return batch * t * v, s, s, None, (h, w, keep)
  if case == "temporal":
    return batch * v * h * w, t, t, None, None
  if case == "crossview":
    if v == 1:
      return None
    s = v * w
    return batch * t * h, s, s, masks.BlockMask(w, _ring_adjacency(v)), None
  raise ValueError(f"unknown attention bench case {case!r}; known: {CASES}")


def _keep_indices(rng, n, hw, text):
  """[n, h*K + text] flat indices of row-wise kept image tokens followed by all text tokens."""
  h, w, keep = hw
  cols = np.sort(np.argsort(rng.random((n, h, w)), -1)[..., :keep], -1)
  flat = np.asarray(attn.row_keep_to_flat(jnp.asarray(cols), w))
  text_idx = np.broadcast_to(h * w + np.arange(text), (n, text))
  return jnp.asarray(np.concatenate([flat, text_idx], 1), jnp.int32)


def _time(fn, args, iters):
  out = fn(*args)
  jax.block_until_ready(out)  # compile + warm-up
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times) * 1e3


def _fns(impl, mask, keep_idx, fused):
  take = lambda x: jnp.take_along_axis(x, keep_idx[:, :, None, None], axis=1)
  if keep_idx is None:
    fwd = lambda q, k, v: attn.attention(q, k, v, mask=mask, impl=impl)
  elif fused:
    fwd = lambda q, k, v: attn.attention_gathered(q, k, v, keep_idx, mask=mask, impl=impl)
  else:
    fwd = lambda q, k, v: attn.attention(take(q), take(k), take(v), mask=mask, impl=impl)
  loss = lambda q, k, v: jnp.sum(fwd(q, k, v).astype(jnp.float32))
  return jax.jit(fwd), jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def run(args):
  if args.quick:
    args.configs, args.iters = "quick", min(args.iters, 2)
  backend = jax.default_backend()
  impls = [i for i in args.impls.split(",") if i] or ["xla", *KERNEL_IMPLS.get(backend, ())]
  if backend == "cpu" and not args.quick and not args.impls:
    impls = ["xla"]  # the interpret kernel at full shapes would take hours
  dtype = jnp.dtype(args.dtype)
  rng = np.random.default_rng(0)
  for config_name in args.configs.split(","):
    cfg = dict(CONFIGS[config_name])
    if args.frames:
      cfg["frames"] = args.frames
    for case in args.cases.split(","):
      shapes = case_shapes(cfg, case, args.batch)
      if shapes is None:
        continue
      n, sq, sk, mask, keep = shapes
      heads, dim = cfg["heads"], cfg["head_dim"]
      s_full = sq if keep is None else keep[0] * keep[1] + cfg["text"]
      keep_idx = None if keep is None else _keep_indices(rng, n, keep, cfg["text"])
      q, k, v = (jnp.asarray(rng.normal(size=(n, s_full, heads, dim)), dtype) for _ in range(3))
      fraction = masks.allowed_fraction(mask, 1, sq, sk)
      flops = 4.0 * n * heads * sq * sk * dim * fraction
      base = dict(config=config_name, case=case, sequences=n, seq_q=sq, seq_k=sk, heads=heads,
                  head_dim=dim, dtype=str(dtype.name), mask_fraction=round(fraction, 4))
      xla_ms = {}
      for impl in impls:
        q_shape = jax.ShapeDtypeStruct((n, sq, heads, dim), dtype)
        try:
          attn.resolve_impl(impl, q_shape, q_shape, mask)
        except ValueError as e:
          yield {**base, "impl": impl, "skipped": str(e)}
          continue
        # spatial_masked: kernels both with the gather folded into their loads and after an XLA
        # gather, to show what the folded gather saves; xla always gathers first.
        kernel = impl in attn.PALLAS
        variants = [True, False] if keep is not None and kernel else [True]
        for fused in variants:
          loads = None if keep is None else ("gathered_in_kernel" if fused and kernel
                                             else "xla_gather_first")
          print(f"[attention] {config_name}/{case} {impl} {loads or ''}: {n} x {sq}x{sk} tokens",
                flush=True)
          fwd, fwd_bwd = _fns(impl, mask, keep_idx, fused)
          for name, fn, mult in (("fwd", fwd, 1.0), ("fwd+bwd", fwd_bwd, 3.0)):
            ms = _time(fn, (q, k, v), args.iters)
            row = {**base, "impl": impl, "pass": name, "ms": round(ms, 4),
                   "tflops": round(mult * flops / (ms * 1e-3) / 1e12, 4)}
            if loads:
              row["loads"] = loads
            if impl == "xla":
              xla_ms[name] = ms
            elif name in xla_ms:
              row["speedup_vs_xla"] = round(xla_ms[name] / ms, 3)
            yield row
