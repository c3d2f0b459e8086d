"""Blocked flash attention in Pallas: one kernel body for the TPU (Mosaic) and GPU (Triton) paths.

Every kernel runs on a grid (batch, head, outer block) and loops over the inner blocks inside the
kernel (`fori_loop`), keeping the whole inner sequence of one head resident (K/V for the forward
and dq kernels, Q/dO for the dkv kernel). MaskGWM's sequences are short (<= ~1k tokens: spatial
576 + 154 text, temporal 25, cross-view 6 x 32), so this fits TPU VMEM / GPU shared memory easily
and lets the same body serve both lowerings and interpret mode. `Target` carries what differs:

  tpu  layout [B, H, S, D] (the last two dims of a TPU block must be tile-aligned or full), the
       block table in SMEM, blocks multiples of 8
  gpu  layout [B, S, H, D] (strided loads, no transpose), blocks powers of two >= 16 and group
       tables padded to 16 (Triton dots)

Forward: online softmax per q block; a kv block the table marks SKIP costs one scalar load, FULL
needs no element mask, PARTIAL builds it from the mask arrays (block_table.element_mask). The
forward saves the per-row log-sum-exp; the backward recomputes the probabilities from it in two
kernels: dq (loop over kv blocks) and dk/dv (loop over q blocks, with the transposed table).

`flash_attention_gathered` reads q/k/v rows through index arrays (the kept tokens of the
row-wise masked training path), so the gathered copy is never written to HBM in the forward. GPU:
vector-indexed loads from HBM. TPU: indices are scalar-prefetched into SMEM and rows are copied
into VMEM (q rows per q block; K/V rows once per (batch, head), reused by every q block). The
backward gathers with XLA (it reads the rows twice) and scatter-adds the gradients.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from wm_jax.kernels import block_table as bt


@dataclasses.dataclass(frozen=True)
class Target:
  """How the kernels are lowered: 'tpu' (Mosaic) or 'gpu' (Triton); interpret runs them on CPU."""
  name: str
  block_q: int
  block_k: int
  interpret: bool = False

  @property
  def layout(self):
    return "bhsd" if self.name == "tpu" else "bshd"

  @property
  def min_groups(self):
    return 16 if self.name == "gpu" else 1


DEFAULT_BLOCKS = {"tpu": (128, 128), "gpu": (64, 64)}


def _pow2_at_least(n, floor):
  p = floor
  while p < n:
    p *= 2
  return p


def make_target(name: str, sq: int, sk: int, *, block_sizes=None, interpret: bool = False):
  """Target with block sizes: given ones (validated) or the defaults shrunk to short sequences."""
  if name not in DEFAULT_BLOCKS:
    raise ValueError(f"unknown kernel target {name!r}; known: {sorted(DEFAULT_BLOCKS)}")
  if block_sizes is None:
    dq, dk = DEFAULT_BLOCKS[name]
    if name == "gpu":
      bq, bk = min(dq, _pow2_at_least(sq, 16)), min(dk, _pow2_at_least(sk, 16))
    else:
      bq, bk = min(dq, -(-sq // 8) * 8), min(dk, -(-sk // 8) * 8)
  else:
    bq, bk = block_sizes
  for b in (bq, bk):
    if name == "tpu" and b % 8:
      raise ValueError(f"TPU kernel block sizes must be multiples of 8, got {(bq, bk)}")
    if name == "gpu" and (b < 16 or b & (b - 1)):
      raise ValueError(f"GPU kernel block sizes must be powers of two >= 16, got {(bq, bk)}")
  return Target(name, bq, bk, interpret)


# ---------------------------------------------------------------------------------------------
# Kernel pieces shared by the three kernels


def _dot_nt(a, b):
  """a [m, d] . b [n, d]^T -> [m, n] float32."""
  return lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def _dot_nn(a, b):
  return lax.dot_general(a, b, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)


def _dot_tn(a, b):
  """a [m, n]^T . b [m, d] -> [n, d] float32."""
  return lax.dot_general(a, b, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)


def _mask_values(plan, mask_refs, q_start, k_start):
  """Per-kind values element_mask needs for the block at (q_start, k_start)."""
  values, pos = [], 0
  for kind in plan.kinds:
    if kind.kind == "block":
      values.append(mask_refs[pos][...])
    elif kind.kind == "segment":
      q_start = pl.multiple_of(q_start, plan.block_q)
      k_start = pl.multiple_of(k_start, plan.block_k)
      values.append((mask_refs[pos][pl.ds(q_start, plan.block_q), :],
                     mask_refs[pos + 1][:, pl.ds(k_start, plan.block_k)]))
    else:
      values.append(None)
    pos += bt.arrays_per_kind(kind)
  return values


def _has_partial(plan):
  return bool(plan.kinds) or plan.sk_pad != plan.sk


def _masked_logits(plan, mask_refs, s, q_start, k_start, masked):
  if not masked:
    return s
  ok = bt.element_mask(plan, _mask_values(plan, mask_refs, q_start, k_start), q_start, k_start,
                       plan.block_q, plan.block_k)
  return jnp.where(ok, s, -jnp.inf)


def _by_state(plan, state, update, carry):
  """Run update(masked)(carry) as the block's table state asks; SKIP returns carry unchanged."""
  if not _has_partial(plan):
    return update(False)(carry)
  partial_or_full = lambda c: lax.cond(state == bt.FULL, update(False), update(True), c)
  return lax.cond(state == bt.SKIP, lambda c: c, partial_or_full, carry)


def _table_row(plan, table_ref):
  """The table row of this program's outer block: a function of the inner block index."""
  b = pl.program_id(0) if plan.batched_table else 0
  i = pl.program_id(2)
  return lambda j: table_ref[b, i, j]


def _rows(ref, start, size):
  return ref[pl.ds(pl.multiple_of(start, size), size), :]


def _gather_rows(ref, idx_ref, b, start, size):
  """GPU: rows idx_ref[b, start: start + size] of a [S, D] ref in one vector-indexed load."""
  return ref[idx_ref[b, pl.ds(start, size)], :]


def _copy_rows(ref, idx_ref, b, start, size, buf_ref):
  """TPU: the same rows copied one by one (indices in SMEM) into the VMEM buffer buf_ref."""
  def copy(r, _):
    buf_ref[pl.ds(r, 1), :] = ref[pl.ds(idx_ref[b, start + r], 1), :]
    return 0

  lax.fori_loop(0, size, copy, 0)


# ---------------------------------------------------------------------------------------------
# Kernels


def _fwd_kernel(*refs, plan, target, scale, gathered, dtype):
  n_mask = sum(bt.arrays_per_kind(k) for k in plan.kinds)
  table_ref, refs = refs[0], refs[1:]
  if gathered:
    q_idx_ref, kv_idx_ref, refs = refs[0], refs[1], refs[2:]
  mask_refs, refs = refs[:n_mask], refs[n_mask:]
  q_ref, k_ref, v_ref, o_ref, lse_ref = refs[:5]
  bq, bk = plan.block_q, plan.block_k
  q_start = pl.program_id(2) * bq
  table_row = _table_row(plan, table_ref)
  if gathered and target.name == "tpu":
    # Kept q rows per q block; kept K/V rows once per (batch, head), at the first q block (the
    # q axis is sequential for this kernel), into VMEM buffers reused by the later q blocks.
    b = pl.program_id(0)
    # The rows move in 32 bits (_forward) and are cast to the compute dtype as blocks.
    q_buf, k_buf, v_buf = refs[5:]
    _copy_rows(q_ref, q_idx_ref, b, q_start, bq, q_buf)
    q = q_buf[...].astype(dtype)

    @pl.when(pl.program_id(2) == 0)
    def _():
      _copy_rows(k_ref, kv_idx_ref, b, 0, plan.sk_pad, k_buf)
      _copy_rows(v_ref, kv_idx_ref, b, 0, plan.sk_pad, v_buf)

    load_k = lambda start: _rows(k_buf, start, bk).astype(dtype)
    load_v = lambda start: _rows(v_buf, start, bk).astype(dtype)
  elif gathered:
    b = pl.program_id(0)
    q = _gather_rows(q_ref, q_idx_ref, b, q_start, bq)
    load_k = lambda start: _gather_rows(k_ref, kv_idx_ref, b, start, bk)
    load_v = lambda start: _gather_rows(v_ref, kv_idx_ref, b, start, bk)
  else:
    q = q_ref[...]
    load_k = lambda start: _rows(k_ref, start, bk)
    load_v = lambda start: _rows(v_ref, start, bk)

  def body(j, carry):
    k_start = j * bk

    def update(masked):
      def step(carry):
        m, l, acc = carry
        k, v = load_k(k_start), load_v(k_start)
        s = _masked_logits(plan, mask_refs, _dot_nt(q, k) * scale, q_start, k_start, masked)
        m_new = jnp.maximum(m, jnp.max(s, axis=1, keepdims=True))
        m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
        p = jnp.exp(s - m_safe)
        alpha = jnp.exp(m - m_safe)
        l = alpha * l + jnp.sum(p, axis=1, keepdims=True)
        acc = alpha * acc + _dot_nn(p.astype(v.dtype), v)
        return m_new, l, acc
      return step

    return _by_state(plan, table_row(j), update, carry)

  d = q.shape[-1]
  init = (jnp.full((bq, 1), -jnp.inf, jnp.float32), jnp.zeros((bq, 1), jnp.float32),
          jnp.zeros((bq, d), jnp.float32))
  m, l, acc = lax.fori_loop(0, plan.nk, body, init)
  empty = l == 0.0
  o_ref[...] = (acc / jnp.where(empty, 1.0, l)).astype(o_ref.dtype)
  # Rows with no allowed key: lse = +inf, so the backward's exp(s - lse) is 0 there.
  lse_ref[...] = jnp.where(empty, jnp.inf, jnp.where(m == -jnp.inf, 0.0, m) + jnp.log(l))


def _dq_kernel(*refs, plan, target, scale):
  del target
  n_mask = sum(bt.arrays_per_kind(k) for k in plan.kinds)
  table_ref, mask_refs = refs[0], refs[1:1 + n_mask]
  q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref = refs[1 + n_mask:]
  bq, bk = plan.block_q, plan.block_k
  q_start = pl.program_id(2) * bq
  q, do, lse, delta = q_ref[...], do_ref[...], lse_ref[...], delta_ref[...]
  table_row = _table_row(plan, table_ref)

  def body(j, dq):
    k_start = j * bk

    def update(masked):
      def step(dq):
        k, v = _rows(k_ref, k_start, bk), _rows(v_ref, k_start, bk)
        s = _masked_logits(plan, mask_refs, _dot_nt(q, k) * scale, q_start, k_start, masked)
        p = jnp.exp(s - lse)
        ds = p * (_dot_nt(do, v) - delta)
        return dq + _dot_nn(ds.astype(k.dtype), k)
      return step

    return _by_state(plan, table_row(j), update, dq)

  dq = lax.fori_loop(0, plan.nk, body, jnp.zeros(q.shape, jnp.float32))
  dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


def _dkv_kernel(*refs, plan, target, scale):
  del target
  n_mask = sum(bt.arrays_per_kind(k) for k in plan.kinds)
  table_t_ref, mask_refs = refs[0], refs[1:1 + n_mask]
  q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref = refs[1 + n_mask:]
  bq, bk = plan.block_q, plan.block_k
  k_start = pl.program_id(2) * bk
  k, v = k_ref[...], v_ref[...]
  table_row = _table_row(plan, table_t_ref)

  def body(i, carry):
    q_start = i * bq

    def update(masked):
      def step(carry):
        dk, dv = carry
        q, do = _rows(q_ref, q_start, bq), _rows(do_ref, q_start, bq)
        lse, delta = _rows(lse_ref, q_start, bq), _rows(delta_ref, q_start, bq)
        s = _masked_logits(plan, mask_refs, _dot_nt(q, k) * scale, q_start, k_start, masked)
        p = jnp.exp(s - lse)
        dv = dv + _dot_tn(p.astype(do.dtype), do)
        ds = p * (_dot_nt(do, v) - delta)
        dk = dk + _dot_tn(ds.astype(q.dtype), q)
        return dk, dv
      return step

    return _by_state(plan, table_row(i), update, carry)

  zeros = jnp.zeros(k.shape, jnp.float32)
  dk, dv = lax.fori_loop(0, plan.nq, body, (zeros, zeros))
  dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


# ---------------------------------------------------------------------------------------------
# pallas_call plumbing


def _seq_spec(target, rows, d, outer):
  """BlockSpec for a [B, H, S, D] / [B, S, H, D] array: `rows` rows at the outer block (or all)."""
  if target.layout == "bhsd":
    if outer:
      return pl.BlockSpec((None, None, rows, d), lambda b, h, i, *_: (b, h, i, 0))
    return pl.BlockSpec((None, None, rows, d), lambda b, h, i, *_: (b, h, 0, 0))
  if outer:
    return pl.BlockSpec((None, rows, None, d), lambda b, h, i, *_: (b, i, h, 0))
  return pl.BlockSpec((None, rows, None, d), lambda b, h, i, *_: (b, 0, h, 0))


def _row_stat_spec(rows, outer):
  """BlockSpec for the [B, H, S, 1] float32 row statistics (lse, delta)."""
  if outer:
    return pl.BlockSpec((None, None, rows, 1), lambda b, h, i, *_: (b, h, i, 0))
  return pl.BlockSpec((None, None, rows, 1), lambda b, h, i, *_: (b, h, 0, 0))


def _mask_specs(plan):
  specs = []
  for kind in plan.kinds:
    if kind.kind == "block":
      specs.append(pl.BlockSpec((None, kind.groups_q, kind.groups_k),
                                lambda b, h, i, *_, _bt=kind.batched: (b if _bt else 0, 0, 0)))
    elif kind.kind == "segment":
      specs.append(pl.BlockSpec((None, plan.sq_pad, 1), lambda b, h, i, *_: (b, 0, 0)))
      specs.append(pl.BlockSpec((None, 1, plan.sk_pad), lambda b, h, i, *_: (b, 0, 0)))
  return specs


def _compiler_params(target, sequential_outer=False):
  if target.name == "tpu":
    outer = "arbitrary" if sequential_outer else "parallel"
    return pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", outer))
  from jax.experimental.pallas import triton as pl_triton  # pylint: disable=g-import-not-at-top
  return pl_triton.CompilerParams(num_warps=4, num_stages=2)


def _sds(shape, dtype, like):
  """Output ShapeDtypeStruct varying over the same manual mesh axes as `like` (for shard_map)."""
  return jax.ShapeDtypeStruct(shape, dtype, manual_axis_type=jax.typeof(like).mat)


def _dims(target, x):
  """(B, H, S, D) of an array in the target layout."""
  if target.layout == "bhsd":
    return x.shape
  b, s, h, d = x.shape
  return b, h, s, d


def _call(kernel, target, grid, prefetch, in_specs, out_specs, out_shape, name, scratch=(),
          sequential_outer=False):
  """pallas_call with small int arrays `prefetch` (block table, gather indices) passed first.

  TPU: scalar prefetch into SMEM (kernel and index maps see them first). GPU: ordinary whole-array
  inputs in the same leading positions, so the kernel body is the same.
  """
  params = None if target.interpret else _compiler_params(target, sequential_outer)
  if target.name == "tpu":
    grid_spec = pltpu.PrefetchScalarGridSpec(num_scalar_prefetch=len(prefetch), grid=grid,
                                             in_specs=in_specs, out_specs=out_specs,
                                             scratch_shapes=scratch)
  else:
    whole = [pl.BlockSpec(x.shape, lambda *_, n=x.ndim: (0,) * n) for x in prefetch]
    grid_spec = pl.GridSpec(grid=grid, in_specs=[*whole, *in_specs], out_specs=out_specs)
  fn = pl.pallas_call(kernel, grid_spec=grid_spec, out_shape=out_shape,
                      interpret=target.interpret, name=name, compiler_params=params)
  return lambda *args: fn(*prefetch, *args)


def _forward(plan, target, scale, table, arrays, q, k, v, idx=None):
  """o (layout of q, padded) and lse [B, H, Sq_pad, 1]. idx: (q_idx, kv_idx) for gathered loads."""
  b, h, _, d = _dims(target, q)
  gathered = idx is not None
  q_rows = q.shape[2 if target.layout == "bhsd" else 1]
  k_rows = k.shape[2 if target.layout == "bhsd" else 1]
  prefetch = [table, *idx] if gathered else [table]
  in_specs = [*_mask_specs(plan),
              _seq_spec(target, q_rows if gathered else plan.block_q, d, outer=not gathered),
              _seq_spec(target, k_rows, d, outer=False), _seq_spec(target, k_rows, d, outer=False)]
  o_shape = (b, h, plan.sq_pad, d) if target.layout == "bhsd" else (b, plan.sq_pad, h, d)
  out_shape = [_sds(o_shape, q.dtype, q), _sds((b, h, plan.sq_pad, 1), jnp.float32, q)]
  out_specs = [_seq_spec(target, plan.block_q, d, outer=True), _row_stat_spec(plan.block_q, True)]
  scratch = ()
  dtype = q.dtype
  if gathered and target.name == "tpu":
    # Mosaic cannot copy one row of a packed (16-bit) VMEM array at a dynamic offset, so the
    # TPU gather copies rows of 32-bit copies of q/k/v into 32-bit buffers.
    wide = jnp.promote_types(dtype, jnp.float32)
    q, k, v = (x.astype(wide) for x in (q, k, v))
    scratch = [pltpu.VMEM((n, d), wide) for n in (plan.block_q, plan.sk_pad, plan.sk_pad)]
  kernel = functools.partial(_fwd_kernel, plan=plan, target=target, scale=scale,
                             gathered=gathered, dtype=dtype)
  name = "wm_flash_fwd_gathered" if gathered else "wm_flash_fwd"
  return _call(kernel, target, (b, h, plan.nq), prefetch, in_specs, out_specs, out_shape, name,
               scratch, sequential_outer=gathered)(*arrays, q, k, v)


def _backward(plan, target, scale, table, arrays, q, k, v, o, lse, do):
  b, h, _, d = _dims(target, q)
  delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1)
  delta = (delta if target.layout == "bhsd" else jnp.swapaxes(delta, 1, 2))[..., None]
  mask_specs = _mask_specs(plan)
  dq = _call(
      functools.partial(_dq_kernel, plan=plan, target=target, scale=scale), target,
      (b, h, plan.nq), [table],
      [*mask_specs, _seq_spec(target, plan.block_q, d, True),
       _seq_spec(target, plan.sk_pad, d, False), _seq_spec(target, plan.sk_pad, d, False),
       _seq_spec(target, plan.block_q, d, True),
       _row_stat_spec(plan.block_q, True), _row_stat_spec(plan.block_q, True)],
      _seq_spec(target, plan.block_q, d, True), _sds(q.shape, q.dtype, q),
      "wm_flash_dq")(*arrays, q, k, v, do, lse, delta)
  dk, dv = _call(
      functools.partial(_dkv_kernel, plan=plan, target=target, scale=scale), target,
      (b, h, plan.nk), [bt.transpose_table(table)],
      [*mask_specs, _seq_spec(target, plan.sq_pad, d, False),
       _seq_spec(target, plan.block_k, d, True), _seq_spec(target, plan.block_k, d, True),
       _seq_spec(target, plan.sq_pad, d, False),
       _row_stat_spec(plan.sq_pad, False), _row_stat_spec(plan.sq_pad, False)],
      [_seq_spec(target, plan.block_k, d, True)] * 2,
      [_sds(k.shape, k.dtype, k), _sds(v.shape, v.dtype, v)],
      "wm_flash_dkv")(*arrays, q, k, v, do, lse, delta)
  return dq, dk, dv


# ---------------------------------------------------------------------------------------------
# Differentiable entry points


def _no_grads(tree):
  return jax.tree.map(lambda _: None, tree)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _flash(plan, target, scale, table, arrays, q, k, v):
  return _forward(plan, target, scale, table, arrays, q, k, v)[0]


def _flash_fwd(plan, target, scale, table, arrays, q, k, v):
  o, lse = _forward(plan, target, scale, table, arrays, q, k, v)
  return o, (table, arrays, q, k, v, o, lse)


def _flash_bwd(plan, target, scale, res, do):
  table, arrays, q, k, v, o, lse = res
  dq, dk, dv = _backward(plan, target, scale, table, arrays, q, k, v, o, lse, do)
  return None, _no_grads(arrays), dq, dk, dv


_flash.defvjp(_flash_fwd, _flash_bwd)


def _take_seq(target, x, idx):
  """x [target layout] rows idx [B, K] along the sequence axis."""
  if target.layout == "bhsd":
    return jnp.take_along_axis(x, idx[:, None, :, None], axis=2)
  return jnp.take_along_axis(x, idx[:, :, None, None], axis=1)


def _scatter_add_seq(target, like, idx, rows):
  if target.layout == "bhsd":
    return jax.vmap(lambda z, i, r: z.at[:, i].add(r))(jnp.zeros_like(like), idx, rows)
  return jax.vmap(lambda z, i, r: z.at[i].add(r))(jnp.zeros_like(like), idx, rows)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _flash_gathered(plan, target, scale, table, arrays, q_idx, kv_idx, q, k, v):
  return _forward(plan, target, scale, table, arrays, q, k, v, idx=(q_idx, kv_idx))[0]


def _flash_gathered_fwd(plan, target, scale, table, arrays, q_idx, kv_idx, q, k, v):
  o, lse = _forward(plan, target, scale, table, arrays, q, k, v, idx=(q_idx, kv_idx))
  return o, (table, arrays, q_idx, kv_idx, q, k, v, o, lse)


def _flash_gathered_bwd(plan, target, scale, res, do):
  # The backward gathers explicitly (it needs the rows twice) and scatters the gradients back.
  table, arrays, q_idx, kv_idx, q, k, v, o, lse = res
  qg, kg, vg = _take_seq(target, q, q_idx), _take_seq(target, k, kv_idx), _take_seq(target, v,
                                                                                      kv_idx)
  dq, dk, dv = _backward(plan, target, scale, table, arrays, qg, kg, vg, o, lse, do)
  return (None, _no_grads(arrays), None, None, _scatter_add_seq(target, q, q_idx, dq),
          _scatter_add_seq(target, k, kv_idx, dk), _scatter_add_seq(target, v, kv_idx, dv))


_flash_gathered.defvjp(_flash_gathered_fwd, _flash_gathered_bwd)


def _to_layout(target, x):
  return jnp.swapaxes(x, 1, 2) if target.layout == "bhsd" else x


def _pad_seq(x, length):
  """[B, S, H, D] zero-padded to `length` along S."""
  return jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0), (0, 0)))


def flash_attention(q, k, v, *, mask=None, scale=None, target: Target):
  """q [B, Sq, H, D], k/v [B, Sk, H, D] -> [B, Sq, H, D]; masks as in wm_jax.kernels.masks."""
  batch, sq, _, dim = q.shape
  sk = k.shape[1]
  scale = dim ** -0.5 if scale is None else float(scale)
  plan, table, arrays = bt.build(mask, batch, sq, sk, target.block_q, target.block_k,
                                 min_groups=target.min_groups)
  qp, kp, vp = (_to_layout(target, _pad_seq(x, n)) for x, n in
                ((q, plan.sq_pad), (k, plan.sk_pad), (v, plan.sk_pad)))
  out = _flash(plan, target, scale, table, arrays, qp, kp, vp)
  return _to_layout(target, out)[:, :sq]


def flash_attention_gathered(q_full, k_full, v_full, keep_idx, *, kv_idx=None, mask=None,
                             scale=None, target: Target):
  """attention(q_full[b, keep_idx[b]], k_full[b, kv_idx[b]], v_full[b, kv_idx[b]]) -> [B, K, H, D].

  The rows are read through the index arrays inside the kernel's loads. kv_idx defaults to
  keep_idx; masks are given in gathered coordinates (positions 0..K-1).
  """
  kv_idx = keep_idx if kv_idx is None else kv_idx
  batch, _, _, dim = q_full.shape
  sq, sk = keep_idx.shape[1], kv_idx.shape[1]
  scale = dim ** -0.5 if scale is None else float(scale)
  plan, table, arrays = bt.build(mask, batch, sq, sk, target.block_q, target.block_k,
                                 min_groups=target.min_groups)
  # Padded index entries point at row 0: their keys are masked by position, their query rows
  # are sliced off (and get zero cotangents, so the backward scatter adds nothing for them).
  q_idx = jnp.pad(keep_idx.astype(jnp.int32), ((0, 0), (0, plan.sq_pad - sq)))
  k_idx = jnp.pad(kv_idx.astype(jnp.int32), ((0, 0), (0, plan.sk_pad - sk)))
  out = _flash_gathered(plan, target, scale, table, arrays, q_idx, k_idx,
                        *(_to_layout(target, x) for x in (q_full, k_full, v_full)))
  return _to_layout(target, out)[:, :sq]
