"""Video blocks, AlphaBlender, token layouts, layout adapter pieces and embeddings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wm_jax.kernels.attention import dense_mask
from wm_jax.models import layers, video_blocks
from wm_jax.models.embeddings import sincos_2d_table, sinusoidal
from wm_jax.models.layout_adapter import avg_pool2, pixel_unshuffle

PREC = layers.Precision()


def _x(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape).astype(np.float32))


@pytest.mark.parametrize("kind", video_blocks.TEMPORAL_TYPES)
def test_temporal_layouts_round_trip_and_group_the_right_tokens(kind):
  b, t, v, h, w, d = 2, 3, 2, 2, 4, 1
  x = jnp.arange(b * t * v * h * w, dtype=jnp.float32).reshape(b, t, v, h, w, d)
  seq = video_blocks.temporal_sequences(x, kind)
  np.testing.assert_array_equal(video_blocks.temporal_unsequences(seq, kind, x.shape), x)
  lengths = {"pointwise": t, "rowwise": t * w, "full": t * h * w}
  assert seq.shape[1] == lengths[kind]
  # every sequence holds tokens of one (sample, view) only, and (pointwise) one position
  index = np.asarray(seq[..., 0]).astype(int)
  coords = np.stack(np.unravel_index(index, (b, t, v, h, w)), -1)  # [N, S, 5]
  for axis in (0, 2) + ((3,) if kind != "full" else ()) + ((4,) if kind == "pointwise" else ()):
    assert (coords[:, :, axis] == coords[:, :1, axis]).all(), (kind, axis)


def test_crossview_rows_and_adjacency_mask():
  b, t, v, h, w = 1, 2, 3, 2, 4
  x = jnp.arange(b * t * v * h * w, dtype=jnp.float32).reshape(b, t, v, h, w, 1)
  seq = video_blocks.crossview_sequences(x)
  assert seq.shape == (b * t * h, v * w, 1)
  coords = np.stack(np.unravel_index(np.asarray(seq[..., 0]).astype(int), (b, t, v, h, w)), -1)
  assert (coords[..., 3] == coords[:, :1, 3]).all() and (coords[..., 1] == coords[:, :1, 1]).all()
  assert (coords[0, :, 2] == np.repeat(np.arange(v), w)).all()  # views side by side in a row
  adj = np.zeros((b, v, v), bool)
  adj[0] = [[1, 1, 0], [1, 1, 1], [0, 1, 1]]
  mask = video_blocks.crossview_mask(adj, t, h, w)
  dense = np.asarray(dense_mask(mask, b * t * h, v * w, v * w))
  np.testing.assert_array_equal(dense[3], np.kron(adj[0], np.ones((w, w), bool)))


def test_alpha_blender_mixes_and_disables():
  blender = video_blocks.AlphaBlender(2.0, prec=PREC)
  a, c = _x((2, 3, 4), 1), _x((2, 3, 4), 2)
  alpha = jax.nn.sigmoid(2.0)
  np.testing.assert_allclose(blender(a, c), alpha * a + (1 - alpha) * c, rtol=1e-6)
  out = blender(a, c, jnp.array([True, False]))
  np.testing.assert_array_equal(out[0], a[0])
  np.testing.assert_allclose(out[1], alpha * a[1] + (1 - alpha) * c[1], rtol=1e-6)


def test_crossview_step_respects_adjacency_and_disable():
  d = 16
  block = video_blocks.VTSelfAttentionBlock(d, 2, 8, rngs=nnx.Rngs(0), prec=PREC)
  mixer = video_blocks.AlphaBlender(0.0, prec=PREC)
  pos = lambda e: e  # identity index embedding keeps the test small
  b, t, v, h, w = 1, 1, 3, 2, 2
  x = _x((b, t, v, h, w, d))
  index = sinusoidal(jnp.arange(v), d)
  adj = np.eye(v, dtype=bool)[None]  # every view alone
  step = lambda x, **kw: video_blocks.crossview_step(block, mixer, pos, x, index_emb=index,
                                                     view_adjacency=adj, **kw)
  y = step(x)
  x2 = x.at[:, :, 1:].add(5.0)  # change views 1 and 2 only
  np.testing.assert_allclose(step(x2)[:, :, 0], y[:, :, 0], atol=1e-5)  # view 0 unaffected
  adj_all = np.ones((b, v, v), bool)
  y_all = video_blocks.crossview_step(block, mixer, pos, x2, index_emb=index,
                                      view_adjacency=adj_all)
  assert not np.allclose(y_all[:, :, 0], y[:, :, 0], atol=1e-3)  # with adjacency it is affected
  np.testing.assert_array_equal(step(x, disabled=jnp.array([True])), x)


def test_time_modulation_starts_as_identity_and_acts_when_trained():
  d = 8
  mod = video_blocks.TimeModulation(d, rngs=nnx.Rngs(0), prec=PREC)
  u, emb = _x((2, 5, d), 1), _x((2, 1, d), 2)
  np.testing.assert_array_equal(mod(u, emb), u)
  mod.linear.kernel.set_value(_x((d, 2 * d), 3))
  assert not np.allclose(mod(u, emb), u)


def test_pixel_unshuffle_matches_torch_channel_order():
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(0).normal(size=(2, 16, 24, 3)).astype(np.float32)
  ref = torch.nn.PixelUnshuffle(8)(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
  np.testing.assert_array_equal(pixel_unshuffle(jnp.asarray(x), 8), ref.numpy())
  with pytest.raises(ValueError, match="not divisible by downscale_factor=8"):
    pixel_unshuffle(jnp.zeros((1, 12, 16, 3)), 8)


def test_avg_pool_ceil_mode():
  x = jnp.arange(15.0).reshape(1, 3, 5, 1)
  out = np.asarray(avg_pool2(x))[0, ..., 0]
  np.testing.assert_allclose(out, [[3.0, 5.0, 6.5], [10.5, 12.5, 14.0]])


def test_sinusoidal_and_2d_table_conventions():
  emb = np.asarray(sinusoidal(jnp.array([0.0, 3.0]), 8))
  freqs = np.exp(-np.log(10000.0) * np.arange(4) / 4)
  np.testing.assert_allclose(emb[1], np.concatenate([np.cos(3 * freqs), np.sin(3 * freqs)]),
                             rtol=1e-6)
  table = np.asarray(sincos_2d_table(8, 4, base_size=2)).reshape(4, 4, 8)
  # position = index / (grid / base_size); first half encodes the column, second half the row
  col, row = 3 / 2.0, 1 / 2.0
  omega = 1.0 / 10000 ** (np.arange(2) / 2.0)
  want = np.concatenate([np.sin(col * omega), np.cos(col * omega), np.sin(row * omega),
                         np.cos(row * omega)])
  np.testing.assert_allclose(table[1, 3], want, rtol=1e-6)
