"""Row-wise masks: exact K per row in column order, mask kinds, exact gather/scatter round trip."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wm_jax.models import masking

B, T, V, H, W = 4, 3, 2, 5, 8


def _mask(seed=0, ratio=0.25, p_time=0.5, batch=B):
  return masking.sample_row_mask(jax.random.key(seed), batch, T, V, H, W, ratio, p_time)


@pytest.mark.parametrize("p_time", [0.0, 1.0])
def test_rows_keep_exactly_k_in_column_order(p_time):
  m = _mask(p_time=p_time)
  keep, drop = np.asarray(m.keep_idx), np.asarray(m.drop_idx)
  assert keep.shape == (B, T, V, H, 6) and drop.shape == (B, T, V, H, 2)
  assert keep.dtype == np.int32 and drop.dtype == np.int32
  assert np.all(np.diff(keep, axis=-1) > 0), "kept columns must be strictly ascending"
  assert np.all(np.diff(drop, axis=-1) > 0), "dropped columns must be strictly ascending"
  both = np.sort(np.concatenate([keep, drop], -1), -1)
  np.testing.assert_array_equal(both, np.broadcast_to(np.arange(W), both.shape))
  assert bool(np.all(np.asarray(m.is_time) == (p_time == 1.0)))


def test_spatial_masks_shared_across_frames_time_masks_differ():
  spatial, timed = _mask(1, p_time=0.0), _mask(1, p_time=1.0)
  ks = np.asarray(spatial.keep_idx)
  for t in range(1, T):
    np.testing.assert_array_equal(ks[:, t], ks[:, 0])
  # different views and rows still get different masks
  assert not np.array_equal(ks[:, :, 0], ks[:, :, 1])
  kt = np.asarray(timed.keep_idx)
  assert any(not np.array_equal(kt[b, 0], kt[b, t]) for b in range(B) for t in range(1, T))


def test_mask_kind_per_sample_with_p_time_and_uniform_columns():
  n = 3000
  m = masking.sample_row_mask(jax.random.key(3), n, 2, 1, 1, W, 0.25, 0.3)
  is_time = np.asarray(m.is_time)
  assert abs(is_time.mean() - 0.3) < 0.03, is_time.mean()
  keep = np.asarray(m.keep_idx)
  same = np.all(keep[:, 0] == keep[:, 1], axis=(-1, -2, -3))
  assert np.all(same[~is_time])
  # two independent 6-of-8 choices agree with probability 1/28
  assert abs(np.mean(same[is_time]) - 1 / 28) < 0.02
  counts = np.bincount(keep.ravel(), minlength=W) / keep[..., 0].size
  np.testing.assert_allclose(counts, 0.75, atol=0.03)


def test_gather_scatter_round_trip_exact():
  m = _mask(2)
  x = jnp.asarray(np.random.default_rng(5).normal(size=(B, T, V, H, W, 3)), jnp.float32)

  @jax.jit
  def round_trip(x, m):
    kept, dropped = masking.gather_rows(x, m), masking.gather_dropped(x, m)
    return kept, dropped, masking.scatter_rows(kept, dropped, m), masking.dropped_positions(m)

  kept, dropped, back, pos = round_trip(x, m)
  assert kept.shape == (B, T, V, H, 6, 3) and dropped.shape == (B, T, V, H, 2, 3)
  np.testing.assert_array_equal(np.asarray(back), np.asarray(x))
  # kept tokens are the ones at keep_idx, in that order
  xn, ki = np.asarray(x), np.asarray(m.keep_idx)
  np.testing.assert_array_equal(np.asarray(kept)[1, 2, 0, 4], xn[1, 2, 0, 4][ki[1, 2, 0, 4]])
  # positions: dropped_positions marks exactly the dropped columns
  pos = np.asarray(pos)
  assert pos.sum(-1).min() == 2 and pos.sum(-1).max() == 2
  np.testing.assert_array_equal(np.take_along_axis(pos, np.asarray(m.drop_idx), -1), True)


def test_scatter_under_jit_and_without_trailing_dims():
  m = _mask(6)
  x = jnp.arange(B * T * V * H * W, dtype=jnp.float32).reshape(B, T, V, H, W)
  f = jax.jit(lambda x, m: masking.scatter_rows(masking.gather_rows(x, m),
                                                masking.gather_dropped(x, m), m))
  np.testing.assert_array_equal(np.asarray(f(x, m)), np.asarray(x))


@pytest.mark.parametrize("ratio,width,match", [(0.3, 8, "not a whole number"),
                                               (0.9999999, 1, "K=0|not a whole"),
                                               (1.0, 8, r"\[0, 1\)")])
def test_bad_ratio_raises(ratio, width, match):
  with pytest.raises(ValueError, match=match):
    masking.sample_row_mask(jax.random.key(0), 1, 1, 1, 1, width, ratio, 0.5)


def test_shape_mismatch_raises():
  m = _mask()
  with pytest.raises(ValueError, match=r"\(4, 3, 2, 5, 7\)"):
    masking.gather_rows(jnp.zeros((B, T, V, H, 7)), m)
  with pytest.raises(ValueError, match="scatter_rows kept"):
    masking.scatter_rows(jnp.zeros((B, T, V, H, 5)), jnp.zeros((B, T, V, H, 2)), m)
  with pytest.raises(ValueError, match="p_time"):
    masking.sample_row_mask(jax.random.key(0), 1, 1, 1, 1, 4, 0.5, 1.5)
