"""One attention entry for every attention in wm_jax, and the XLA reference it dispatches to.

Layout: q [B, Sq, H, D], k and v [B, Sk, H, D] (channels last, heads before head dim).
Masks are described, never materialised by the caller as a dense [Sq, Sk] array:

  BlockMask(block_size, allowed)  tokens come in contiguous groups of `block_size` (e.g. one view's
                                  row of tokens); q group i may attend to kv group j iff
                                  allowed[..., i, j]. `allowed` is [G, G] or [B, G, G] bool. This is
                                  the camera-adjacency mask of row-wise cross-view attention.
  SegmentIds(q, kv)               [B, Sq] / [B, Sk] ints; attend only where the ids are equal
                                  (padding gets an id no query has).
  BlockCausal(block_size)         q block i attends to kv blocks 0..i (frame-causal generation).

`mask` may be None, one spec, or a tuple of specs (all must allow). Softmax runs in float32; a
query row with no allowed key returns zeros.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence, Union

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class BlockMask:
  block_size: int
  allowed: Any  # bool [G, G] or [B, G, G]


@dataclasses.dataclass(frozen=True)
class SegmentIds:
  q: Any  # int [B, Sq]
  kv: Any  # int [B, Sk]


@dataclasses.dataclass(frozen=True)
class BlockCausal:
  block_size: int


MaskSpec = Union[None, BlockMask, SegmentIds, BlockCausal, Sequence[Any]]


def _as_tuple(mask: MaskSpec) -> tuple:
  if mask is None:
    return ()
  if isinstance(mask, (BlockMask, SegmentIds, BlockCausal)):
    return (mask,)
  return tuple(mask)


def dense_mask(mask: MaskSpec, batch: int, sq: int, sk: int):
  """The [B, Sq, Sk] bool mask a spec describes (for the XLA reference and tests), or None."""
  specs = _as_tuple(mask)
  if not specs:
    return None
  out = jnp.ones((batch, sq, sk), bool)
  qi = jnp.arange(sq)
  ki = jnp.arange(sk)
  for spec in specs:
    if isinstance(spec, BlockMask):
      allowed = jnp.asarray(spec.allowed, bool)
      groups_q, groups_k = -(-sq // spec.block_size), -(-sk // spec.block_size)
      if allowed.shape[-2:] != (groups_q, groups_k):
        raise ValueError(f"BlockMask.allowed has shape {allowed.shape}, but Sq={sq}, Sk={sk} with "
                         f"block_size={spec.block_size} need [..., {groups_q}, {groups_k}]")
      if allowed.ndim == 2:
        allowed = allowed[None]
      m = allowed[:, qi // spec.block_size][:, :, ki // spec.block_size]
    elif isinstance(spec, SegmentIds):
      q_ids, kv_ids = jnp.asarray(spec.q), jnp.asarray(spec.kv)
      if q_ids.shape != (batch, sq) or kv_ids.shape != (batch, sk):
        raise ValueError(f"SegmentIds shapes {q_ids.shape}/{kv_ids.shape} do not match "
                         f"[B, Sq]=({batch}, {sq}) / [B, Sk]=({batch}, {sk})")
      m = q_ids[:, :, None] == kv_ids[:, None, :]
    elif isinstance(spec, BlockCausal):
      m = (qi[:, None] // spec.block_size >= ki[None, :] // spec.block_size)[None]
    else:
      raise TypeError(f"unknown attention mask spec {spec!r}")
    out = out & m
  return out


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


IMPLS = {"xla": xla_attention}


def attention(q, k, v, *, mask: MaskSpec = None, impl: str = "auto", scale: float | None = None):
  """Multi-head attention. impl: 'auto' or a key of IMPLS."""
  if impl == "auto":
    impl = "xla"
  if impl not in IMPLS:
    raise ValueError(f"unknown attention impl {impl!r}; available: {sorted(IMPLS)} or 'auto'")
  return IMPLS[impl](q, k, v, mask=mask, scale=scale)
