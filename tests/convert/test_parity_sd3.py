"""wm_jax's SD3/SD3.5 parts against diffusers (fp32, same weights moved through convert/):
MMDiT joint blocks (plain, dual attention, context_pre_only), the time/text embedding, and the
whole SD3Transformer2DModel loaded the way users load one (from_torch, source='sd3')."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
from diffusers.models import attention as d_attention, embeddings as d_embeddings  # noqa: E402

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from tests.convert.conftest import load_torch_strict as _load, random_model  # noqa: E402
from wm_jax import defaults  # noqa: E402
from wm_jax.convert import from_torch, param_map  # noqa: E402
from wm_jax.models import embeddings, layers, mmdit  # noqa: E402
from wm_jax.models.conditioning import Conditioning  # noqa: E402
from wm_jax.models.ctsd_dit import CTSDDiT  # noqa: E402

pytestmark = pytest.mark.torch
TOL = 1e-4
DIM, HEADS, HEAD_DIM = 32, 2, 16
PREC = layers.Precision(None, jnp.float32)


def _t(x):
  return torch.from_numpy(np.asarray(x, np.float32))


@pytest.mark.parametrize("kind", ["plain", "dual", "context_pre_only"])
def test_joint_block(kind):
  dual, pre_only = kind == "dual", kind == "context_pre_only"
  block = random_model(lambda: mmdit.JointTransformerBlock(
      DIM, HEADS, HEAD_DIM, rngs=nnx.Rngs(0), prec=PREC, context_pre_only=pre_only,
      dual_attention=dual, qk_norm="rms_norm"), seed=3)
  ref = _load(d_attention.JointTransformerBlock(
      DIM, HEADS, HEAD_DIM, context_pre_only=pre_only, qk_norm="rms_norm",
      use_dual_attention=dual), block)
  rng = np.random.default_rng(0)
  x, c, temb = (rng.normal(size=s).astype(np.float32) for s in ((2, 12, DIM), (2, 5, DIM), (2, DIM)))
  c_out, x_out = block(jnp.asarray(x), jnp.asarray(c), jnp.asarray(temb))
  with torch.no_grad():
    c_ref, x_ref = ref(_t(x), _t(c), _t(temb))
  np.testing.assert_allclose(x_out, x_ref.numpy(), atol=TOL, rtol=TOL)
  if pre_only:
    assert c_out is None and c_ref is None
  else:
    np.testing.assert_allclose(c_out, c_ref.numpy(), atol=TOL, rtol=TOL)


def test_time_text_embedding_and_position_table():
  emb = random_model(lambda: embeddings.TimestepTextEmbedding(DIM, 24, rngs=nnx.Rngs(0), prec=PREC))
  ref = _load(d_embeddings.CombinedTimestepTextProjEmbeddings(DIM, 24), emb)
  tau = np.array([0.0, 0.25, 0.999], np.float32)
  pooled = np.random.default_rng(1).normal(size=(3, 24)).astype(np.float32)
  out, _ = emb(jnp.asarray(tau), jnp.asarray(pooled))
  with torch.no_grad():
    want = ref(_t(tau * 1000), _t(pooled)).numpy()  # SD3 embeds tau * 1000
  np.testing.assert_allclose(out, want, atol=TOL, rtol=TOL)
  # The fixed sin-cos table wm_jax builds equals diffusers' persistent pos_embed buffer.
  patch = d_embeddings.PatchEmbed(height=16, width=16, patch_size=2, in_channels=4,
                                                 embed_dim=DIM, pos_embed_max_size=12)
  table = embeddings.sincos_2d_table(DIM, 12, 16 // 2)
  np.testing.assert_allclose(table, patch.pos_embed[0].numpy(), atol=1e-6)


def test_sd3_transformer_backbone_loads_and_matches():
  """A diffusers SD3Transformer2DModel checkpoint -> from_torch (source='sd3') -> CTSDDiT with no
  video/camera/layout/mask parts at T = V = 1: the same velocity."""
  torch.manual_seed(0)
  ref = diffusers.SD3Transformer2DModel(
      sample_size=16, patch_size=2, in_channels=4, num_layers=3, attention_head_dim=HEAD_DIM,
      num_attention_heads=HEADS, joint_attention_dim=24, caption_projection_dim=DIM,
      pooled_projection_dim=20, out_channels=4, pos_embed_max_size=12, dual_attention_layers=(0,),
      qk_norm="rms_norm").eval()
  with torch.no_grad():  # the zero-initialised output layers would hide errors
    for p in ref.parameters():
      p.add_(0.05 * torch.randn_like(p))
  sd = {k: v.numpy() for k, v in ref.state_dict().items()}
  cfg = defaults.model()
  cfg.update(dict(in_channels=4, out_channels=4, num_layers=3, num_heads=HEADS, head_dim=HEAD_DIM,
                  joint_attention_dim=24, pooled_projection_dim=20, pos_embed_max_size=12,
                  sample_size=16, dual_attention_layers=[0], temporal_block_layers=[],
                  crossview_block_layers=[], camera_scalars=0, num_frames=1, num_views=1,
                  latent_height=8, latent_width=12, text_tokens=6))
  with cfg.ignore_type():
    cfg.layout_adapter = None
  mask = defaults.mask()
  mask.enabled = False
  factory = lambda: CTSDDiT(cfg, mask, rngs=nnx.Rngs(0))
  model = random_model(factory, seed=5)
  assert set(param_map.torch_shapes(model)) == set(sd)  # the SD3 key set, pos_embed table incl.
  nnx.update(model, from_torch.convert_state_dict(sd, nnx.eval_shape(factory), source="sd3",
                                                  init=lambda: model))
  rng = np.random.default_rng(2)
  lat = rng.normal(size=(2, 1, 1, 8, 12, 4)).astype(np.float32)
  ctx = rng.normal(size=(2, 1, 1, 6, 24)).astype(np.float32)
  pooled = rng.normal(size=(2, 1, 1, 20)).astype(np.float32)
  tau = np.array([[[0.3]], [[0.8]]], np.float32)
  cond = Conditioning(context=jnp.asarray(ctx), pooled=jnp.asarray(pooled))
  out = nnx.jit(lambda m, *a: m(*a))(model, jnp.asarray(lat), jnp.asarray(tau), cond)
  with torch.no_grad():
    want = ref(hidden_states=_t(lat[:, 0, 0]).permute(0, 3, 1, 2), encoder_hidden_states=_t(ctx[:, 0, 0]),
               pooled_projections=_t(pooled[:, 0, 0]), timestep=_t(tau.reshape(2) * 1000)).sample
  np.testing.assert_allclose(out[:, 0, 0], want.permute(0, 2, 3, 1).numpy(), atol=TOL, rtol=TOL)
