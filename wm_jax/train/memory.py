"""Backend-independent memory accounting of a train step, from abstract shapes.

XLA's own memory analysis depends on the backend (the CPU upcasts bf16, so its temporaries
overstate a GPU's). Two figures do not: the bytes of the train state (params, optimizer state,
EMA), and the bytes of the residuals the backward pass keeps from the forward pass -- the
activations the remat policy saves -- read off the jaxpr of the loss's VJP. Residuals that are
inputs (the params themselves) are counted apart, since the state already holds them.
"""

from __future__ import annotations

import math

import jax

from wm_jax.train import flops


def tree_bytes(tree) -> int:
  """Bytes of every array (or ShapeDtypeStruct) leaf of a pytree."""
  return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree)
             if hasattr(x, "shape") and hasattr(x, "dtype"))


def saved_residual_bytes(fn, params, *args) -> tuple[int, int]:
  """(residual bytes, of which inputs) that the VJP of fn(params, *args) w.r.t. params keeps.

  params and args may be ShapeDtypeStructs: only the jaxpr is built, nothing runs."""
  closed = jax.make_jaxpr(lambda p, *a: jax.vjp(lambda q: fn(q, *a), p)[1])(params, *args)
  inputs = {id(v) for v in closed.jaxpr.invars}
  saved = from_inputs = 0
  seen = set()
  for var in closed.jaxpr.outvars:
    if not hasattr(var, "aval") or id(var) in seen or not hasattr(var.aval, "shape"):
      continue
    seen.add(id(var))
    n = math.prod(var.aval.shape) * var.aval.dtype.itemsize
    saved += n
    if id(var) in inputs:
      from_inputs += n
  return saved, from_inputs


def loss_residual_bytes(graphdef, params, rest, loss_fn, batch, config) -> tuple[int, int]:
  """saved_residual_bytes of loss_fn(model, batch, rng, config, train=True) w.r.t. the params, with
  the model merged inside the trace as the train step does."""
  loss = flops.loss_of_params(graphdef, loss_fn, config)
  return saved_residual_bytes(loss, flops.abstract(params), flops.abstract(rest),
                              flops.abstract(batch))
