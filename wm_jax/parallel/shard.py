"""Activation sharding constraints by logical axis name."""

from __future__ import annotations

from typing import Sequence

import jax

from wm_jax.parallel import rules


def constrain(x, logical_axes: Sequence[str | None]):
  """with_sharding_constraint by logical names under the current mesh; identity without one.

  The mesh is the one set with `jax.set_mesh(mesh)`. On an Auto mesh this is a sharding
  constraint (XLA may move data to meet it); on an Explicit mesh it is a `reshard`.
  """
  if len(logical_axes) != x.ndim:
    raise ValueError(f"constrain got {len(logical_axes)} logical axes {tuple(logical_axes)} for an "
                     f"array of shape {x.shape}")
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty:
    return x
  spec = rules.logical_to_spec(logical_axes, mesh.axis_names)
  if mesh.are_all_axes_explicit:
    return jax.sharding.reshard(x, spec)
  return jax.lax.with_sharding_constraint(x, spec)
