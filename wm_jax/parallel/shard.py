"""Activation sharding constraints by logical axis name, batch placement, and random draws.

`flat_normal` / `flat_uniform` draw an array of any shape as one flat vector, reshaped. With JAX's
partitionable threefry (the default) the random bits equal those of the shaped draw and do not
depend on how the result is sharded (uniform values are equal; normal ones within 1 ulp, as XLA
may vectorise the inverse error function differently for the two shapes: jax 0.12 on CPU does).
What the flat draw changes is compile time: XLA:CPU compiles the partitionable threefry of a
rank-5 or rank-6 shape about 10x slower than of a flat one (seconds per call site).
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from wm_jax.parallel import rules


def constrain(x, logical_axes: Sequence[str | None]):
  """with_sharding_constraint by logical names under the current mesh; identity without one.

  Every name is an activation name (rules.ACTIVATION_PREFIX) or None: a parameter name here
  would take the parameter's rule. The mesh is the one set with `jax.set_mesh(mesh)`. On an Auto
  mesh this is a sharding constraint (XLA may move data to meet it); on an Explicit mesh it is a
  `reshard`.
  """
  if len(logical_axes) != x.ndim:
    raise ValueError(f"constrain got {len(logical_axes)} logical axes {tuple(logical_axes)} for an "
                     f"array of shape {x.shape}")
  wrong = [name for name in logical_axes if not rules.is_activation(name)]
  if wrong:
    raise ValueError(f"constrain takes activation names ({rules.ACTIVATION_PREFIX}*) or None; got "
                     f"{wrong} in {tuple(logical_axes)}")
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty:
    return x
  spec = rules.logical_to_spec(logical_axes, mesh.axis_names)
  if mesh.are_all_axes_explicit:
    return jax.sharding.reshard(x, spec)
  return jax.lax.with_sharding_constraint(x, spec)


def batch_sharding(mesh) -> jax.sharding.NamedSharding:
  """Leading (batch) dim over the batch rule's mesh axes, the rest replicated: a prefix sharding
  for every leaf of a batch."""
  return jax.sharding.NamedSharding(mesh, rules.logical_to_spec(("batch",), mesh.axis_names))


def device_batch(batch: dict, mesh) -> dict:
  """Per-process numpy batch -> global jax.Arrays sharded on the batch dim (multi-host safe).

  Non-numeric entries (strings, objects) are dropped: they are for logging, not for the model."""
  sharding = batch_sharding(mesh)
  out = {}
  for key, value in batch.items():
    value = np.asarray(value)
    if value.dtype.kind not in "biuf" and value.dtype.name != "bfloat16":
      continue
    out[key] = jax.make_array_from_process_local_data(sharding, value)
  return out


def flat_normal(rng, shape, dtype=jnp.float32):
  """Standard normal of `shape`, drawn flat and reshaped (see the module docstring)."""
  shape = tuple(shape)
  return jax.random.normal(rng, (math.prod(shape),), dtype).reshape(shape)


def flat_uniform(rng, shape, dtype=jnp.float32):
  """Uniform [0, 1) of `shape`, drawn flat and reshaped (see the module docstring)."""
  shape = tuple(shape)
  return jax.random.uniform(rng, (math.prod(shape),), dtype).reshape(shape)
