"""Logical axis names and the one table that maps them to mesh axes.

Parameters are created with parameter names (`nnx.with_partitioning(init, ("embed", "mlp"))`);
activations are constrained with activation names, all starting with `activation_`
(`shard.constrain(x, ("activation_batch", "activation_length", "activation_embed"))`), as in
maxtext. The two sets have their own rules: the model width of a weight is sharded over 'fsdp',
the model width of an activation is not (its batch is). Only this table knows the mesh axes
('data', 'fsdp', 'tensor', optional 'context').

Parameter names:
  embed     model width D (the input or output side of width D)
  mlp       feed-forward hidden width, and modulation outputs (k * D)
  heads     attention projection width H * Dh
  norm      1-D scale/bias vectors of norms; head_dim: per-head RMSNorm scales
  conv_in / conv_out   channel dims of convolutions

Activation names (shard.constrain accepts only these):
  activation_batch      leading batch dim (a batch of images or of sequences)
  activation_length     query / token sequence dim
  activation_kv_length  key / value sequence dim of attention
  activation_embed      model width D: whole on every device
  activation_heads      attention heads H
  activation_mlp        feed-forward hidden width

Data name:
  batch     the batch dim of input batches (shard.batch_sharding)

None is never sharded.
"""

from __future__ import annotations

from typing import Sequence

from jax.sharding import PartitionSpec

# logical name -> mesh axis, tuple of mesh axes, or None (replicated)
LOGICAL_AXIS_RULES: dict[str, object] = {
    # parameters
    "embed": "fsdp",
    "mlp": "tensor",
    "heads": "tensor",
    "head_dim": None,
    "norm": None,
    "conv_in": None,
    "conv_out": "fsdp",
    # activations
    "activation_batch": ("data", "fsdp"),
    "activation_length": "context",
    "activation_kv_length": None,
    "activation_embed": None,
    "activation_heads": "tensor",
    "activation_mlp": "tensor",
    # data
    "batch": ("data", "fsdp"),
}
ACTIVATION_PREFIX = "activation_"


def is_activation(name: str | None) -> bool:
  """True for an activation name (and None, which any array may use)."""
  return name is None or name.startswith(ACTIVATION_PREFIX)


def logical_to_spec(logical_axes: Sequence[str | None], mesh_axis_names: Sequence[str],
                    rules: dict[str, object] | None = None) -> PartitionSpec:
  """PartitionSpec for `logical_axes` on a mesh with `mesh_axis_names`.

  Mesh axes the mesh does not have (e.g. 'context') are dropped; a mesh axis is used at most once
  per spec (the first logical dim that asks for it gets it).
  """
  rules = LOGICAL_AXIS_RULES if rules is None else rules
  used: set[str] = set()
  out = []
  for name in logical_axes:
    if name is None:
      out.append(None)
      continue
    if name not in rules:
      raise ValueError(f"logical axis {name!r} has no rule; known: {sorted(rules)}")
    target = rules[name]
    axes = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
    axes = tuple(a for a in axes if a in mesh_axis_names and a not in used)
    used.update(axes)
    out.append(None if not axes else (axes[0] if len(axes) == 1 else axes))
  return PartitionSpec(*out)
