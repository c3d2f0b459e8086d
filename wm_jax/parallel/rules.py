"""Logical axis names and the one table that maps them to mesh axes.

Parameters are created with logical names (`nnx.with_partitioning(init, ("embed", "mlp"))`) and
activations are constrained with logical names (`shard.constrain(x, ("batch", "tokens", "embed"))`).
Only this table knows the mesh axes ('data', 'fsdp', 'tensor', optional 'context').

Vocabulary:
  batch     leading batch dim of activations
  tokens    token/sequence dim of activations
  embed     model width D (params: the input or output side of width D)
  mlp       feed-forward hidden width, and modulation outputs (k * D)
  heads     attention projection width H * Dh
  kv        key/value sequence (activations)
  norm      1-D scale/bias vectors of norms; head_dim: per-head RMSNorm scales
  conv_in / conv_out   channel dims of convolutions
  None      never sharded
"""

from __future__ import annotations

from typing import Sequence

from jax.sharding import PartitionSpec

# logical name -> mesh axis, tuple of mesh axes, or None (replicated)
LOGICAL_AXIS_RULES: dict[str, object] = {
    "batch": ("data", "fsdp"),
    "tokens": "context",
    "kv": None,
    "embed": "fsdp",
    "mlp": "tensor",
    "heads": "tensor",
    "head_dim": None,
    "norm": None,
    "conv_in": None,
    "conv_out": "fsdp",
}


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
