"""AutoencoderKL: presets, frames <-> latents contract, tiling/slicing, posterior (JAX only)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wm_jax import defaults
from wm_jax.models import vae as vae_lib

SMALL = dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, latent_channels=4,
             scaling_factor=0.5, shift_factor=0.1)


def test_tiny_preset_maps_64x128_frames_to_8x16_latents():
  vae = nnx.eval_shape(lambda: vae_lib.AutoencoderKL(defaults.vae(), rngs=nnx.Rngs(0)))
  assert vae.factor == 8 and vae.latent_channels == 4
  frames = jax.ShapeDtypeStruct((2, 3, 6, 64, 128, 3), jnp.uint8)  # [B,T,V,H,W,3]
  z = jax.eval_shape(lambda f: vae_lib.encode_frames(vae, f), frames)
  assert z.shape == (2, 3, 6, 8, 16, 4) and z.dtype == jnp.float32
  x = jax.eval_shape(lambda l: vae_lib.decode_latents(vae, l), z)
  assert x.shape == frames.shape and x.dtype == jnp.uint8


def test_presets_and_overrides():
  sd3 = vae_lib.resolve({"preset": "sd3"})
  assert (sd3["latent_channels"], sd3["scaling_factor"], sd3["shift_factor"]) == (16, 1.5305, 0.0609)
  assert not sd3["use_quant_conv"] and not sd3["use_post_quant_conv"]
  sd = vae_lib.resolve({"preset": "sd"})
  assert (sd["latent_channels"], sd["scaling_factor"], sd["use_quant_conv"]) == (4, 0.18215, True)
  cfg = defaults.vae()
  cfg.preset = "sd3"
  cfg.latent_channels = 8  # a placeholder field overrides the preset
  assert vae_lib.resolve(cfg)["latent_channels"] == 8
  with pytest.raises(ValueError, match="unknown VAE preset 'nope'"):
    vae_lib.resolve({"preset": "nope"})
  with pytest.raises(ValueError, match="tile_size=100"):
    vae_lib.resolve({"preset": "tiny", "tile_size": 100})
  with pytest.raises(ValueError, match="not divisible by norm_num_groups=8"):
    vae_lib.resolve({"preset": "tiny", "block_out_channels": (12, 16)})
  with pytest.raises(ValueError, match="unknown config.vae field"):
    vae_lib.resolve({"preset": "tiny", "latent_chanels": 4})


@pytest.mark.parametrize("scale,multiple", [(1.0, 1), (0.25, 4), (4.0, 1)])
def test_tiled_apply_is_exact_for_local_maps(scale, multiple):
  """With a map whose output at a position depends only on its own input cell (pointwise, 4x4
  mean pool, nearest x4 upsample), the blended tiles reproduce the whole-image result."""
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 24, 40, 2)), jnp.float32)
  fns = {1.0: lambda t: 2 * t + 1,
         0.25: lambda t: t.reshape(t.shape[0], t.shape[1] // 4, 4, t.shape[2] // 4, 4, -1).mean((2, 4)),
         4.0: lambda t: jnp.repeat(jnp.repeat(t, 4, 1), 4, 2)}
  fn = fns[scale]
  whole = fn(x)
  tiled = vae_lib.tiled_apply(fn, x, tile=16, overlap=0.25, scale=scale, multiple=multiple,
                              batch_slice=4)
  np.testing.assert_allclose(tiled, whole, atol=1e-6)
  assert vae_lib.tile_starts(40, 16, 12) == [0, 12, 24]
  assert vae_lib.tile_starts(24, 16, 12) == [0, 8]
  assert vae_lib.tile_starts(10, 16, 12) == [0]


def test_tiled_apply_blends_overlaps():
  """Where two tiles overlap, the output moves linearly from one tile's value to the other's."""
  # Each tile outputs a constant: its column start (read from its first input column).
  x = jnp.broadcast_to(jnp.arange(28.0)[None, None, :, None], (1, 8, 28, 1))
  out = vae_lib.tiled_apply(lambda t: jnp.broadcast_to(t[:, :1, :1], t.shape), x, tile=16,
                            overlap=0.25, scale=1.0)
  row = np.asarray(out[0, 0, :, 0])
  np.testing.assert_array_equal(row[:12], 0.0)   # only the first tile (start 0)
  np.testing.assert_array_equal(row[16:], 12.0)  # only the second tile (start 12)
  assert np.all(np.diff(row[11:17]) > 0) and 0 < row[13] < 12  # a ramp across the overlap


def test_tiled_and_sliced_encode_and_decode():
  vae = vae_lib.AutoencoderKL({"preset": "tiny", **SMALL}, rngs=nnx.Rngs(0))
  frames = np.random.default_rng(1).integers(0, 256, (2, 3, 16, 24, 3), dtype=np.uint8)
  z = vae_lib.encode_frames(vae, frames)
  assert z.shape == (2, 3, 8, 12, 4)
  # Same weights, 16 px tiles (overlap 4 px: two column tiles) over 6 frames, 5 tiles per call.
  tiled = vae_lib.AutoencoderKL({"preset": "tiny", **SMALL, "tile_size": 16, "batch_slice": 5},
                                rngs=nnx.Rngs(0))
  zt = vae_lib.encode_frames(tiled, frames)
  assert zt.shape == z.shape and np.all(np.isfinite(zt))
  # Tiles see less context and have their own GroupNorm statistics: the result differs.
  assert not np.allclose(zt, z, atol=1e-4)
  x = vae_lib.decode_latents(tiled, z)
  assert x.shape == frames.shape and x.dtype == np.uint8


def test_posterior_sample_and_kl():
  moments = jnp.asarray(np.random.default_rng(2).normal(size=(2, 3, 4, 8)), jnp.float32)
  rng = jax.random.key(5)

  @jax.jit
  def run(moments):
    mean, logvar = vae_lib.posterior_mean_logvar(moments)
    eps = jax.random.normal(rng, mean.shape)
    big = vae_lib.posterior_mean_logvar(moments.at[..., 4:].set(100.0))[1]
    return (mean, logvar, eps, vae_lib.posterior_sample(moments, rng),
            vae_lib.posterior_sample(moments), vae_lib.posterior_kl(moments), big.max())

  mean, logvar, eps, sample, mode, kl, big_max = map(np.asarray, run(moments))
  np.testing.assert_allclose(sample, mean + np.exp(0.5 * logvar) * eps, atol=1e-6)
  np.testing.assert_array_equal(mode, mean)
  want = 0.5 * np.sum(mean ** 2 + np.exp(logvar) - 1 - logvar, axis=(1, 2, 3))
  np.testing.assert_allclose(kl, want, rtol=1e-5)
  assert float(big_max) == 20.0  # logvar clamp


def test_bad_inputs_are_refused():
  vae = nnx.eval_shape(lambda: vae_lib.AutoencoderKL(defaults.vae(), rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match="uint8"):
    vae_lib.encode_frames(vae, np.zeros((1, 64, 64, 3), np.float32))
  with pytest.raises(ValueError, match="60x64 is not a multiple of the VAE factor 8"):
    vae_lib.encode_frames(vae, np.zeros((1, 60, 64, 3), np.uint8))
  with pytest.raises(ValueError, match=r"latents must be \[..., h, w, 4\]"):
    vae_lib.decode_latents(vae, np.zeros((1, 8, 8, 16), np.float32))
