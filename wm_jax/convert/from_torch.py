"""OpenDWM or diffusers SD3/SD3.5 PyTorch checkpoint -> wm_jax checkpoint state.

    sd = read_torch_checkpoint("model.safetensors" | "model.pth")   # numpy, PyTorch layouts
    state = convert_state_dict(sd, nnx.eval_shape(build), source="opendwm", ignore=(), init=build)

source='opendwm': every key of the model the config builds must be in the checkpoint and every
  checkpoint key must be in the model (strict, unlike OpenDWM's own strict=False loading), except
  keys named in `ignore`. Paper-only parameters (time modulation) are never in an OpenDWM
  checkpoint: with config.model.time_modulation=True they get their zero init, where the model
  computes what OpenDWM computes.
source='sd3': a diffusers SD3Transformer2DModel (SD3 / SD3.5) state_dict: its keys are the
  backbone subset (pos_embed.proj, time_text_embed, context_embedder, transformer_blocks,
  norm_out, proj_out) with the same names; the video blocks, mixers, index/camera embeddings,
  layout adapter and mask module keep their init (only with source='sd3': by default every key
  must be present). pos_embed.pos_embed (the fixed sin-cos table) is read when the checkpoint
  has it, else built. Checkpoint keys the model lacks are still refused.
"""

from __future__ import annotations

import json
import os
import re
from typing import Callable, Iterable, Mapping

import jax
import ml_dtypes  # registers bfloat16 with numpy, so safetensors' numpy reader takes it
import numpy as np
from flax import nnx

from wm_jax.convert import param_map
from wm_jax.convert.to_torch import paper_only_keys
from wm_jax.models import scan

# Parts of the CTSD model a diffusers SD3 transformer does not have (regex over PyTorch keys).
NOT_IN_SD3 = (
    r"condition_image_adapter\..*", r"view_embedding\..*",
    r"(view|time)_pos_embeds\..*", r"(crossview|temporal)_transformer_blocks\..*",
    r"(view|time)_mixers\..*", r"mask_module\..*",
)


class CheckpointFileError(ValueError):
  """A checkpoint file that cannot be read: truncated, not safetensors, or not a weights-only
  torch.save file. The message names the file."""


def read_safetensors(path: str) -> SafetensorsTensors:
  """The tensors of one .safetensors file, read on access (SafetensorsTensors). Raises
  CheckpointFileError naming a truncated or foreign file."""
  return SafetensorsTensors.open([path])


class SafetensorsTensors(Mapping):
  """PyTorch-layout numpy arrays of one or more .safetensors files, without torch.

  The keys come from the files' headers; a value is read from its memory-mapped file when it is
  asked for (safe_open), so a converter that takes one tensor at a time holds one in memory, not
  the checkpoint. bf16 / fp16 values come back as float32 (exactly: both are subsets of it), other
  dtypes as they are stored. Reading a key twice reads it twice."""

  def __init__(self, where: dict[str, str], handles: dict):
    self._where = where         # key -> the file holding it
    self._handles = handles     # file -> its safe_open handle

  @classmethod
  def open(cls, paths, expected: Mapping[str, str] | None = None) -> SafetensorsTensors:
    """The tensors of the files `paths` (a key in two files is refused naming both). expected:
    {key: file} of an index (model.safetensors.index.json's weight_map): each file must hold
    exactly the keys the index gives it."""
    from safetensors import SafetensorError, safe_open
    where, handles = {}, {}
    for path in paths:
      if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
      try:
        handles[path] = safe_open(path, framework="numpy")
      except SafetensorError as e:
        raise CheckpointFileError(f"{path}: cannot read it, the file is truncated or not a "
                                  f"safetensors file ({e})") from None
      for key in handles[path].keys():
        if key in where:
          raise ValueError(f"{path}: key {key!r} is also in {where[key]}")
        where[key] = path
    if expected is not None:
      wrong = sorted(k for k in set(where) | set(expected) if where.get(k) != expected.get(k))
      if wrong:
        raise ValueError("the index and the shards disagree on " + "; ".join(
            f"{k!r} (index: {expected.get(k, 'absent')}, shards: {where.get(k, 'absent')})"
            for k in wrong[:10]) + (f"; and {len(wrong) - 10} more" if len(wrong) > 10 else ""))
    return cls(where, handles)

  def __getitem__(self, key: str) -> np.ndarray:
    return to_numpy(self._handles[self._where[key]].get_tensor(key))

  def __contains__(self, key) -> bool:   # Mapping's default would read the tensor
    return key in self._where

  def __iter__(self):
    return iter(self._where)

  def __len__(self) -> int:
    return len(self._where)


INDEX_SUFFIX = ".safetensors.index.json"


def read_safetensors_index(path: str) -> SafetensorsTensors:
  """The tensors of a sharded checkpoint from its index (NAME.safetensors.index.json, as
  diffusers and transformers write it: {"weight_map": {key: shard file name}}); the shards lie
  beside it."""
  try:
    with open(path) as f:
      weight_map = json.load(f)["weight_map"]
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    raise CheckpointFileError(f"{path}: not a safetensors index (want a JSON object with a "
                              f"'weight_map' of key -> shard file; {type(e).__name__}: {e})"
                              ) from None
  folder = os.path.dirname(path)
  expected = {k: os.path.join(folder, v) for k, v in weight_map.items()}
  shards = sorted(set(expected.values()))
  missing = [s for s in shards if not os.path.exists(s)]
  if missing:
    raise FileNotFoundError(f"{path} names shards that are not there: {missing}")
  return SafetensorsTensors.open(shards, expected=expected)


def read_torch_checkpoint(path: str) -> Mapping[str, np.ndarray]:
  """PyTorch-layout numpy arrays (bf16 / fp16 as float32) from:
    .safetensors, or a sharded checkpoint's NAME.safetensors.index.json, or a directory holding
    one such index or else .safetensors shards (every one is read): read on access, without
    torch (SafetensorsTensors);
    .pth / .pt / .bin / .ckpt: torch.load(weights_only=True), which needs the torch extra.
  Raises CheckpointFileError naming a file that is truncated or not what its name says."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"no checkpoint at {path}")
  if os.path.isdir(path):
    names = sorted(os.listdir(path))
    indexes = [f for f in names if f.endswith(INDEX_SUFFIX)]
    if len(indexes) > 1:
      raise ValueError(f"{path}: several safetensors indexes {indexes}; pass the one to read")
    if indexes:
      return read_safetensors_index(os.path.join(path, indexes[0]))
    shards = [os.path.join(path, f) for f in names if f.endswith(".safetensors")]
    if not shards:
      raise ValueError(f"{path}: a directory without .safetensors files")
    return SafetensorsTensors.open(shards)
  if path.endswith(INDEX_SUFFIX):
    return read_safetensors_index(path)
  if path.endswith(".safetensors"):
    return read_safetensors(path)
  if path.endswith((".pth", ".pt", ".bin", ".ckpt")):
    import pickle
    try:
      import torch
    except ImportError:
      raise ImportError(f"{path}: reading a PyTorch pickle (.pth/.pt/.bin/.ckpt) needs torch: "
                        "pip install -e '.[torch]' (or convert it to .safetensors, which wm_jax "
                        "reads without torch)") from None
    try:
      tensors = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
      raise CheckpointFileError(f"{path}: cannot read it with torch.load(weights_only=True), the "
                                f"file is truncated or holds more than tensors ({e})") from None
    for wrapper in ("state_dict", "model", "module"):
      if isinstance(tensors, dict) and wrapper in tensors and isinstance(tensors[wrapper], dict):
        tensors = tensors[wrapper]
  else:
    raise ValueError(f"{path}: unknown checkpoint type (want .safetensors, "
                     f"{INDEX_SUFFIX}, .pth, .pt, .bin, .ckpt)")
  bad = [k for k, v in tensors.items() if not hasattr(v, "dtype")]
  if bad:
    raise ValueError(f"{path}: entries that are not tensors: {bad[:10]}")
  return {k: to_numpy(v) for k, v in tensors.items()}


def to_numpy(t) -> np.ndarray:
  """A numpy array of a torch tensor or numpy array; bf16/fp16 -> float32, other dtypes kept."""
  if isinstance(t, np.ndarray):
    return t.astype(np.float32) if t.dtype in (np.float16, ml_dtypes.bfloat16) else t
  import torch
  if t.dtype in (torch.bfloat16, torch.float16):
    t = t.float()
  return t.detach().cpu().numpy()


class RenamedKeys(Mapping):
  """A view of `tensors` under other keys ({new key: key in tensors}); values are read from
  `tensors` when asked for, so renaming a SafetensorsTensors reads nothing."""

  def __init__(self, tensors: Mapping[str, np.ndarray], names: dict[str, str]):
    self._tensors, self._names = tensors, names

  def __getitem__(self, key: str) -> np.ndarray:
    return self._tensors[self._names[key]]

  def __contains__(self, key) -> bool:
    return key in self._names

  def __iter__(self):
    return iter(self._names)

  def __len__(self) -> int:
    return len(self._names)


def renamed(tensors: Mapping[str, np.ndarray], rename: Callable[[str], str]) -> RenamedKeys:
  """`tensors` with every key k under rename(k), read on access; two keys that rename to one are
  refused naming both."""
  names = {}
  for key in tensors:
    new = rename(key)
    if new in names:
      raise ValueError(f"keys {names[new]!r} and {key!r} both become {new!r}")
    names[new] = key
  return RenamedKeys(tensors, names)


def strip_prefix(sd: Mapping[str, np.ndarray], prefix: str) -> Mapping[str, np.ndarray]:
  """Keys under `prefix` (e.g. 'transformer.' or 'model.') without it; others kept as they are
  (read on access: renamed)."""
  return renamed(sd, lambda k: k[len(prefix):] if prefix and k.startswith(prefix) else k)


def sd3_ignore(model_keys: Iterable[str]) -> list[str]:
  """Model keys a diffusers SD3 transformer checkpoint does not carry."""
  patterns = [re.compile(p) for p in NOT_IN_SD3]
  return sorted(k for k in model_keys if any(p.fullmatch(k) for p in patterns))


def convert_state_dict(sd: Mapping[str, np.ndarray], target, *, source: str = "opendwm",
                       ignore: Iterable[str] = (), init: Callable[[], nnx.Module] | None = None
                       ) -> nnx.State:
  """The checkpoint state (params + buffers + unused weights) of `target` from a PyTorch
  state_dict. Raises ConversionError listing every missing/unexpected/mis-shaped key.

  target: the model or its abstract state (nnx.eval_shape). Keys not read from the checkpoint
  (ignored ones, the parts an SD3 checkpoint lacks) keep the target's values; with an abstract
  target they come from `init()` (a function building the real model), except paper-only
  parameters, which are zeros (their init).
  """
  if source not in ("opendwm", "sd3"):
    raise ValueError(f"source must be 'opendwm' or 'sd3', got {source!r}")
  model_keys = set(param_map.torch_shapes(target))
  ignore = set(ignore)
  # Paper-only parameters are never in an OpenDWM checkpoint: they keep their zero init.
  paper = {k for k in paper_only_keys(model_keys) if k not in sd}
  ignore |= paper
  if source == "sd3":
    ignore |= set(sd3_ignore(model_keys))
    if "pos_embed.pos_embed" not in sd:  # the fixed table; diffusers usually stores it
      ignore.add("pos_embed.pos_embed")
  state = param_map.from_torch_state_dict(sd, target, ignore=sorted(ignore))
  flat = list(nnx.to_flat_state(state))
  pending = [path for path, var in flat if isinstance(var.get_value(), jax.ShapeDtypeStruct)]
  if not pending:
    return state
  # PyTorch keys of each pending path (several for a stacked path of a scanned model)
  stacked = scan.canonical_paths(param_map.flat_state(state))
  keys = {p: [param_map.torch_key(c) for c in stacked.get(tuple(p), [p])] for p in pending}
  fill = {}
  need_init = [p for p in pending if not all(k in paper for k in keys[p])]
  if need_init:
    if init is None:
      raise ValueError(f"{len(need_init)} key(s) are not read from the checkpoint and the target "
                       f"is abstract: pass init= to build them ({keys[need_init[0]][0]}, ...)")
    real = param_map.flat_state(param_map.checkpoint_state(init()))
    fill.update({p: np.asarray(real[p]) for p in need_init})
  for p in pending:
    if p not in fill:
      var = dict(flat)[p].get_value()
      fill[p] = np.zeros(var.shape, var.dtype)
  return nnx.from_flat_state([(p, var.replace(fill[p]) if p in fill else var) for p, var in flat])
