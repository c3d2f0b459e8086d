"""tools/cache_latents.py: a data set encoded into the ArrayRecord cache with scale and shift."""
import numpy as np

from tests.data import mp4
from tools import cache_latents
from wm_jax.data import tfds_cache
from wm_jax import defaults
from wm_jax.models import vae as vae_lib


def test_cache_holds_scaled_latents_of_each_clip(tmp_path):
  root = tmp_path / "videos"
  root.mkdir()
  mp4.write_random_clips(root, clips=2, frames=4)
  data = defaults.data()
  data.update(source="video", path=str(root), num_frames=2, fps=5, image_height=16,
              image_width=32, val_fraction=0.0)
  vae_cfg = defaults.vae()
  vae_cfg.update(dict(block_out_channels=(8, 8, 8, 8), norm_num_groups=4, scaling_factor=0.5,
                      shift_factor=0.25))
  _, encoder = cache_latents.build("video", data, vae_cfg, name="lat", data_dir=str(tmp_path),
                                   splits=("train",), keep_frames=True)
  cached = tfds_cache.data_source("wm_video/lat", split="train", data_dir=str(tmp_path))
  assert len(cached) == 2 and encoder.calls == 2
  record = cached[1]
  assert record["latents"].shape == (2, 1, 2, 4, 4)  # [T, V, 16/8, 32/8, 4]
  want = vae_lib.encode_frames(encoder.vae, record["frames"])
  np.testing.assert_allclose(record["latents"], want, atol=1e-5)
  # The scale and shift were applied: undoing them gives the posterior mean of the moments.
  mean, _ = vae_lib.posterior_mean_logvar(encoder.vae.moments(
      np.asarray(record["frames"], np.float32).reshape(-1, 16, 32, 3) / 127.5 - 1.0))
  np.testing.assert_allclose(record["latents"].reshape(mean.shape) / 0.5 + 0.25, mean, atol=1e-5)
  assert "vae_tiny:random:scale=0.5:shift=0.25:mean" in encoder.__name__
  assert np.isfinite(encoder.stats()).all()
