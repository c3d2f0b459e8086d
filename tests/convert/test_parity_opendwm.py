"""wm_jax's video, layout and mask modules against the PyTorch reference of OpenDWM's modules in
torch_reference.py (fp32, weights moved through the convert/ map; strict state_dict loading)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
from flax import nnx  # noqa: E402
from diffusers.models import embeddings as d_embeddings  # noqa: E402

from tests.convert import torch_reference as ref_lib  # noqa: E402
from tests.convert.conftest import load_torch_strict as _load, random_model  # noqa: E402
from wm_jax import defaults  # noqa: E402
from wm_jax.convert import opendwm_config, param_map  # noqa: E402
from wm_jax.models import embeddings, layers, layout_adapter, mask_reconstruction, masking  # noqa: E402
from wm_jax.models import video_blocks  # noqa: E402

pytestmark = pytest.mark.torch
TOL = 1e-4
D, HEADS, HEAD_DIM, CAMERA = 32, 2, 16, 3
B, T, V, H, W = 2, 3, 3, 2, 4
PREC = layers.Precision(None, jnp.float32)


def _t(x):
  return torch.from_numpy(np.asarray(x))


class VideoParts(nnx.Module):
  """The video parts of CTSDDiT under its attribute names (the same classes CTSDDiT builds)."""

  def __init__(self, rngs, n_temporal=2, n_crossview=1):
    block = lambda: video_blocks.VTSelfAttentionBlock(D, HEADS, HEAD_DIM, rngs=rngs, prec=PREC)
    mlp = lambda: embeddings.MLPEmbedding(D, 4 * D, D, rngs=rngs, prec=PREC)
    mixer = lambda: video_blocks.AlphaBlender(2.0, prec=PREC)
    self.view_embedding = embeddings.MLPEmbedding(CAMERA * 256, D, D, rngs=rngs, prec=PREC)
    self.time_pos_embeds = nnx.List([mlp() for _ in range(n_temporal)])
    self.temporal_transformer_blocks = nnx.List([block() for _ in range(n_temporal)])
    self.time_mixers = nnx.List([mixer() for _ in range(n_temporal)])
    self.view_pos_embeds = nnx.List([mlp() for _ in range(n_crossview)])
    self.crossview_transformer_blocks = nnx.List([block() for _ in range(n_crossview)])
    self.view_mixers = nnx.List([mixer() for _ in range(n_crossview)])


def test_temporal_crossview_blenders_and_camera_embedding():
  parts = random_model(lambda: VideoParts(nnx.Rngs(0)), seed=4, scale=0.2)
  ref = _load(ref_lib.VideoModel(D, HEADS, HEAD_DIM, 2, 1, CAMERA), parts)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(B, T, V, H, W, D)).astype(np.float32)
  camera = rng.normal(size=(B, T, V, CAMERA)).astype(np.float32)
  adjacency = np.array([[[1, 1, 0], [1, 1, 1], [0, 1, 1]], [[1, 0, 1], [0, 1, 1], [1, 1, 1]]], bool)
  disabled = np.array([False, True])
  cam = parts.view_embedding(embeddings.sinusoidal(camera, 256).reshape(B, T, V, -1))
  frame_index = embeddings.sinusoidal(jnp.arange(T), D)
  view_index = embeddings.sinusoidal(jnp.arange(V), D)
  xt = _t(x.reshape(B * T * V, H * W, D))
  with torch.no_grad():
    cam_ref = ref.camera_embedding(_t(camera))
  np.testing.assert_allclose(cam.reshape(B * T * V, 1, D), cam_ref.numpy(), atol=TOL, rtol=TOL)
  cases = [("pointwise", 0, None), ("rowwise", 1, disabled)]
  for kind, j, dis in cases:
    out = video_blocks.temporal_step(
        parts.temporal_transformer_blocks[j], parts.time_mixers[j], parts.time_pos_embeds[j],
        jnp.asarray(x), kind=kind, index_emb=frame_index, cond_emb=cam,
        disabled=None if dis is None else jnp.asarray(dis))
    with torch.no_grad():
      want = ref.temporal(j, xt, B, T, V, W, kind, cam=cam_ref,
                          disabled=None if dis is None else _t(dis))
    np.testing.assert_allclose(out.reshape(B * T * V, H * W, D), want.numpy(), atol=TOL, rtol=TOL,
                               err_msg=kind)
    if dis is not None:  # sample 1 has its temporal path switched off: alpha = 1
      np.testing.assert_array_equal(out[1], x[1])
  out = video_blocks.crossview_step(
      parts.crossview_transformer_blocks[0], parts.view_mixers[0], parts.view_pos_embeds[0],
      jnp.asarray(x), index_emb=view_index, cond_emb=cam, view_adjacency=jnp.asarray(adjacency))
  with torch.no_grad():
    want = ref.crossview(0, xt, B, T, V, H, W, cam=cam_ref, adjacency=_t(adjacency))
  np.testing.assert_allclose(out.reshape(B * T * V, H * W, D), want.numpy(), atol=TOL, rtol=TOL)


def test_camera_reaches_the_temporal_blocks_of_a_model_without_crossview_blocks():
  """A model with camera scalars and temporal but no cross-view blocks (maskgwm_long's kind):
  the OpenDWM model its exported config builds adds the camera embedding to the temporal blocks,
  as wm_jax does."""
  model_cfg = defaults.model()
  model_cfg.update(num_heads=HEADS, head_dim=HEAD_DIM, camera_scalars=CAMERA,
                   temporal_block_layers=(0, 2), crossview_block_layers=())
  parts = random_model(lambda: VideoParts(nnx.Rngs(0), n_temporal=2, n_crossview=0), seed=9,
                       scale=0.2)
  ref = _load(ref_lib.VideoModel.from_opendwm_config(opendwm_config.to_opendwm(model_cfg)), parts)
  rng = np.random.default_rng(5)
  x = rng.normal(size=(B, T, V, H, W, D)).astype(np.float32)
  camera = rng.normal(size=(B, T, V, CAMERA)).astype(np.float32)
  cam = parts.view_embedding(embeddings.sinusoidal(camera, 256).reshape(B, T, V, -1))
  out = video_blocks.temporal_step(
      parts.temporal_transformer_blocks[1], parts.time_mixers[1], parts.time_pos_embeds[1],
      jnp.asarray(x), kind="pointwise", index_emb=embeddings.sinusoidal(jnp.arange(T), D),
      cond_emb=cam)
  with torch.no_grad():
    want = ref.temporal(1, _t(x.reshape(B * T * V, H * W, D)), B, T, V, W, "pointwise",
                        cam=ref.camera_embedding(_t(camera)))
  np.testing.assert_allclose(out.reshape(B * T * V, H * W, D), want.numpy(), atol=TOL, rtol=TOL)


def test_layout_adapter():
  adapter = random_model(lambda: layout_adapter.ImageAdapter(
      3, [16, 16, 24], [True, False, True], 2, 4, True, rngs=nnx.Rngs(0), prec=PREC), seed=6)
  ref = _load(ref_lib.ImageAdapter(3, [16, 16, 24], [True, False, True], 2, 4), adapter)
  layout = np.random.default_rng(1).uniform(size=(2, 40, 48, 3)).astype(np.float32)
  outs = adapter(jnp.asarray(layout))
  with torch.no_grad():
    wants = ref(_t(layout).permute(0, 3, 1, 2))
  assert len(outs) == len(wants) == 3
  for out, want in zip(outs, wants):  # 40x48 -> 10x12 -> 5x6 -> 5x6 -> 3x3 (ceil-mode pool)
    np.testing.assert_allclose(out, want.permute(0, 2, 3, 1).numpy(), atol=TOL, rtol=TOL)


@pytest.mark.parametrize("temporal", [False, True])
def test_mask_side_block(temporal):
  block = random_model(lambda: mask_reconstruction.SideBlock(
      D, HEADS, HEAD_DIM, temporal=temporal, rngs=nnx.Rngs(0)), seed=7, scale=0.2)
  ref = _load(ref_lib.SideBlock(D, HEADS, temporal), block)
  rng = np.random.default_rng(2)
  x = rng.normal(size=(B, T, V, H, W, D)).astype(np.float32)
  ctx = rng.normal(size=(B, T, V, 5, D)).astype(np.float32)
  mod = (0.3 * rng.normal(size=(B, T, V, 6, D))).astype(np.float32)
  out = block(jnp.asarray(x), jnp.asarray(ctx), jnp.asarray(mod))
  to_ref = lambda a: np.moveaxis(a, 2, 1)  # [B,T,V,...] -> [B,V,T,...]: OpenDWM's (b v) batches
  with torch.no_grad():
    want = ref(_t(to_ref(x).reshape(B * V, T * H * W, D)),
               _t(to_ref(ctx).reshape(B * V * T, 5, D)),
               _t(to_ref(mod).reshape(B * V, T, 6 * D)), T)
  want = np.moveaxis(want.numpy().reshape(B, V, T, H, W, D), 1, 2)
  np.testing.assert_allclose(out, want, atol=TOL, rtol=TOL)


def test_mask_tokens_match_the_paper_formula_and_the_exported_opendwm_setting():
  """m_tau = (1 - tau) f_m(eps) + tau p + proj(pos3d) at the dropped positions (paper Eq. 3), and
  OpenDWM's MaskController computes the same with the use_origin_mask_token the export writes.
  Its noise_proj takes 16 channels: a 4-channel mask module does not load there."""
  cfg = ml_collections.ConfigDict(dict(enabled=True, ratio=0.25, p_time=0.5, decode_layers=1,
                                       side_blocks=1, pos_table="3d_sincos"))
  p, c = 2, ref_lib.NOISE_PROJ_CHANNELS
  module = random_model(lambda: mask_reconstruction.MaskModule(
      D, HEADS, HEAD_DIM, c, p, cfg, rngs=nnx.Rngs(0)), seed=8)
  setting = opendwm_config.to_opendwm(defaults.model(), cfg)["mask_module"]
  ref = ref_lib.MaskTokens(D, setting["use_origin_mask_token"])
  parts = ("noise_proj.", "mask_token", "mask_path_embed.proj.")
  sd = {k: _t(v) for k, v in param_map.to_torch_state_dict(module).items() if k.startswith(parts)}
  ref.load_state_dict(sd, strict=True)
  rng = np.random.default_rng(3)
  noise = rng.normal(size=(B, T, V, H * p, W * p, c)).astype(np.float32)
  tau = rng.uniform(size=(B, T, V)).astype(np.float32)
  mask = masking.sample_row_mask(jax.random.key(0), B, T, V, H, W, 0.25, 0.5)
  tokens = np.asarray(module.mask_tokens(jnp.asarray(noise), mask, jnp.asarray(tau)))
  drop = np.asarray(mask.drop_idx)  # [B,T,V,H,W-K]
  # the paper's formula, written out
  with torch.no_grad():
    feats = ref.noise_proj(_t(noise).reshape(B * T * V, 1, H * p, W * p, c).permute(0, 4, 1, 2, 3))
    feats = feats.permute(0, 2, 3, 4, 1).reshape(B, T, V, H, W, D).numpy()
    pos = d_embeddings.get_3d_sincos_pos_embed(D, (W, H), T).float().reshape(T, H, W, D)
    pos = ref.mask_path_embed.proj(pos).numpy()
  gather = lambda a: np.take_along_axis(a, drop[..., None], axis=4)
  token = sd["mask_token"].numpy().reshape(D)
  tau_ = tau[..., None, None, None]
  want = (1 - tau_) * gather(feats) + tau_ * token + gather(np.broadcast_to(
      pos[None, :, None], feats.shape))
  np.testing.assert_allclose(tokens, want, atol=TOL, rtol=TOL)
  # OpenDWM's computation, in its layout: (b v) batches of T frames, flat (row, column) positions
  bvt = lambda a: np.moveaxis(a, 2, 1)  # [B,T,V,...] -> [B,V,T,...]
  ids = (np.arange(H)[:, None] * W + drop).reshape(B, T, V, -1)
  with torch.no_grad():
    theirs = ref(_t(np.moveaxis(bvt(noise), -1, 2).reshape(B * V, c, T, H * p, W * p)),
                 _t(bvt(ids).reshape(B * V * T, -1)), _t(bvt(tau).reshape(-1)))
  np.testing.assert_allclose(bvt(tokens).reshape(B * V * T, -1, D), theirs.numpy(), atol=TOL,
                             rtol=TOL)
  four = random_model(lambda: mask_reconstruction.MaskModule(
      D, HEADS, HEAD_DIM, 4, p, cfg, rngs=nnx.Rngs(0)), seed=8)
  sd = {k: _t(v) for k, v in param_map.to_torch_state_dict(four).items() if k.startswith(parts)}
  with pytest.raises(RuntimeError, match="noise_proj.weight"):
    ref.load_state_dict(sd, strict=True)
