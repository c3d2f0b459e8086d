"""MaskModule: OpenDWM names/shapes, mask-token formula, branch selection, per-frame modulation."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wm_jax import defaults
from wm_jax.convert import param_map
from wm_jax.train import flops
from wm_jax.models import mask_reconstruction as mr
from wm_jax.models import masking

DATA = os.path.join(os.path.dirname(__file__), "..", "data_files", "mask_module_params_opendwm.tsv")

B, T, V, H, W, D, HEADS, C, P, L = 2, 3, 2, 2, 4, 32, 2, 4, 2, 3


def test_param_names_and_shapes_equal_opendwm():
  cfg = defaults.mask()
  module = nnx.eval_shape(lambda: mr.MaskModule(1536, 24, 64, 16, 2, cfg, rngs=nnx.Rngs(0)))
  # the converter's one naming rule over what checkpoints carry (params + buffers)
  ours = {"mask_module." + k: v for k, v in param_map.torch_shapes(module).items()}
  ref = {}
  with open(DATA) as f:
    for line in f:
      key, shape, _ = line.rstrip("\n").split("\t")
      ref[key] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
  assert sorted(ours) == sorted(ref)
  assert {k: ours[k] for k in ref if ours[k] != ref[k]} == {}
  # weights OpenDWM never applies are checkpoint-only, not trainable
  trainable = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(module, nnx.Param))}
  assert "sideblocks.0.attn.to_q.kernel" in trainable
  assert not any("add_k_proj" in k or "norm_added" in k for k in trainable)
  assert len(trainable) == len(ref) - 2 * 2 * 6


def test_defaults():
  cfg = defaults.mask()
  assert (cfg.enabled, cfg.ratio, cfg.p_time, cfg.decode_layers, cfg.side_blocks, cfg.pos_table) == (
      True, 0.25, 0.5, 1, 1, "3d_sincos")


def test_the_default_config_builds_its_model_with_the_mask_module():
  """defaults.config() is a whole, valid config: its model (the tiny sizes) builds, mask on."""
  from wm_jax.models.ctsd_dit import CTSDDiT
  c = defaults.config()
  model = nnx.eval_shape(lambda: CTSDDiT(c.model, c.mask, rngs=nnx.Rngs(0)))
  assert model.mask_module is not None and model.decode_layers == c.mask.decode_layers == 1


@pytest.mark.torch
def test_sincos_table_matches_diffusers():
  emb = pytest.importorskip("diffusers.models.embeddings")
  ref = emb.get_3d_sincos_pos_embed(64, (5, 3), 4, output_type="pt").numpy()  # [T, h*W, D]
  np.testing.assert_allclose(mr.sincos_3d(4, 3, 5, 64).reshape(4, 15, 64), ref, atol=1e-6)


def _random_module(seed=0):
  """A MaskModule with numpy-random weights: the same module, without compiling an initializer
  per parameter shape (which dominates this file's CPU time); the tests are about the forward."""
  abstract = nnx.eval_shape(lambda: mr.MaskModule(D, HEADS, D // HEADS, C, P, defaults.mask(),
                                                  rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  rng = np.random.default_rng(seed)
  fan_in = lambda shape: int(np.prod(shape[:-1])) if len(shape) > 1 else 100
  state = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape) / np.sqrt(fan_in(s.shape)),
                                             s.dtype), state)
  return nnx.merge(graphdef, state)


@pytest.fixture(scope="module")
def setup():
  module = _random_module()
  rng = np.random.default_rng(0)
  f32 = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
  inputs = dict(noise=f32(B, T, V, H * P, W * P, C), temb=f32(B, T, V, D), context=f32(B, T, V, L, D),
                tau=jnp.asarray(rng.uniform(size=(B, T, V)), jnp.float32))
  mask = masking.sample_row_mask(jax.random.key(1), B, T, V, H, W, 0.25, 0.5)
  mask = mask.replace(is_time=jnp.array([True, False]))
  kept = f32(B, T, V, H, 3, D)

  @nnx.jit
  def forward(module, kept, mask, noise, tau, temb, context):
    return module(kept, mask, noise, tau, temb, context)

  return module, forward, mask, kept, inputs


def test_mask_tokens_follow_formula(setup):
  module, _, mask, _, x = setup
  tokens = nnx.jit(lambda m, mask, tau: m.mask_tokens(x["noise"], mask, tau))
  pos = jnp.broadcast_to(jnp.asarray(mr.sincos_3d(T, H, W, D))[None, :, None], (B, T, V, H, W, D))
  pos_term = module.mask_path_embed.proj(masking.gather_dropped(pos, mask))
  f_m = masking.gather_dropped(module.noise_features(x["noise"]), mask)
  at0 = tokens(module, mask, jnp.zeros((B, T, V)))
  at1 = tokens(module, mask, jnp.ones((B, T, V)))
  assert at0.shape == (B, T, V, H, 1, D)
  np.testing.assert_allclose(at0, f_m + pos_term, atol=1e-5)
  np.testing.assert_allclose(at1, module.mask_token[...].reshape(D) + pos_term, atol=1e-5)
  half = tokens(module, mask, jnp.full((B, T, V), 0.25))
  np.testing.assert_allclose(half, 0.75 * (f_m + pos_term) + 0.25 * at1, atol=1e-5)
  # f_m reaches the token grid: stride = patch size, 3x3 support
  assert module.noise_features(x["noise"]).shape == (B, T, V, H, W, D)
  # the 3-D table is the default; a caller's [h,W,D] table is used with pos_table='backbone'
  table = jnp.asarray(np.random.default_rng(1).normal(size=(H, W, D)), jnp.float32)
  with_table = nnx.jit(lambda m, mask, tau, pe: m.mask_tokens(x["noise"], mask, tau, pe))
  np.testing.assert_allclose(with_table(module, mask, jnp.ones((B, T, V)), table), at1, atol=1e-5)
  module.pos_table = "backbone"
  try:
    got = with_table(module, mask, jnp.ones((B, T, V)), table)
  finally:
    module.pos_table = "3d_sincos"
  full = jnp.broadcast_to(table, (B, T, V, H, W, D))
  want = module.mask_token[...].reshape(D) + module.mask_path_embed.proj(
      masking.gather_dropped(full, mask))
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_branch_selection_and_masked_shortcut(setup):
  module, forward, mask, kept, x = setup
  run = lambda m: np.asarray(forward(module, kept, m, x["noise"], x["tau"], x["temb"], x["context"]))
  out = run(mask)
  out_t = run(mask.replace(is_time=jnp.array([True, True])))
  out_s = run(mask.replace(is_time=jnp.array([False, False])))
  assert out.shape == (B, T, V, H, W, D)
  np.testing.assert_array_equal(out[0], out_t[0])
  np.testing.assert_array_equal(out[1], out_s[1])
  drop = np.asarray(masking.dropped_positions(mask))
  assert np.abs(out_t - out_s)[drop].min() > 0, "branches must differ at dropped tokens"
  # kept tokens pass through untouched, at their columns
  np.testing.assert_array_equal(np.asarray(masking.gather_rows(jnp.asarray(out), mask)), kept)


def test_batch_of_one_runs_only_its_branch(setup):
  """Batch 1 takes the `cond` path (one side chain); it must equal that sample's row of the
  batched `where` path, in outputs and in parameter gradients."""
  module, forward, mask, kept, x = setup
  one = lambda a, i: a[i:i + 1]

  def loss(m, kept, mask, x):
    return jnp.sum(m(kept, mask, x["noise"], x["tau"], x["temb"], x["context"]) ** 2)

  grad = nnx.jit(nnx.grad(loss))
  for i, is_time in enumerate([True, False]):  # sample 0 uses M_time, sample 1 M_spatial
    mask_i = jax.tree.map(lambda a: one(a, i), mask)
    x_i = jax.tree.map(lambda a: one(a, i), x)
    got = forward(module, one(kept, i), mask_i, x_i["noise"], x_i["tau"], x_i["temb"], x_i["context"])
    want = forward(module, kept, mask, x["noise"], x["tau"], x["temb"], x["context"])[i:i + 1]
    np.testing.assert_allclose(got, want, atol=1e-5)
    # the same gradients as the batched path with the other sample's inputs zeroed out of the loss
    g_one = grad(module, one(kept, i), mask_i, x_i)
    g_where = nnx.jit(nnx.grad(lambda m: jnp.sum(m(kept, mask, x["noise"], x["tau"], x["temb"],
                                                   x["context"])[i] ** 2)))(module)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g_one, g_where)
    unused = g_one["sideblocks" if is_time else "temporal_sideblocks"]
    assert all(float(jnp.abs(leaf).max()) == 0 for leaf in jax.tree.leaves(unused))
    used = g_one["temporal_sideblocks" if is_time else "sideblocks"]
    assert any(float(jnp.abs(leaf).max()) > 0 for leaf in jax.tree.leaves(used))
  # and it costs one chain: per sample fewer matmul FLOPs than the batched path, which runs both
  graphdef, params = nnx.split(module)

  def count(kept, mask, x):  # the module is merged inside the trace, as the train step does
    call = lambda p, k, mk, xx: nnx.merge(graphdef, p)(k, mk, xx["noise"], xx["tau"], xx["temb"],
                                                        xx["context"])
    return flops.forward_flops(call, params, kept, mask, x)

  per_sample_batched = count(kept, mask, x) / 2
  single = count(one(kept, 0), jax.tree.map(lambda a: one(a, 0), mask), jax.tree.map(lambda a: one(a, 0), x))
  chain = lambda blocks: sum(flops.forward_flops(
      lambda h: b(h, x["context"][:1], jnp.zeros((1, T, V, 6, D))), jnp.zeros((1, T, V, H, W, D)))
      for b in blocks)
  # the counter takes the larger branch of a cond, so one sample saves the smaller chain
  saved = min(chain(module.sideblocks), chain(module.temporal_sideblocks))
  np.testing.assert_allclose(per_sample_batched - single, saved, rtol=1e-6)


def test_spatial_branch_is_per_frame_temporal_branch_mixes_frames(setup):
  module, forward, mask, kept, x = setup
  kept2 = kept.at[:, 2].add(1.0)  # change frame 2 only
  run = lambda m, k: np.asarray(forward(module, k, m, x["noise"], x["tau"], x["temb"], x["context"]))
  spatial = mask.replace(is_time=jnp.array([False, False]))
  timed = mask.replace(is_time=jnp.array([True, True]))
  ds = np.abs(run(spatial, kept2) - run(spatial, kept))
  dt = np.abs(run(timed, kept2) - run(timed, kept))
  assert ds[:, :2].max() == 0 and ds[:, 2].max() > 0
  assert dt[:, :2].max() > 0


def test_per_frame_modulation_uses_own_frame(setup):
  module, forward, mask, kept, x = setup
  spatial = mask.replace(is_time=jnp.array([False, False]))
  temb2 = x["temb"].at[:, 1].add(3.0)  # another timestep embedding for frame 1 only
  a = np.asarray(forward(module, kept, spatial, x["noise"], x["tau"], x["temb"], x["context"]))
  b = np.asarray(forward(module, kept, spatial, x["noise"], x["tau"], temb2, x["context"]))
  diff = np.abs(a - b).max(axis=(0, 2, 3, 4, 5))
  assert diff[0] == 0 and diff[2] == 0 and diff[1] > 0, diff


def test_precision_reaches_every_layer(setup):
  """dtype / param_dtype form the module's layers.Precision: every variable (Buffers included) is
  stored in param_dtype and the forward computes in dtype."""
  _, _, mask, kept, x = setup
  bf16 = jnp.dtype(jnp.bfloat16)
  module = nnx.eval_shape(lambda: mr.MaskModule(D, HEADS, D // HEADS, C, P, defaults.mask(),
                                                rngs=nnx.Rngs(0), dtype=bf16, param_dtype=bf16))
  stored = {".".join(map(str, p)): v.dtype for p, v in nnx.to_flat_state(nnx.state(module))}
  assert {k: v for k, v in stored.items() if v != bf16} == {}
  assert "sideblocks.0.attn.add_k_proj.kernel" in stored
  out = nnx.eval_shape(lambda m: m(kept.astype(bf16), mask, x["noise"], x["tau"], x["temb"],
                                   x["context"]), module)
  assert out.shape == (B, T, V, H, W, D) and out.dtype == bf16


def test_bad_shapes_raise(setup):
  module, _, mask, kept, x = setup
  with pytest.raises(ValueError, match="temb"):
    module(kept, mask, x["noise"], x["tau"], x["temb"][:, :2], x["context"])
  with pytest.raises(ValueError, match="noise"):
    module.noise_features(x["noise"][..., :3])
  with pytest.raises(ValueError, match="dim=30"):
    mr.MaskModule(30, 2, 16, C, P, defaults.mask(), rngs=nnx.Rngs(0))


@pytest.mark.torch
def test_attention_and_noise_proj_match_pytorch():
  """Same weights through param_map: diffusers' Attention (as OpenDWM builds it, run by
  AttnProcessor2_0) and torch Conv3d agree with the side-block attention and f_m."""
  torch = pytest.importorskip("torch")
  proc = pytest.importorskip("diffusers.models.attention_processor")
  module = _random_module(3)
  rng = np.random.default_rng(4)
  x = rng.normal(size=(2, 5, D)).astype(np.float32)
  ctx = rng.normal(size=(2, 3, D)).astype(np.float32)
  for ours, context in ((module.sideblocks[0].attn, None), (module.temporal_sideblocks[0].cross_attn, ctx)):
    ref = proc.Attention(query_dim=D, added_kv_proj_dim=D, qk_norm="rms_norm", dim_head=D // HEADS,
                         heads=HEADS, out_dim=D, bias=True, processor=proc.AttnProcessor2_0())
    sd = {k: torch.from_numpy(np.array(v)) for k, v in param_map.to_torch_state_dict(ours).items()}
    ref.load_state_dict(sd, strict=True)  # also proves the key sets are equal
    with torch.no_grad():
      want = ref(torch.from_numpy(x),
                 encoder_hidden_states=None if context is None else torch.from_numpy(context))
    got = ours(jnp.asarray(x), None if context is None else jnp.asarray(context))
    np.testing.assert_allclose(np.asarray(got), want.numpy(), atol=2e-5, rtol=1e-4)
  conv = torch.nn.Conv3d(C, D, (1, 3, 3), (1, P, P), (0, 1, 1))
  conv.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in
                        param_map.to_torch_state_dict(module.noise_proj).items()}, strict=True)
  noise = rng.normal(size=(1, 2, 1, H * P, W * P, C)).astype(np.float32)  # [B,T,V,h,w,C]
  with torch.no_grad():
    want = conv(torch.from_numpy(noise[:, :, 0].transpose(0, 4, 1, 2, 3))).numpy()  # [B,D,T,h,w]
  got = np.asarray(module.noise_features(jnp.asarray(noise)))[:, :, 0].transpose(0, 4, 1, 2, 3)
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)
