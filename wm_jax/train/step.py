"""The train step: ONE `jax.jit` with explicit in/out shardings and the state donated.

`nnx.merge` happens inside the traced function (free at run time: it only re-assembles Python
objects while tracing); there is no nnx.jit and no split/merge in the hot loop.

    step_fn = make_train_step(graphdef, loss_fn, tx, config, mesh, state_shardings)
    state, metrics = step_fn(state, batch)     # batch: dict of global jax.Arrays

loss_fn(model, batch, rng, config, train=True) -> (scalar loss, dict of scalar metrics), the
contract of wm_jax.diffusion.losses.loss_fn. The per-step key is fold_in(seed key, step), so a
resumed run draws the same noise as an uninterrupted one.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from wm_jax.parallel.shard import batch_sharding
from wm_jax.train import optim
from wm_jax.train.state import TrainState

__all__ = ["make_train_step", "step_body"]


def step_body(graphdef, loss_fn: Callable, tx: optax.GradientTransformation, config):
  """The pure (state, batch) -> (state, metrics) function, before jit."""
  tc = config.train
  schedule = optim.make_schedule(tc)
  ema_decay = float(tc.ema_decay)
  guard = bool(tc.nan_guard)
  base_key = jax.random.key(int(tc.seed) + 1)

  def body(state: TrainState, batch):
    rng = jax.random.fold_in(base_key, state.step)

    def loss_of(params):
      # copy=True: fresh Variables at this (grad) trace level; NNX transforms inside the model
      # (nnx.scan, nnx.remat) refuse Variables created at the outer jit level
      model = nnx.merge(graphdef, params, state.rest, copy=True)
      loss, metrics = loss_fn(model, batch, rng, config, train=True)
      _, _, rest = nnx.split(model, nnx.Param, ...)
      return loss, (metrics, rest)

    (loss, (metrics, rest)), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state.ema
    if ema is not None and ema_decay > 0:
      ema = jax.tree.map(lambda e, p: e * ema_decay + (1.0 - ema_decay) * p.astype(e.dtype), ema, params)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) if guard else jnp.bool_(True)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
    new = TrainState(step=state.step + 1, params=keep(params, state.params), rest=keep(rest, state.rest),
                     opt_state=keep(opt_state, state.opt_state),
                     ema=None if ema is None else keep(ema, state.ema),
                     skipped=state.skipped + (~ok).astype(jnp.int32))
    out = {k: jnp.asarray(v, jnp.float32) for k, v in dict(metrics).items()}
    out.update(loss=loss.astype(jnp.float32), grad_norm=grad_norm.astype(jnp.float32),
               learning_rate=jnp.asarray(schedule(state.step), jnp.float32),
               skipped_steps=new.skipped.astype(jnp.float32), update_ok=ok.astype(jnp.float32))
    return new, out

  return body


def make_train_step(graphdef, loss_fn, tx, config, mesh: Mesh, state_shardings, donate: bool = True):
  """Jitted step with explicit shardings. Call it (and lower it) under `jax.set_mesh(mesh)` so the
  model's activation constraints see the mesh; the returned wrapper does that."""
  replicated = NamedSharding(mesh, PartitionSpec())
  jitted = jax.jit(step_body(graphdef, loss_fn, tx, config),
                   in_shardings=(state_shardings, batch_sharding(mesh)),
                   out_shardings=(state_shardings, replicated),
                   donate_argnums=(0,) if donate else ())

  class Step:
    """Callable jitted step that enters the mesh; `.lower(...)` for AOT / cost analysis."""
    jit = jitted

    def __call__(self, state, batch):
      with jax.set_mesh(mesh):
        return jitted(state, batch)

    def lower(self, state, batch):
      with jax.set_mesh(mesh):
        return jitted.lower(state, batch)

  return Step()
