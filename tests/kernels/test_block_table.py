"""The per-block SKIP/PARTIAL/FULL table and the in-kernel element mask against the dense mask."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wm_jax.kernels import block_table as bt
from wm_jax.kernels import masks


def _brute_table(dense, sk, bq, bk):
  """Expected states from the dense [B, Sq, Sk] mask with padding keys masked."""
  b, sq, _ = dense.shape
  nq, nk = -(-sq // bq), -(-sk // bk)
  padded = np.zeros((b, nq * bq, nk * bk), bool)
  padded[:, :sq, :sk] = dense
  valid = np.zeros_like(padded)
  valid[:, :sq, :] = True  # padded query rows are sliced off; they may be anything
  out = np.zeros((b, nq, nk), np.int32)
  for i in range(nq):
    for j in range(nk):
      blk = padded[:, i * bq:(i + 1) * bq, j * bk:(j + 1) * bk]
      real = valid[:, i * bq:(i + 1) * bq, j * bk:(j + 1) * bk]
      any_ = (blk & real).any((1, 2))
      all_ = (blk | ~real).all((1, 2))
      out[:, i, j] = np.where(all_, bt.FULL, np.where(any_, bt.PARTIAL, bt.SKIP))
  return out


def _build(mask, b, sq, sk, bq, bk, **kw):
  """bt.build traced once under jit (eager calls would compile every small op separately)."""
  plans = []

  def fn():
    plan, table, arrays = bt.build(mask, b, sq, sk, bq, bk, **kw)
    plans.append(plan)
    return table, arrays

  table, arrays = jax.jit(fn)()
  return plans[0], table, arrays


def _specs(kind, b, sq, sk, rng):
  if kind == "block":
    return masks.BlockMask(3, rng.random((b, -(-sq // 3), -(-sk // 3))) < 0.4)
  if kind == "block2d":
    return masks.BlockMask(7, rng.random((-(-sq // 7), -(-sk // 7))) < 0.5)
  if kind == "segment":
    return masks.SegmentIds(np.sort(rng.integers(0, 3, (b, sq)), -1),
                            np.sort(rng.integers(0, 3, (b, sk)), -1))
  if kind == "causal":
    return masks.BlockCausal(5)
  return (masks.BlockMask(4, rng.random((b, -(-sq // 4), -(-sk // 4))) < 0.7),
          masks.BlockCausal(2), masks.SegmentIds(np.zeros((b, sq), int), np.zeros((b, sk), int)))


@pytest.mark.parametrize("kind", ["block", "block2d", "segment", "causal", "combined"])
@pytest.mark.parametrize("sq,sk,bq,bk", [(29, 29, 8, 8), (21, 35, 8, 16)])
def test_table_is_exact_at_block_granularity(kind, sq, sk, bq, bk):
  """SKIP only where nothing is allowed and FULL only where everything is; PARTIAL otherwise."""
  b = 2
  rng = np.random.default_rng(sq + sk + len(kind))
  mask = _specs(kind, b, sq, sk, rng)
  plan, table, _ = _build(mask, b, sq, sk, bq, bk)
  dense = np.asarray(jax.jit(lambda: masks.dense_mask(mask, b, sq, sk))())
  want = _brute_table(dense, sk, bq, bk)
  got = np.broadcast_to(np.asarray(table), want.shape)
  # Segment/combined tables use id ranges: exact for SKIP on sorted ids; PARTIAL may stand in for
  # FULL only where a conservative range test cannot tell (never the other way round).
  assert np.all((got == want) | ((got == bt.PARTIAL) & (want == bt.FULL)))
  if kind in ("block", "block2d", "causal"):
    np.testing.assert_array_equal(got, want)
  assert plan.nq == -(-sq // bq) and plan.nk == -(-sk // bk)


def test_element_mask_matches_dense_mask():
  """element_mask (the kernel's in-block mask) over every block reassembles the dense mask."""
  b, sq, sk, bq, bk = 2, 13, 17, 8, 8
  rng = np.random.default_rng(0)
  seg_q = rng.integers(0, 2, (b, sq))
  seg_k = rng.integers(0, 2, (b, sk))
  mask = (masks.BlockMask(4, rng.random((b, 4, 5)) < 0.6), masks.SegmentIds(seg_q, seg_k),
          masks.BlockCausal(3))
  plan, _, arrays = _build(mask, b, sq, sk, bq, bk, min_groups=16)
  allowed, q_ids, kv_ids = arrays
  assert allowed.shape == (b, 16, 16)  # zero-padded group table (Triton dots need 16)

  @jax.jit
  def reassemble(allowed, q_ids, kv_ids):
    full = jnp.zeros((b, plan.sq_pad, plan.sk_pad), bool)
    for batch in range(b):
      for i in range(plan.nq):
        for j in range(plan.nk):
          qs, ks = i * bq, j * bk
          values = [allowed[batch], (q_ids[batch, qs:qs + bq], kv_ids[batch, :, ks:ks + bk]),
                    None]
          block = bt.element_mask(plan, values, qs, ks, bq, bk)
          full = full.at[batch, qs:qs + bq, ks:ks + bk].set(block)
    return full

  full = np.asarray(reassemble(allowed, q_ids, kv_ids))
  dense = jax.jit(lambda: masks.dense_mask(mask, b, sq, sk))()
  np.testing.assert_array_equal(full[:, :sq, :sk], dense)
  assert not full[:, :, sk:].any()  # padding keys are masked


def test_bad_mask_shapes_name_the_sizes():
  with pytest.raises(ValueError, match=r"need \[3, 3\] or \[2, 3, 3\]"):
    bt.build(masks.BlockMask(4, np.ones((2, 2), bool)), 2, 12, 12, 8, 8)
  with pytest.raises(ValueError, match="SegmentIds shapes"):
    bt.build(masks.SegmentIds(np.zeros((2, 5)), np.zeros((2, 12))), 2, 12, 12, 8, 8)
  with pytest.raises(ValueError, match="block_size must be >= 1"):
    bt.build(masks.BlockCausal(0), 2, 12, 12, 8, 8)
  with pytest.raises(TypeError, match="unknown attention mask spec"):
    bt.build(("causal",), 2, 12, 12, 8, 8)
  assert np.asarray(_build(None, 1, 12, 12, 8, 8)[1]).tolist() == [[[2, 1], [2, 1]]]
