"""Scanned layers (config.model.scan_layers): the run split, the path mapping to canonical names,
and a scanned model computing exactly what the unscanned one computes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import maskgwm_long, maskgwm_mview
from wm_jax import defaults
from wm_jax.convert import checkpoints, param_map
from wm_jax.models import masking, scan
from wm_jax.models.conditioning import VAE_FACTOR, Conditioning
from wm_jax.models.ctsd_dit import CTSDDiT, Layer
from wm_jax.train import flops


def _check_cover(runs, signatures, boundaries=()):
  covered = [i for run in runs for i in run.layers]
  assert covered == list(range(len(signatures)))
  for run in runs:
    for r in range(run.repeats):
      for k in range(run.period):
        assert signatures[run.layer(r, k)] == signatures[run.start + k]
    assert not any(run.start < c < run.layers.stop for c in boundaries), (run, boundaries)


@pytest.mark.parametrize("signatures, boundaries, want", [
    ("AABAAB", (), [(0, 3, 2)]),
    ("AAAA", (), [(0, 1, 4)]),
    ("AAAA", (2,), [(0, 1, 2), (2, 1, 2)]),
    ("ABCD", (), [(0, 4, 1)]),
    ("XABABABY", (), [(0, 1, 1), (1, 2, 3), (7, 1, 1)]),
])
def test_layer_runs_trace_fewest_layers(signatures, boundaries, want):
  runs = scan.layer_runs(list(signatures), boundaries)
  assert [tuple(r) for r in runs] == want
  _check_cover(runs, list(signatures), boundaries)


def test_long_and_mview_trace_about_half_their_layers():
  for module, traced in ((maskgwm_long, 13), (maskgwm_mview, 15)):
    c = module.get_config()
    assert c.model.scan_layers
    model = nnx.eval_shape(lambda: CTSDDiT(c.model, c.mask, rngs=nnx.Rngs(0)))
    assert sum(run.period for run in model.runs) == traced
    first_decoder = c.model.num_layers - c.mask.decode_layers
    assert first_decoder in [run.start for run in model.runs]
    # the same keys and shapes as the unscanned tree (OpenDWM's names)
    c.model.scan_layers = False
    plain = nnx.eval_shape(lambda: CTSDDiT(c.model, c.mask, rngs=nnx.Rngs(0)))
    assert param_map.torch_shapes(model) == param_map.torch_shapes(plain)


def _config():
  """tiny with 6 layers, [T, X] x 2 in layers 1-4: the layout residual of layer 1 enters a stacked
  run (zeros for its other layers); the mask decoder is the last block."""
  cfg = defaults.config()
  cfg.mask.decode_layers = 1
  cfg.model.update(num_layers=6, dual_attention_layers=[0], temporal_block_layers=[1, 3, 5],
                   crossview_block_layers=[2, 4])
  assert cfg.mask.decode_layers == 1 and len(cfg.model.layout_adapter.channels) == 2
  return cfg


def _inputs(cfg, batch=2):
  m = cfg.model
  rng = np.random.default_rng(0)
  lead = (batch, m.num_frames, m.num_views)
  f32 = lambda *shape: rng.normal(size=shape).astype(np.float32)
  latents = f32(*lead, m.latent_height, m.latent_width, m.in_channels)
  timesteps = rng.uniform(size=lead).astype(np.float32)
  cond = Conditioning(
      context=f32(*lead, m.text_tokens, m.joint_attention_dim),
      pooled=f32(*lead, m.pooled_projection_dim),
      camera=f32(*lead, m.camera_scalars),
      layout=rng.uniform(size=lead + (m.latent_height * VAE_FACTOR, m.latent_width * VAE_FACTOR,
                                      6)).astype(np.float32),
      view_adjacency=np.array([[[True, False], [True, True]]] * batch),
      disable_temporal=np.arange(batch) % 2 == 1)
  return latents, timesteps, cond


def _perturb(model):
  """Every parameter gets a random value (zero inits would hide wrong wiring)."""
  rng = np.random.default_rng(5)
  for _, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    value = np.asarray(var.get_value())
    var.set_value(jnp.asarray(value + 0.05 * rng.normal(size=value.shape).astype(value.dtype)))


@pytest.fixture(scope="module")
def pair():
  cfg = _config()
  plain = nnx.jit(lambda: CTSDDiT(cfg.model, cfg.mask, rngs=nnx.Rngs(0)))()
  _perturb(plain)
  scanned_cfg = cfg.model.copy_and_resolve_references()
  scanned_cfg.update(scan_layers=True, remat_policy="full")
  scanned = nnx.jit(lambda: CTSDDiT(scanned_cfg, cfg.mask, rngs=nnx.Rngs(1)))()
  nnx.update(scanned, checkpoints.state_from_flat(
      param_map.flat_state(param_map.checkpoint_state(plain)), scanned))
  return cfg, plain, scanned


def test_pair_has_stacked_runs(pair):
  _, _, scanned = pair
  assert [tuple(run) for run in scanned.runs] == [(0, 1, 1), (1, 2, 2), (5, 1, 1)]
  assert not hasattr(scanned, "transformer_blocks")
  # each run position holds one stacked Layer with the parts its layers have
  layer = scanned.layer_runs[1][0]
  assert isinstance(layer, Layer) and layer.temporal is not None and layer.crossview is None
  assert layer.joint.attn.to_q.kernel.get_value().shape[0] == 2
  with pytest.raises(ValueError, match="unscanned"):
    scanned.layer(0)


def test_scanned_forward_and_gradients_equal_unscanned(pair):
  cfg, plain, scanned = pair
  latents, timesteps, cond = _inputs(cfg)
  m = cfg.model
  shape = (2, m.num_frames, m.num_views, m.latent_height // m.patch_size,
           m.latent_width // m.patch_size)
  row_mask = masking.sample_row_mask(jax.random.key(1), *shape, cfg.mask.ratio, p_time=0.5)
  noise = np.random.default_rng(1).normal(size=latents.shape).astype(np.float32)

  def loss(model):
    y, feats = model(latents, timesteps, cond, row_mask=row_mask, noise=noise,
                     return_features=True)
    return jnp.mean(jnp.square(y)) + jnp.mean(jnp.square(feats["reconstructed"])), (y, feats)

  # the masked training path (encoder at the kept width, mask module, decoder) goes through every
  # kind of run; inference differs only by skipping the gathers and the mask module
  grad_fn = nnx.jit(nnx.value_and_grad(loss, has_aux=True))
  (l0, (y0, f0)), g0 = grad_fn(plain)
  (l1, (y1, f1)), g1 = grad_fn(scanned)
  np.testing.assert_allclose(np.asarray(y1), np.asarray(y0), rtol=1e-5, atol=1e-5)
  for name in ("encoder", "reconstructed", "final"):
    np.testing.assert_allclose(np.asarray(f1[name]), np.asarray(f0[name]), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(float(l1), float(l0), rtol=1e-6)
  grads0 = param_map.flat_state(g0)
  grads1 = scan.unstack_flat(param_map.flat_state(g1))
  assert set(grads1) == set(grads0)
  for path, value in grads0.items():
    np.testing.assert_allclose(np.asarray(grads1[path]), np.asarray(value), rtol=1e-4,
                               atol=1e-6, err_msg=".".join(map(str, path)))


def test_analytic_flops_count_through_the_scan(pair):
  cfg, plain, scanned = pair
  inputs = _inputs(cfg, batch=1)
  fwd = lambda model, inputs: model(*inputs)
  counts = [flops.forward_flops(nnx.jit(fwd), model, inputs) for model in (plain, scanned)]
  assert counts[0] > 0
  assert counts[1] == pytest.approx(counts[0], rel=1e-6)


def test_conversion_of_a_scanned_model_uses_canonical_names(pair):
  _, plain, scanned = pair
  sd_plain = param_map.to_torch_state_dict(plain)
  sd_scanned = param_map.to_torch_state_dict(scanned)
  assert sorted(sd_scanned) == sorted(sd_plain)
  for key, value in sd_plain.items():
    np.testing.assert_array_equal(sd_scanned[key], value, err_msg=key)
  # and back: a PyTorch state_dict loads into the scanned tree, stacked
  state = param_map.from_torch_state_dict(sd_plain, nnx.eval_shape(lambda: scanned))
  back = param_map.flat_state(state)
  for path, value in param_map.flat_state(param_map.checkpoint_state(scanned)).items():
    np.testing.assert_array_equal(np.asarray(back[path]), np.asarray(value))


def test_stack_flat_refuses_a_partly_given_stack(pair):
  _, plain, scanned = pair
  canonical = param_map.flat_state(param_map.checkpoint_state(plain))
  like = param_map.flat_state(param_map.checkpoint_state(scanned))
  stacked = next(p for p, parts in scan.canonical_paths(like).items() if len(parts) > 1)
  dropped = scan.canonical_paths(like)[stacked][1]
  partial = {p: v for p, v in canonical.items() if p != dropped}
  with pytest.raises(ValueError, match=r"1 of the 2 layers stacked in .*"
                     + ".".join(map(str, dropped)).replace(".", r"\.") + " is not"):
    scan.stack_flat(partial, like)
  # a stack none of whose parts is given is left to the caller
  missing_all = {p: v for p, v in canonical.items() if p not in scan.canonical_paths(like)[stacked]}
  assert stacked not in scan.stack_flat(missing_all, like)
