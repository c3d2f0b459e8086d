"""Diffusers AutoencoderKL weights -> wm_jax's AutoencoderKL (models/vae.py).

    vae = from_pretrained("sd35/vae")                     # a diffusers folder (config.json + weights)
    vae = from_pretrained("vae.safetensors", config.vae)  # architecture from config.vae
    vae = load_state_dict(AutoencoderKL(cfg, rngs=rngs), state_dict)
    vae = from_config(config.vae)                         # config.vae.checkpoint, or random

Old diffusers attention names (query/key/value/proj_attn) are renamed to to_q/to_k/to_v/to_out.0.
Every missing, unexpected, mis-shaped, non-finite or integer-for-float key is refused by name
(param_map.ConversionError); an unreadable file by its path (from_torch.CheckpointFileError).
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import ml_collections
import numpy as np
from flax import nnx

from wm_jax import defaults
from wm_jax.convert import from_torch, param_map
from wm_jax.models.vae import ARCH_KEYS, AutoencoderKL


def config_from_diffusers(diffusers_config: Mapping[str, Any], **overrides) -> ml_collections.ConfigDict:
  """config.vae from a diffusers AutoencoderKL config.json dict (checks it is the plain KL VAE)."""
  for key in ("down_block_types", "up_block_types"):
    kinds = set(diffusers_config.get(key, ()))
    want = "DownEncoderBlock2D" if key.startswith("down") else "UpDecoderBlock2D"
    if kinds - {want}:
      raise ValueError(f"diffusers config {key}={sorted(kinds)}: only {want} is supported")
  if diffusers_config.get("act_fn", "silu") != "silu":
    raise ValueError(f"diffusers config act_fn={diffusers_config['act_fn']!r}: only silu is supported")
  if diffusers_config.get("in_channels", 3) != 3 or diffusers_config.get("out_channels", 3) != 3:
    raise ValueError("only 3-channel (RGB) VAEs are supported")
  c = defaults.vae()
  c.preset = "sd"
  for key in ARCH_KEYS:
    if diffusers_config.get(key) is not None:
      c[key] = tuple(diffusers_config[key]) if key == "block_out_channels" else diffusers_config[key]
  if diffusers_config.get("shift_factor") is None:
    c.shift_factor = 0.0
  for key, value in overrides.items():
    c[key] = value
  return c




_LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _current_name(key: str) -> str:
  parts = key.split(".")
  if len(parts) >= 2 and "attentions" in parts and parts[-2] in _LEGACY_ATTENTION:
    parts = parts[:-2] + _LEGACY_ATTENTION[parts[-2]].split(".") + parts[-1:]
  return ".".join(parts)


def rename_legacy_keys(state_dict: Mapping[str, Any]) -> Mapping[str, Any]:
  """Old diffusers attention names (query/key/value/proj_attn) -> to_q/to_k/to_v/to_out.0 (a view:
  values are read when asked for)."""
  return from_torch.renamed(state_dict, _current_name)


def read_safetensors(path: str) -> Mapping[str, np.ndarray]:
  """The tensors of a .safetensors file, read on access without torch (bf16/fp16 as float32); a
  truncated or foreign file raises from_torch.CheckpointFileError naming it."""
  return from_torch.read_safetensors(path)


def load_state_dict(vae: AutoencoderKL, state_dict: Mapping[str, Any], *, ignore=()) -> AutoencoderKL:
  """Loads a diffusers AutoencoderKL state_dict (numpy or torch tensors) into `vae` in place.

  Every missing, unexpected, mis-shaped, non-finite or wrongly typed key raises
  param_map.ConversionError (listing them) unless named in `ignore`.
  """
  sd = {k: from_torch.to_numpy(v if hasattr(v, "detach") else np.asarray(v))
        for k, v in rename_legacy_keys(state_dict).items()}
  nnx.update(vae, param_map.from_torch_state_dict(sd, vae, ignore=ignore))
  return vae


def from_pretrained(path: str, config=None, *, rngs: nnx.Rngs | None = None, ignore=()) -> AutoencoderKL:
  """A VAE with the weights of a diffusers checkpoint.

  path: a weights file from_torch.read_torch_checkpoint reads (.safetensors, a sharded one's
  .safetensors.index.json; architecture from `config`, a config.vae), or a diffusers model
  directory holding config.json and diffusion_pytorch_model.safetensors or its sharded index
  (architecture from its config.json; `config` then only supplies runtime fields: dtype, tiling,
  batch_slice). Safetensors are read tensor by tensor, without torch.
  """
  if os.path.isdir(path):
    with open(os.path.join(path, "config.json")) as f:
      runtime = {k: v for k, v in (config or defaults.vae()).items()
                 if k in ("dtype", "param_dtype", "attention_impl", "batch_slice", "tile_size",
                          "tile_overlap")}
      config = config_from_diffusers(json.load(f), **runtime)
    weights = os.path.join(path, "diffusion_pytorch_model.safetensors")
    if os.path.exists(weights + ".index.json"):   # sharded
      weights += ".index.json"
  else:
    weights = path
    config = config if config is not None else defaults.vae()
  abstract = nnx.eval_shape(lambda: AutoencoderKL(config, rngs=nnx.Rngs(0)))
  graphdef, _ = nnx.split(abstract)
  sd = rename_legacy_keys(from_torch.read_torch_checkpoint(weights))
  state = param_map.from_torch_state_dict(sd, abstract, ignore=ignore)
  if ignore:  # ignored keys kept abstract values: start from a real init instead
    vae = AutoencoderKL(config, rngs=rngs or nnx.Rngs(0))
    nnx.update(vae, state)
    return vae
  return nnx.merge(graphdef, state)


def from_config(config, *, rngs: nnx.Rngs | None = None) -> AutoencoderKL:
  """config.vae -> a VAE: the checkpoint's weights when config.checkpoint is set, else random."""
  if config.checkpoint:
    return from_pretrained(config.checkpoint, config, rngs=rngs)
  return AutoencoderKL(config, rngs=rngs or nnx.Rngs(0))
