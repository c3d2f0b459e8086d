"""The demo's --vae_from: a VAE saved by an earlier run comes back with its calibration."""

import argparse

import jax
import numpy as np
import pytest
from flax import nnx

from wm_jax.models import vae as vae_lib
from wm_jax.train import demo, vae_training


def _config(channels="8,16", latent=4):
  args = argparse.Namespace(
      vae_channels=channels, latent_channels=latent, vae_attention=0, clip_frames=4,
      mask_reconstruction=0, train_clips=2, val_clips=1, supersample=1, steer_takeover=0.0,
      ref_frames=2, min_train_ref_frames=0, batch=1, steps=1, lr=1e-3, log_every=1,
      vae_steps=1, temporal_attention="pointwise")
  return demo.demo_config(args)


def test_reuse_vae_restores_weights_and_calibration_and_names_a_mismatch(tmp_path):
  config = _config()
  config.vae.update(shift_factor=0.25, scaling_factor=1.5)
  vae = vae_lib.AutoencoderKL(config.vae, rngs=nnx.Rngs(3))
  vae_training.save(vae, config, str(tmp_path / "vae"))
  again_config = _config()
  again = demo.reuse_vae(again_config, str(tmp_path / "vae"))
  assert (again_config.vae.shift_factor, again_config.vae.scaling_factor) == (0.25, 1.5)
  x = np.asarray(jax.random.uniform(jax.random.key(0), (1, 16, 32, 3)), np.float32)
  np.testing.assert_array_equal(np.asarray(vae.moments(x)), np.asarray(again.moments(x)))
  with pytest.raises(ValueError, match="--vae_channels=\\(8, 32\\)"):
    demo.reuse_vae(_config(channels="8,32"), str(tmp_path / "vae"))
  with pytest.raises(FileNotFoundError, match="no calibration.json"):
    demo.reuse_vae(_config(), str(tmp_path / "missing"))


def test_training_frames_refuse_clips_of_another_view_count_before_the_vae_trains():
  config = _config()  # the demo: 1 view of 4 frames
  config.model.num_views = 2
  with pytest.raises(ValueError, match=r"4 frames x 1 views, but the model config says "
                                       r"model.num_frames=4, model.num_views=2"):
    vae_training.training_frames(config, clips=1)
  config.model.num_views = 1
  frames = vae_training.training_frames(config, clips=1)
  assert frames.shape[1:] == (config.data.image_height, config.data.image_width, 3)
