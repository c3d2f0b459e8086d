"""AutoencoderKL (the SD / SD3 latent VAE) in Flax NNX, channels last, with diffusers' semantics.

Module paths equal diffusers' `AutoencoderKL` state_dict keys under the one rule of
wm_jax/convert/param_map.py, so a diffusers checkpoint loads with `from_torch_state_dict`:

  encoder.conv_in -> encoder.down_blocks.{i}.resnets.{j} (+ .downsamplers.0.conv)
    -> encoder.mid_block.{resnets.0, attentions.0, resnets.1} -> conv_norm_out, SiLU, conv_out
    -> quant_conv (1x1, optional) -> moments [mean | logvar] (2C channels)
  post_quant_conv (optional) -> decoder.conv_in -> decoder.mid_block
    -> decoder.up_blocks.{i}.resnets.{j} (layers_per_block + 1 each, + .upsamplers.0.conv)
    -> conv_norm_out, SiLU, conv_out

Each level but the last halves the resolution, so 4 levels give the factor 8 of SD/SD3.
GroupNorms use eps 1e-6; the mid-block attention is one head over all H*W positions with
GroupNorm in front and a residual around it.

Presets (`PRESETS`): 'sd' (4 latent channels, scaling 0.18215, quant convs), 'sd3' (SD3/SD3.5:
16 channels, scaling 1.5305, shift 0.0609, no quant convs) and 'tiny' for CPU: block_out_channels
(16, 32, 64, 64), layers_per_block 1, GroupNorm(8), 4 latent channels, scaling 1.0, shift 0.0;
4 levels, so frames 64x128 -> latents 8x16x4.

Scaled latents (what the diffusion model sees): (z - shift_factor) * scaling_factor.
`encode_frames` / `decode_latents` work on uint8 frames with any leading dims, flatten them to a
batch of images, run the encoder/decoder over `batch_slice` images at a time (lax.map: bounded
memory for long multi-view videos) and, with `tile_size`, over overlapping spatial tiles blended
with linear ramps (all tiles have one static shape; the last tile of a row/column is aligned to
the image edge).

Diffusers weights are read by wm_jax/convert/vae_weights.py; tools/cache_latents.py writes a data
set's scaled latents into the TFDS ArrayRecord cache.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wm_jax import defaults
from wm_jax.kernels import attention as attention_lib

# Architecture fields; a preset gives all of them, config.vae may override each.
PRESETS = {
    "tiny": dict(block_out_channels=(16, 32, 64, 64), layers_per_block=1, norm_num_groups=8,
                 latent_channels=4, scaling_factor=1.0, shift_factor=0.0, use_quant_conv=True,
                 use_post_quant_conv=True, mid_block_add_attention=True),
    "sd": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32,
               latent_channels=4, scaling_factor=0.18215, shift_factor=0.0, use_quant_conv=True,
               use_post_quant_conv=True, mid_block_add_attention=True),
    "sd3": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32,
                latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609,
                use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=True),
}
ARCH_KEYS = tuple(PRESETS["sd"])
NORM_EPS = 1e-6
LOGVAR_RANGE = (-30.0, 20.0)


def resolve(config) -> dict:
  """A plain dict of every field: preset values overridden by the non-None fields of `config`."""
  config = dict(config.to_dict() if hasattr(config, "to_dict") else config)
  base = defaults.vae().to_dict()
  unknown = sorted(set(config) - set(base))
  if unknown:
    raise ValueError(f"unknown config.vae field(s) {unknown}; known: {sorted(base)}")
  preset = {**base, **config}["preset"]
  if preset not in PRESETS:
    raise ValueError(f"unknown VAE preset {preset!r}; known: {sorted(PRESETS)}")
  out = {**base, **PRESETS[preset]}
  out.update({k: v for k, v in config.items() if v is not None})
  out["block_out_channels"] = tuple(int(c) for c in out["block_out_channels"])
  for c in out["block_out_channels"]:
    if c % out["norm_num_groups"]:
      raise ValueError(f"block_out_channels {out['block_out_channels']}: {c} is not divisible by "
                       f"norm_num_groups={out['norm_num_groups']}")
  if out["tile_size"] and out["tile_size"] % downsample_factor(out):
    raise ValueError(f"tile_size={out['tile_size']} must be a multiple of "
                     f"{downsample_factor(out)} (the VAE's downsampling factor)")
  if not 0 <= out["tile_overlap"] < 1:
    raise ValueError(f"tile_overlap={out['tile_overlap']} must be in [0, 1)")
  return out


def downsample_factor(fields: Mapping[str, Any]) -> int:
  """Spatial factor between frames and latents: 2 per level but the last."""
  return 2 ** (len(fields["block_out_channels"]) - 1)


_INIT_BLOCK = 1 << 14


@functools.partial(jax.jit, static_argnums=1)
def _normal_blocks(key, blocks):
  return jax.random.normal(key, (blocks * _INIT_BLOCK,), jnp.float32)


def lecun_normal_blocked(key, shape, dtype=jnp.float32):
  """LeCun-normal kernels (std 1/sqrt(fan_in), fan_in = prod(shape[:-1])) drawn in whole blocks
  of normals: one compiled random kernel per block count instead of one per shape (eager init
  of a VAE has dozens of kernel shapes; compiling each costs about a second on CPU)."""
  size = int(np.prod(shape))
  x = _normal_blocks(key, -(-size // _INIT_BLOCK))[:size].reshape(shape)
  return (x * (1.0 / np.sqrt(np.prod(shape[:-1])))).astype(dtype)


def _conv(cin, cout, kernel, cfg, rngs, *, stride=1, padding=None):
  pad = ((kernel // 2, kernel // 2),) * 2 if padding is None else padding
  return nnx.Conv(cin, cout, (kernel, kernel), strides=(stride, stride), padding=pad,
                  dtype=cfg["dtype"], param_dtype=cfg["param_dtype"],
                  kernel_init=lecun_normal_blocked, rngs=rngs)


def _norm(channels, cfg, rngs):
  return nnx.GroupNorm(channels, num_groups=cfg["norm_num_groups"], epsilon=NORM_EPS,
                       use_fast_variance=False, dtype=cfg["dtype"], param_dtype=cfg["param_dtype"],
                       rngs=rngs)


class ResnetBlock2D(nnx.Module):
  """GroupNorm-SiLU-conv3x3 twice plus a (1x1 conv when channels change) shortcut."""

  def __init__(self, cin, cout, cfg, rngs):
    self.norm1 = _norm(cin, cfg, rngs)
    self.conv1 = _conv(cin, cout, 3, cfg, rngs)
    self.norm2 = _norm(cout, cfg, rngs)
    self.conv2 = _conv(cout, cout, 3, cfg, rngs)
    self.conv_shortcut = _conv(cin, cout, 1, cfg, rngs) if cin != cout else None

  def __call__(self, x):
    h = self.conv1(nnx.silu(self.norm1(x)))
    h = self.conv2(nnx.silu(self.norm2(h)))
    if self.conv_shortcut is not None:
      x = self.conv_shortcut(x)
    return x + h


class SpatialAttention(nnx.Module):
  """One-head self-attention over the H*W positions (diffusers' VAE mid-block Attention)."""

  def __init__(self, channels, cfg, rngs):
    linear = lambda: nnx.Linear(channels, channels, dtype=cfg["dtype"],
                                param_dtype=cfg["param_dtype"], kernel_init=lecun_normal_blocked,
                                rngs=rngs)
    self.group_norm = _norm(channels, cfg, rngs)
    self.to_q, self.to_k, self.to_v = linear(), linear(), linear()
    self.to_out = nnx.List([linear()])
    self.impl = cfg["attention_impl"]

  def __call__(self, x):
    n, height, width, c = x.shape
    h = self.group_norm(x).reshape(n, height * width, 1, c)
    out = attention_lib.attention(self.to_q(h), self.to_k(h), self.to_v(h), impl=self.impl)
    return x + self.to_out[0](out.reshape(n, height, width, c))


class MidBlock(nnx.Module):
  def __init__(self, channels, cfg, rngs):
    self.resnets = nnx.List([ResnetBlock2D(channels, channels, cfg, rngs) for _ in range(2)])
    self.attentions = (nnx.List([SpatialAttention(channels, cfg, rngs)])
                       if cfg["mid_block_add_attention"] else None)

  def __call__(self, x):
    x = self.resnets[0](x)
    if self.attentions is not None:
      x = self.attentions[0](x)
    return self.resnets[1](x)


class Downsample(nnx.Module):
  """Stride-2 3x3 conv with diffusers' asymmetric padding (0 before, 1 after)."""

  def __init__(self, channels, cfg, rngs):
    self.conv = _conv(channels, channels, 3, cfg, rngs, stride=2, padding=((0, 1), (0, 1)))

  def __call__(self, x):
    return self.conv(x)


class Upsample(nnx.Module):
  """Nearest-neighbour x2, then a 3x3 conv."""

  def __init__(self, channels, cfg, rngs):
    self.conv = _conv(channels, channels, 3, cfg, rngs)

  def __call__(self, x):
    return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))


class EncoderBlock(nnx.Module):
  def __init__(self, cin, cout, num_layers, downsample, cfg, rngs):
    self.resnets = nnx.List([ResnetBlock2D(cin if i == 0 else cout, cout, cfg, rngs)
                             for i in range(num_layers)])
    self.downsamplers = nnx.List([Downsample(cout, cfg, rngs)]) if downsample else None

  def __call__(self, x):
    for resnet in self.resnets:
      x = resnet(x)
    return self.downsamplers[0](x) if self.downsamplers is not None else x


class DecoderBlock(nnx.Module):
  def __init__(self, cin, cout, num_layers, upsample, cfg, rngs):
    self.resnets = nnx.List([ResnetBlock2D(cin if i == 0 else cout, cout, cfg, rngs)
                             for i in range(num_layers)])
    self.upsamplers = nnx.List([Upsample(cout, cfg, rngs)]) if upsample else None

  def __call__(self, x):
    for resnet in self.resnets:
      x = resnet(x)
    return self.upsamplers[0](x) if self.upsamplers is not None else x


class Encoder(nnx.Module):
  """[N,H,W,3] in [-1,1] -> [N,H/f,W/f,2C] posterior moments (before quant_conv)."""

  def __init__(self, cfg, rngs):
    chans, levels = cfg["block_out_channels"], len(cfg["block_out_channels"])
    self.conv_in = _conv(3, chans[0], 3, cfg, rngs)
    self.down_blocks = nnx.List([
        EncoderBlock(chans[max(i - 1, 0)], chans[i], cfg["layers_per_block"], i < levels - 1, cfg, rngs)
        for i in range(levels)])
    self.mid_block = MidBlock(chans[-1], cfg, rngs)
    self.conv_norm_out = _norm(chans[-1], cfg, rngs)
    self.conv_out = _conv(chans[-1], 2 * cfg["latent_channels"], 3, cfg, rngs)

  def __call__(self, x):
    x = self.conv_in(x)
    for block in self.down_blocks:
      x = block(x)
    x = self.mid_block(x)
    return self.conv_out(nnx.silu(self.conv_norm_out(x)))


class Decoder(nnx.Module):
  """[N,h,w,C] latents (unscaled, after post_quant_conv) -> [N,h*f,w*f,3] in about [-1,1]."""

  def __init__(self, cfg, rngs):
    chans = cfg["block_out_channels"]
    rev = tuple(reversed(chans))
    self.conv_in = _conv(cfg["latent_channels"], rev[0], 3, cfg, rngs)
    self.mid_block = MidBlock(rev[0], cfg, rngs)
    self.up_blocks = nnx.List([
        DecoderBlock(rev[max(i - 1, 0)], rev[i], cfg["layers_per_block"] + 1, i < len(rev) - 1,
                     cfg, rngs)
        for i in range(len(rev))])
    self.conv_norm_out = _norm(chans[0], cfg, rngs)
    self.conv_out = _conv(chans[0], 3, 3, cfg, rngs)

  def __call__(self, z):
    x = self.mid_block(self.conv_in(z))
    for block in self.up_blocks:
      x = block(x)
    return self.conv_out(nnx.silu(self.conv_norm_out(x)))


class AutoencoderKL(nnx.Module):
  """The KL VAE. `config`: a config.vae ConfigDict (wm_jax.defaults.vae()) or a plain dict of its fields."""

  def __init__(self, config, *, rngs: nnx.Rngs):
    cfg = resolve(config)
    self.spec = tuple(sorted(cfg.items()))  # hashable, so it is static in the graphdef
    self.encoder = Encoder(cfg, rngs)
    self.decoder = Decoder(cfg, rngs)
    c2 = 2 * cfg["latent_channels"]
    self.quant_conv = _conv(c2, c2, 1, cfg, rngs) if cfg["use_quant_conv"] else None
    self.post_quant_conv = (_conv(cfg["latent_channels"], cfg["latent_channels"], 1, cfg, rngs)
                            if cfg["use_post_quant_conv"] else None)

  @property
  def cfg(self) -> dict:
    """Every resolved config.vae field (preset + overrides)."""
    return dict(self.spec)

  @property
  def factor(self) -> int:
    return downsample_factor(self.cfg)

  @property
  def latent_channels(self) -> int:
    return self.cfg["latent_channels"]

  def moments(self, x):
    """Images [N,H,W,3] in [-1,1] -> posterior moments [N,H/f,W/f,2C] = [mean | logvar]."""
    m = self.encoder(x)
    return self.quant_conv(m) if self.quant_conv is not None else m

  def decode(self, z):
    """Unscaled latents [N,h,w,C] -> images [N,h*f,w*f,3] (about [-1,1])."""
    if self.post_quant_conv is not None:
      z = self.post_quant_conv(z)
    return self.decoder(z)

  def __call__(self, x, rng=None):
    """Reconstruction of images in [-1,1]: posterior mode, or a sample with `rng`."""
    return self.decode(posterior_sample(self.moments(x), rng))


# -- the diagonal Gaussian posterior ---------------------------------------------------------------

def posterior_mean_logvar(moments):
  mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
  return mean, jnp.clip(logvar, *LOGVAR_RANGE)


def posterior_sample(moments, rng=None):
  """The mode (rng None) or a sample mean + exp(logvar/2) * eps of the posterior."""
  mean, logvar = posterior_mean_logvar(moments)
  if rng is None:
    return mean
  return mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)


def posterior_kl(moments):
  """KL(posterior || N(0, I)) per image, summed over positions and channels: [N]."""
  mean, logvar = posterior_mean_logvar(moments)
  return 0.5 * jnp.sum(mean ** 2 + jnp.exp(logvar) - 1.0 - logvar, axis=(1, 2, 3))


# -- tiling and slicing ----------------------------------------------------------------------------

def tile_starts(size: int, tile: int, stride: int) -> list[int]:
  """Start offsets of equal tiles covering [0, size): every `stride`, the last flush with the end."""
  if size <= tile:
    return [0]
  starts = list(range(0, size - tile, stride)) + [size - tile]
  return sorted(set(starts))


def _ramp(length: int, ramp: int, at_start: bool, at_end: bool) -> np.ndarray:
  """1-D blend weights: linear ramps (strictly positive) of `ramp` samples on interior sides."""
  w = np.ones(length, np.float32)
  if ramp > 0:
    up = (np.arange(ramp, dtype=np.float32) + 0.5) / ramp
    if not at_start:
      w[:ramp] = np.minimum(w[:ramp], up)
    if not at_end:
      w[length - ramp:] = np.minimum(w[length - ramp:], up[::-1])
  return w


def tiled_apply(fn, x, *, tile: int, overlap: float, scale: float, multiple: int = 1,
                batch_slice: int = 0):
  """fn over overlapping spatial tiles of x [N,H,W,C], outputs blended with linear ramps.

  fn maps [n,th,tw,C] -> [n,th*scale,tw*scale,C']; tile starts are multiples of `multiple` (so
  that scale * start is an integer). tile=0 or a tile covering the image: fn over the whole
  image. fn runs over `batch_slice` (tile, image) pairs at a time (0: all at once).
  """
  n, height, width, _ = x.shape
  if not tile or (height <= tile and width <= tile):
    return sliced_apply(fn, x, batch_slice)
  stride = max(multiple, int(round(tile * (1 - overlap) / multiple)) * multiple)
  rows = tile_starts(height, tile, stride)
  cols = tile_starts(width, tile, stride)
  th, tw = min(tile, height), min(tile, width)
  for s in rows + cols:
    if s % multiple:
      raise ValueError(f"tile start {s} is not a multiple of {multiple}: image {height}x{width} "
                       f"must be a multiple of {multiple}")
  tiles = jnp.stack([x[:, r:r + th, c:c + tw] for r in rows for c in cols])  # [T,N,th,tw,C]
  out = sliced_apply(fn, tiles.reshape((-1,) + tiles.shape[2:]), batch_slice)
  out = out.reshape((len(rows) * len(cols), n) + out.shape[1:])
  oth, otw = out.shape[2], out.shape[3]
  ramp = int(round(tile * overlap * scale))
  acc = jnp.zeros((n, int(height * scale), int(width * scale), out.shape[-1]), jnp.float32)
  norm = jnp.zeros((1, acc.shape[1], acc.shape[2], 1), jnp.float32)
  for i, r in enumerate(rows):
    wr = _ramp(oth, min(ramp, oth), i == 0, i == len(rows) - 1)
    for j, c in enumerate(cols):
      wc = _ramp(otw, min(ramp, otw), j == 0, j == len(cols) - 1)
      w = jnp.asarray(np.outer(wr, wc)[None, :, :, None])
      r0, c0 = int(r * scale), int(c * scale)
      acc = acc.at[:, r0:r0 + oth, c0:c0 + otw].add(w * out[i * len(cols) + j].astype(jnp.float32))
      norm = norm.at[:, r0:r0 + oth, c0:c0 + otw].add(w)
  return (acc / norm).astype(out.dtype)


def sliced_apply(fn, x, batch_slice: int):
  """fn over the leading axis of x, `batch_slice` items at a time (sequential lax.map; one more
  call for a remainder)."""
  size = batch_slice
  if not size or x.shape[0] <= size:
    return fn(x)
  full = (x.shape[0] // size) * size
  head = jax.lax.map(fn, x[:full].reshape((-1, size) + x.shape[1:]))
  head = head.reshape((full,) + head.shape[2:])
  if full == x.shape[0]:
    return head
  return jnp.concatenate([head, fn(x[full:])], axis=0)


# -- frames <-> scaled latents ---------------------------------------------------------------------

def _check_images(x, factor, what):
  if x.ndim < 3 or x.shape[-1] != 3:
    raise ValueError(f"{what} must be [..., H, W, 3]; got shape {x.shape}")
  if x.shape[-3] % factor or x.shape[-2] % factor:
    raise ValueError(f"{what} size {x.shape[-3]}x{x.shape[-2]} is not a multiple of the VAE "
                     f"factor {factor}")


@functools.partial(jax.jit, static_argnums=0)
def _encode(graphdef, state, images, rng):
  vae = nnx.merge(graphdef, state)
  cfg = vae.cfg
  x = images.astype(jnp.float32) / 127.5 - 1.0
  moments = tiled_apply(lambda t: vae.moments(t.astype(cfg["dtype"])), x, tile=cfg["tile_size"],
                        overlap=cfg["tile_overlap"], scale=1.0 / vae.factor, multiple=vae.factor,
                        batch_slice=cfg["batch_slice"])
  z = posterior_sample(moments, rng)
  return (z - cfg["shift_factor"]) * cfg["scaling_factor"]


@functools.partial(jax.jit, static_argnums=0)
def _decode(graphdef, state, latents):
  vae = nnx.merge(graphdef, state)
  cfg = vae.cfg
  z = latents.astype(jnp.float32) / cfg["scaling_factor"] + cfg["shift_factor"]
  tile = cfg["tile_size"] // vae.factor
  x = tiled_apply(lambda t: vae.decode(t.astype(cfg["dtype"])), z, tile=tile,
                  overlap=cfg["tile_overlap"], scale=vae.factor, batch_slice=cfg["batch_slice"])
  return to_uint8(x)


def to_uint8(images):
  """[-1,1] float images -> uint8 (diffusers' postprocess: clamp, *255, round)."""
  x = jnp.clip((images.astype(jnp.float32) + 1.0) * 0.5, 0.0, 1.0)
  return jnp.round(x * 255.0).astype(jnp.uint8)


def encode_frames(vae: AutoencoderKL, frames_uint8, rng=None):
  """uint8 frames [..., H, W, 3] -> scaled latents [..., H/f, W/f, C] float32.

  rng None: the posterior mean; a PRNG key: a posterior sample. Latents are
  (z - shift_factor) * scaling_factor, what the diffusion model trains on.
  """
  frames = jnp.asarray(frames_uint8)
  if frames.dtype != jnp.uint8:
    raise ValueError(f"encode_frames wants uint8 frames; got {frames.dtype}")
  _check_images(frames, vae.factor, "frames")
  lead = frames.shape[:-3]
  flat = frames.reshape((-1,) + frames.shape[-3:])
  graphdef, state = nnx.split(vae)
  z = _encode(graphdef, state, flat, rng)
  return z.reshape(lead + z.shape[1:])


def decode_latents(vae: AutoencoderKL, latents):
  """Scaled latents [..., h, w, C] -> uint8 frames [..., h*f, w*f, 3]."""
  latents = jnp.asarray(latents)
  if latents.ndim < 3 or latents.shape[-1] != vae.latent_channels:
    raise ValueError(f"latents must be [..., h, w, {vae.latent_channels}]; got {latents.shape}")
  lead = latents.shape[:-3]
  flat = latents.reshape((-1,) + latents.shape[-3:])
  graphdef, state = nnx.split(vae)
  x = _decode(graphdef, state, flat)
  return x.reshape(lead + x.shape[1:])
