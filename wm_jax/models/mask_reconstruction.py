"""Mask reconstruction module of MaskGWM (paper Sec. 3.2-3.3), with OpenDWM's parameter names.

Training only. The encoder blocks run on the K kept tokens of every row; before the last
`decode_layers` blocks this module

  1. builds the diffusion-related mask tokens of the dropped positions (paper Eq. 3)
         m_tau = (1 - tau) * f_m(eps) + tau * p  +  proj(pos3d)
     f_m = `noise_proj` (Conv3d, kernel (1,3,3), stride (1,p,p), padding (0,1,1): the latent noise
     eps [.., h*p, w*p, C] lands on the token grid [.., h, w, D]), p = `mask_token`, pos3d = the
     3-D sin-cos table of (frame, row, column) as OpenDWM's MaskPatchEmbed builds it
     (diffusers get_3d_sincos_pos_embed: D/4 temporal channels, then 3D/4 spatial ones; with
     mask.pos_table='backbone' the caller's pos_embed table instead), and proj =
     `mask_path_embed.proj`;
  2. scatters kept tokens and mask tokens back to full width W;
  3. runs the side blocks: F_s (`sideblocks`, attention over a frame's h*W tokens) for M_spatial
     samples, F_t (`temporal_sideblocks`, attention over the T frames of one token position) for
     M_time samples (Eq. 4). With batch > 1 both chains run on the whole batch and
     `jnp.where(is_time)` picks one per sample: static shapes for one extra full-width block per
     side block (about 1/(number of backbone blocks) of the forward's FLOPs). With batch 1 (one
     GPU, batch 1) a `cond` runs only the sample's own chain;
  4. keeps the kept tokens as they came (OpenDWM's "masked shortcut"): only dropped positions take
     the side blocks' output.

Side block = OpenDWM's STDiT3Block (PixArt-style): per-frame modulation `t_block(temb)` + the
block's `scale_shift_table` (6, D) -> shift/scale/gate for attention and MLP, LayerNorm without
affine (eps 1e-6), self-attention `attn` with RMS qk-norm, un-gated cross-attention `cross_attn`
from the frame's tokens to that frame's text context (D wide, after the backbone's
context_embedder), MLP fc1/GELU(tanh)/fc2 with ratio 4.
Per-frame modulation is applied to each frame's own tokens (OpenDWM tiles the frames in the wrong
order when frames carry different timesteps; not copied).

Where this differs from OpenDWM on purpose:
  - the paper's m_tau = (1-tau) f_m(eps) + tau p. OpenDWM's "trans" recipe with target
    ["noise", "learnable"] computes tau * f_m(eps) + (1 - tau) * p, the reverse weighting; the
    paper's formula is used (paper behaviour, OpenDWM names);
  - the M_spatial / M_time choice is per sample (OpenDWM: per (sample, view));
  - kept tokens in column order (OpenDWM: random order).

Built from the shared layers (wm_jax.models.layers: linear, conv, layer_norm, zeros_param;
wm_jax.models.attention.Attention) with the models' conventions: a layers.Precision (compute
dtype, storage dtype) and a layers.KeyStream for initial values (an nnx.Rngs given to MaskModule
is wrapped in one). Two pieces stay local because the shared layers name them differently:
  - SideAttention: attention.Attention plus cross-attention (q from x, k and v from the context
    through the same to_k / to_v) and the added-kv weights of diffusers' Attention
    (`add_k_proj`, `add_v_proj`, `norm_added_q`, `norm_added_k`) that OpenDWM's processor never
    applies: layers.UnusedLinear / UnusedScale, i.e. Buffers, saved and converted name for name
    but not `nnx.Param`, so optimizers (wrt=nnx.Param) leave them alone;
  - Mlp: timm's fc1 / fc2 names (attention.FeedForward uses diffusers' net.0.proj / net.2).

Flax layouts: Linear kernel (in, out), Conv kernel (kD, kH, kW, in, out), norm weight `scale`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wm_jax.kernels import attention as attention_kernels
from wm_jax.models import attention, layers, masking

MLP_RATIO = 4
QK_NORM_EPS = 1e-5  # diffusers Attention default eps for its RMSNorm
LAYER_NORM_EPS = 1e-6
POS_TABLES = ("3d_sincos", "backbone")


class SideAttention(attention.Attention):
  """diffusers Attention(query_dim=D, added_kv_proj_dim=D, qk_norm='rms_norm', bias=True) as
  AttnProcessor2_0 runs it: q from x, k/v from the context (or x), RMSNorm on q and k per head.
  The added-kv projections and norms are checkpoint-only (never applied)."""

  def __init__(self, dim: int, heads: int, head_dim: int, *, rngs, prec: layers.Precision,
               impl: str = "auto"):
    super().__init__(dim, heads, head_dim, rngs=rngs, prec=prec, qk_norm="rms_norm",
                     eps=QK_NORM_EPS, impl=impl)
    unused = lambda: layers.UnusedLinear(dim, heads * head_dim, ("embed", "heads"), rngs=rngs,
                                         prec=prec)
    self.add_k_proj, self.add_v_proj = unused(), unused()
    self.norm_added_q = layers.UnusedScale(head_dim, ("head_dim",), prec=prec)
    self.norm_added_k = layers.UnusedScale(head_dim, ("head_dim",), prec=prec)

  def __call__(self, x, context=None):
    """x [N, S, D], context [N, L, D] or None (self-attention) -> [N, S, D]."""
    if context is None:
      return super().__call__(x)
    q = self._heads(x, self.to_q, self.norm_q)
    k = self._heads(context, self.to_k, self.norm_k)
    v = self._heads(context, self.to_v, None)
    out = attention_kernels.attention(q, k, v, mask=None, impl=self.impl)
    return self.to_out[0](out.reshape(*out.shape[:2], self.heads * self.head_dim))


class Mlp(nnx.Module):
  """timm Mlp (STDiT3's names): fc2(GELU_tanh(fc1(x)))."""

  def __init__(self, dim: int, hidden: int, *, rngs, prec: layers.Precision):
    self.fc1 = layers.linear(dim, hidden, ("embed", "mlp"), rngs=rngs, prec=prec)
    self.fc2 = layers.linear(hidden, dim, ("mlp", "embed"), rngs=rngs, prec=prec)

  def __call__(self, x):
    return self.fc2(jax.nn.gelu(self.fc1(x), approximate=True))


class SideBlock(nnx.Module):
  """OpenDWM STDiT3Block on full-width tokens x [B,T,V,h,W,D].

  temporal=False: self-attention over each frame's h*W tokens (F_s);
  temporal=True:  self-attention over the T frames of each (view, row, column) (F_t).
  """

  def __init__(self, dim: int, num_heads: int, head_dim: int, *, temporal: bool, rngs,
               prec: layers.Precision = layers.Precision(), impl: str = "auto"):
    self.temporal = temporal
    table = jax.random.normal(rngs.params(), (6, dim), prec.param_dtype) / math.sqrt(dim)
    self.scale_shift_table = nnx.Param(table, out_sharding=(None, "embed"))
    self.norm = layers.layer_norm(dim, rngs=rngs, prec=prec, eps=LAYER_NORM_EPS, affine=False)
    self.attn = SideAttention(dim, num_heads, head_dim, rngs=rngs, prec=prec, impl=impl)
    self.cross_attn = SideAttention(dim, num_heads, head_dim, rngs=rngs, prec=prec, impl=impl)
    self.mlp = Mlp(dim, dim * MLP_RATIO, rngs=rngs, prec=prec)

  def __call__(self, x, context, modulation):
    """x [B,T,V,h,W,D]; context [B,T,V,L,D]; modulation [B,T,V,6,D] (t_block of each frame's temb)."""
    b, t, v, h, w, d = x.shape
    mod = (modulation + self.scale_shift_table[...]).astype(x.dtype)[:, :, :, :, None, None, :]
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
        mod[:, :, :, i] for i in range(6))
    y = self.norm(x) * (1 + scale_msa) + shift_msa
    if self.temporal:
      y = jnp.moveaxis(y, 1, 4).reshape(b * v * h * w, t, d)
      y = self.attn(y)
      y = jnp.moveaxis(y.reshape(b, v, h, w, t, d), 4, 1)
    else:
      y = self.attn(y.reshape(b * t * v, h * w, d)).reshape(x.shape)
    x = x + gate_msa * y
    ctx = context.reshape((b * t * v,) + context.shape[3:]).astype(x.dtype)
    x = x + self.cross_attn(x.reshape(b * t * v, h * w, d), ctx).reshape(x.shape)
    y = self.norm(x) * (1 + scale_mlp) + shift_mlp
    return x + gate_mlp * self.mlp(y)


def sincos_3d(frames: int, rows: int, width: int, dim: int) -> np.ndarray:
  """[T, h, W, D] float32: OpenDWM's mask position table (diffusers get_3d_sincos_pos_embed with
  spatial_size=(W, h)): concat(temporal 1-D sin-cos (D/4), column sin-cos (3D/8), row sin-cos (3D/8)).
  """
  if dim % 16:
    raise ValueError(f"the 3-D sin-cos table needs a width divisible by 16, got dim={dim}")

  def one_d(d, pos):
    omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
    out = np.outer(pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)

  spatial = 3 * dim // 4
  row, col = np.meshgrid(np.arange(rows, dtype=np.float64), np.arange(width, dtype=np.float64),
                         indexing="ij")
  space = np.concatenate([one_d(spatial // 2, col), one_d(spatial // 2, row)], 1)  # [h*W, 3D/4]
  time = one_d(dim // 4, np.arange(frames, dtype=np.float64))  # [T, D/4]
  table = np.concatenate([np.repeat(time[:, None], rows * width, 1),
                          np.repeat(space[None], frames, 0)], -1)
  return table.reshape(frames, rows, width, dim).astype(np.float32)


class _PathEmbed(nnx.Module):
  """OpenDWM MaskPatchEmbed(merge_type='add'): mask token + proj(position table)."""

  def __init__(self, dim: int, *, rngs, prec: layers.Precision):
    self.proj = layers.linear(dim, dim, ("embed", "embed"), rngs=rngs, prec=prec)


class MaskModule(nnx.Module):
  """MaskGWM token reconstruction; param paths equal OpenDWM's `mask_module.*` keys.

  `rngs`: an nnx.Rngs or a layers.KeyStream; `dtype` / `param_dtype` form its layers.Precision.
  """

  def __init__(self, dim, num_heads, head_dim, latent_channels, patch_size, mask_config, *, rngs,
               attention_impl="auto", dtype=None, param_dtype=jnp.float32):
    if num_heads * head_dim != dim:
      raise ValueError(f"MaskModule needs dim == num_heads * head_dim, got dim={dim}, "
                       f"num_heads={num_heads}, head_dim={head_dim}")
    side = int(mask_config.side_blocks)
    if side < 1:
      raise ValueError(f"mask.side_blocks must be >= 1, got {mask_config.side_blocks}")
    if mask_config.pos_table not in POS_TABLES:
      raise ValueError(f"mask.pos_table must be one of {POS_TABLES}, got {mask_config.pos_table!r}")
    if isinstance(rngs, nnx.Rngs):
      rngs = layers.KeyStream(rngs)
    prec = layers.Precision(dtype, param_dtype)
    self.dim, self.patch_size, self.latent_channels = dim, patch_size, latent_channels
    self.pos_table = mask_config.pos_table
    self.mask_token = layers.zeros_param((1, 1, dim), (None, None, "embed"), prec)
    block = lambda temporal: SideBlock(dim, num_heads, head_dim, temporal=temporal, rngs=rngs,
                                       prec=prec, impl=attention_impl)
    self.sideblocks = nnx.List([block(False) for _ in range(side)])
    self.temporal_sideblocks = nnx.List([block(True) for _ in range(side)])
    self.noise_proj = layers.conv(latent_channels, dim, (1, 3, 3), rngs=rngs, prec=prec,
                                  stride=(1, patch_size, patch_size),
                                  padding=((0, 0), (1, 1), (1, 1)))
    self.mask_path_embed = _PathEmbed(dim, rngs=rngs, prec=prec)
    self.t_block = nnx.Dict({"1": layers.linear(dim, 6 * dim, ("embed", "mlp"), rngs=rngs,
                                                prec=prec)})

  def noise_features(self, noise):
    """f_m(eps): noise [B,T,V,h*p,w*p,C] -> [B,T,V,h,w,D]."""
    b, t, v, hl, wl, c = noise.shape
    p = self.patch_size
    if c != self.latent_channels or hl % p or wl % p:
      raise ValueError(f"noise has shape {tuple(noise.shape)}; need [B,T,V,h,w,C] with "
                       f"C={self.latent_channels} and h, w divisible by patch_size={p}")
    out = self.noise_proj(noise.reshape(b * t * v, 1, hl, wl, c))
    return out.reshape(b, t, v, hl // p, wl // p, self.dim)

  def mask_tokens(self, noise, mask: masking.RowMask, tau, pos_embed=None):
    """Mask tokens of the dropped positions [B,T,V,h,W-K,D] (Eq. 3 plus position embedding).

    The position table is OpenDWM's 3-D sin-cos table of (frame, row, column) when
    mask.pos_table == '3d_sincos' (pos_embed is not used), else `pos_embed`: [h,W,D] (shared by
    all frames) or [T,h,W,D].
    """
    feats = self.noise_features(noise)
    b, t, v, h, w, d = feats.shape
    if mask.keep_idx.shape[:4] != (b, t, v, h) or mask.width != w:
      raise ValueError(f"mask indices {tuple(mask.keep_idx.shape)} + {tuple(mask.drop_idx.shape)} "
                       f"do not fit the token grid [B,T,V,h,W]={(b, t, v, h, w)} of the noise")
    if tuple(tau.shape) != (b, t, v):
      raise ValueError(f"tau has shape {tuple(tau.shape)}, expected [B,T,V]={(b, t, v)}")
    if self.pos_table == "3d_sincos":
      pos_embed = sincos_3d(t, h, w, d)
    elif pos_embed is None:
      raise ValueError("mask.pos_table='backbone' needs the caller's pos_embed table; got None")
    pos_embed = jnp.asarray(pos_embed)
    if pos_embed.shape not in ((h, w, d), (t, h, w, d)):
      raise ValueError(f"pos_embed has shape {tuple(pos_embed.shape)}, expected [h,W,D]="
                       f"{(h, w, d)} or [T,h,W,D]={(t, h, w, d)}")
    if pos_embed.ndim == 3:
      pos_embed = jnp.broadcast_to(pos_embed, (t, h, w, d))
    pos = jnp.broadcast_to(pos_embed[None, :, None].astype(feats.dtype), feats.shape)
    tau_ = tau.astype(feats.dtype)[:, :, :, None, None, None]
    token = self.mask_token[...].astype(feats.dtype).reshape(d)
    dropped = ((1 - tau_) * masking.gather_dropped(feats, mask) + tau_ * token)
    return dropped + self.mask_path_embed.proj(masking.gather_dropped(pos, mask))

  def __call__(self, kept_hidden, mask: masking.RowMask, noise, tau, temb, context,
               pos_embed=None):
    """kept_hidden [B,T,V,h,K,D] -> reconstructed full-width tokens [B,T,V,h,W,D]."""
    b, t, v, h, k, d = kept_hidden.shape
    if d != self.dim or mask.keep_idx.shape != (b, t, v, h, k):
      raise ValueError(f"kept_hidden has shape {tuple(kept_hidden.shape)}; the mask keeps "
                       f"{tuple(mask.keep_idx.shape)} and the module width is {self.dim}")
    if tuple(temb.shape) != (b, t, v, d):
      raise ValueError(f"temb has shape {tuple(temb.shape)}, expected [B,T,V,D]={(b, t, v, d)}")
    if context.ndim != 5 or tuple(context.shape[:3]) != (b, t, v) or context.shape[-1] != d:
      raise ValueError(f"context has shape {tuple(context.shape)}, expected [B,T,V,L,D] with "
                       f"[B,T,V]={(b, t, v)} and D={d}")
    tokens = self.mask_tokens(noise, mask, tau, pos_embed).astype(kept_hidden.dtype)
    full = masking.scatter_rows(kept_hidden, tokens, mask)
    modulation = self.t_block["1"](jax.nn.silu(temb)).reshape(b, t, v, 6, d)

    def chain(blocks, x):
      for block in blocks:
        x = block(x, context, modulation)
      return x

    if b == 1:  # one sample uses one branch: run only that one
      out = nnx.cond(mask.is_time[0], lambda m, x: chain(m.temporal_sideblocks, x),
                     lambda m, x: chain(m.sideblocks, x), self, full)
    else:
      out = jnp.where(mask.is_time[:, None, None, None, None, None],
                      chain(self.temporal_sideblocks, full), chain(self.sideblocks, full))
    dropped = masking.dropped_positions(mask)[..., None]
    return jnp.where(dropped, out, full)
