"""Train state: the NNX model split into graphdef (static) + params + other variables, the optax
state, an optional EMA copy of the params, the step and the count of skipped (non-finite) steps.

Only arrays live in TrainState, so it goes through `jax.jit` (with shardings and donation) and
Orbax as one pytree; the graphdef stays outside and `nnx.merge` rebuilds the module inside the
step function.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx


@flax.struct.dataclass
class TrainState:
  step: jax.Array                 # int32 scalar: number of updates applied or skipped
  params: Any                     # nnx.State of nnx.Param
  rest: Any                       # nnx.State of every other variable (may be empty)
  opt_state: Any
  ema: Any                        # nnx.State like params, or None when EMA is off
  skipped: jax.Array              # int32 scalar: steps whose update was skipped (NaN/Inf)


def split(model: nnx.Module):
  """(graphdef, params, rest) of a module."""
  return nnx.split(model, nnx.Param, ...)


def init_fn(model_factory: Callable[[], nnx.Module], tx: optax.GradientTransformation,
            ema: bool) -> Callable[[], TrainState]:
  """A function of no arguments that builds the model and returns its fresh TrainState."""

  def init():
    _, params, rest = split(model_factory())
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest,
                      opt_state=tx.init(params), ema=jax.tree.map(jnp.copy, params) if ema else None,
                      skipped=jnp.zeros((), jnp.int32))

  return init


def abstract(model_factory, tx, ema: bool):
  """(graphdef, TrainState of ShapeDtypeStructs): no memory is allocated, nothing is run."""
  graphdef, _, _ = split(nnx.eval_shape(model_factory))
  return graphdef, jax.eval_shape(init_fn(model_factory, tx, ema))


def create(model_factory, tx, ema: bool, shardings=None):
  """(graphdef, state) with the state placed by `shardings`.

  On a mesh of more than one device the init is jitted with out_shardings, so each device creates
  only its shard (models larger than one device's memory). On one device the init runs eagerly:
  compiling a whole model's initializer costs far more than running it op by op on a CPU.
  """
  graphdef, _ = abstract(model_factory, tx, ema)
  leaves = jax.tree.leaves(shardings) if shardings is not None else []
  if leaves and max(len(s.device_set) for s in leaves) > 1:
    return graphdef, jax.jit(init_fn(model_factory, tx, ema), out_shardings=shardings)()
  state = init_fn(model_factory, tx, ema)()
  return graphdef, state if shardings is None else jax.device_put(state, shardings)


def merge(graphdef, state: TrainState, use_ema: bool = False) -> nnx.Module:
  params = state.ema if (use_ema and state.ema is not None) else state.params
  return nnx.merge(graphdef, params, state.rest)

