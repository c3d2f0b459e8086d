"""The diffusion code with the real tiny CTSDDiT (wm_jax.defaults.model())."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wm_jax import defaults
from wm_jax.diffusion import losses, rollout, samplers
from wm_jax.models import conditioning
from wm_jax.models.ctsd_dit import CTSDDiT

B = 2


def _tiny():
  """The tiny model cut to 2 joint blocks (one temporal, one cross-view block): compile time on
  CPU is what these tests cost, and the diffusion code does not depend on the depth."""
  config = defaults.config()
  config.mask.decode_layers = 1
  config.model.update(dict(num_layers=2, dual_attention_layers=[0], temporal_block_layers=[0],
                           crossview_block_layers=[1]))
  config.model.layout_adapter = None
  config.diffusion.update(max_reference_frames=2, feature_loss_weight=0.5)
  # Random weights in the real structure: building the model eagerly compiles one initializer
  # per parameter shape, which costs more CPU than everything this file tests.
  graphdef, state = nnx.split(nnx.eval_shape(lambda: CTSDDiT(config.model, config.mask,
                                                             rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(0)
  fan_in = lambda shape: int(np.prod(shape[:-1])) if len(shape) > 1 else 100
  model = nnx.merge(graphdef, jax.tree.map(
      lambda s: jnp.asarray(rng.normal(size=s.shape) / np.sqrt(fan_in(s.shape)), s.dtype), state))
  m = config.model
  r = np.random.default_rng(0)
  t, v = m.num_frames, m.num_views
  eye = np.broadcast_to(np.eye(4, dtype=np.float32), (B, t, v, 4, 4)).copy()
  intr = np.broadcast_to(np.array([[60, 0, 64], [0, 60, 32], [0, 0, 1]], np.float32),
                         (B, t, v, 3, 3)).copy()
  batch = dict(
      latents=r.normal(size=(B, t, v, m.latent_height, m.latent_width, m.in_channels)
                       ).astype(np.float32),
      text_embeddings=r.normal(size=(B, t, v, m.text_tokens, m.joint_attention_dim)
                               ).astype(np.float32),
      pooled_text=r.normal(size=(B, t, v, m.pooled_projection_dim)).astype(np.float32),
      intrinsics=intr, extrinsics=eye, fps=np.full((B,), 10.0, np.float32))
  return config, model, batch


def test_tiny_model_loss_sampler_rollout():
  """One test, so that one process builds the model."""
  config, model, batch = _tiny()
  _check_train_loss(config, model, batch)
  _check_sampler_and_rollout(config, model, batch)


@pytest.mark.slow
def test_tiny_model_loss_gradients():
  config, model, batch = _tiny()
  _check_train_loss(config, model, batch, grads=True)


def _check_train_loss(config, model, batch, grads=False):
  """Masked training loss with the feature loss: finite and the parts add up; with grads=True
  also finite gradients that reach the mask module."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss_of(params, batch, rng):
    return losses.loss_fn(nnx.merge(graphdef, params, rest), batch, rng, config, train=True)

  if grads:
    (loss, metrics), g = jax.jit(jax.value_and_grad(loss_of, has_aux=True))(
        params, batch, jax.random.key(1))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(g))
    mask_grads = nnx.to_flat_state(g["mask_module"])
    assert any(float(jnp.abs(x.get_value()).max()) > 0 for _, x in mask_grads)
  else:
    loss, metrics = jax.jit(loss_of)(params, batch, jax.random.key(1))
  assert np.isfinite(float(loss)) and float(loss) > 0
  assert float(metrics["feature_loss"]) > 0 and "mask_time_fraction" in metrics
  np.testing.assert_allclose(float(loss), float(metrics["diffusion_loss"]) +
                             0.5 * float(metrics["feature_loss"]), rtol=1e-5)


def _check_sampler_and_rollout(config, model, batch):
  """Guided Euler sampling with a reference frame, then a two-clip rollout reusing the compile."""
  m = config.model
  inputs = conditioning.model_inputs(batch, config)
  ref = jnp.asarray(batch["latents"][:, :1])
  shape = (B, m.num_frames, m.num_views, m.latent_height, m.latent_width, m.in_channels)
  out = samplers.euler_sample(model, None, inputs, config, steps=2, cfg_scale=3.0,
                              ref_latents=ref, n_ref=1, rng=jax.random.key(2), shape=shape)
  assert out.shape == shape and bool(jnp.all(jnp.isfinite(out)))
  np.testing.assert_array_equal(out[:, :1], ref)
  # two clips of 4 frames with 1 reference frame: 7 frames; same shapes -> same compiled sampler
  total = rollout.horizon_frames(2, m.num_frames, 1)
  long = inputs.replace(**{name: jnp.concatenate([getattr(inputs, name),
                                                   getattr(inputs, name)[:, 1:]], 1)
                           for name in conditioning.FRAME_FIELDS
                           if getattr(inputs, name) is not None})
  video = rollout.rollout(model, long, ref, config, num_clips=2, clip_frames=m.num_frames,
                          rng=jax.random.key(3), steps=2, cfg_scale=3.0, verbose=False)
  assert video.shape == (B, total) + shape[2:] and bool(jnp.all(jnp.isfinite(video)))
  np.testing.assert_array_equal(video[:, :1], ref)
