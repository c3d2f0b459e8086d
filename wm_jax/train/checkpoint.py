"""Orbax checkpoints: async saves every N steps, keep the last N plus the best by a metric, the
data-iterator state and the config (JSON) beside the model, resume from the newest COMPLETE step.

Layout of a workdir:  DIR/checkpoints/<step>/{state, data, config, ...}. Orbax writes a step into
`<step>.orbax-checkpoint-tmp-*` and renames it when complete, so an interrupted write is never
listed as a step; a step that is listed but fails to restore (damaged files) is skipped in favour
of the next older one, with a warning.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from orbax.checkpoint import checkpoint_managers as policies

log = logging.getLogger(__name__)

ITEMS = ("state", "data", "config")


def directory(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def make_manager(workdir: str, ckpt_config) -> ocp.CheckpointManager:
  c = ckpt_config
  keep = [policies.LatestN(n=int(c.keep))]
  metric = str(c.best_metric)
  if metric:
    keep.append(policies.BestN(get_metric_fn=lambda m: float(m[metric]),
                               # BestN keeps the last n after sorting: descending for 'min'
                               reverse=(c.best_mode == "min"),
                               n=int(c.keep_best), keep_checkpoints_without_metrics=False))
  options = ocp.CheckpointManagerOptions(
      save_interval_steps=int(c.every_steps),
      preservation_policy=policies.AnyPreservationPolicy(keep),
      enable_async_checkpointing=bool(c.async_save),
      create=True, cleanup_tmp_directories=True)
  return ocp.CheckpointManager(directory(workdir), options=options, item_names=ITEMS)


def _to_json(config) -> dict:
  return json.loads(config.to_json_best_effort()) if hasattr(config, "to_json_best_effort") else dict(config)


def save(manager: ocp.CheckpointManager, step: int, state, data_state: Any, config,
         metrics: dict | None = None, force: bool = False) -> bool:
  """Starts an (async) save of `state`, the iterator state (a JSON-able dict) and the config.

  Returns whether a save was started (Orbax skips steps off the save interval unless force)."""
  metrics = None if metrics is None else {k: float(v) for k, v in metrics.items()}
  args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                            data=ocp.args.JsonSave(_jsonable(data_state)),
                            config=ocp.args.JsonSave(_to_json(config)))
  return manager.save(int(step), args=args, metrics=metrics, force=force)


def _jsonable(x):
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, (np.floating,)):
    return float(x)
  if isinstance(x, bytes):
    return {"__bytes__": x.decode("latin-1")}
  return x


def _from_json(x):
  if isinstance(x, dict):
    if set(x) == {"__bytes__"}:
      return x["__bytes__"].encode("latin-1")
    return {k: _from_json(v) for k, v in x.items()}
  if isinstance(x, list):
    return [_from_json(v) for v in x]
  return x


def restore_latest(manager: ocp.CheckpointManager, abstract_state):
  """(step, state, data_state, config_json) of the newest step that restores; None when there is
  no step at all; ValueError when there are steps but none restores (e.g. another model's).

  `abstract_state` is a tree of jax.ShapeDtypeStruct with `.sharding` set: each array is read
  straight into its shards."""
  errors = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      out = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
          config=ocp.args.JsonRestore()))
    except Exception as e:  # a damaged step: fall back to the one before
      log.warning("checkpoint step %d in %s does not restore (%s: %s); trying an older one",
                  step, manager.directory, type(e).__name__, str(e)[:200])
      print(f"[checkpoint] step {step} is incomplete or damaged ({type(e).__name__}); skipping it",
            flush=True)
      errors.append(f"step {step}: {type(e).__name__}: {str(e)[:300]}")
      continue
    return step, out.state, _from_json(out.data), out.config
  if errors:  # steps exist but none fits: a different model/config, not a fresh start
    raise ValueError(f"no checkpoint in {manager.directory} restores into this config's state; "
                     f"refusing to start fresh over them:\n" + "\n".join(errors))
  return None


def saved_config(workdir: str) -> tuple[int, dict]:
  """(step, config dict) saved with the newest step of `workdir` whose config reads."""
  root = directory(workdir)
  steps = _steps(root)
  if not steps:
    raise FileNotFoundError(f"no checkpoint under {root} (expected {root}/<step>/config)")
  for step in reversed(steps):
    config_dir = os.path.join(root, str(step), "config")
    for name in sorted(os.listdir(config_dir)) if os.path.isdir(config_dir) else ():
      try:
        with open(os.path.join(config_dir, name)) as f:
          return step, json.load(f)
      except (ValueError, OSError, UnicodeDecodeError):
        continue
    print(f"[checkpoint] step {step} has no readable config; trying an older one", flush=True)
  raise ValueError(f"no step under {root} has a readable config (steps {steps})")


def _steps(root: str) -> list[int]:
  if not os.path.isdir(root):
    return []
  return sorted(int(n) for n in os.listdir(root)
                if n.isdigit() and os.path.isdir(os.path.join(root, n)))


def kept_ema(workdir: str) -> bool:
  """Whether the run in `workdir` kept an EMA copy (its saved config's train.ema_decay > 0)."""
  _, config = saved_config(workdir)
  return float(config.get("train", {}).get("ema_decay", 0.0)) > 0


def restore_weights(workdir: str, abstract_state, *, use_ema: bool):
  """(step, weights, rest) of the newest step that restores, read into the shardings of
  `abstract_state` (a TrainState of ShapeDtypeStructs with .sharding); the optimizer state is not
  read. use_ema: the EMA copy (shaped like the params) instead of the params."""
  root = directory(workdir)
  steps = _steps(root)
  if not steps:
    raise FileNotFoundError(f"no checkpoint under {root}")
  which = "ema" if use_ema else "params"
  if use_ema and not kept_ema(workdir):
    raise ValueError(f"the run in {root} kept no EMA copy (train.ema_decay=0): use the params")
  target = {which: abstract_state.params, "rest": abstract_state.rest}
  as_args = lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding, global_shape=a.shape, dtype=a.dtype)
  errors = []
  for step in reversed(steps):
    path = os.path.join(root, str(step), "state")
    try:
      restored = ocp.PyTreeCheckpointer().restore(path, args=ocp.args.PyTreeRestore(
          item=target, restore_args=jax.tree.map(as_args, target), partial_restore=True))
    except Exception as e:  # a damaged or foreign step: fall back to the one before
      print(f"[checkpoint] step {step} in {root} does not restore ({type(e).__name__}: "
            f"{str(e)[:200]}); trying an older one", flush=True)
      errors.append(f"step {step}: {type(e).__name__}: {str(e)[:300]}")
      continue
    return step, restored[which], restored["rest"]
  raise ValueError(f"no checkpoint in {root} restores into this config's {which}:\n" +
                   "\n".join(errors))


def save_module(module, path: str) -> None:
  """The nnx.Param state of `module` to a bare Orbax directory at `path` (overwritten)."""
  _, params, _ = nnx.split(module, nnx.Param, ...)
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(os.path.abspath(path), params, force=True)
  ckptr.wait_until_finished()


def restore_module(factory, path: str):
  """The module `factory()` builds, with its parameters read from `path` (save_module).

  Built abstractly (no random init) unless the module holds non-parameter state."""
  abstract = nnx.eval_shape(factory)
  _, _, rest = nnx.split(abstract, nnx.Param, ...)
  module = factory() if jax.tree.leaves(rest) else abstract
  graphdef, params, rest = nnx.split(module, nnx.Param, ...)
  restored = ocp.StandardCheckpointer().restore(os.path.abspath(path), params)
  return nnx.merge(graphdef, restored, rest)


def is_module_dir(path: str) -> bool:
  """Whether `path` is a save_module directory."""
  return os.path.exists(os.path.join(path, "_CHECKPOINT_METADATA"))


def abstract_with_shardings(abstract_state, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract_state, shardings)
