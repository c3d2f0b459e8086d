"""Attention mask specs: described by a few small arrays, never by a dense [Sq, Sk] array.

  BlockMask(block_size, allowed)  tokens come in contiguous groups of `block_size` (e.g. one view's
                                  row of tokens); q group i may attend to kv group j iff
                                  allowed[..., i, j]. `allowed` is [G, G] or [B, G, G] bool. This is
                                  the camera-adjacency mask of row-wise cross-view attention.
  SegmentIds(q, kv)               [B, Sq] / [B, Sk] ints; attend only where the ids are equal
                                  (padding gets an id no query has).
  BlockCausal(block_size)         q block i attends to kv blocks 0..i (frame-causal generation).

A mask is None, one spec, or a tuple of specs (all must allow).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence, Union

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


def as_tuple(mask: MaskSpec) -> tuple:
  if mask is None:
    return ()
  if isinstance(mask, (BlockMask, SegmentIds, BlockCausal)):
    return (mask,)
  return tuple(mask)


def validate(mask: MaskSpec, batch: int, sq: int, sk: int) -> tuple:
  """The specs of `mask` as a tuple, after checking their shapes against [B, Sq] x [B, Sk]."""
  specs = as_tuple(mask)
  for spec in specs:
    if isinstance(spec, BlockMask):
      if spec.block_size < 1:
        raise ValueError(f"BlockMask.block_size must be >= 1, got {spec.block_size}")
      shape = tuple(jnp.shape(spec.allowed))
      groups_q, groups_k = -(-sq // spec.block_size), -(-sk // spec.block_size)
      if len(shape) not in (2, 3) or shape[-2:] != (groups_q, groups_k) or (
          len(shape) == 3 and shape[0] != batch):
        raise ValueError(f"BlockMask.allowed has shape {shape}, but B={batch}, Sq={sq}, Sk={sk} "
                         f"with block_size={spec.block_size} need [{groups_q}, {groups_k}] or "
                         f"[{batch}, {groups_q}, {groups_k}]")
    elif isinstance(spec, SegmentIds):
      q_shape, kv_shape = tuple(jnp.shape(spec.q)), tuple(jnp.shape(spec.kv))
      if q_shape != (batch, sq) or kv_shape != (batch, sk):
        raise ValueError(f"SegmentIds shapes {q_shape}/{kv_shape} do not match "
                         f"[B, Sq]=({batch}, {sq}) / [B, Sk]=({batch}, {sk})")
    elif isinstance(spec, BlockCausal):
      if spec.block_size < 1:
        raise ValueError(f"BlockCausal.block_size must be >= 1, got {spec.block_size}")
    else:
      raise TypeError(f"unknown attention mask spec {spec!r}")
  return specs


def dense_mask(mask: MaskSpec, batch: int, sq: int, sk: int):
  """The [B, Sq, Sk] bool mask a spec describes (for the XLA reference and tests), or None."""
  specs = validate(mask, batch, sq, sk)
  if not specs:
    return None
  out = jnp.ones((batch, sq, sk), bool)
  qi = jnp.arange(sq)
  ki = jnp.arange(sk)
  for spec in specs:
    if isinstance(spec, BlockMask):
      allowed = jnp.asarray(spec.allowed, bool)
      if allowed.ndim == 2:
        allowed = allowed[None]
      m = allowed[:, qi // spec.block_size][:, :, ki // spec.block_size]
    elif isinstance(spec, SegmentIds):
      m = jnp.asarray(spec.q)[:, :, None] == jnp.asarray(spec.kv)[:, None, :]
    else:
      m = (qi[:, None] // spec.block_size >= ki[None, :] // spec.block_size)[None]
    out = out & m
  return out


def allowed_fraction(mask: MaskSpec, batch: int, sq: int, sk: int) -> float:
  """Fraction of (q, kv) pairs the mask allows (for FLOP accounting; builds the dense mask)."""
  dense = dense_mask(mask, batch, sq, sk)
  return 1.0 if dense is None else float(jnp.mean(dense.astype(jnp.float32)))
