"""generate: one sampler call or a rollout by the batch's horizon, the context frames kept, the
flow followed, the batch placed on the mesh, and clear errors for horizons that are no rollout."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wm_jax import defaults
from wm_jax.diffusion import generate as generate_lib
from wm_jax.parallel import mesh as mesh_lib


class _ToyModel(nnx.Module):
  """v = (z - target) / tau, the exact rectified-flow velocity towards `target`: Euler steps on any
  schedule land on `target` at tau = 0. Records the sharding of the latents it is called with."""

  def __init__(self, target):
    self.target = nnx.Param(jnp.asarray(target))

  def __call__(self, latents, timesteps, *cond, **kwargs):
    tau = jnp.maximum(timesteps, 1e-6)[..., None, None, None]
    return (latents - self.target[...]) / tau


def _config(frames=4):
  c = defaults.config()
  c.model.update(num_frames=frames, camera_scalars=0, text_tokens=2, joint_attention_dim=4,
                 pooled_projection_dim=4)
  c.model.layout_adapter = None
  c.diffusion.update(sample_steps=4, cfg_scale=1.0)
  return c


def test_one_clip_keeps_the_context_and_follows_the_flow():
  rng = np.random.default_rng(0)
  latents = rng.normal(size=(2, 4, 1, 2, 2, 3)).astype(np.float32)
  target = rng.normal(size=(1, 1, 1, 2, 2, 3)).astype(np.float32)
  out = np.asarray(generate_lib.generate(_ToyModel(target), {"latents": latents}, _config(),
                                         n_ref=1, rng=jax.random.key(0)))
  np.testing.assert_allclose(out[:, :1], latents[:, :1], atol=1e-6)   # condition frame kept
  np.testing.assert_allclose(out[:, 1:], np.broadcast_to(target, out[:, 1:].shape), atol=1e-4)


def test_a_longer_horizon_rolls_out_clip_by_clip():
  """3 clips of 4 frames after 1 context frame = a 10-frame horizon."""
  assert generate_lib.rollout_clips(10, 4, 1) == 3 and generate_lib.rollout_clips(4, 4, 1) == 1
  rng = np.random.default_rng(1)
  latents = rng.normal(size=(1, 10, 2, 2, 2, 3)).astype(np.float32)
  target = rng.normal(size=(1, 1, 1, 2, 2, 3)).astype(np.float32)
  out = np.asarray(generate_lib.generate(_ToyModel(target), {"latents": latents}, _config(),
                                         n_ref=1, rng=jax.random.key(0), steps=3))
  assert out.shape == latents.shape
  np.testing.assert_allclose(out[:, :1], latents[:, :1], atol=1e-6)
  np.testing.assert_allclose(out[:, 1:], np.broadcast_to(target, out[:, 1:].shape), atol=1e-4)


def test_bad_horizons_and_inputs_are_named():
  model = _ToyModel(np.zeros((1, 1, 1, 2, 2, 3), np.float32))
  with pytest.raises(ValueError, match=r"9 frames are no rollout of 4-frame clips with 1 "
                     r"reference frames \(needs n_ref \+ S \* 3"):
    generate_lib.generate(model, {"latents": np.zeros((1, 9, 1, 2, 2, 3), np.float32)},
                          _config(), n_ref=1, rng=jax.random.key(0))
  with pytest.raises(ValueError, match=r"n_ref=4 reference frames; generation needs 1 <= n_ref"):
    generate_lib.generate(model, {"latents": np.zeros((1, 4, 1, 2, 2, 3), np.float32)},
                          _config(), n_ref=4, rng=jax.random.key(0))
  with pytest.raises(ValueError, match=r"needs batch\['latents'\].*\['frames'\]"):
    generate_lib.generate(model, {"frames": np.zeros((1, 4, 1, 16, 16, 3), np.uint8)},
                          _config(), n_ref=1, rng=jax.random.key(0))


def test_on_a_mesh_the_batch_is_sharded_and_the_result_is_the_same(cpu_devices):
  mesh = mesh_lib.make_mesh(defaults.mesh(), cpu_devices)           # data=8
  rng = np.random.default_rng(2)
  latents = rng.normal(size=(8, 4, 1, 2, 2, 3)).astype(np.float32)
  target = rng.normal(size=(1, 1, 1, 2, 2, 3)).astype(np.float32)
  seen = []
  model = _ToyModel(target)
  plain = model.__call__

  def spy(latents, timesteps, *cond, **kwargs):
    seen.append(latents.sharding)
    return plain(latents, timesteps, *cond, **kwargs)

  object.__setattr__(model, "__call__", spy)
  want = np.asarray(generate_lib.generate(_ToyModel(target), {"latents": latents}, _config(),
                                          n_ref=1, rng=jax.random.key(0)))
  got = generate_lib.generate(_ToyModel(target), {"latents": latents}, _config(), n_ref=1,
                              rng=jax.random.key(0), mesh=mesh)
  assert got.sharding.spec[0] in ("data", ("data", "fsdp"), ("data",))   # rows over the data axis
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-6)
  # 3 rows do not divide over 8 devices: replicated, same numbers
  odd = generate_lib.generate(_ToyModel(target), {"latents": latents[:3]}, _config(), n_ref=1,
                              rng=jax.random.key(0), mesh=mesh)
  np.testing.assert_allclose(np.asarray(odd), want[:3], atol=1e-6)


def test_drop_actions_generates_action_free():
  """A model with the action module: without action keys generate names the missing key; with
  drop_actions=True the model gets no actions (Conditioning.actions None)."""
  seen = []

  class Recording(_ToyModel):
    def __call__(self, latents, timesteps, cond, **kwargs):
      seen.append(cond)
      return super().__call__(latents, timesteps, cond, **kwargs)

  c = _config()
  c.model.action_module = defaults.action_module()
  latents = np.zeros((1, 4, 1, 2, 2, 3), np.float32)
  model = Recording(np.zeros((1, 1, 1, 2, 2, 3), np.float32))
  with pytest.raises(ValueError, match="actions"):
    generate_lib.generate(model, {"latents": latents}, c, n_ref=1, rng=jax.random.key(0))
  generate_lib.generate(model, {"latents": latents}, c, n_ref=1, rng=jax.random.key(0),
                        drop_actions=True)
  assert seen and all(cond.actions is None for cond in seen)
