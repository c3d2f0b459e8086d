"""sample_clips: protocol settings reach the Euler sampler; reference frames stay the ground truth."""
import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from wm_jax.diffusion import config as diffusion_config
from wm_jax.evaluation import protocols, sampling


class _ToyModel(nnx.Module):
  """v = (z - target) / tau, the exact rectified-flow velocity towards `target`: Euler steps on any
  schedule land on `target` at tau = 0."""

  def __init__(self, target):
    self.target = nnx.Param(jnp.asarray(target))

  def __call__(self, latents, timesteps, **cond):
    tau = jnp.maximum(timesteps, 1e-6)[..., None, None, None]
    return (latents - self.target[...]) / tau


def _config(camera_scalars=11):
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(dict(camera_scalars=camera_scalars, text_tokens=2,
                                           joint_attention_dim=4, pooled_projection_dim=4))
  c.diffusion = diffusion_config.defaults()
  return c


def _decode(lat):
  return np.clip(np.asarray(lat)[..., :3] * 50 + 128, 0, 255).astype(np.uint8)


def test_sample_clips_keeps_reference_and_follows_the_flow():
  p = dataclasses.replace(protocols.get("synthetic"), clip_frames=4, reference_frames=1,
                          sample_steps=4, cfg_scale=1.0, rollout_steps=1)
  rng = np.random.default_rng(0)
  latents = rng.normal(size=(2, 4, 1, 2, 2, 3)).astype(np.float32)
  target = rng.normal(size=(1, 1, 1, 2, 2, 3)).astype(np.float32)
  batch = {"latents": latents, "actions": np.zeros((2, 4, 4), np.float32)}
  out = sampling.sample_clips(_ToyModel(target), batch, _config(), protocol=p,
                              rng=jax.random.key(0), decode=lambda x: np.asarray(x))
  np.testing.assert_allclose(out[:, :1], latents[:, :1], atol=1e-6)   # condition frame kept
  np.testing.assert_allclose(out[:, 1:], np.broadcast_to(target, out[:, 1:].shape), atol=1e-4)


def test_sample_clips_rolls_out_protocols_with_rollout_steps():
  """synthetic: 3 rollout steps of 4-frame clips after 1 reference frame = a 10-frame horizon."""
  p = protocols.replace(protocols.get("synthetic"), sample_steps=3)
  assert sampling.horizon_frames(p) == 10 == p.metric_frames + p.reference_frames
  rng = np.random.default_rng(1)
  latents = rng.normal(size=(1, 10, 2, 2, 2, 3)).astype(np.float32)
  target = rng.normal(size=(1, 1, 1, 2, 2, 3)).astype(np.float32)
  batch = {"latents": latents, "actions": np.zeros((1, 10, 4), np.float32)}
  out = sampling.sample_clips(_ToyModel(target), batch, _config(), protocol=p,
                              rng=jax.random.key(0), decode=lambda x: np.asarray(x))
  assert out.shape == latents.shape
  np.testing.assert_allclose(out[:, :1], latents[:, :1], atol=1e-6)
  np.testing.assert_allclose(out[:, 1:], np.broadcast_to(target, out[:, 1:].shape), atol=1e-4)
  with pytest.raises(ValueError, match=r"3 rollout steps of 4-frame clips \(10 frames\); the "
                     "batch has 4"):
    sampling.sample_clips(None, {"latents": latents[:, :4]}, _config(), protocol=p,
                          rng=jax.random.key(0), decode=_decode)


def test_sample_clips_checks_protocol():
  p = protocols.get("vista_nuscenes")   # 25 frames, no actions
  batch = {"latents": np.zeros((1, 25, 1, 2, 2, 3), np.float32),
           "actions": np.zeros((1, 25, 4), np.float32)}
  with pytest.raises(ValueError, match="camera_scalars=13"):
    sampling.sample_clips(None, batch, _config(13), protocol=p, rng=jax.random.key(0),
                          decode=_decode)
  with pytest.raises(ValueError, match="25-frame clips; the batch has 4"):
    sampling.sample_clips(None, {"latents": np.zeros((1, 4, 1, 2, 2, 3), np.float32)}, _config(),
                          protocol=p, rng=jax.random.key(0), decode=_decode)
