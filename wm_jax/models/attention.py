"""Multi-head attention and feed-forward layers with diffusers' parameter names.

`Attention` covers the three uses in the backbone:
  - joint (MMDiT) attention: image tokens and context tokens are projected by separate weights
    (to_q/to_k/to_v and add_q_proj/add_k_proj/add_v_proj), attended together, and split again
    (to_out.0 for the image part, to_add_out for the context part unless context_pre_only);
  - plain self-attention (SD3.5's attn2, temporal and cross-view attn1).
In a context_pre_only block only the image tokens query (add_q_proj / norm_added_q are kept as
non-trainable checkpoint weights). Per-head RMSNorm on q and k (norm_q/norm_k,
norm_added_q/norm_added_k) when qk_norm='rms_norm'.
Tensors are [N, S, D] (N: independent sequences); every attention goes through
wm_jax.kernels.attention.attention with the model's `attention_impl`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from wm_jax.kernels import attention as attention_kernels
from wm_jax.models import layers
from wm_jax.parallel.shard import constrain

QK_NORMS = (None, "rms_norm")


class Attention(nnx.Module):
  """diffusers.Attention (the subset SD3 and OpenDWM's video blocks use), channels last."""

  def __init__(self, dim: int, heads: int, head_dim: int, *, rngs: nnx.Rngs,
               prec: layers.Precision, qkv_bias: bool = True, joint: bool = False,
               context_pre_only: bool = False, qk_norm: str | None = "rms_norm",
               eps: float = 1e-6, impl: str = "auto"):
    if qk_norm not in QK_NORMS:
      raise ValueError(f"qk_norm must be one of {QK_NORMS}, got {qk_norm!r}")
    inner = heads * head_dim
    self.heads, self.head_dim, self.impl = heads, head_dim, impl
    self.joint, self.context_pre_only = joint, context_pre_only
    proj = lambda: layers.linear(dim, inner, ("embed", "heads"), rngs=rngs, prec=prec,
                                 use_bias=qkv_bias)
    norm = lambda: (layers.rms_norm(head_dim, rngs=rngs, prec=prec, eps=eps)
                    if qk_norm else None)
    self.to_q, self.to_k, self.to_v = proj(), proj(), proj()
    self.norm_q, self.norm_k = norm(), norm()
    self.to_out = nnx.List([layers.linear(inner, dim, ("heads", "embed"), rngs=rngs, prec=prec)])
    if joint:
      self.add_k_proj, self.add_v_proj = proj(), proj()
      self.norm_added_k = norm()
      if context_pre_only:
        # The context stream's attention output is dropped, so its queries are never needed:
        # these weights exist only in checkpoints (diffusers creates and ignores them).
        self.add_q_proj = layers.UnusedLinear(dim, inner, ("embed", "heads"), rngs=rngs,
                                              prec=prec)
        self.norm_added_q = (layers.UnusedScale(head_dim, ("head_dim",), prec=prec)
                             if qk_norm else None)
      else:
        self.add_q_proj, self.norm_added_q = proj(), norm()
      self.to_add_out = (None if context_pre_only else
                         layers.linear(inner, dim, ("heads", "embed"), rngs=rngs, prec=prec))

  def _heads(self, x, proj, norm):
    y = proj(x).reshape(*x.shape[:-1], self.heads, self.head_dim)
    return y if norm is None else norm(y)

  def __call__(self, x, context=None, mask=None):
    """x [N, S, D] (and context [N, L, D] for joint attention) -> [N, S, D] (, [N, L, D])."""
    q = self._heads(x, self.to_q, self.norm_q)
    k = self._heads(x, self.to_k, self.norm_k)
    v = self._heads(x, self.to_v, None)
    if self.joint:
      if context is None:
        raise ValueError("joint attention needs a context sequence, got None")
      if not self.context_pre_only:
        q = jnp.concatenate([q, self._heads(context, self.add_q_proj, self.norm_added_q)], 1)
      k = jnp.concatenate([k, self._heads(context, self.add_k_proj, self.norm_added_k)], 1)
      v = jnp.concatenate([v, self._heads(context, self.add_v_proj, None)], 1)
    q = constrain(q, ("activation_batch", "activation_length", "activation_heads", None))
    k = constrain(k, ("activation_batch", "activation_kv_length", "activation_heads", None))
    v = constrain(v, ("activation_batch", "activation_kv_length", "activation_heads", None))
    out = attention_kernels.attention(q, k, v, mask=mask, impl=self.impl)
    out = out.reshape(*out.shape[:2], self.heads * self.head_dim)
    seq = x.shape[1]
    x_out = self.to_out[0](out[:, :seq])
    if not self.joint:
      return x_out
    return x_out, (None if self.context_pre_only else self.to_add_out(out[:, seq:]))


class _Projection(nnx.Module):
  """First layer of a FeedForward (diffusers GELU / GEGLU modules, parameter `proj`)."""

  def __init__(self, din, dout, gated, *, rngs, prec):
    self.gated = gated
    self.proj = layers.linear(din, dout * (2 if gated else 1), ("embed", "mlp"), rngs=rngs,
                              prec=prec)

  def __call__(self, x):
    h = self.proj(x)
    if self.gated:  # GEGLU: value * gelu(gate), exact gelu
      value, gate = jnp.split(h, 2, axis=-1)
      return value * jax.nn.gelu(gate, approximate=False)
    return jax.nn.gelu(h, approximate=True)  # 'gelu-approximate' (tanh)


ACTIVATIONS = {"gelu-approximate": False, "geglu": True}  # name -> gated


class FeedForward(nnx.Module):
  """diffusers FeedForward: net.0 (activation with `proj`), net.1 dropout (no params), net.2."""

  def __init__(self, dim: int, dim_out: int | None = None, *, activation: str, rngs: nnx.Rngs,
               prec: layers.Precision, mult: int = 4):
    if activation not in ACTIVATIONS:
      raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    inner = dim * mult
    self.net = nnx.List([
        _Projection(dim, inner, ACTIVATIONS[activation], rngs=rngs, prec=prec),
        None,  # dropout slot, so the output layer keeps diffusers' index 2
        layers.linear(inner, dim_out or dim, ("mlp", "embed"), rngs=rngs, prec=prec),
    ])

  def __call__(self, x):
    h = self.net[0](x)
    h = constrain(h, ("activation_batch", "activation_length", "activation_mlp"))
    return self.net[2](h)
