"""SD3 / SD3.5 MMDiT joint transformer block (diffusers JointTransformerBlock names).

Image tokens x [N, S, D] and context tokens c [N, L, D] have their own AdaLN-Zero modulation,
projections and feed-forwards and meet in one joint attention. SD3.5 adds a second,
image-only self-attention (`attn2`) whose modulation comes from the same `norm1.linear`
(9 chunks instead of 6). The last block of the stack is `context_pre_only`: its context stream
is only normalised (AdaLayerNormContinuous, 2 chunks) to feed the attention and is not updated.

Chunk order of norm1.linear: shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp
(+ shift_msa2, scale_msa2, gate_msa2). AdaLayerNormContinuous: scale first, then shift.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from wm_jax.models import layers
from wm_jax.models.attention import Attention, FeedForward
from wm_jax.parallel.shard import constrain

# hidden states [N, S, D] between the sub-layers
HIDDEN_AXES = ("activation_batch", "activation_length", "activation_embed")


class AdaLayerNormZero(nnx.Module):
  """`linear` (D -> chunks*D) on SiLU(emb); the parameter-free LayerNorm is applied by callers."""

  def __init__(self, dim: int, chunks: int, *, rngs: nnx.Rngs, prec: layers.Precision):
    self.chunks = chunks
    self.linear = layers.linear(dim, chunks * dim, ("embed", "mlp"), rngs=rngs, prec=prec)

  def __call__(self, emb):
    """emb [N, D] -> list of `chunks` arrays [N, 1, D]."""
    out = self.linear(jax.nn.silu(emb))
    return [c[:, None] for c in jnp.split(out, self.chunks, axis=-1)]


class AdaLayerNormContinuous(nnx.Module):
  """norm(x) * (1 + scale) + shift with (scale, shift) = linear(SiLU(cond)); no affine, eps 1e-6."""

  def __init__(self, dim: int, cond_dim: int, *, rngs: nnx.Rngs, prec: layers.Precision):
    self.linear = layers.linear(cond_dim, 2 * dim, ("embed", "mlp"), rngs=rngs, prec=prec)
    self.norm = layers.layer_norm(dim, rngs=rngs, prec=prec, eps=1e-6, affine=False)

  def __call__(self, x, cond):
    scale, shift = jnp.split(self.linear(jax.nn.silu(cond)), 2, axis=-1)
    return self.norm(x) * (1 + scale[:, None]) + shift[:, None]


def _modulate(x, shift, scale):
  return x * (1 + scale) + shift


class JointTransformerBlock(nnx.Module):

  def __init__(self, dim: int, heads: int, head_dim: int, *, rngs: nnx.Rngs,
               prec: layers.Precision, context_pre_only: bool = False,
               dual_attention: bool = False, qk_norm: str | None = "rms_norm",
               impl: str = "auto"):
    self.context_pre_only, self.dual_attention = context_pre_only, dual_attention
    self.norm1 = AdaLayerNormZero(dim, 9 if dual_attention else 6, rngs=rngs, prec=prec)
    if context_pre_only:
      self.norm1_context = AdaLayerNormContinuous(dim, dim, rngs=rngs, prec=prec)
    else:
      self.norm1_context = AdaLayerNormZero(dim, 6, rngs=rngs, prec=prec)
    self.attn = Attention(dim, heads, head_dim, rngs=rngs, prec=prec, joint=True,
                          context_pre_only=context_pre_only, qk_norm=qk_norm, impl=impl)
    self.attn2 = (Attention(dim, heads, head_dim, rngs=rngs, prec=prec, qk_norm=qk_norm,
                            impl=impl) if dual_attention else None)
    self.norm = layers.layer_norm(dim, rngs=rngs, prec=prec, eps=1e-6, affine=False)
    self.ff = FeedForward(dim, dim, activation="gelu-approximate", rngs=rngs, prec=prec)
    self.ff_context = (None if context_pre_only else
                       FeedForward(dim, dim, activation="gelu-approximate", rngs=rngs, prec=prec))

  def __call__(self, x, context, temb):
    """x [N, S, D], context [N, L, D], temb [N, D] -> (context' or None, x')."""
    x = constrain(x, HIDDEN_AXES)
    mods = self.norm1(temb)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods[:6]
    normed = self.norm(x)
    x_in = _modulate(normed, shift_msa, scale_msa)
    if self.context_pre_only:
      c_in = self.norm1_context(context, temb)
    else:
      c_shift, c_scale, c_gate, c_shift_mlp, c_scale_mlp, c_gate_mlp = self.norm1_context(temb)
      c_in = _modulate(self.norm(context), c_shift, c_scale)
    attn_x, attn_c = self.attn(x_in, c_in)
    x = x + gate_msa * attn_x
    if self.dual_attention:
      shift2, scale2, gate2 = mods[6:]
      x = x + gate2 * self.attn2(_modulate(normed, shift2, scale2))
    x = x + gate_mlp * self.ff(_modulate(self.norm(x), shift_mlp, scale_mlp))
    x = constrain(x, HIDDEN_AXES)
    if self.context_pre_only:
      return None, x
    context = context + c_gate * attn_c
    context = context + c_gate_mlp * self.ff_context(
        _modulate(self.norm(context), c_shift_mlp, c_scale_mlp))
    return context, x
