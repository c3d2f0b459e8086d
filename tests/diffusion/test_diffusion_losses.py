"""loss_fn: per-sample tau, clean reference frames excluded, velocity target, mask path, feature loss."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wm_jax.diffusion import losses
from wm_jax.models import masking

B, T, V, H, W, C = 4, 4, 1, 4, 8, 2


def _batch(seed=0):
  r = np.random.default_rng(seed)
  return dict(latents=r.normal(size=(B, T, V, H, W, C)).astype(np.float32),
              text_embeddings=r.normal(size=(B, T, V, 3, 4)).astype(np.float32),
              pooled_text=r.normal(size=(B, T, V, 5)).astype(np.float32))


RNG = jax.random.key(3)


def _loss(model, config, simple_inputs, train=True, batch=None, rng=RNG):
  batch = _batch() if batch is None else batch
  f = functools.partial(losses.loss_fn, model, config=config, train=train, inputs_fn=simple_inputs)
  return f(batch, rng)


def test_reference_frames_clean_tau_zero_and_velocity_target(field_model, make_config,
                                                            simple_inputs):
  seen = []
  batch = _batch()
  z0 = jnp.asarray(batch["latents"])

  def field(z, tau, inputs):
    seen.append(dict(inputs, z=z, tau=tau))
    return inputs["noise"] - z0  # the exact velocity, computable because the mask path gets eps

  config = make_config(max_reference_frames=3)
  loss, metrics = _loss(field_model(field), config, simple_inputs, batch=batch)
  assert float(loss) == 0.0 and float(metrics["diffusion_loss"]) == 0.0
  (rec,) = seen
  tau, z, eps = np.asarray(rec["tau"]), np.asarray(rec["z"]), np.asarray(rec["noise"])
  assert tau.shape == (B, T, V) and eps.shape == z0.shape
  n_ref = (tau == 0).sum(1)[:, 0]
  assert n_ref.max() > 0 and n_ref.max() <= 3, n_ref
  for b in range(B):
    k = n_ref[b]
    np.testing.assert_array_equal(tau[b, :k], 0)
    assert np.all(tau[b, k:] == tau[b, k, 0]), "one tau per sample for the frames to predict"
    np.testing.assert_array_equal(z[b, :k], z0[b, :k])  # reference frames fed clean
    t6 = tau[b, k:, :, None, None, None]
    np.testing.assert_allclose(z[b, k:], (1 - t6) * z0[b, k:] + t6 * eps[b, k:], atol=1e-6)
  np.testing.assert_allclose(metrics["reference_frames"], n_ref.mean())
  # the mask path: a RowMask on the token grid (patch 2 -> 2 x 4 tokens, K = 3)
  mask = rec["row_mask"]
  assert isinstance(mask, masking.RowMask) and mask.keep_idx.shape == (B, T, V, 2, 3)


def test_loss_excludes_reference_frames(field_model, make_config, simple_inputs):
  config = make_config(max_reference_frames=3)

  def model(ref_bias, pred_bias):
    return field_model(lambda z, tau, _: 0.5 * z + jnp.where(
        (tau == 0)[..., None, None, None], ref_bias, pred_bias))

  base, metrics = _loss(model(0.0, 0.0), config, simple_inputs, train=False)
  assert float(metrics["reference_frames"]) > 0
  moved_ref, _ = _loss(model(100.0, 0.0), config, simple_inputs, train=False)
  moved_pred, _ = _loss(model(0.0, 1.0), config, simple_inputs, train=False)
  assert float(moved_ref) == float(base)
  assert float(moved_pred) != float(base)
  none_ref = make_config(max_reference_frames=0)
  _, m0 = _loss(model(0.0, 0.0), none_ref, simple_inputs, train=False)
  assert float(m0["reference_frames"]) == 0


def test_reference_count_stays_within_min_and_max():
  counts = np.asarray(losses.reference_count(jax.random.key(0), 4096, 4, 3, 2))
  assert set(counts.tolist()) == {2, 3}  # both ends drawn, nothing outside
  counts = np.asarray(losses.reference_count(jax.random.key(0), 4096, 4, 9, 5))
  assert set(counts.tolist()) == {3}     # both capped at T - 1
  with pytest.raises(ValueError, match="min_reference_frames=3 exceeds max_reference_frames=2"):
    losses.reference_count(jax.random.key(0), 4, 4, 2, 3)


def test_min_reference_frames_reaches_the_loss(field_model, make_config, simple_inputs):
  model = field_model(lambda z, tau, _: jnp.zeros_like(z))
  config = make_config(max_reference_frames=2)
  config.diffusion.min_reference_frames = 2
  for seed in range(4):
    _, metrics = _loss(model, config, simple_inputs, rng=jax.random.key(seed))
    assert float(metrics["reference_frames"]) == 2.0


def test_mask_only_in_training_and_when_enabled(field_model, make_config, simple_inputs):
  seen = []
  model = field_model(lambda z, tau, inputs: seen.append(inputs) or jnp.zeros_like(z))
  config = make_config()
  _loss(model, config, simple_inputs, train=False)
  config.mask.enabled = False
  _loss(model, config, simple_inputs, train=True)
  assert all(s["row_mask"] is None and s["noise"] is None for s in seen)
  config.mask.enabled = True
  _, metrics = _loss(model, config, simple_inputs, train=True)
  assert seen[-1]["row_mask"] is not None and "mask_time_fraction" in metrics


def _feature_field(calls, with_target=False):
  def field(z, tau, inputs):
    calls.append(inputs["row_mask"] is not None)
    v = jnp.zeros_like(z)
    if not inputs["return_features"]:
      return v
    mask = inputs["row_mask"]
    if mask is None:  # unmasked forward: the target features
      return v, {"reconstructed": jnp.ones((B, T, V, 2, 4, 3))}
    dropped = masking.dropped_positions(mask)[..., None]
    recon = 1.0 + jnp.where(dropped, 2.0, 100.0) * jnp.ones((B, T, V, 2, 4, 3))
    feats = {"reconstructed": recon}
    if with_target:
      feats["encoder_target"] = jnp.zeros_like(recon)
    return v, feats
  return field


def test_feature_loss_at_masked_positions_only(field_model, make_config, simple_inputs):
  calls = []
  config = make_config(feature_loss_weight=0.0)
  loss0, m0 = _loss(field_model(_feature_field(calls)), config, simple_inputs)
  assert calls == [True] and "feature_loss" not in m0  # lambda = 0: no second forward
  calls.clear()
  config = make_config(feature_loss_weight=0.5)
  loss, metrics = _loss(field_model(_feature_field(calls)), config, simple_inputs)
  assert calls == [True, False]
  assert float(metrics["feature_loss"]) == pytest.approx(4.0)  # (3 - 1)^2 at dropped positions
  assert float(loss) == pytest.approx(float(loss0) + 0.5 * 4.0, rel=1e-6)
  calls.clear()
  _, metrics = _loss(field_model(_feature_field(calls, with_target=True)), config, simple_inputs)
  assert calls == [True] and float(metrics["feature_loss"]) == pytest.approx(9.0)


def test_x0_target_weights_velocity_error_by_tau_squared(field_model, make_config, simple_inputs):
  z0 = jnp.asarray(_batch()["latents"])
  seen = []
  field = lambda z, tau, inputs: seen.append(tau) or (inputs["noise"] - z0 + 1.0)
  loss_v, _ = _loss(field_model(field), make_config(), simple_inputs)
  loss_x, _ = _loss(field_model(field), make_config(loss_target="x0"), simple_inputs)
  assert float(loss_v) == pytest.approx(1.0)
  tau = np.asarray(seen[-1])
  assert float(loss_x) == pytest.approx(float(np.mean(np.square(tau[tau > 0]))), rel=1e-5)
  with pytest.raises(ValueError, match="loss_target"):
    _loss(field_model(field), make_config(loss_target="eps"), simple_inputs)


def test_jit_and_grad_through_loss(field_model, make_config, simple_inputs):
  config = make_config()

  def loss_of(scale):
    model = field_model(lambda z, tau, _: scale * z)
    return losses.loss_fn(model, _batch(), RNG, config, inputs_fn=simple_inputs)[0]

  g = jax.jit(jax.grad(loss_of))(jnp.float32(0.3))
  assert np.isfinite(float(g)) and float(g) != 0.0
