"""Temporal and row-wise cross-view blocks, mixed into the spatial stream by AlphaBlenders.

Hidden states live as x [B, T, V, h, w, D] (w may be the kept width K on the masked path).
A video block sees x + (index embedding + camera embedding) rearranged into sequences:

  temporal 'pointwise'   (B V h w) sequences of T tokens
  temporal 'rowwise'     (B V h)   sequences of T*w tokens
  temporal 'full'        (B V)     sequences of T*h*w tokens
  cross-view 'rowwise'   (B T h)   sequences of V*w tokens, view i's row may attend to view j's
                         row iff view_adjacency[b, i, j] (BlockMask with block_size = w)

and its output y is blended: alpha * x + (1 - alpha) * y, alpha = sigmoid(mix_factor), forced to
1 for samples whose temporal / cross-view path is switched off.

VTSelfAttentionBlock follows OpenDWM's residual wiring:
  u = u + ff_in(norm_in(u)); u = u + attn1(norm1(u)); u = u + ff(norm3(u)).
Temporal blocks also carry the paper's Eq. 5 modulation (MaskGWM 7.1), a parameter OpenDWM does
not have: the block input is (1 + scale) * u + shift with (scale, shift) = time_modulation.linear(
SiLU(e(m_c tau))), zero-initialised so that a fresh or converted model behaves as OpenDWM's.
With model.action_module, temporal blocks also carry MaskGWM's action cross-attention
(models.action_module.ActionCrossAttention, parameters `action_attn.*`, which OpenDWM lacks) between
attn1 and ff: u = u + action_attn(u per (frame, view) image, the frame's text context + actions),
its output projection zero-initialised for the same reason.
"""

from __future__ import annotations

import einops
import jax
import jax.numpy as jnp
from flax import nnx

from wm_jax.kernels.attention import BlockMask
from wm_jax.models import layers
from wm_jax.models.attention import Attention, FeedForward

TEMPORAL_TYPES = ("pointwise", "rowwise", "full")
CROSSVIEW_TYPES = ("rowwise",)

_TEMPORAL_PATTERNS = {
    "pointwise": "b t v h w d -> (b v h w) t d",
    "rowwise": "b t v h w d -> (b v h) (t w) d",
    "full": "b t v h w d -> (b v) (t h w) d",
}


def _invert(pattern: str) -> str:
  left, right = pattern.split(" -> ")
  return f"{right} -> {left}"


def temporal_sequences(x, kind: str):
  """[B, T, V, h, w, D] -> [N, S, D] for temporal attention of type `kind`."""
  if kind not in _TEMPORAL_PATTERNS:
    raise ValueError(f"temporal_attention_type must be one of {TEMPORAL_TYPES}, got {kind!r}")
  return einops.rearrange(x, _TEMPORAL_PATTERNS[kind])


def temporal_unsequences(y, kind: str, shape):
  b, t, v, h, w, _ = shape
  return einops.rearrange(y, _invert(_TEMPORAL_PATTERNS[kind]), b=b, t=t, v=v, h=h, w=w)


_CROSSVIEW_PATTERN = "b t v h w d -> (b t h) (v w) d"


def crossview_sequences(x):
  return einops.rearrange(x, _CROSSVIEW_PATTERN)


def crossview_unsequences(y, shape):
  b, t, v, h, w, _ = shape
  return einops.rearrange(y, _invert(_CROSSVIEW_PATTERN), b=b, t=t, v=v, h=h, w=w)


def crossview_mask(view_adjacency, frames: int, rows: int, width: int):
  """BlockMask for the (B T h) row sequences of V*width tokens, or None (all views attend)."""
  if view_adjacency is None:
    return None
  allowed = jnp.repeat(jnp.asarray(view_adjacency, bool), frames * rows, axis=0)
  return BlockMask(block_size=width, allowed=allowed)


class AlphaBlender(nnx.Module):
  """alpha * spatial + (1 - alpha) * video, alpha = sigmoid(mix_factor) (1 where disabled)."""

  def __init__(self, merge_factor: float, *, prec: layers.Precision):
    self.mix_factor = layers.zeros_param((1,), (None,), prec, value=merge_factor)

  def alpha(self, disabled=None):
    alpha = jax.nn.sigmoid(self.mix_factor.get_value().astype(jnp.float32))
    if disabled is None:
      return alpha
    return jnp.where(jnp.asarray(disabled, bool), 1.0, alpha)

  def __call__(self, spatial, video, disabled=None):
    """spatial, video [B, ...]; disabled [B] bool or None."""
    alpha = self.alpha(disabled)
    if disabled is not None:
      alpha = alpha.reshape(alpha.shape + (1,) * (spatial.ndim - 1))
    alpha = alpha.astype(spatial.dtype)
    return alpha * spatial + (1 - alpha) * video


class TimeModulation(nnx.Module):
  """Paper-only (MaskGWM Eq. 5): (1 + scale) * u + shift from a timestep embedding."""

  def __init__(self, dim: int, *, rngs: nnx.Rngs, prec: layers.Precision):
    self.linear = layers.linear(dim, 2 * dim, ("embed", "mlp"), rngs=rngs, prec=prec,
                                zero_init=True)

  def __call__(self, u, emb):
    """u [..., D], emb broadcastable to u[..., :] with last dim D."""
    scale, shift = jnp.split(self.linear(jax.nn.silu(emb)), 2, axis=-1)
    return u * (1 + scale) + shift


class VTSelfAttentionBlock(nnx.Module):
  """OpenDWM's VTSelfAttentionBlock (LayerNorm eps 1e-5, GEGLU feed-forwards, qk RMSNorm)."""

  def __init__(self, dim: int, heads: int, head_dim: int, *, rngs: nnx.Rngs,
               prec: layers.Precision, qk_norm: str | None = "rms_norm", impl: str = "auto",
               time_modulation: bool = False, action_attn=None):
    """action_attn: an action_module.ActionCrossAttention (built by the caller from its own keys,
    so that the other parameters' initial values do not depend on it) or None."""
    self.norm_in = layers.layer_norm(dim, rngs=rngs, prec=prec)
    self.ff_in = FeedForward(dim, dim, activation="geglu", rngs=rngs, prec=prec)
    self.norm1 = layers.layer_norm(dim, rngs=rngs, prec=prec)
    # diffusers Attention defaults: no q/k/v bias, eps 1e-5 for the qk norms.
    self.attn1 = Attention(dim, heads, head_dim, rngs=rngs, prec=prec, qkv_bias=False,
                           qk_norm=qk_norm, eps=1e-5, impl=impl)
    self.norm3 = layers.layer_norm(dim, rngs=rngs, prec=prec)
    self.ff = FeedForward(dim, dim, activation="geglu", rngs=rngs, prec=prec)
    self.time_modulation = TimeModulation(dim, rngs=rngs, prec=prec) if time_modulation else None
    self.action_attn = action_attn

  def __call__(self, u, mask=None, cross=None):
    """u [N, S, D] -> [N, S, D]. cross: None, or a function [N, S, D] -> [N, S, D] whose output is
    added between attn1 and ff (the temporal blocks' action cross-attention)."""
    u = u + self.ff_in(self.norm_in(u))
    u = u + self.attn1(self.norm1(u), mask=mask)
    if cross is not None:
      u = u + cross(u)
    return u + self.ff(self.norm3(u))


def temporal_step(block: VTSelfAttentionBlock, mixer: AlphaBlender, pos_mlp, x, *, kind: str,
                  index_emb, cond_emb=None, time_emb=None, disabled=None, frame_context=None,
                  action_kv=None):
  """One temporal block on x [B, T, V, h, w, D].

  index_emb [T, D']: sinusoidal frame-index features fed to pos_mlp (-> [T, D]);
  cond_emb [B, T, V, D] or None: camera/action embedding added with the frame embedding;
  time_emb [B, T, V, D] or None: the timestep embedding of m_c * tau for Eq. 5;
  frame_context [B, T, V, L, Dj]: the text context of each frame, keys/values of the block's action
  cross-attention (needed iff the block has one); action_kv [B, T, 2D] or None (no actions): the
  action embedding added to that cross-attention's keys and values.
  """
  emb = pos_mlp(index_emb.astype(x.dtype))[None, :, None]  # [1, T, 1, D]
  if cond_emb is not None:
    emb = emb + cond_emb
  u = x + emb[:, :, :, None, None]
  if block.time_modulation is not None and time_emb is not None:
    u = block.time_modulation(u, time_emb[:, :, :, None, None].astype(x.dtype))
  cross = None
  if block.action_attn is not None:
    if frame_context is None:
      raise ValueError("this temporal block has an action cross-attention: temporal_step needs "
                       "frame_context [B,T,V,L,Dj]")
    # the cross-attention sees the tokens of one (frame, view) image: leave the temporal layout
    cross = lambda s: temporal_sequences(block.action_attn(
        temporal_unsequences(s, kind, x.shape), frame_context, action_kv), kind)
  elif action_kv is not None:
    raise ValueError("action_kv given, but this temporal block has no action cross-attention")
  y = block(temporal_sequences(u, kind), cross=cross)
  return mixer(x, temporal_unsequences(y, kind, x.shape), disabled)


def crossview_step(block: VTSelfAttentionBlock, mixer: AlphaBlender, pos_mlp, x, *, index_emb,
                   cond_emb=None, view_adjacency=None, disabled=None):
  """One row-wise cross-view block on x [B, T, V, h, w, D]; index_emb [V, D']."""
  b, t, v, h, w, _ = x.shape
  emb = pos_mlp(index_emb.astype(x.dtype))[None, None]  # [1, 1, V, D]
  if cond_emb is not None:
    emb = emb + cond_emb
  u = x + emb[:, :, :, None, None]
  y = block(crossview_sequences(u), mask=crossview_mask(view_adjacency, t, h, w))
  return mixer(x, crossview_unsequences(y, x.shape), disabled)
