"""Orbax checkpoints: async saves every N steps, keep the last N plus the best by a metric, the
data-iterator state and the config (JSON) beside the model, resume from the newest COMPLETE step.

Layout of a workdir:  DIR/checkpoints/<step>/{state, data, config, checksums}. Orbax writes a step
into `<step>.orbax-checkpoint-tmp-*` and renames it when complete, so an interrupted write is never
listed as a step. `checksums` holds a fingerprint of every array of the state and of the two JSON
items, taken from the values being saved; a restore recomputes them from the values read back. A
step that is listed but fails to restore or to match its fingerprints (truncated, overwritten or
missing files) is skipped in favour of the next older one, with a message naming what is wrong.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from orbax.checkpoint import checkpoint_managers as policies

log = logging.getLogger(__name__)

ITEMS = ("state", "data", "config", "checksums")


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
  """Starts an (async) save of `state`, the iterator state (a JSON-able dict), the config and
  their fingerprints.

  Returns whether a save was started (Orbax skips steps off the save interval unless force).
  Raises ValueError for a step already saved (set_aside_newer moves damaged ones away first) and
  OSError(ENOSPC) before writing when the disk cannot hold another copy of the state."""
  step = int(step)
  if not (force or manager.should_save(step)):
    return False
  if step in manager.all_steps():
    raise ValueError(f"checkpoint step {step} already exists in {manager.directory}; refusing to "
                     f"write a second copy of it")
  _check_free_space(manager.directory, state, step)
  metrics = None if metrics is None else {k: float(v) for k, v in metrics.items()}
  data_json, config_json = _jsonable(data_state), _to_json(config)
  checksums = {"state": fingerprints(state), "data": _json_crc(data_json),
               "config": _json_crc(config_json)}
  args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_json),
                            config=ocp.args.JsonSave(config_json),
                            checksums=ocp.args.JsonSave(checksums))
  with _disk_errors(manager.directory, step):
    return manager.save(step, args=args, metrics=metrics, force=True)


def wait(manager: ocp.CheckpointManager) -> None:
  """Waits for the pending async save; a full disk is reported as one clear OSError."""
  with _disk_errors(manager.directory, None):
    manager.wait_until_finished()


def _check_free_space(root: str, state, step: int) -> None:
  need = sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(state)
             if hasattr(x, "dtype") and not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key))
  need += 16 << 20  # metadata, JSON items, filesystem blocks
  os.makedirs(root, exist_ok=True)
  free = shutil.disk_usage(root).free
  if free < need:
    raise OSError(errno.ENOSPC, f"not enough disk space for checkpoint step {step} in {root}: it "
                  f"needs about {need / 2**20:.0f} MiB, {free / 2**20:.0f} MiB are free. Nothing "
                  f"was written; the older checkpoints are intact")


class _disk_errors:
  """Turns an ENOSPC anywhere in an Orbax error's chain into one OSError naming the directory."""

  def __init__(self, root: str, step: int | None):
    self.root, self.step = root, step

  def __enter__(self):
    return self

  def __exit__(self, kind, error, tb):
    cause = error
    while cause is not None:
      if isinstance(cause, OSError) and cause.errno == errno.ENOSPC or "No space left" in str(cause):
        which = "the pending checkpoint" if self.step is None else f"checkpoint step {self.step}"
        raise OSError(errno.ENOSPC, f"no space left on the device of {self.root} while writing "
                      f"{which}; the steps listed in {self.root} before it are complete") from None
      cause = cause.__cause__ or cause.__context__
    return False


# --- fingerprints of the saved values ---------------------------------------------------------

def _words(x: jax.Array) -> jax.Array:
  """The bits of x as a flat uint32 vector (one word per element of up to 4 bytes)."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  x = jnp.ravel(x)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
  return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


@jax.jit
def _fingerprint_leaves(leaves):
  def one(x):
    w = _words(x)
    h = (w ^ (jnp.arange(w.size, dtype=jnp.uint32) * jnp.uint32(0x9E3779B9))) * jnp.uint32(0x85EBCA6B)
    h = (h ^ (h >> 13)) * jnp.uint32(0xC2B2AE35)
    return jnp.sum(h ^ (h >> 16), dtype=jnp.uint32)  # wraps mod 2**32: exact in any order
  return [one(x) for x in leaves]


def fingerprints(tree) -> dict[str, dict[str, int]]:
  """{top-level field: {leaf path: uint32 fingerprint}} of every array of `tree`, computed where
  the arrays live (sharded arrays on their devices); independent of the sharding."""
  flat = [(p, x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0] if hasattr(x, "dtype")]
  values = jax.device_get(_fingerprint_leaves([jnp.asarray(x) for _, x in flat]))
  out: dict[str, dict[str, int]] = {}
  for (path, _), value in zip(flat, values):
    head = getattr(path[0], "name", getattr(path[0], "key", str(path[0])))
    out.setdefault(str(head), {})[jax.tree_util.keystr(path[1:])] = int(value)
  return out


def _json_crc(value) -> int:
  return zlib.crc32(json.dumps(value, sort_keys=True).encode())


def _mismatches(saved: dict, tree) -> list[str]:
  """Leaves of `tree` whose fingerprint differs from `saved` (fingerprints of the written state)."""
  bad = []
  for head, leaves in fingerprints(tree).items():
    for path, value in leaves.items():
      want = saved.get(head, {}).get(path)
      if want is None:
        bad.append(f"{head}{path} (no fingerprint saved)")
      elif want != value:
        bad.append(f"{head}{path}")
  return bad


def _verify(step: int, root: str, checksums: dict | None, state, data=None, config=None) -> None:
  """Raises ValueError naming what read back differently from what step `step` wrote."""
  if checksums is None:
    print(f"[checkpoint] step {step} in {root} has no fingerprints (written before they were "
          f"kept): its values cannot be verified", flush=True)
    return
  bad = _mismatches(checksums["state"], state)
  for name, value in (("data", data), ("config", config)):
    if value is not None and _json_crc(value) != checksums[name]:
      bad.append(f"the {name} item")
  if bad:
    shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    raise ValueError(f"checkpoint step {step} in {root}: {len(bad)} value(s) differ from what was "
                     f"written (damaged files): {shown}")


def _read_checksums(step_dir: str) -> dict | None:
  path = os.path.join(step_dir, "checksums")
  if not os.path.isdir(path):
    return None
  return ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(path)


def set_aside_newer(manager: ocp.CheckpointManager, step: int, workdir: str) -> list[str]:
  """Moves the steps newer than `step` (the ones a restore skipped as damaged) to
  WORKDIR/damaged_checkpoints/, so the resumed run can write those steps again; returns the new
  paths. Nothing is deleted."""
  moved = []
  if jax.process_index() == 0:
    for newer in sorted(s for s in manager.all_steps() if s > step):
      target = os.path.join(os.path.abspath(workdir), "damaged_checkpoints", str(newer))
      n = 1
      while os.path.exists(target):
        target = os.path.join(os.path.dirname(target), f"{newer}.{n}")
        n += 1
      os.makedirs(os.path.dirname(target), exist_ok=True)
      shutil.move(os.path.join(manager.directory, str(newer)), target)
      print(f"[checkpoint] moved the damaged step {newer} to {target}", flush=True)
      moved.append(target)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("wm_jax_set_aside_newer")
  manager.reload()
  return moved


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
  """(step, state, data_state, config_json) of the newest step that restores and matches its
  fingerprints; None when there is no step at all; ValueError when there are steps but none
  restores (e.g. another model's).

  `abstract_state` is a tree of jax.ShapeDtypeStruct with `.sharding` set: each array is read
  straight into its shards."""
  errors = []
  root = str(manager.directory)
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      checksums = _read_checksums(os.path.join(root, str(step)))
      out = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
          config=ocp.args.JsonRestore()))
      _verify(step, root, checksums, out.state, out.data, out.config)
    except Exception as e:  # a damaged step: fall back to the one before
      log.warning("checkpoint step %d in %s does not restore (%s: %s); trying an older one",
                  step, root, type(e).__name__, str(e)[:200])
      print(f"[checkpoint] step {step} is incomplete or damaged ({type(e).__name__}: "
            f"{str(e)[:300]}); skipping it", flush=True)
      errors.append(f"step {step}: {type(e).__name__}: {str(e)[:300]}")
      continue
    return step, out.state, _from_json(out.data), out.config
  if errors:  # steps exist but none fits: a different model/config, not a fresh start
    raise ValueError(f"no checkpoint in {root} restores into this config's state; "
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
      checksums = _read_checksums(os.path.join(root, str(step)))
      restored = ocp.PyTreeCheckpointer().restore(path, args=ocp.args.PyTreeRestore(
          item=target, restore_args=jax.tree.map(as_args, target), partial_restore=True))
      _verify(step, root, checksums, restored)
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
