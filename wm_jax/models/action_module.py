"""MaskGWM's unified action conditioning (paper 3.1, following Vista): the ego actions of a frame
become an addition to the keys and values of a cross-attention in every temporal block.

    ac = config.model.action_module        # None: no action module (defaults.action_module())
    cond.actions = pack(batch, ac)         # [B,T,P] float32 (conditioning.model_inputs does this)
    kv = ActionEmbedding(...)(cond.actions, cond.action_keep)   # [B,T,2D]: key part, value part

Groups, in this order (ac.groups picks a subset; the order stays this one):

  group       batch key (schema)                               values  Fourier scale s
  speed       actions[..., 0], m/s                             1       40 m/s
  steering    actions[..., 1], rad, positive left              1       1 rad
  trajectory  trajectory [B,T,K,2], next K ego positions, m    2K      64 m
              (x forward, y left, in the ego frame of frame t; packed x0, y0, x1, y1, ...)
  goal_point  goal_point [B,T,2], the trajectory's end in the  2       2
              front camera, normalised image coords (u/W, v/H; the schema allows [-1, 2])
  command     command [B,T] int32: 0 straight, 1 left,          1       (a learned embedding)
              2 right, 3 stop

`pack` concatenates the groups' values in that order into Conditioning.actions [B,T,P]
(P = input_width(ac); the command as its class index, a float). Conditioning.action_keep [B,G]
bool (G = len(ac.groups)) says which groups of a sample are given (None: all); training draws it
with the per-group dropout probabilities (sample_keep).

ActionEmbedding (parameters `action_embedding.*`): each continuous value x of a group with scale s
gives F = ac.fourier_features features sin(pi 2^i x / s), cos(pi 2^i x / s), i = 0..F/2-1: the
lowest frequency is unambiguous over [-s, s] (highway speeds, road-wheel angles, trajectories of
a few seconds, image coordinates; a value beyond aliases on that frequency only), the highest
resolves s / 2^(F/2-1) (F = 16: 0.3 m/s, 0.45 deg, 0.5 m, 1/64 of the image). The command takes
an F-wide embedding of its 4 classes. A group that is not kept has its features set to exactly
zero. The features of all groups are concatenated and go through linear_1 -> SiLU -> linear_2
(both without bias) to [B,T,2D], so a dropped group contributes nothing and all groups dropped
give exactly zero: the same as no actions (Conditioning.actions None, the action-free mode).

ActionCrossAttention (parameters `temporal_transformer_blocks.j.action_attn.*`): queries are the
temporal block's tokens of one (frame, view) image, after a LayerNorm (`norm`); keys and values
are the frame's text context [L, Dj] (Conditioning.context; zeros without text) through to_k /
to_v, plus the action key / value part (broadcast over the L tokens, before the qk norm, as
Vista adds its action projections to the projected keys and values). to_out.0 is zero-initialised,
so a new module (and one converted from OpenDWM) leaves the model's output exactly unchanged.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wm_jax.data import schema
from wm_jax.kernels import attention as attention_kernels
from wm_jax.models import layers
from wm_jax.parallel.shard import constrain

GROUPS = ("speed", "steering", "trajectory", "goal_point", "command")
COMMANDS = schema.COMMANDS                                 # command class i is COMMANDS[i]
# Fourier scale s of each continuous group, in the group's units (see the module docstring).
GROUP_SCALES = {"speed": 40.0, "steering": 1.0, "trajectory": 64.0, "goal_point": 2.0}
# the batch key each group reads
GROUP_KEYS = {"speed": "actions", "steering": "actions", "trajectory": "trajectory",
              "goal_point": "goal_point", "command": "command"}
CONFIG_KEYS = ("trajectory_points", "fourier_features", "groups", "dropout")


def check_config(ac) -> None:
  """ValueError naming the key for a model.action_module config the module cannot build."""
  keys = _names(ac)
  if keys != set(CONFIG_KEYS):
    raise ValueError(f"model.action_module has keys {sorted(keys)}; it needs exactly "
                     f"{sorted(CONFIG_KEYS)} (defaults.action_module() gives them)")
  groups = tuple(ac.groups)
  unknown = [g for g in groups if g not in GROUPS]
  if unknown or not groups or len(set(groups)) != len(groups):
    raise ValueError(f"model.action_module.groups={list(groups)}: a non-empty list of distinct "
                     f"names from {list(GROUPS)}")
  features = ac.fourier_features
  if not isinstance(features, int) or features <= 0 or features % 2:
    raise ValueError(f"model.action_module.fourier_features={features!r} must be a positive even "
                     "int (half sines, half cosines)")
  if "trajectory" in groups and (not isinstance(ac.trajectory_points, int)
                                 or ac.trajectory_points <= 0):
    raise ValueError(f"model.action_module.trajectory_points={ac.trajectory_points!r} must be a "
                     "positive int with the 'trajectory' group")
  rates = _names(ac.dropout) if hasattr(ac.dropout, "items") else set()
  for g in groups:
    if g not in rates:
      raise ValueError(f"model.action_module.dropout has no probability for group {g!r}")
    p = ac.dropout[g]
    if not 0 <= p <= 1:
      raise ValueError(f"model.action_module.dropout.{g}={p!r} must be in [0, 1]")


def _names(section) -> set[str]:
  """The keys of a ConfigDict or of the model's frozen copy of one."""
  return {str(k) for k, _ in section.items()}


def group_sizes(ac) -> dict[str, int]:
  """Values per group in Conditioning.actions, for the groups of `ac`, in GROUPS order."""
  sizes = {"speed": 1, "steering": 1, "trajectory": 2 * int(ac.trajectory_points or 0),
           "goal_point": 2, "command": 1}
  return {g: sizes[g] for g in ordered_groups(ac)}


def ordered_groups(ac) -> tuple[str, ...]:
  return tuple(g for g in GROUPS if g in tuple(ac.groups))


def input_width(ac) -> int:
  """P, the last dim of Conditioning.actions."""
  return sum(group_sizes(ac).values())


def fourier_features(x, count: int, scale: float):
  """[...] -> [..., count] float32: sin(pi 2^i x / scale) for i < count/2, then the cosines."""
  freqs = jnp.asarray(np.pi * 2.0 ** np.arange(count // 2) / scale, jnp.float32)
  angles = jnp.asarray(x, jnp.float32)[..., None] * freqs
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], -1)


def pack(batch: Mapping[str, Any], ac):
  """Conditioning.actions [B,T,P] float32 from the batch keys of the groups of `ac`.

  ValueError naming the key when the batch lacks one, a shape does not fit, or a command is not
  a class index (checked where the values are concrete)."""
  groups = ordered_groups(ac)
  for g in groups:
    if GROUP_KEYS[g] not in batch:
      raise ValueError(f"the action module (group {g!r}) needs batch key {GROUP_KEYS[g]!r}; batch "
                       f"has {sorted(batch)} (model_inputs(..., drop_actions=True) is the "
                       "action-free mode)")
  lead = None
  parts = []
  for g in groups:
    value = jnp.asarray(batch[GROUP_KEYS[g]])
    if g in ("speed", "steering"):
      if value.ndim != 3 or value.shape[-1] < 2:
        raise ValueError(f"batch['actions'] must be [B,T,A] with A >= 2 (speed, steering), got "
                         f"shape {tuple(value.shape)}")
      part = value[..., GROUPS.index(g), None]
    elif g == "trajectory":
      k = int(ac.trajectory_points)
      if value.ndim != 4 or tuple(value.shape[2:]) != (k, 2):
        raise ValueError(f"batch['trajectory'] must be [B,T,K,2] with K = "
                         f"model.action_module.trajectory_points = {k} (data.trajectory_points "
                         f"must match), got shape {tuple(value.shape)}")
      part = value.reshape(value.shape[:2] + (2 * k,))
    elif g == "goal_point":
      if value.ndim != 3 or value.shape[-1] != 2:
        raise ValueError(f"batch['goal_point'] must be [B,T,2], got shape {tuple(value.shape)}")
      part = value
    else:
      if value.ndim != 2 or not jnp.issubdtype(value.dtype, jnp.integer):
        raise ValueError(f"batch['command'] must be [B,T] integers, got shape "
                         f"{tuple(value.shape)} {value.dtype}")
      if not isinstance(value, jax.core.Tracer):
        bad = np.unique(np.asarray(value)[(np.asarray(value) < 0)
                                          | (np.asarray(value) >= len(COMMANDS))])
        if bad.size:
          raise ValueError(f"batch['command'] has values {bad.tolist()[:4]}; commands are class "
                           f"indices 0..{len(COMMANDS) - 1} ({', '.join(COMMANDS)})")
      part = value[..., None]
    if lead is not None and tuple(part.shape[:2]) != lead:
      raise ValueError(f"batch[{GROUP_KEYS[g]!r}] has [B,T]={tuple(part.shape[:2])}, the other "
                       f"action keys {lead}")
    lead = tuple(part.shape[:2])
    parts.append(part.astype(jnp.float32))
  return jnp.concatenate(parts, -1)


def sample_keep(rng, batch: int, ac):
  """[B,G] bool: group g of sample b is kept with probability 1 - ac.dropout[g], independently
  per sample and group (G = the groups of `ac`, in GROUPS order)."""
  drop = jnp.asarray([float(ac.dropout[g]) for g in ordered_groups(ac)], jnp.float32)
  return jax.random.uniform(rng, (batch, drop.shape[0])) >= drop


class ActionEmbedding(nnx.Module):
  """Conditioning.actions [B,T,P] (+ action_keep [B,G]) -> [B,T,2*dim]: the key and value
  additions of every ActionCrossAttention (see the module docstring)."""

  def __init__(self, ac, dim: int, *, rngs, prec: layers.Precision):
    self.groups = ordered_groups(ac)
    self.sizes = tuple(group_sizes(ac)[g] for g in self.groups)  # a tuple: graphdefs are hashed
    self.features = int(ac.fourier_features)
    self.command_embedding = nnx.Embed(
        len(COMMANDS), self.features, dtype=prec.dtype, param_dtype=prec.param_dtype,
        embedding_init=nnx.with_partitioning(nnx.initializers.normal(1.0), (None, None)),
        rngs=rngs) if "command" in self.groups else None
    width = self.features * sum(self.sizes)
    self.linear_1 = layers.linear(width, dim, (None, "embed"), rngs=rngs, prec=prec,
                                  use_bias=False)
    self.linear_2 = layers.linear(dim, 2 * dim, ("embed", "mlp"), rngs=rngs, prec=prec,
                                  use_bias=False)

  def __call__(self, actions, keep=None, dtype=None):
    """actions [B,T,P]; keep [B,G] bool or None (all kept) -> [B,T,2*dim]."""
    b, t = actions.shape[:2]
    feats, start = [], 0
    for g, (name, size) in enumerate(zip(self.groups, self.sizes)):
      values = actions[..., start:start + size].astype(jnp.float32)
      start += size
      if name == "command":
        index = jnp.clip(jnp.round(values[..., 0]), 0, len(COMMANDS) - 1).astype(jnp.int32)
        e = self.command_embedding(index).astype(jnp.float32)
      else:
        e = fourier_features(values, self.features, GROUP_SCALES[name]).reshape(b, t, -1)
      if keep is not None:
        e = jnp.where(jnp.asarray(keep, bool)[:, g, None, None], e, 0.0)
      feats.append(e)
    h = jnp.concatenate(feats, -1)
    if dtype is not None:
      h = h.astype(dtype)
    return self.linear_2(jax.nn.silu(self.linear_1(h)))


class ActionCrossAttention(nnx.Module):
  """Cross-attention of a temporal block's frame tokens to the frame's context + actions."""

  def __init__(self, dim: int, context_dim: int, heads: int, head_dim: int, *, rngs,
               prec: layers.Precision, qk_norm: str | None = "rms_norm", impl: str = "auto"):
    inner = heads * head_dim
    self.heads, self.head_dim, self.impl = heads, head_dim, impl
    self.norm = layers.layer_norm(dim, rngs=rngs, prec=prec)
    self.to_q = layers.linear(dim, inner, ("embed", "heads"), rngs=rngs, prec=prec,
                              use_bias=False)
    # The text-context side is sharded like the embedding (fsdp): one of these per temporal
    # block is Dj x D (4096 x 1536 at SD3.5 sizes), too large to keep whole on every device.
    self.to_k = layers.linear(context_dim, inner, ("embed", "heads"), rngs=rngs, prec=prec,
                              use_bias=False)
    self.to_v = layers.linear(context_dim, inner, ("embed", "heads"), rngs=rngs, prec=prec,
                              use_bias=False)
    norm = lambda: (layers.rms_norm(head_dim, rngs=rngs, prec=prec, eps=1e-5)
                    if qk_norm else None)
    self.norm_q, self.norm_k = norm(), norm()
    self.to_out = nnx.List([layers.linear(inner, dim, ("heads", "embed"), rngs=rngs, prec=prec,
                                          zero_init=True)])

  def _heads(self, y, norm):
    y = y.reshape(*y.shape[:-1], self.heads, self.head_dim)
    return y if norm is None else norm(y)

  def __call__(self, x, context, action_kv=None):
    """x [B,T,V,h,w,D], context [B,T,V,L,Dj], action_kv [B,T,2*inner] or None -> like x (the
    residual to add)."""
    b, t, v, h, w, dim = x.shape
    n = b * t * v
    q = self._heads(self.to_q(self.norm(x.reshape(n, h * w, dim))), self.norm_q)
    ctx = context.reshape(n, *context.shape[3:]).astype(x.dtype)
    k, val = self.to_k(ctx), self.to_v(ctx)
    if action_kv is not None:
      add = jnp.broadcast_to(action_kv[:, :, None].astype(x.dtype),
                             (b, t, v, action_kv.shape[-1])).reshape(n, 1, -1)
      add_k, add_v = jnp.split(add, 2, axis=-1)
      k, val = k + add_k, val + add_v
    k, val = self._heads(k, self.norm_k), self._heads(val, None)
    q = constrain(q, ("activation_batch", "activation_length", "activation_heads", None))
    k = constrain(k, ("activation_batch", "activation_kv_length", "activation_heads", None))
    val = constrain(val, ("activation_batch", "activation_kv_length", "activation_heads", None))
    out = attention_kernels.attention(q, k, val, impl=self.impl)
    out = self.to_out[0](out.reshape(n, h * w, self.heads * self.head_dim))
    return out.reshape(b, t, v, h, w, dim)
