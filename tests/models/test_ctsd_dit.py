"""CTSDDiT acceptance tests: OpenDWM parameter tree, inference == plain backbone, masked training
step under jit, gradients everywhere, tiny overfit, bad inputs.

Compiles are the cost on CPU: the tiny model is built once (jit) and each jitted function is
compiled once per module.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs import maskgwm_long, maskgwm_mview
from wm_jax import defaults
from wm_jax.convert import param_map
from wm_jax.diffusion import losses
from wm_jax.models import conditioning, masking, scan
from wm_jax.models.conditioning import VAE_FACTOR
from wm_jax.models.ctsd_dit import CTSDDiT, Layer, PAPER_ONLY_PARAMS

TSV = "tests/data_files/opendwm_ctsd35_layout_mask_params.tsv"
# The parameters MaskGWM's paper adds to OpenDWM's tree (Eq. 5 time modulation of the 12
# temporal blocks), spelled out so that any new non-OpenDWM key fails this test.
PAPER_ONLY_KEYS = sorted(f"temporal_transformer_blocks.{j}.time_modulation.linear.{leaf}"
                         for j in range(12) for leaf in ("weight", "bias"))


def _reference_shapes():
  out = {}
  with open(TSV) as f:
    for line in f:
      key, shape, _ = line.rstrip("\n").split("\t")
      out[key] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
  return out


def test_param_tree_equals_opendwm_ctsd35_keys_and_shapes():
  cfg = maskgwm_mview.get_config("layout,noactions")
  abstract = nnx.eval_shape(lambda: CTSDDiT(cfg.model, cfg.mask, rngs=nnx.Rngs(0)))
  ours = param_map.torch_shapes(abstract)
  ref = _reference_shapes()
  assert len(ref) == 1524
  assert sorted(set(ref) - set(ours)) == []
  assert sorted(set(ours) - set(ref)) == PAPER_ONLY_KEYS
  assert all(re.fullmatch("|".join(PAPER_ONLY_PARAMS), k) for k in PAPER_ONLY_KEYS)
  mismatched = {k: (ref[k], ours[k]) for k in ref if ours[k] != ref[k]}
  assert mismatched == {}


def test_long_config_tree_has_action_scalars_and_no_crossview():
  cfg = maskgwm_long.get_config()
  shapes = param_map.torch_shapes(
      nnx.eval_shape(lambda: CTSDDiT(cfg.model, cfg.mask, rngs=nnx.Rngs(0))))
  assert shapes["view_embedding.linear_1.weight"] == (1536, 13 * 256)
  assert not any(k.startswith(("crossview_", "view_mixers", "view_pos_embeds",
                               "condition_image_adapter")) for k in shapes)
  assert sum(k.startswith("time_mixers.") for k in shapes) == 12


# ------------------------------------------------------------------------------------------------
# tiny model: built once


def _tiny_config():
  """The tiny model (wm_jax.defaults) with a mask decoder of one joint block."""
  cfg = defaults.config()
  cfg.mask.decode_layers = 1
  return cfg


@pytest.fixture(scope="module")
def tiny():
  cfg = _tiny_config()
  model = nnx.jit(lambda: CTSDDiT(cfg.model, cfg.mask, rngs=nnx.Rngs(0)))()
  return cfg, model


def _inputs(cfg, batch=2, seed=0):
  m = cfg.model
  rng = np.random.default_rng(seed)
  lead = (batch, m.num_frames, m.num_views)
  tau = rng.uniform(size=lead).astype(np.float32)
  tau[:, 0] = 0.0  # a clean reference frame
  return dict(
      latents=rng.normal(size=lead + (m.latent_height, m.latent_width, m.in_channels)).astype(
          np.float32),
      timesteps=tau,
      context=rng.normal(size=lead + (m.text_tokens, m.joint_attention_dim)).astype(np.float32),
      pooled=rng.normal(size=lead + (m.pooled_projection_dim,)).astype(np.float32),
      camera=rng.normal(size=lead + (m.camera_scalars,)).astype(np.float32),
      layout=rng.uniform(size=lead + (m.latent_height * VAE_FACTOR, m.latent_width * VAE_FACTOR,
                                      6)).astype(np.float32),
      view_adjacency=np.array([[[True, False], [True, True]]] * batch),
  )


CALL_KEYS = ("row_mask", "noise", "return_features")  # keyword arguments beside the conditioning


def _forward(model, inputs):
  """model(latents, timesteps, Conditioning(the other fields), row_mask=, noise=, ...)."""
  kw = dict(inputs)
  latents, timesteps = kw.pop("latents"), kw.pop("timesteps")
  call = {key: kw.pop(key) for key in CALL_KEYS if key in kw}
  return model(latents, timesteps, conditioning.Conditioning(**kw), **call)


def _both_kinds_mask(cfg, batch):
  """RowMask with M_time for even samples and M_spatial for odd ones."""
  m = cfg.model
  shape = (batch, m.num_frames, m.num_views, m.latent_height // m.patch_size,
           m.latent_width // m.patch_size)
  time = masking.sample_row_mask(jax.random.key(1), *shape, cfg.mask.ratio, p_time=1.0)
  space = masking.sample_row_mask(jax.random.key(2), *shape, cfg.mask.ratio, p_time=0.0)
  is_time = jnp.arange(batch) % 2 == 0
  pick = lambda a, b: jnp.where(is_time.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)
  return masking.RowMask(keep_idx=pick(time.keep_idx, space.keep_idx),
                         drop_idx=pick(time.drop_idx, space.drop_idx), is_time=is_time)


def test_inference_equals_model_without_mask_module(tiny):
  cfg, model = tiny
  assert model.mask_module is not None
  plain = nnx.eval_shape(lambda: CTSDDiT(cfg.model, None, rngs=nnx.Rngs(1)))
  assert plain.mask_module is None
  state = nnx.state(model)
  nnx.update(plain, nnx.filter_state(state, lambda path, _: path[0] != "mask_module"))
  inputs = _inputs(cfg, batch=1)
  forward = nnx.jit(_forward)
  out = forward(model, inputs)
  ref = forward(plain, inputs)
  assert out.shape == inputs["latents"].shape and out.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))


def test_layers_are_assembled_from_the_opendwm_lists(tiny):
  cfg, model = tiny
  m = cfg.model
  assert model.runs is None
  for i in range(m.num_layers):
    layer = model.layer(i)
    assert isinstance(layer, Layer) and layer.joint is model.transformer_blocks[i]
    for kind, members, lists in (
        ("temporal", m.temporal_block_layers,
         (model.time_pos_embeds, model.temporal_transformer_blocks, model.time_mixers)),
        ("crossview", m.crossview_block_layers,
         (model.view_pos_embeds, model.crossview_transformer_blocks, model.view_mixers))):
      pos, block, mixer = (getattr(layer, f) for f in scan.PARTS[kind])
      if i in members:
        j = list(members).index(i)
        assert (pos, block, mixer) == tuple(part[j] for part in lists), (i, kind)
      else:
        assert (pos, block, mixer) == (None, None, None), (i, kind)


def test_disabled_video_blocks_equal_a_model_without_them(tiny):
  """disable_temporal / disable_crossview set for every sample: each AlphaBlender keeps its
  spatial input, so the model computes what one without temporal and cross-view blocks does."""
  cfg, model = tiny
  without = cfg.model.copy_and_resolve_references()
  without.update(temporal_block_layers=(), crossview_block_layers=())
  spatial = nnx.eval_shape(lambda: CTSDDiT(without, None, rngs=nnx.Rngs(1)))
  nnx.update(spatial, nnx.filter_state(nnx.state(model), lambda path, _: path[0] in
                                       set(nnx.state(spatial).keys())))
  inputs = _inputs(cfg, batch=2)
  forward = nnx.jit(_forward)
  ref = forward(spatial, inputs)
  off = forward(model, dict(inputs, disable_temporal=np.ones(2, bool),
                            disable_crossview=np.ones(2, bool)))
  np.testing.assert_array_equal(np.asarray(off), np.asarray(ref))
  on = forward(model, inputs)
  assert float(jnp.max(jnp.abs(on - ref))) > 1e-3  # the video blocks do change the output


def test_cond_must_be_a_conditioning(tiny):
  cfg, model = tiny
  inputs = _inputs(cfg, batch=1)
  with pytest.raises(TypeError, match="cond must be a conditioning.Conditioning"):
    model(inputs["latents"], inputs["timesteps"], {"context": inputs["context"]})


def _perturb_zero_inits(model, scale=0.02):
  """Zero-initialised layers (zero_convs, Eq. 5 time modulation, mask token) get small random
  values, as after the first optimizer step; returns the paths touched."""
  touched = []
  rng = np.random.default_rng(3)
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    value = np.asarray(var.get_value())
    if not value.any():
      var.set_value(jnp.asarray(rng.normal(size=value.shape).astype(value.dtype) * scale))
      touched.append(".".join(map(str, path)))
  return touched


def test_masked_training_step_jits_and_every_param_gets_gradient(tiny):
  cfg, model = tiny
  batch = 2
  inputs = _inputs(cfg, batch=batch)
  row_mask = _both_kinds_mask(cfg, batch)
  noise = np.random.default_rng(5).normal(size=inputs["latents"].shape).astype(np.float32)
  target = noise - inputs["latents"]
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(params, rest, inputs, row_mask, noise):
    m = nnx.merge(graphdef, params, rest)
    pred, feats = _forward(m, dict(inputs, row_mask=row_mask, noise=noise, return_features=True))
    return jnp.mean(jnp.square(pred - target)), (pred, feats)

  step = jax.jit(jax.grad(loss, has_aux=True))
  compiled = step.lower(params, rest, inputs, row_mask, noise).compile()  # static shapes
  grads, (pred, feats) = compiled(params, rest, inputs, row_mask, noise)
  h, w, k = 4, 8, 6  # token grid of the tiny config, K = (1 - 0.25) * 8
  assert pred.shape == inputs["latents"].shape
  assert feats["encoder"].shape == (batch, 4, 2, h, k, 64)
  assert feats["reconstructed"].shape == (batch, 4, 2, h, w, 64)

  def zero_grads(g):
    return sorted(".".join(map(str, p)) for p, v in nnx.to_flat_state(g)
                  if not np.asarray(v.get_value()).any())

  # Fresh init: only what sits behind the zero-initialised zero_convs gets no gradient.
  assert zero_grads(grads) == sorted(
      ".".join(map(str, p)) for p, _ in nnx.to_flat_state(params)
      if p[0] == "condition_image_adapter" and p[1] == "body")
  touched = _perturb_zero_inits(model)
  assert any("zero_convs" in p for p in touched) and any("time_modulation" in p for p in touched)
  _, params, rest = nnx.split(model, nnx.Param, ...)
  grads, _ = compiled(params, rest, inputs, row_mask, noise)
  assert zero_grads(grads) == []


def test_tiny_overfits_one_batch(tiny):
  """loss_fn (rectified flow + mask path) on one fixed batch with one fixed rng (same tau, noise,
  mask every step): the loss falls more than 10x within 100 Adam steps (about 55 are needed)."""
  _, model = tiny
  cfg = _tiny_config()
  model = nnx.clone(model)
  inputs = _inputs(cfg, batch=1, seed=7)
  batch = {"latents": inputs["latents"], "layout": (inputs["layout"] * 255).astype(np.uint8),
           "view_adjacency": inputs["view_adjacency"]}
  cfg.diffusion.uncond_prob = 0.0
  optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
  rng = jax.random.key(11)

  @nnx.jit
  def train_step(model, optimizer, batch):
    (loss, _), grads = nnx.value_and_grad(
        lambda m: losses.loss_fn(m, batch, rng, cfg, train=True), has_aux=True)(model)
    optimizer.update(model, grads)
    return loss

  first = float(train_step(model, optimizer, batch))
  history = [first]
  while len(history) < 100 and history[-1] >= first / 10:
    history.append(float(train_step(model, optimizer, batch)))
  assert history[-1] < first / 10, history[::10]


# ------------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("name, change, match", [
    ("rank", lambda d: d.update(latents=d["latents"][0]), "rank 6"),
    ("frames", lambda d: d.update(latents=d["latents"][:, :3], timesteps=d["timesteps"][:, :3]),
     "frames"),
    ("views", lambda d: d.update(latents=d["latents"][:, :, :1]), "views"),
    ("channels", lambda d: d.update(latents=d["latents"][..., :3]), "channels"),
    ("width", lambda d: d.update(latents=d["latents"][..., :15, :]), "latent width"),
    ("tau>1", lambda d: d.update(timesteps=d["timesteps"] + 1.5), r"\[0, 1\]"),
    ("tau<0", lambda d: d.update(timesteps=d["timesteps"] - 1.5), r"\[0, 1\]"),
    ("tau shape", lambda d: d.update(timesteps=d["timesteps"][..., 0]), "timesteps must be"),
    ("context", lambda d: d.update(context=d["context"][..., :5]), "context"),
    ("camera", lambda d: d.update(camera=d["camera"][..., :10]), "camera"),
    ("layout", lambda d: d.update(layout=d["layout"][..., :32, :, :]), "layout"),
    ("adjacency", lambda d: d.update(view_adjacency=d["view_adjacency"][:, :1]), "view_adjacency"),
    ("disable_temporal", lambda d: d.update(disable_temporal=np.zeros(3, bool)),
     "disable_temporal"),
    ("mask without noise", lambda d: d.update(row_mask=_both_kinds_mask(_tiny_config(), 2)),
     "noise"),
])
def test_bad_inputs_raise(tiny, name, change, match):
  cfg, model = tiny
  inputs = _inputs(cfg)
  change(inputs)
  with pytest.raises(ValueError, match=match):
    _forward(model, inputs)


@pytest.mark.parametrize("field, value, match", [
    ("latent_width", 15, "latent_width=15 is not divisible by patch_size=2"),
    ("temporal_attention_type", "sideways", "temporal_attention_type"),
    ("remat_policy", "everything", "remat_policy"),
    ("temporal_block_layers", [7], "outside"),
    ("camera_scalars", 12, r"camera_scalars must be one of \(0, 11, 13\)"),
])
def test_bad_model_config_raises(field, value, match):
  cfg = _tiny_config()
  cfg.model[field] = value
  with pytest.raises(ValueError, match=match):
    nnx.eval_shape(lambda: CTSDDiT(cfg.model, cfg.mask, rngs=nnx.Rngs(0)))


def test_fractional_kept_width_raises():
  cfg = _tiny_config()
  cfg.mask.ratio = 0.3  # 0.3 * 8 tokens is not whole
  with pytest.raises(ValueError, match="0.3"):
    nnx.eval_shape(lambda: CTSDDiT(cfg.model, cfg.mask, rngs=nnx.Rngs(0)))


@pytest.mark.slow
def test_remat_policies_give_the_same_gradients():
  cfg = _tiny_config()
  cfg.model.update(num_layers=2, dual_attention_layers=[0], temporal_block_layers=[0],
                   crossview_block_layers=[1], camera_scalars=0)
  cfg.model.layout_adapter = None
  inputs = _inputs(cfg, batch=1)
  for key in ("camera", "layout"):
    inputs.pop(key)
  grads = {}
  for policy in ("none", "full", "dots_saveable"):
    cfg.model.remat_policy = policy
    model = CTSDDiT(cfg.model, None, rngs=nnx.Rngs(0))
    loss = lambda m: jnp.mean(jnp.square(_forward(m, inputs)))
    grads[policy] = jax.tree.leaves(nnx.state(nnx.jit(nnx.grad(loss))(model)))
  for policy in ("full", "dots_saveable"):
    for a, b in zip(grads["none"], grads[policy]):
      np.testing.assert_allclose(a, b, atol=1e-6)
