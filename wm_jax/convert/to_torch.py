"""wm_jax checkpoint -> OpenDWM state_dict (safetensors) + OpenDWM model config (JSON).

    sd = export_state_dict(flat, model_cfg, mask_cfg, drop_zero_paper_params=False)
    write_safetensors(sd, "model.safetensors", dtype="float32" | "bfloat16")

Paper-only parameters (ctsd_dit.PAPER_ONLY_PARAMS: MaskGWM's Eq. 5 temporal time modulation)
have no OpenDWM equivalent. A checkpoint that has them is refused, naming them, unless
`drop_zero_paper_params` is set AND every one of them is still exactly zero (their init, where the
model computes what OpenDWM computes); non-zero ones are always refused, because dropping them
would change the model's output.
"""

from __future__ import annotations

import re
from typing import Mapping

import numpy as np
from flax import nnx

from wm_jax.convert import opendwm_config, param_map
from wm_jax.models.ctsd_dit import PAPER_ONLY_PARAMS, CTSDDiT

DTYPES = {"float32": np.float32, "fp32": np.float32, "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": np.float16, "fp16": np.float16}


def paper_only_keys(keys) -> list[str]:
  patterns = [re.compile(p) for p in PAPER_ONLY_PARAMS]
  return sorted(k for k in keys if any(p.fullmatch(k) for p in patterns))


def abstract_model(model_cfg, mask_cfg):
  return nnx.eval_shape(lambda: CTSDDiT(model_cfg, mask_cfg, rngs=nnx.Rngs(0)))


def export_state_dict(flat: Mapping[tuple, np.ndarray], model_cfg, mask_cfg, *,
                      drop_zero_paper_params: bool = False, abstract=None) -> dict[str, np.ndarray]:
  """OpenDWM-keyed, PyTorch-layout arrays; checks them against the model the config builds
  (`abstract`: that model's nnx.eval_shape when the caller has it already)."""
  sd = param_map.flat_to_torch(flat)
  want = param_map.torch_shapes(abstract if abstract is not None else
                                abstract_model(model_cfg, mask_cfg))
  problems = param_map.compare_shapes({k: tuple(v.shape) for k, v in sd.items()}, want)
  if problems:
    raise param_map.ConversionError(
        "checkpoint does not match the model its config builds:\n" + problems)
  paper = paper_only_keys(sd)
  if paper:
    # abstract arrays (a shape-only check) count as non-zero: nothing shows they are still zero
    nonzero = [k for k in paper if not isinstance(sd[k], np.ndarray) or np.any(sd[k] != 0)]
    if not drop_zero_paper_params or nonzero:
      why = (f"{len(nonzero)} of them are non-zero (trained), so no OpenDWM model computes what "
             "this one does" if nonzero else
             "they are all zero (their init): pass drop_zero_paper_params / "
             "--drop_zero_paper_params to leave them out, which keeps the outputs unchanged")
      raise param_map.ConversionError(
          f"this checkpoint has {len(paper)} paper-only parameter(s) with no OpenDWM "
          f"equivalent (MaskGWM Eq. 5 time modulation): {paper[:6]}{' ...' if len(paper) > 6 else ''}; "
          f"{why}")
    for k in paper:
      del sd[k]
  return sd


def opendwm_model_config(model_cfg, mask_cfg, *, dropped_paper_params: bool = False) -> dict:
  """The model config JSON in OpenDWM's names; refuses models OpenDWM cannot express."""
  if model_cfg.time_modulation and not dropped_paper_params:
    raise ValueError("config.model.time_modulation=True (paper-only Eq. 5 parameters): OpenDWM "
                     "has no such option")
  return opendwm_config.to_opendwm(model_cfg, mask_cfg)


def write_safetensors(sd: Mapping[str, np.ndarray], path: str, *, dtype: str = "float32",
                      metadata: dict | None = None) -> None:
  """Writes PyTorch-layout arrays as safetensors (no pickle); floating arrays cast to `dtype`."""
  if dtype not in DTYPES:
    raise ValueError(f"dtype {dtype!r}: choose one of {sorted(DTYPES)}")
  target = DTYPES[dtype]
  if target == "bfloat16":  # numpy has no bf16: go through torch
    import torch
    from safetensors.torch import save_file
    tensors = {k: (torch.from_numpy(np.ascontiguousarray(v, np.float32)).to(torch.bfloat16)
                   if np.issubdtype(v.dtype, np.floating) else torch.from_numpy(np.ascontiguousarray(v)))
               for k, v in sd.items()}
    save_file(tensors, path, metadata=metadata)
    return
  from safetensors.numpy import save_file
  arrays = {k: np.ascontiguousarray(v.astype(target) if np.issubdtype(v.dtype, np.floating) else v)
            for k, v in sd.items()}
  save_file(arrays, path, metadata=metadata)
