"""Mask specs turned into what a blocked kernel needs: a per-block table and small per-token arrays.

A kernel tiles attention into [block_q, block_k] blocks. For every block the table says

  SKIP (0)     no (q, kv) pair in the block is allowed: the kernel does not touch it
  PARTIAL (1)  some pairs are allowed: the kernel builds the element mask from `MaskArrays`
  FULL (2)     every pair is allowed: no element mask

Combining specs is a minimum (skip wins, full only if every spec is full). The table is computed
from the specs at block granularity (prefix sums over the group table, per-block id ranges, block
index arithmetic), so no [S, S] array is ever built. Padding keys (positions >= Sk) make the last
kv block PARTIAL; the element mask drops them by position.

Element masks inside the kernel (`element_mask`) come from
  BlockMask    one-hot(q group) @ allowed @ one-hot(kv group)^T  (a tiny matmul, no gather)
  SegmentIds   q ids [bq, 1] == kv ids [1, bk]
  BlockCausal  q_pos // f >= k_pos // f
"""

from __future__ import annotations

import dataclasses
import jax.numpy as jnp
from jax import lax

from wm_jax.kernels import masks as masks_lib

SKIP, PARTIAL, FULL = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class MaskKind:
  """Static description of one spec inside a kernel (hashable; goes into pallas_call closures)."""
  kind: str  # 'block' | 'segment' | 'causal'
  size: int = 0  # group / frame size for 'block' and 'causal'
  groups_q: int = 0  # padded table size for 'block'
  groups_k: int = 0
  batched: bool = False  # arrays have a batch dim of B (else 1)


@dataclasses.dataclass(frozen=True)
class Plan:
  """Everything static the kernels need about the mask and the padded sizes."""
  kinds: tuple[MaskKind, ...]
  sq: int  # true lengths
  sk: int
  block_q: int
  block_k: int
  batched_table: bool

  @property
  def sq_pad(self):
    return -(-self.sq // self.block_q) * self.block_q

  @property
  def sk_pad(self):
    return -(-self.sk // self.block_k) * self.block_k

  @property
  def nq(self):
    return self.sq_pad // self.block_q

  @property
  def nk(self):
    return self.sk_pad // self.block_k


def _pad_to(x, length, axis, mode="edge"):
  pad = length - x.shape[axis]
  if pad == 0:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, pad)
  return jnp.pad(x, widths, mode=mode)


def _rect_state(count, area):
  return jnp.where(count == 0, SKIP, jnp.where(count == area, FULL, PARTIAL)).astype(jnp.int32)


def _block_mask_table(spec, allowed, plan: Plan):
  """[B1, nq, nk] state of a BlockMask from a 2-D prefix sum over its [B1, Gq, Gk] group table."""
  g = spec.block_size
  gq, gk = allowed.shape[-2:]
  csum = jnp.pad(jnp.cumsum(jnp.cumsum(allowed.astype(jnp.int32), -2), -1),
                 ((0, 0), (1, 0), (1, 0)))
  qi = jnp.arange(plan.nq)
  ki = jnp.arange(plan.nk)
  q_lo = jnp.minimum(qi * plan.block_q // g, gq - 1)
  q_hi = jnp.minimum(((qi + 1) * plan.block_q - 1) // g, gq - 1)
  k_lo = jnp.minimum(ki * plan.block_k // g, gk - 1)
  k_hi = jnp.minimum((jnp.minimum((ki + 1) * plan.block_k, plan.sk) - 1) // g, gk - 1)
  a, b = q_hi[:, None] + 1, k_hi[None, :] + 1
  c, d = q_lo[:, None], k_lo[None, :]
  count = csum[:, a, b] - csum[:, c, b] - csum[:, a, d] + csum[:, c, d]
  area = (a - c) * (b - d)
  return _rect_state(count, area)


def _segment_table(q_ids, kv_ids, plan: Plan):
  """[B, nq, nk] state of SegmentIds from per-block id ranges (disjoint ranges: skip)."""
  qb = _pad_to(q_ids, plan.sq_pad, 1).reshape(q_ids.shape[0], plan.nq, plan.block_q)
  kb = _pad_to(kv_ids, plan.sk_pad, 1).reshape(kv_ids.shape[0], plan.nk, plan.block_k)
  q_min, q_max = qb.min(-1)[:, :, None], qb.max(-1)[:, :, None]
  k_min, k_max = kb.min(-1)[:, None, :], kb.max(-1)[:, None, :]
  disjoint = (q_max < k_min) | (k_max < q_min)
  single = (q_min == q_max) & (k_min == k_max) & (q_min == k_min)
  return jnp.where(disjoint, SKIP, jnp.where(single, FULL, PARTIAL)).astype(jnp.int32)


def _causal_table(spec, plan: Plan):
  f = spec.block_size
  qi = jnp.arange(plan.nq)[:, None]
  ki = jnp.arange(plan.nk)[None, :]
  q_lo, q_hi = qi * plan.block_q // f, ((qi + 1) * plan.block_q - 1) // f
  k_lo, k_hi = ki * plan.block_k // f, ((ki + 1) * plan.block_k - 1) // f
  state = jnp.where(k_lo > q_hi, SKIP, jnp.where(k_hi <= q_lo, FULL, PARTIAL))
  return state.astype(jnp.int32)[None]


def build(mask, batch: int, sq: int, sk: int, block_q: int, block_k: int, *, min_groups: int = 1):
  """(plan, table [B1, nq, nk] int32, arrays tuple) for `mask` on padded sequences.

  arrays, per kind in plan.kinds order:
    block    allowed float32 [B1, Gq', Gk'] (zero-padded to >= min_groups, e.g. 16 for Triton dots)
    segment  q ids int32 [B, Sq_pad, 1] and kv ids int32 [B, 1, Sk_pad] (edge-padded)
    causal   nothing
  """
  specs = masks_lib.validate(mask, batch, sq, sk)
  kinds, arrays = [], []
  proto = Plan((), sq, sk, block_q, block_k, False)
  table = jnp.full((1, proto.nq, proto.nk), FULL, jnp.int32)
  if proto.sk_pad != sk:
    table = table.at[:, :, -1].set(PARTIAL)
  for spec in specs:
    if isinstance(spec, masks_lib.BlockMask):
      allowed = jnp.asarray(spec.allowed, bool)
      allowed = allowed if allowed.ndim == 3 else allowed[None]
      table = jnp.minimum(table, _block_mask_table(spec, allowed, proto))
      gq, gk = (max(min_groups, n) for n in allowed.shape[-2:])
      padded = jnp.zeros((allowed.shape[0], gq, gk), jnp.float32)
      padded = padded.at[:, :allowed.shape[1], :allowed.shape[2]].set(allowed)
      kinds.append(MaskKind("block", spec.block_size, gq, gk, allowed.shape[0] > 1))
      arrays.append(padded)
    elif isinstance(spec, masks_lib.SegmentIds):
      q_ids = jnp.asarray(spec.q).astype(jnp.int32)
      kv_ids = jnp.asarray(spec.kv).astype(jnp.int32)
      table = jnp.minimum(table, _segment_table(q_ids, kv_ids, proto))
      kinds.append(MaskKind("segment", batched=True))
      arrays.append(_pad_to(q_ids, proto.sq_pad, 1)[:, :, None])
      arrays.append(_pad_to(kv_ids, proto.sk_pad, 1)[:, None, :])
    else:  # BlockCausal (validate() rejected anything else)
      table = jnp.minimum(table, _causal_table(spec, proto))
      kinds.append(MaskKind("causal", spec.block_size))
  plan = Plan(tuple(kinds), sq, sk, block_q, block_k, table.shape[0] > 1)
  return plan, table, tuple(arrays)


def arrays_per_kind(kind: MaskKind) -> int:
  return {"block": 1, "segment": 2, "causal": 0}[kind.kind]


def element_mask(plan: Plan, values, q_start, k_start, bq: int, bk: int):
  """bool [bq, bk]: which pairs of the block at (q_start, k_start) are allowed.

  `values` are the per-kind mask values already loaded for this block, in plan.kinds order:
  block -> allowed [Gq', Gk'] float; segment -> (q ids [bq, 1], kv ids [1, bk]); causal -> None.
  Runs inside a kernel (Pallas TPU, Triton or interpret); uses only iota, compares and dots.
  """
  q_pos = q_start + lax.broadcasted_iota(jnp.int32, (bq, 1), 0)
  k_pos = k_start + lax.broadcasted_iota(jnp.int32, (1, bk), 1)
  ok = jnp.broadcast_to(k_pos < plan.sk, (bq, bk))
  for kind, value in zip(plan.kinds, values):
    if kind.kind == "block":
      g = kind.size
      onehot_q = (lax.div(q_pos, g) == lax.broadcasted_iota(jnp.int32, (1, kind.groups_q), 1))
      onehot_k = (lax.broadcasted_iota(jnp.int32, (kind.groups_k, 1), 0) == lax.div(k_pos, g))
      rows = lax.dot_general(onehot_q.astype(jnp.float32), value, (((1,), (0,)), ((), ())),
                             preferred_element_type=jnp.float32)
      hits = lax.dot_general(rows, onehot_k.astype(jnp.float32), (((1,), (0,)), ((), ())),
                             preferred_element_type=jnp.float32)
      ok = ok & (hits > 0.5)
    elif kind.kind == "segment":
      q_ids, kv_ids = value
      ok = ok & (q_ids == kv_ids)
    else:
      ok = ok & (lax.div(q_pos, kind.size) >= lax.div(k_pos, kind.size))
  return ok


def transpose_table(table):
  """[B1, nq, nk] -> [B1, nk, nq] for kernels that loop over q blocks for a fixed kv block."""
  return jnp.swapaxes(table, 1, 2)
