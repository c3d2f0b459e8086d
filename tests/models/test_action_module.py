"""MaskGWM's action module: zero-initialised (a model with it equals one without), trainable, exact
group dropout and action-free mode, per-sample dropout at the configured rates, the batch keys it
needs, and scanned layers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wm_jax import defaults
from wm_jax.convert import checkpoints, param_map
from wm_jax.diffusion import guidance, losses
from wm_jax.models import action_module, conditioning, layers, scan
from wm_jax.models.conditioning import Conditioning
from wm_jax.models.ctsd_dit import CTSDDiT

B, K = 2, 3


def _config(actions=True, scan_layers=False):
  """3 joint blocks, temporal blocks after 0 and 1 (identical layers: a scanned run of 2)."""
  c = defaults.config()
  c.model.update(num_layers=3, dual_attention_layers=(), temporal_block_layers=(0, 1),
                 crossview_block_layers=(), num_heads=2, head_dim=8, joint_attention_dim=8,
                 pooled_projection_dim=8, text_tokens=4, latent_height=4, latent_width=8,
                 num_frames=3, camera_scalars=0, scan_layers=scan_layers)
  c.model.layout_adapter = None
  c.mask.enabled = False
  if actions:
    c.model.action_module = defaults.action_module()
    c.model.action_module.update(trajectory_points=K, fourier_features=8)
  return c


def _model(cfg, seed=0):
  return CTSDDiT(cfg.model, cfg.mask, rngs=nnx.Rngs(seed))


def _batch(cfg, seed=0):
  m = cfg.model
  rng = np.random.default_rng(seed)
  t, v = m.num_frames, m.num_views
  return {
      "latents": rng.normal(size=(B, t, v, m.latent_height, m.latent_width, 4)).astype(np.float32),
      "text_embeddings": rng.normal(size=(B, t, v, m.text_tokens, m.joint_attention_dim)
                                    ).astype(np.float32),
      "actions": np.concatenate([rng.uniform(0, 20, (B, t, 1)), rng.uniform(-0.3, 0.3, (B, t, 3))],
                                -1).astype(np.float32),
      "trajectory": rng.normal(scale=10, size=(B, t, K, 2)).astype(np.float32),
      "goal_point": rng.uniform(0, 1, (B, t, 2)).astype(np.float32),
      "command": rng.integers(0, 4, (B, t)).astype(np.int32),
  }


def _timesteps(cfg):
  m = cfg.model
  return np.random.default_rng(9).uniform(size=(B, m.num_frames, m.num_views)).astype(np.float32)


def _output_projections(model):
  return [block.action_attn.to_out[0] for block in model.temporal_transformer_blocks]


def _perturb_outputs(model, seed=3):
  """The zero-initialised output projections set to random values (a trained module)."""
  rng = np.random.default_rng(seed)
  for lin in _output_projections(model):
    for p in (lin.kernel, lin.bias):
      p.set_value(jnp.asarray(0.3 * rng.normal(size=p.get_value().shape), jnp.float32))


def _flat(model):
  return param_map.flat_state(param_map.checkpoint_state(model))


def _all_kept(cond, cfg):
  """cond with action_keep all True: one structure for every forward below (one compile)."""
  return cond.replace(action_keep=np.ones((B, len(cfg.model.action_module.groups)), bool))


@pytest.fixture(scope="module")
def models():
  """(config, the model at init, the same config without the action module at init)."""
  cfg = _config()
  return cfg, _model(cfg), _model(_config(False))


@pytest.fixture(scope="module")
def trained(models):
  """A copy of the model whose output projections are random (the module changes the output)."""
  cfg, model, _ = models
  model = nnx.clone(model)
  _perturb_outputs(model)
  return model


@pytest.fixture(scope="module")
def forward():
  return nnx.jit(lambda model, lat, tau, cond: model(lat, tau, cond))


def test_at_init_the_output_is_that_of_the_model_without_the_module(models, forward):
  cfg, model, plain = models
  ours, theirs = _flat(model), _flat(plain)
  # the shared parameters have the same initial values; the rest is the action module
  for path, value in theirs.items():
    np.testing.assert_array_equal(np.asarray(ours[path]), np.asarray(value), err_msg=str(path))
  keys = param_map.action_keys(param_map.torch_shapes(model))
  assert keys == sorted(set(param_map.torch_shapes(model)) - set(param_map.torch_shapes(plain)))
  for key in ("action_embedding.linear_1.weight", "action_embedding.linear_2.weight",
              "action_embedding.command_embedding.weight",
              "temporal_transformer_blocks.1.action_attn.to_k.weight",
              "temporal_transformer_blocks.0.action_attn.to_out.0.weight"):
    assert key in keys
  batch = _batch(cfg)
  cond = conditioning.model_inputs(batch, cfg)
  assert cond.actions is not None
  y = forward(model, batch["latents"], _timesteps(cfg), _all_kept(cond, cfg))
  y0 = forward(plain, batch["latents"], _timesteps(cfg), conditioning.model_inputs(
      batch, _config(False)))
  np.testing.assert_array_equal(np.asarray(y), np.asarray(y0))


def test_a_scanned_model_keeps_the_initial_values_of_the_model_without_the_module():
  with_module = _model(_config(scan_layers=True))
  plain = _model(_config(False, scan_layers=True))
  ours, theirs = _flat(with_module), _flat(plain)
  for path, value in theirs.items():
    np.testing.assert_array_equal(np.asarray(ours[path]), np.asarray(value), err_msg=str(path))
  for path, value in ours.items():
    if "to_out" in path and "action_attn" in path:
      assert not np.any(np.asarray(value)), path


def test_gradients_reach_the_module_and_then_actions_change_the_output(models, forward):
  cfg, model, _ = models
  model = nnx.clone(model)
  batch = _batch(cfg)
  tau = _timesteps(cfg)
  cond = _all_kept(conditioning.model_inputs(batch, cfg), cfg)
  target = np.random.default_rng(4).normal(size=batch["latents"].shape).astype(np.float32)
  loss = lambda model, cond: jnp.mean(jnp.square(
      model(batch["latents"], tau, cond) - target))
  module = nnx.Any(nnx.PathContains("action_attn"), nnx.PathContains("action_embedding"))
  grad = nnx.jit(nnx.grad(loss, argnums=nnx.DiffState(0, nnx.All(nnx.Param, module))))

  def action_grads(model):
    flat = param_map.flat_state(grad(model, cond))
    return {param_map.torch_key(p): np.asarray(g) for p, g in flat.items()
            if param_map.action_keys([param_map.torch_key(p)])}

  g = action_grads(model)
  assert np.abs(g["temporal_transformer_blocks.0.action_attn.to_out.0.weight"]).max() > 0
  # behind the zero output projections nothing else of the module moves the loss yet
  assert not np.any(g["action_embedding.linear_1.weight"])
  other = dict(batch, trajectory=batch["trajectory"] + 5.0, command=(batch["command"] + 1) % 4)
  other_cond = _all_kept(conditioning.model_inputs(other, cfg), cfg)
  same = lambda: np.array_equal(np.asarray(forward(model, batch["latents"], tau, cond)),
                                np.asarray(forward(model, batch["latents"], tau, other_cond)))
  assert same()
  # one SGD step on the output projections
  for j, lin in enumerate(_output_projections(model)):
    key = f"temporal_transformer_blocks.{j}.action_attn.to_out.0."
    lin.kernel.set_value(lin.kernel.get_value() - 10.0 * g[key + "weight"].T)
    lin.bias.set_value(lin.bias.get_value() - 10.0 * g[key + "bias"])
  assert not same()
  g = action_grads(model)
  for key in ("action_embedding.linear_1.weight", "action_embedding.command_embedding.weight",
              "temporal_transformer_blocks.1.action_attn.to_q.weight"):
    assert np.abs(g[key]).max() > 0, key


def test_dropped_groups_contribute_exactly_nothing(models, trained, forward):
  cfg = models[0]
  batch = _batch(cfg)
  lat, tau = batch["latents"], _timesteps(cfg)
  ac = cfg.model.action_module
  groups, sizes = action_module.ordered_groups(ac), action_module.group_sizes(ac)
  other = dict(batch, actions=batch["actions"][:, ::-1] + 1.0, trajectory=-batch["trajectory"],
               goal_point=1 - batch["goal_point"], command=(batch["command"] + 2) % 4)
  a, a2 = (_all_kept(conditioning.model_inputs(x, cfg), cfg) for x in (batch, other))
  run = lambda cond: np.asarray(forward(trained, lat, tau, cond))
  action_free = conditioning.model_inputs(batch, cfg, drop_actions=True)
  assert action_free.actions is None
  free = run(action_free)
  none = np.zeros((B, len(groups)), bool)
  # All groups dropped: the action keys and values are exactly zero, so the actions' values do
  # not matter (one program: bit for bit) and the output is the action-free one (another
  # program, which XLA may fuse differently: equal to float32 rounding).
  kv = trained.action_embedding(a.actions, keep=jnp.asarray(none))
  np.testing.assert_array_equal(np.asarray(kv), 0.0)
  all_dropped = run(a.replace(action_keep=none))
  np.testing.assert_array_equal(run(a2.replace(action_keep=none)), all_dropped)
  np.testing.assert_allclose(all_dropped, free, rtol=1e-6, atol=1e-6)
  full = run(a)
  assert not np.array_equal(full, free)
  # one group dropped: its values do not matter, the others' do
  for g, name in enumerate(groups):
    keep = np.ones((B, len(groups)), bool)
    keep[:, g] = False
    start = sum(sizes[n] for n in groups[:g])
    mixed = np.array(a.actions)
    mixed[..., start:start + sizes[name]] = np.asarray(a2.actions)[..., start:start + sizes[name]]
    dropped = run(a.replace(action_keep=keep))
    np.testing.assert_array_equal(dropped, run(a.replace(actions=jnp.asarray(mixed),
                                                         action_keep=keep)), err_msg=name)
    assert not np.array_equal(dropped, full), name
  # per sample: dropping sample 1's groups leaves sample 0 as it was
  keep = np.ones((B, len(groups)), bool)
  keep[1] = False
  y = run(a.replace(action_keep=keep))
  np.testing.assert_array_equal(y[0], full[0])
  np.testing.assert_array_equal(y[1], all_dropped[1])


def test_cross_attention_matches_a_reference_and_stays_in_its_frame():
  rng = np.random.default_rng(0)
  attn = action_module.ActionCrossAttention(16, 8, 2, 8, rngs=nnx.Rngs(0),
                                            prec=layers.Precision(), qk_norm=None)
  attn.to_out[0].kernel.set_value(jnp.asarray(rng.normal(size=(16, 16)), jnp.float32))
  x = rng.normal(size=(B, 3, 2, 2, 4, 16)).astype(np.float32)
  ctx = rng.normal(size=(B, 3, 2, 5, 8)).astype(np.float32)
  kv = rng.normal(size=(B, 3, 32)).astype(np.float32)
  call = jax.jit(lambda x, ctx, kv: attn(x, ctx, kv))
  out = np.asarray(call(x, ctx, kv))
  # numpy reference for (b, t, v) = (1, 2, 0)
  ln = np.asarray(attn.norm(jnp.asarray(x[1, 2, 0].reshape(8, 16))))
  w = lambda lin: np.asarray(lin.kernel.get_value())
  q = (ln @ w(attn.to_q)).reshape(8, 2, 8)
  k = (ctx[1, 2, 0] @ w(attn.to_k) + kv[1, 2, :16]).reshape(5, 2, 8)
  v = (ctx[1, 2, 0] @ w(attn.to_v) + kv[1, 2, 16:]).reshape(5, 2, 8)
  logits = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(8)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  ref = np.einsum("hqk,khd->qhd", p, v).reshape(8, 16) @ w(attn.to_out[0])
  np.testing.assert_allclose(out[1, 2, 0].reshape(8, 16), ref, rtol=1e-4, atol=1e-5)
  # another frame's context or actions do not reach frame 2
  ctx2, kv2 = ctx.copy(), kv.copy()
  ctx2[:, 1] += 1.0
  kv2[:, 1] += 1.0
  out2 = np.asarray(call(x, ctx2, kv2))
  np.testing.assert_array_equal(out2[:, 2], out[:, 2])
  assert not np.allclose(out2[:, 1], out[:, 1])


def test_scanned_layers_compute_what_the_unscanned_ones_do(models, trained, forward):
  cfg = models[0]
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: _model(_config(scan_layers=True))))
  flat = _flat(trained)
  scanned = nnx.merge(graphdef, checkpoints.state_from_flat(flat, abstract))
  assert [tuple(run) for run in scanned.runs] == [(0, 1, 2), (2, 1, 1)]
  stacked = _flat(scanned)
  assert ("layer_runs", 0, 0, "temporal", "action_attn", "to_out", 0, "kernel") in stacked
  assert set(scan.unstack_flat(stacked)) == set(flat)
  batch = _batch(cfg)
  cond = _all_kept(conditioning.model_inputs(batch, cfg), cfg)
  y0 = forward(trained, batch["latents"], _timesteps(cfg), cond)
  y1 = forward(scanned, batch["latents"], _timesteps(cfg), cond)
  np.testing.assert_allclose(np.asarray(y1), np.asarray(y0), rtol=1e-5, atol=1e-5)
  free = forward(trained, batch["latents"], _timesteps(cfg), cond.replace(actions=None,
                                                                           action_keep=None))
  assert not np.allclose(np.asarray(y0), np.asarray(free))


def test_dropout_is_per_sample_and_group_at_the_configured_rates():
  ac = defaults.action_module()
  ac.dropout.update(speed=0.1, steering=0.5, trajectory=0.0, goal_point=0.9, command=0.3)
  n = 20000
  keep = np.asarray(action_module.sample_keep(jax.random.key(0), n, ac))
  assert keep.shape == (n, 5) and keep.dtype == bool
  rates = np.array([0.1, 0.5, 0.0, 0.9, 0.3])
  sigma = np.sqrt(rates * (1 - rates) / n)
  np.testing.assert_array_less(np.abs((~keep).mean(0) - rates), 4 * sigma + 1e-9)
  # independent groups: P(speed and steering dropped) = 0.1 * 0.5
  both = np.mean(~keep[:, 0] & ~keep[:, 1])
  assert abs(both - 0.05) < 4 * np.sqrt(0.05 * 0.95 / n)


def test_the_loss_drops_groups_in_training_only():
  cfg = _config()
  cfg.model.action_module.dropout.update(speed=0.0, steering=1.0, trajectory=0.5,
                                         goal_point=0.0, command=0.5)
  cfg.diffusion.uncond_prob = 0.0
  seen = []

  def model(z, tau, cond, row_mask=None, noise=None):
    seen.append(cond)
    return jnp.zeros_like(z)

  batch = _batch(cfg)
  batch = {k: np.concatenate([v] * 200) for k, v in batch.items()}  # 400 samples
  _, metrics = losses.loss_fn(model, batch, jax.random.key(0), cfg, train=True)
  keep = np.asarray(seen[-1].action_keep)
  assert keep.shape == (400, 5)
  assert keep[:, 0].all() and not keep[:, 1].any() and keep[:, 3].all()
  for g in (2, 4):
    assert 0.4 < keep[:, g].mean() < 0.6
  assert not np.array_equal(keep[:, 2], keep[:, 4])
  np.testing.assert_allclose(float(metrics["action_groups_dropped"]), 1 - keep.mean(), rtol=1e-6)
  losses.loss_fn(model, batch, jax.random.key(0), cfg, train=False)
  assert np.asarray(seen[-1].action_keep).all() and seen[-1].actions is not None


def test_guidance_unconditional_branch_and_condition_dropout_clear_the_actions():
  cfg = _config()
  cond = conditioning.model_inputs(_batch(cfg), cfg)
  assert np.asarray(cond.action_keep).all() and cond.action_keep.shape == (2, 5)
  assert not np.asarray(guidance.uncond_inputs(cond).action_keep).any()
  both = guidance.batch_with_uncond(cond)
  np.testing.assert_array_equal(np.asarray(both.action_keep)[:, 0], [True, True, False, False])
  dropped = guidance.drop_conditions(cond, jnp.array([True, False]))
  np.testing.assert_array_equal(np.asarray(dropped.action_keep)[:, 0], [False, True])


def test_model_inputs_packs_the_groups_and_names_a_missing_key():
  cfg = _config()
  batch = _batch(cfg)
  actions = np.asarray(conditioning.model_inputs(batch, cfg).actions)
  assert actions.shape == (B, 3, action_module.input_width(cfg.model.action_module)) == (B, 3, 11)
  want = np.concatenate([batch["actions"][..., :2], batch["trajectory"].reshape(B, 3, 2 * K),
                         batch["goal_point"], batch["command"][..., None]], -1)
  np.testing.assert_array_equal(actions, want)
  assert "actions" in conditioning.FRAME_FIELDS
  for key in ("trajectory", "goal_point", "command", "actions"):
    partial = {k: v for k, v in batch.items() if k != key}
    with pytest.raises(ValueError, match=f"batch key '{key}'"):
      conditioning.model_inputs(partial, cfg)
    assert conditioning.model_inputs(partial, cfg, drop_actions=True).actions is None
  # a subset of groups needs only its keys
  cfg.model.action_module.groups = ("speed", "command")
  small = {k: v for k, v in batch.items() if k not in ("trajectory", "goal_point")}
  np.testing.assert_array_equal(
      np.asarray(conditioning.model_inputs(small, cfg).actions),
      np.concatenate([batch["actions"][..., :1], batch["command"][..., None]], -1))
  # a model without the module sees no actions
  assert conditioning.model_inputs(batch, _config(False)).actions is None


def test_bad_action_inputs_and_configs_are_refused_by_name(models):
  cfg, model, plain = models
  batch = _batch(cfg)
  with pytest.raises(ValueError, match="trajectory_points = 3"):
    conditioning.model_inputs(dict(batch, trajectory=np.zeros((B, 3, 4, 2), np.float32)), cfg)
  with pytest.raises(ValueError, match=r"command.*\[7\]"):
    conditioning.model_inputs(dict(batch, command=np.full((B, 3), 7, np.int32)), cfg)
  with pytest.raises(ValueError, match="actions given, but the model config has action_module"):
    plain(batch["latents"], _timesteps(cfg), conditioning.model_inputs(batch, cfg))
  with pytest.raises(ValueError, match=r"actions must have shape \(2, 3, 11\)"):
    model(batch["latents"], _timesteps(cfg), Conditioning(actions=np.zeros((B, 3, 5))))
  for change, match in ((dict(groups=("speed", "yaw")), "groups"),
                        (dict(fourier_features=7), "fourier_features=7"),
                        (dict(trajectory_points=0), "trajectory_points=0")):
    bad = _config()
    bad.model.action_module.update(**change)
    with pytest.raises(ValueError, match=match):
      _model(bad)
  bad = _config()
  bad.model.action_module.dropout.speed = 1.5
  with pytest.raises(ValueError, match=r"dropout\.speed=1\.5"):
    _model(bad)


def test_fourier_features_and_a_saved_config_round_trip():
  f = np.asarray(action_module.fourier_features(np.array([10.0]), 4, 40.0))
  np.testing.assert_allclose(f[0], [np.sin(np.pi / 4), np.sin(np.pi / 2), np.cos(np.pi / 4),
                                    np.cos(np.pi / 2)], atol=1e-6)
  cfg = _config()
  back = defaults.from_dict(cfg.to_dict())
  assert back.model.action_module.to_dict() == cfg.model.action_module.to_dict()
  assert defaults.config().model.action_module is None


def test_a_model_with_the_module_has_a_hashable_graphdef():
  """The samplers pass the graphdef to jit as a static argument: it must hash."""
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: _model(_config())))
  hash(graphdef)
