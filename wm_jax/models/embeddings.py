"""Patch, position, timestep, text, index and camera embeddings (SD3 / OpenDWM conventions).

  sinusoidal(x, dim)          diffusers `Timesteps(dim, True, downscale_freq_shift=0)`:
                              [cos(x w_i), sin(x w_i)], w_i = 10000^(-i / (dim/2)).
  sincos_2d_table(...)        diffusers `get_2d_sincos_pos_embed`: first half of the channels
                              encodes the column (w) position, second half the row (h) position;
                              positions are index / (grid / base_size) / interpolation_scale.
  PatchEmbed                  Conv k=p s=p + the cropped table (`pos_embed.pos_embed` Buffer
                              [1, max^2, D], cropped to the latent grid, centred).
  MLPEmbedding                linear_1 -> SiLU -> linear_2 (TimestepEmbedding, text projection,
                              time/view index MLPs, camera embedding).
  TimestepTextEmbedding       SD3's CombinedTimestepTextProjEmbeddings.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wm_jax.models import layers
from wm_jax.models.buffers import Buffer

TIMESTEP_CHANNELS = 256
TIMESTEP_SCALE = 1000.0  # SD3 embeds tau * 1000


def sinusoidal(x, dim: int, *, flip_sin_to_cos: bool = True, max_period: float = 10000.0):
  """[...] -> [..., dim] float32 sin-cos embedding of the values of x (downscale shift 0)."""
  half = dim // 2
  freqs = jnp.exp(-np.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  angles = jnp.asarray(x, jnp.float32)[..., None] * freqs
  parts = [jnp.cos(angles), jnp.sin(angles)] if flip_sin_to_cos else [jnp.sin(angles),
                                                                       jnp.cos(angles)]
  out = jnp.concatenate(parts, -1)
  if dim % 2:
    out = jnp.pad(out, [(0, 0)] * (out.ndim - 1) + [(0, 1)])
  return out


def _sincos_1d(dim: int, pos):
  omega = 1.0 / 10000 ** (jnp.arange(dim // 2, dtype=jnp.float32) / (dim / 2.0))
  out = pos.reshape(-1)[:, None] * omega
  return jnp.concatenate([jnp.sin(out), jnp.cos(out)], 1)


def sincos_2d_table(dim: int, grid: int, base_size: int, interpolation_scale: float = 1.0):
  """[grid*grid, dim] float32 table, row-major over (row, column) token positions.

  Computed with jnp (float32) so that nnx.eval_shape of a full-size model allocates nothing.
  """
  if dim % 4:
    raise ValueError(f"2-D sin-cos embedding needs dim divisible by 4, got {dim}")
  coords = jnp.arange(grid, dtype=jnp.float32) / (grid / base_size) / interpolation_scale
  rows, cols = jnp.meshgrid(coords, coords, indexing="ij")
  return jnp.concatenate([_sincos_1d(dim // 2, cols), _sincos_1d(dim // 2, rows)], 1)


class PatchEmbed(nnx.Module):
  """latents [N, h*p, w*p, C] -> tokens [N, h, w, D] with the cropped 2-D sin-cos table added."""

  def __init__(self, in_channels: int, dim: int, patch_size: int, max_size: int, base_size: int,
               *, rngs: nnx.Rngs, prec: layers.Precision):
    self.patch_size, self.max_size = patch_size, max_size
    self.proj = layers.conv(in_channels, dim, patch_size, stride=patch_size, rngs=rngs, prec=prec,
                            axes=("conv_in", "embed"))
    table = sincos_2d_table(dim, max_size, base_size)[None]
    self.pos_embed = Buffer(jnp.asarray(table, prec.param_dtype),
                            out_sharding=(None, None, "embed"))

  def cropped(self, h: int, w: int):
    """The centred [h, w, D] crop of the table for an h x w token grid (diffusers' rule)."""
    if h > self.max_size or w > self.max_size:
      raise ValueError(f"token grid {h}x{w} exceeds pos_embed_max_size={self.max_size}")
    top, left = (self.max_size - h) // 2, (self.max_size - w) // 2
    table = self.pos_embed.get_value().reshape(self.max_size, self.max_size, -1)
    return jax.lax.slice(table, (top, left, 0), (top + h, left + w, table.shape[-1]))

  def __call__(self, latents):
    x = self.proj(latents)
    return x + self.cropped(x.shape[-3], x.shape[-2]).astype(x.dtype)


class MLPEmbedding(nnx.Module):
  """linear_1 -> SiLU -> linear_2 (diffusers TimestepEmbedding / PixArtAlphaTextProjection)."""

  def __init__(self, din: int, hidden: int, dout: int, *, rngs: nnx.Rngs,
               prec: layers.Precision, axes=(None, "embed", "embed")):
    self.linear_1 = layers.linear(din, hidden, axes[:2], rngs=rngs, prec=prec)
    self.linear_2 = layers.linear(hidden, dout, axes[1:], rngs=rngs, prec=prec)

  def __call__(self, x):
    return self.linear_2(jax.nn.silu(self.linear_1(x)))


class TimestepTextEmbedding(nnx.Module):
  """SD3 conditioning vector: MLP(sinusoidal(tau * 1000)) + MLP(pooled text)."""

  def __init__(self, dim: int, pooled_dim: int, *, rngs: nnx.Rngs, prec: layers.Precision):
    self.timestep_embedder = MLPEmbedding(TIMESTEP_CHANNELS, dim, dim, rngs=rngs, prec=prec)
    self.text_embedder = MLPEmbedding(pooled_dim, dim, dim, rngs=rngs, prec=prec)

  def __call__(self, tau, pooled, dtype=None):
    """tau [...] in [0, 1], pooled [..., P] -> (conditioning [..., D], timestep part [..., D])."""
    t_in = sinusoidal(tau * TIMESTEP_SCALE, TIMESTEP_CHANNELS)
    if dtype is not None:
      t_in = t_in.astype(dtype)
    t_emb = self.timestep_embedder(t_in)
    return t_emb + self.text_embedder(pooled), t_emb
