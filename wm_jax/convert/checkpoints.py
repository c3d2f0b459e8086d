"""Reading and writing the Orbax checkpoints the converters work on.

Two layouts are read (`read_params`):
  train      DIR/checkpoints/<step>/{state, config} (wm_jax.train.checkpoint: `state` is the
             TrainState pytree with `params`, `rest`, `ema`, ...; `config` the run's config JSON).
             DIR may be the workdir, its checkpoints/ directory, or one <step> directory; the
             newest step is used. Only params/ema + rest are read (partial restore: the optimizer
             state is never loaded).
  params     DIR/{params, rest, config.json}, what tools/convert_from_pytorch.py writes: `params`
             the nnx.Param state and `rest` every other checkpointed variable (Buffer,
             UnusedWeight), each an Orbax StandardCheckpointer directory; `config.json` holds
             {"model": config.model, "mask": config.mask}. A bare StandardCheckpointer directory
             of an nnx.Param state (wm_jax.train.loop.save_module) reads as params alone.

Arrays come back as a flat {wm_jax path tuple: numpy array} (path parts as strings; they are
matched by param_map.torch_key).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from wm_jax.convert import param_map
from wm_jax.models import scan


def _is_orbax_dir(path: str) -> bool:
  return os.path.isdir(path) and os.path.exists(os.path.join(path, "_CHECKPOINT_METADATA"))


def _steps(path: str) -> list[int]:
  return sorted(int(n) for n in os.listdir(path)
                if n.isdigit() and os.path.isdir(os.path.join(path, n)))


def locate(path: str) -> tuple[str, str]:
  """(layout, directory): ('train', <step dir>) or ('params', <dir>)."""
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"no checkpoint directory at {path}")
  if os.path.isdir(os.path.join(path, "checkpoints")):
    path = os.path.join(path, "checkpoints")
  steps = _steps(path)
  if steps and not os.path.isdir(os.path.join(path, "state")):
    path = os.path.join(path, str(steps[-1]))
  if os.path.isdir(os.path.join(path, "state")):
    return "train", path
  if os.path.isdir(os.path.join(path, "params")) or _is_orbax_dir(path):
    return "params", path
  raise ValueError(f"{path} is neither a wm_jax train checkpoint (checkpoints/<step>/state) nor a "
                   "params checkpoint (params/ + rest/, or an Orbax StandardCheckpointer dir)")


def _partial_restore(directory: str, names: tuple[str, ...]) -> dict:
  """The named top-level subtrees of an Orbax pytree checkpoint, as numpy (others not read)."""
  ckptr = ocp.PyTreeCheckpointer()
  meta = ckptr.metadata(directory)
  tree = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta
  tree = dict(tree)
  missing = [n for n in names if n not in tree]
  if missing:
    raise ValueError(f"checkpoint {directory} has no {missing}; it holds {sorted(tree)}")
  sub = {n: tree[n] for n in names if tree[n] is not None}
  item = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), sub)
  args = jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray), sub)
  return ckptr.restore(directory, args=ocp.args.PyTreeRestore(
      item=item, restore_args=args, partial_restore=True))


def _restore_all(directory: str) -> dict:
  meta = ocp.PyTreeCheckpointer().metadata(directory)
  tree = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta
  return _partial_restore(directory, tuple(dict(tree)))


def flatten(tree: Any, prefix: tuple = ()) -> dict[tuple, np.ndarray]:
  """Nested dicts of a restored nnx State -> {path tuple: array}; drops Orbax's 'value' wrapper
  level under each variable. Path parts come back as strings (list indices too): match paths by
  param_map.torch_key, which joins them the same way either way."""
  out = {}
  if isinstance(tree, dict):
    if set(tree) == {"value"} and not isinstance(tree["value"], dict):
      return {prefix: np.asarray(tree["value"])}
    for key, sub in tree.items():
      out.update(flatten(sub, prefix + (key,)))
    return out
  if tree is None:
    return out
  return {prefix: np.asarray(tree)}


def _read_json(path: str):
  with open(path) as f:
    return json.load(f)


def _train_config(step_dir: str):
  config_dir = os.path.join(step_dir, "config")
  if os.path.isdir(config_dir):
    for name in sorted(os.listdir(config_dir)):
      try:
        return _read_json(os.path.join(config_dir, name))
      except (ValueError, IsADirectoryError, UnicodeDecodeError):
        continue
  return None


def read_params(path: str, *, use_ema: bool = False) -> tuple[dict[tuple, np.ndarray], dict | None]:
  """(flat params + other checkpointed variables, config dict with 'model'/'mask' or None)."""
  layout, directory = locate(path)
  if layout == "train":
    which = "ema" if use_ema else "params"
    tree = _partial_restore(os.path.join(directory, "state"), (which, "rest"))
    if tree.get(which) is None:
      raise ValueError(f"{directory}/state has no {which!r} (EMA off in that run?)")
    flat = {**flatten(tree[which]), **flatten(tree.get("rest"))}
    return flat, _train_config(directory)
  if use_ema:
    raise ValueError(f"{directory} is a params checkpoint: it has no EMA copy")
  if os.path.isdir(os.path.join(directory, "params")):
    flat = flatten(_restore_all(os.path.join(directory, "params")))
    if os.path.isdir(os.path.join(directory, "rest")):
      flat.update(flatten(_restore_all(os.path.join(directory, "rest"))))
    cfg_path = os.path.join(directory, "config.json")
    return flat, (_read_json(cfg_path) if os.path.exists(cfg_path) else None)
  return flatten(_restore_all(directory)), None


def write_params(out_dir: str, state: nnx.State, config: dict | None = None) -> None:
  """DIR/params (nnx.Param state), DIR/rest (other checkpointed variables), DIR/config.json."""
  out_dir = os.path.abspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  params = nnx.filter_state(state, nnx.Param)
  rest = nnx.filter_state(state, nnx.Not(nnx.Param))
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(os.path.join(out_dir, "params"), params, force=True)
  if jax.tree.leaves(rest):
    ckptr.save(os.path.join(out_dir, "rest"), rest, force=True)
  ckptr.wait_until_finished()
  if config is not None:
    with open(os.path.join(out_dir, "config.json"), "w") as f:
      json.dump(config, f, indent=1, sort_keys=True)


def load_into(model: nnx.Module, path: str, *, use_ema: bool = False) -> nnx.Module:
  """Loads a checkpoint (either layout) into `model` in place, refusing any mismatch.

  This is how training starts from a converted checkpoint: build the model from the config,
  then load_into(model, DIR)."""
  flat, _ = read_params(path, use_ema=use_ema)
  nnx.update(model, state_from_flat(flat, model))
  return model


def state_from_flat(flat: dict[tuple, np.ndarray], target) -> nnx.State:
  """A checkpoint state for `target` (model or abstract state) from a flat path map; any
  missing/unexpected/mis-shaped path raises ConversionError. Either side may be scanned
  (wm_jax.models.scan): they are compared and matched by their canonical names."""
  target_state = param_map.checkpoint_state(target)
  want = scan.unstack_flat(param_map.flat_state(target_state))
  have = scan.unstack_flat(flat)
  have_t = {param_map.torch_key(p): param_map.torch_shape(str(p[-1]), v.shape) for p, v in have.items()}
  want_t = {param_map.torch_key(p): param_map.torch_shape(str(p[-1]), v.shape) for p, v in want.items()}
  problems = param_map.compare_shapes(have_t, want_t)
  if problems:
    raise param_map.ConversionError("checkpoint does not match the model:\n" + problems)
  by_key = {param_map.torch_key(p): v for p, v in have.items()}
  values = {p: np.asarray(by_key[param_map.torch_key(p)]).astype(v.dtype) for p, v in want.items()}
  return param_map.replace_values(target_state, values)


def config_dicts(model_cfg, mask_cfg) -> dict:
  """{'model': ..., 'mask': ...} as plain JSON-able dicts."""
  as_dict = lambda c: None if c is None else json.loads(c.to_json_best_effort())
  return {"model": as_dict(model_cfg), "mask": as_dict(mask_cfg)}


def configs_from_dict(d: dict):
  """(config.model, config.mask) ConfigDicts from config_dicts() output (or a train config)."""
  model = ml_collections.ConfigDict(d["model"])
  mask = ml_collections.ConfigDict(d["mask"]) if d.get("mask") else None
  return model, mask


def configs_from_file(spec: str):
  """(config.model, config.mask) of a config file 'configs/NAME.py[:arg]' (its get_config)."""
  import importlib.util
  path, _, arg = spec.partition(":")
  if not os.path.exists(path):
    raise FileNotFoundError(f"no config file {path}")
  module_spec = importlib.util.spec_from_file_location("wm_jax_config_file", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  cfg = module.get_config(arg or None)
  return cfg.model, cfg.get("mask")
