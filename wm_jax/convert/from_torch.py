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

import os
import re
from typing import Callable, Iterable, Mapping

import jax

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


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """numpy arrays from a .safetensors file (bf16/fp16 tensors are read as float32; integer
  tensors keep their dtype). Raises CheckpointFileError naming a truncated or foreign file."""
  from safetensors import SafetensorError
  from safetensors.numpy import load_file
  if not os.path.exists(path):
    raise FileNotFoundError(f"no checkpoint at {path}")
  try:
    try:
      arrays = load_file(path)
    except TypeError:  # bfloat16: safetensors.numpy has no such dtype, torch has
      from safetensors.torch import load_file as load_torch
      arrays = load_torch(path)
  except SafetensorError as e:
    raise CheckpointFileError(f"{path}: cannot read it, the file is truncated or not a "
                              f"safetensors file ({e})") from None
  return {k: to_numpy(v) for k, v in arrays.items()}


def read_torch_checkpoint(path: str) -> dict[str, np.ndarray]:
  """PyTorch-layout numpy arrays from .safetensors, or .pth/.pt/.bin via torch.load(weights_only),
  or a directory of .safetensors shards (a diffusers model folder: every shard is read).
  Raises CheckpointFileError naming a file that is truncated or not what its name says."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"no checkpoint at {path}")
  if os.path.isdir(path):
    shards = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if not shards:
      raise ValueError(f"{path}: a directory without .safetensors files")
    out = {}
    for shard in shards:
      part = read_torch_checkpoint(os.path.join(path, shard))
      dup = sorted(set(part) & set(out))
      if dup:
        raise ValueError(f"{path}/{shard}: keys also in an earlier shard: {dup[:10]}")
      out.update(part)
    return out
  if path.endswith(".safetensors"):
    return read_safetensors(path)
  if path.endswith((".pth", ".pt", ".bin", ".ckpt")):
    import pickle
    import torch
    try:
      tensors = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
      raise CheckpointFileError(f"{path}: cannot read it with torch.load(weights_only=True), the "
                                f"file is truncated or holds more than tensors ({e})") from None
    for wrapper in ("state_dict", "model", "module"):
      if isinstance(tensors, dict) and wrapper in tensors and isinstance(tensors[wrapper], dict):
        tensors = tensors[wrapper]
  else:
    raise ValueError(f"{path}: unknown checkpoint type (want .safetensors, .pth, .pt, .bin)")
  bad = [k for k, v in tensors.items() if not hasattr(v, "dtype")]
  if bad:
    raise ValueError(f"{path}: entries that are not tensors: {bad[:10]}")
  return {k: to_numpy(v) for k, v in tensors.items()}


def to_numpy(t) -> np.ndarray:
  """A numpy array of a torch tensor or numpy array; bf16/fp16 -> float32, other dtypes kept."""
  if isinstance(t, np.ndarray):
    return t.astype(np.float32) if t.dtype == np.float16 else t
  import torch
  if t.dtype in (torch.bfloat16, torch.float16):
    t = t.float()
  return t.detach().cpu().numpy()


def strip_prefix(sd: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
  """Keys under `prefix` (e.g. 'transformer.' or 'model.') without it; others kept as they are."""
  if not prefix:
    return dict(sd)
  return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in sd.items()}


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
