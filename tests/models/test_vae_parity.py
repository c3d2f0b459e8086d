"""The Flax AutoencoderKL against diffusers' AutoencoderKL with the same weights (fp32)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from wm_jax import defaults  # noqa: E402
from wm_jax.convert import param_map, vae_weights  # noqa: E402
from wm_jax.models import vae as vae_lib  # noqa: E402

pytestmark = pytest.mark.torch

# One small layout that exercises both quant-conv settings (quant_conv on, post_quant_conv off),
# 2 resnets per encoder level (3 per decoder level), 3 levels (factor 4), a shift factor; the
# full-size presets' key/shape sets are checked against diffusers below.
CASE = dict(block_out_channels=(8, 16, 16), layers_per_block=2, norm_num_groups=4,
            latent_channels=6, scaling_factor=1.5305, shift_factor=0.0609,
            use_quant_conv=True, use_post_quant_conv=False)


def _torch_vae(case, seed):
  torch.manual_seed(seed)
  levels = len(case["block_out_channels"])
  ref = diffusers.AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * levels,
                                up_block_types=("UpDecoderBlock2D",) * levels, **case).eval()
  with torch.no_grad():  # non-trivial norms and biases so every layout is exercised
    for name, p in ref.named_parameters():
      if p.ndim == 1:
        p.add_(0.1 * torch.randn_like(p))
  return ref


def test_encode_decode_match_diffusers(tmp_path):
  case = CASE
  ref = _torch_vae(case, seed=1)
  # Through the user-facing loader: a diffusers model directory (config.json + safetensors).
  ref.save_pretrained(tmp_path, safe_serialization=True)
  vae = vae_weights.from_pretrained(str(tmp_path))
  assert vae.cfg["latent_channels"] == case["latent_channels"]
  assert vae.cfg["shift_factor"] == case["shift_factor"]
  assert vae.quant_conv is not None and vae.post_quant_conv is None

  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, (2, 16, 24, 3), dtype=np.uint8)
  x = frames.astype(np.float32) / 127.5 - 1.0
  factor = 2 ** (len(case["block_out_channels"]) - 1)
  z = rng.normal(size=(2, 16 // factor, 24 // factor, case["latent_channels"])).astype(np.float32)
  with torch.no_grad():
    dist = ref.encode(torch.from_numpy(x).permute(0, 3, 1, 2)).latent_dist
    mean_ref = dist.mean.permute(0, 2, 3, 1).numpy()
    logvar_ref = dist.logvar.permute(0, 2, 3, 1).numpy()
    dec_ref = ref.decode(torch.from_numpy(z).permute(0, 3, 1, 2)).sample.permute(0, 2, 3, 1).numpy()

  @nnx.jit
  def run(vae, x, z):
    return vae_lib.posterior_mean_logvar(vae.moments(x)), vae.decode(z)

  (mean, logvar), dec = run(vae, jnp.asarray(x), jnp.asarray(z))
  np.testing.assert_allclose(mean, mean_ref, atol=1e-5, rtol=0)
  np.testing.assert_allclose(logvar, logvar_ref, atol=1e-5, rtol=0)
  assert dec.shape == frames.shape
  np.testing.assert_allclose(dec, dec_ref, atol=1e-5, rtol=0)
  # encode_frames: uint8 in, the scaled posterior mean out; decode_latents: the inverse scaling
  # and diffusers' uint8 postprocessing (a value on a .5 boundary may round either way).
  shift = case["shift_factor"]
  scaled = vae_lib.encode_frames(vae, frames)
  np.testing.assert_allclose(scaled, (mean_ref - shift) * case["scaling_factor"], atol=1e-5, rtol=0)
  frames_out = np.asarray(vae_lib.decode_latents(vae, (z - shift) * case["scaling_factor"]))
  want = np.round(np.clip(dec_ref / 2 + 0.5, 0, 1) * 255).astype(np.int32)
  assert np.abs(frames_out.astype(np.int32) - want).max() <= 1
  assert np.mean(frames_out == want) > 0.99


def test_state_dict_round_trip_and_legacy_names():
  """A diffusers state_dict loads into the Flax model and comes back bit-exact; old attention
  names (query/key/value/proj_attn) load too."""
  ref = _torch_vae(CASE, seed=3)
  sd = {k: v.numpy() for k, v in ref.state_dict().items()}
  cfg = vae_weights.config_from_diffusers(dict(ref.config))
  vae = vae_weights.load_state_dict(vae_lib.AutoencoderKL(cfg, rngs=nnx.Rngs(0)), ref.state_dict())
  back = param_map.to_torch_state_dict(vae)
  assert sorted(back) == sorted(sd)
  for k in sd:
    np.testing.assert_array_equal(back[k], sd[k], err_msg=k)
  legacy = {k.replace("to_q.", "query.").replace("to_out.0.", "proj_attn."): v for k, v in sd.items()}
  assert "encoder.mid_block.attentions.0.query.weight" in legacy
  vae2 = vae_weights.load_state_dict(vae_lib.AutoencoderKL(cfg, rngs=nnx.Rngs(1)), legacy)
  np.testing.assert_array_equal(vae2.encoder.mid_block.attentions[0].to_q.kernel.get_value(),
                                sd["encoder.mid_block.attentions.0.to_q.weight"].T)
  del sd["decoder.conv_in.bias"]
  with pytest.raises(param_map.ConversionError, match="decoder.conv_in.bias"):
    vae_weights.load_state_dict(vae_lib.AutoencoderKL(cfg, rngs=nnx.Rngs(0)), sd)


@pytest.mark.parametrize("preset", ["sd", "sd3", "tiny"])
def test_presets_have_diffusers_key_and_shape_sets(preset):
  """The full-size presets (abstract, no memory) hold exactly the keys and shapes of diffusers'
  AutoencoderKL built with the same config on the meta device."""
  fields = vae_lib.resolve({"preset": preset})
  levels = len(fields["block_out_channels"])
  with torch.device("meta"):
    ref = diffusers.AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        **{k: fields[k] for k in vae_lib.ARCH_KEYS})
  want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
  abstract = nnx.eval_shape(lambda: vae_lib.AutoencoderKL({"preset": preset}, rngs=nnx.Rngs(0)))
  assert param_map.torch_shapes(abstract) == want
