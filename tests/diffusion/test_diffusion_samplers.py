"""Euler sampler, classifier-free guidance, reference frames, and the autoregressive rollout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax import nnx

from wm_jax.diffusion import guidance, rollout, samplers
from wm_jax.models.buffers import Buffer
from wm_jax.models.conditioning import Conditioning

B, T, V, H, W, C, L = 2, 4, 1, 2, 2, 3, 2


def _cond(rng=0, camera_scalars=13):
  r = np.random.default_rng(rng)
  return Conditioning(context=jnp.asarray(r.normal(size=(B, T, V, L, 4)), jnp.float32),
                      pooled=jnp.asarray(r.normal(size=(B, T, V, 5)), jnp.float32),
                      camera=jnp.asarray(r.normal(size=(B, T, V, camera_scalars)), jnp.float32))


def _noise(seed=1, frames=T):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(B, frames, V, H, W, C)), jnp.float32)


def test_euler_integrates_linear_fields_exactly(field_model, make_config):
  config = make_config(shift=3.0)
  c = jnp.asarray(np.random.default_rng(2).normal(size=(B, T, V, H, W, C)), jnp.float32)
  # the flow of a single data point c: v = (z - c) / tau; Euler lands exactly on c
  to_point = field_model(lambda z, tau, _: (z - c) / tau[..., None, None, None])
  out = samplers.euler_sample(to_point, _noise(), _cond(), config, steps=7, cfg_scale=1.0)
  np.testing.assert_allclose(out, c, atol=1e-5)
  # a constant field moves z by -v over tau in [1, 0]
  constant = field_model(lambda z, tau, _: jnp.broadcast_to(c, z.shape))
  out = samplers.euler_sample(constant, _noise(), _cond(), config, steps=5, cfg_scale=1.0)
  np.testing.assert_allclose(out, _noise() - c, atol=1e-5)


def test_cfg_combination_in_one_batched_call(field_model, make_config):
  calls = []

  def field(z, tau, inputs):
    calls.append(z.shape[0])
    s = inputs["context"].sum(axis=(3, 4)) + 10 * inputs["camera"][..., 12]  # [2B,T,V]
    return jnp.broadcast_to((1.0 + s)[..., None, None, None], z.shape)

  cond = _cond()
  g = 2.5
  out = samplers.euler_sample(field_model(field), _noise(), cond, make_config(), steps=3,
                              cfg_scale=g)
  assert calls == [2 * B], "cond and uncond run as one batch, traced once"
  s_c = cond.context.sum(axis=(3, 4)) + 10 * cond.camera[..., 12]
  s_u = 10 * -1000.0  # zero context; the action scalar replaced by -1000
  v = (1 + s_u) + g * (s_c - s_u)
  np.testing.assert_allclose(out, _noise() - v[..., None, None, None], rtol=1e-5, atol=1e-3)
  # scale 0: the unconditional velocity alone, through the same compiled call
  out0 = samplers.euler_sample(field_model(field), _noise(), cond, make_config(), steps=3,
                               cfg_scale=0.0)
  assert calls == [2 * B]
  np.testing.assert_allclose(out0, _noise() - (1 + s_u), rtol=1e-5, atol=1e-3)
  np.testing.assert_allclose(guidance.combine(3.0, 1.0, 4.0), 9.0)


def test_uncond_inputs_and_condition_dropout():
  cond = _cond().replace(layout=jnp.ones((B, T, V, 8, 8, 6)),
                         view_adjacency=jnp.ones((B, V, V), bool),
                         disable_temporal=jnp.array([True, False]))
  un = guidance.uncond_inputs(cond)
  assert not np.any(un.context) and not np.any(un.pooled) and not np.any(un.layout)
  np.testing.assert_array_equal(un.camera[..., :11], cond.camera[..., :11])
  np.testing.assert_array_equal(un.camera[..., 11:], -1000.0)
  assert un.view_adjacency is cond.view_adjacency and un.disable_temporal is cond.disable_temporal
  cam11 = _cond(camera_scalars=11).camera
  np.testing.assert_array_equal(guidance.uncond_inputs(Conditioning(camera=cam11)).camera, cam11)
  mixed = guidance.drop_conditions(cond, jnp.array([True, False]))
  np.testing.assert_array_equal(mixed.context[0], 0)
  np.testing.assert_array_equal(mixed.context[1], cond.context[1])
  np.testing.assert_array_equal(mixed.camera[0], un.camera[0])
  both = guidance.batch_with_uncond(cond)
  assert isinstance(both, Conditioning) and both.disable_crossview is None
  np.testing.assert_array_equal(both.camera, np.concatenate([cond.camera, un.camera]))
  np.testing.assert_array_equal(both.disable_temporal, [True, False, True, False])


def _ref_field(field_model, traces):
  """Generated frames = mean of the clean (tau = 0) frames + 1, reached exactly by Euler."""

  def field(z, tau, _):
    traces.append(1)
    clean = (tau == 0)[..., None, None, None]
    anchor = jnp.sum(jnp.where(clean, z, 0), 1, keepdims=True) / jnp.sum(clean, 1, keepdims=True)
    safe = jnp.where(tau > 0, tau, 1.0)[..., None, None, None]
    return jnp.where(clean, 1e6, (z - (anchor + 1)) / safe)  # garbage on reference frames

  return field_model(field)


def test_reference_frames_held_clean(field_model, make_config):
  model = _ref_field(field_model, [])
  ref = _noise(5, frames=2)
  out = samplers.euler_sample(model, _noise(), _cond(), make_config(), steps=4, cfg_scale=1.0,
                              ref_latents=ref, n_ref=2)
  np.testing.assert_array_equal(out[:, :2], ref)
  np.testing.assert_allclose(out[:, 2:], jnp.broadcast_to(ref.mean(1, keepdims=True) + 1,
                                                          out[:, 2:].shape), atol=1e-5)
  with pytest.raises(ValueError, match="ref_latents"):
    samplers.euler_sample(model, _noise(), _cond(), make_config(), n_ref=2, ref_latents=ref[:, :1])


def test_euler_takes_a_conditioning(field_model, make_config):
  model = field_model(lambda z, tau, _: z)
  with pytest.raises(TypeError, match="cond must be a conditioning.Conditioning"):
    samplers.euler_sample(model, _noise(), {"context": _cond().context}, make_config(), steps=1)


def test_rollout_shapes_continuity_one_compile(field_model, make_config):
  traces = []
  model = _ref_field(field_model, traces)
  clips, n_ref = 3, 2
  total = rollout.horizon_frames(clips, T, n_ref)
  assert total == 8
  r = np.random.default_rng(0)
  inputs = Conditioning(context=jnp.asarray(r.normal(size=(B, total, V, L, 4)), jnp.float32),
                        camera=jnp.asarray(r.normal(size=(B, total, V, 13)), jnp.float32),
                        view_adjacency=jnp.ones((B, V, V), bool))
  start = jnp.full((B, n_ref, V, H, W, C), 5.0)
  out = rollout.rollout(model, inputs, start, make_config(), num_clips=clips, clip_frames=T,
                        rng=jax.random.key(0), steps=3, cfg_scale=1.0, verbose=False)
  assert out.shape == (B, total, V, H, W, C)
  # each clip's reference frames are the previous clip's last n_ref frames: a staircase
  per_frame = np.asarray(out[:, :, 0, 0, 0, 0])
  np.testing.assert_allclose(per_frame, np.broadcast_to([5, 5, 6, 6, 7, 7, 8, 8], (B, total)),
                             atol=1e-4)
  assert len(traces) == 1, "every clip reuses one compiled sampler"
  clip = rollout.clip_inputs(inputs, 4, T)
  np.testing.assert_array_equal(clip.camera, inputs.camera[:, 4:8])
  np.testing.assert_array_equal(clip.context, inputs.context[:, 4:8])
  assert clip.view_adjacency is inputs.view_adjacency and clip.pooled is None
  with pytest.raises(ValueError, match="needs 8"):
    rollout.rollout(model, inputs.replace(camera=inputs.camera[:, :7]), start, make_config(),
                    num_clips=clips, clip_frames=T, rng=jax.random.key(0), verbose=False)


class _Part(nnx.Module):
  def __init__(self, value):
    self.w = nnx.Param(value)
    self.b = Buffer(2 * value)


class _ScannedConstantField(nnx.Module):
  """Velocity = sum over 3 stacked parts of (w + b), accumulated by nnx.scan (as CTSDDiT with
  scan_layers): a constant field, whatever the inputs."""

  def __init__(self):
    values = jnp.asarray(np.random.default_rng(4).normal(size=(3, C)), jnp.float32)
    self.parts = nnx.vmap(_Part, in_axes=0, out_axes=0)(values)

  def __call__(self, latents, timesteps, cond):
    add = lambda v, part: v + part.w.get_value() + part.b.get_value()
    v = nnx.scan(add, in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)(jnp.zeros(C), self.parts)
    return jnp.broadcast_to(v, latents.shape)


def test_euler_runs_models_with_nnx_transforms_inside(make_config):
  model = _ScannedConstantField()
  k = 3 * jnp.sum(model.parts.w.get_value(), axis=0)
  out = samplers.euler_sample(model, _noise(), _cond(), make_config(), steps=3, cfg_scale=1.0)
  np.testing.assert_allclose(out, _noise() - k, atol=1e-5)
