"""wm_jax checkpoint -> OpenDWM state_dict (safetensors) + OpenDWM model config (JSON).

    sd = export_state_dict(flat, model_cfg, mask_cfg, drop_zero_paper_params=False,
                           drop_zero_action_params=False)
    write_safetensors(sd, "model.safetensors", dtype="float32" | "bfloat16")

Paper-only parameters (ctsd_dit.PAPER_ONLY_PARAMS: MaskGWM's Eq. 5 temporal time modulation)
have no OpenDWM equivalent. A checkpoint that has them is refused, naming them, unless
`drop_zero_paper_params` is set AND every one of them is still exactly zero (their init, where the
model computes what OpenDWM computes); non-zero ones are always refused, because dropping them
would change the model's output.

The action module's parameters (ctsd_dit.ACTION_PARAMS: action_embedding.*, the temporal blocks'
action_attn.*; MaskGWM's action conditioning) have no OpenDWM equivalent either. They are refused,
naming them, unless `drop_zero_action_params` is set AND every output projection of the action
cross-attentions (ctsd_dit.ACTION_OUTPUT_PARAMS, zero at init) is still exactly zero: then the
module adds exactly nothing, whatever its other parameters hold, and all of them are left out.

Every array is checked against the model the config builds: keys, shapes, dtypes (an integer
array where the model has floats is refused, never cast) and values (NaN / Inf are refused, by
name; write_safetensors also refuses values its output dtype cannot hold, e.g. > 65504 in fp16).
A mask module OpenDWM's MaskController cannot load or computes differently
(opendwm_config.mask_differences, e.g. a noise_proj for other than 16 latent channels) is refused
unless `allow_mask_module_mismatch`.
"""

from __future__ import annotations

import re
from typing import Mapping

import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from wm_jax.convert import opendwm_config, param_map
from wm_jax.models.ctsd_dit import ACTION_OUTPUT_PARAMS, PAPER_ONLY_PARAMS, CTSDDiT

DTYPES = {"float32": np.float32, "fp32": np.float32, "bfloat16": ml_dtypes.bfloat16,
          "bf16": ml_dtypes.bfloat16, "float16": np.float16, "fp16": np.float16}


def paper_only_keys(keys) -> list[str]:
  patterns = [re.compile(p) for p in PAPER_ONLY_PARAMS]
  return sorted(k for k in keys if any(p.fullmatch(k) for p in patterns))


def action_output_keys(keys) -> list[str]:
  patterns = [re.compile(p) for p in ACTION_OUTPUT_PARAMS]
  return sorted(k for k in keys if any(p.fullmatch(k) for p in patterns))


def abstract_model(model_cfg, mask_cfg):
  return nnx.eval_shape(lambda: CTSDDiT(model_cfg, mask_cfg, rngs=nnx.Rngs(0)))


def export_state_dict(flat: Mapping[tuple, np.ndarray], model_cfg, mask_cfg, *,
                      drop_zero_paper_params: bool = False,
                      drop_zero_action_params: bool = False,
                      allow_mask_module_mismatch: bool = False, abstract=None) -> dict[str, np.ndarray]:
  """OpenDWM-keyed, PyTorch-layout arrays; checks them against the model the config builds
  (`abstract`: that model's nnx.eval_shape when the caller has it already)."""
  sd = param_map.flat_to_torch(flat)
  if abstract is None:
    abstract = abstract_model(model_cfg, mask_cfg)
  want = param_map.flat_to_torch(param_map.flat_state(param_map.checkpoint_state(abstract)))
  problems = param_map.compare_shapes({k: tuple(v.shape) for k, v in sd.items()},
                                      {k: tuple(v.shape) for k, v in want.items()})
  dtypes, finite = param_map.value_problems(sd, {k: v.dtype for k, v in want.items()})
  problems = "\n".join(p for p in (problems, param_map.format_problems(
      dtypes=dtypes, non_finite_keys=finite)) if p)
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
  action = param_map.action_keys(sd)
  if action:
    outputs = action_output_keys(action)
    # abstract arrays (a shape-only check) count as non-zero, as above
    nonzero = [k for k in outputs if not isinstance(sd[k], np.ndarray) or np.any(sd[k] != 0)]
    if not drop_zero_action_params or nonzero:
      why = (f"the action cross-attention output projection(s) {nonzero[:6]}"
             f"{' ...' if len(nonzero) > 6 else ''} are non-zero (trained), so no OpenDWM model "
             "computes what this one does" if nonzero else
             "its output projections are all zero (their init): pass drop_zero_action_params / "
             "--drop_zero_action_params to leave the module out, which keeps the outputs "
             "unchanged")
      raise param_map.ConversionError(
          f"this checkpoint has an action module ({len(action)} parameter(s) with no OpenDWM "
          f"equivalent: {action[:4]}{' ...' if len(action) > 4 else ''}); {why}")
    for k in action:
      del sd[k]
  differences = opendwm_config.mask_differences(model_cfg, mask_cfg)
  if differences and not allow_mask_module_mismatch:
    raise param_map.ConversionError(
        "OpenDWM's mask module (MaskController) differs from this model's:\n  " +
        "\n  ".join(differences) + "\npass allow_mask_module_mismatch / "
        "--allow_mask_module_mismatch to write it anyway, for a MaskController changed to match")
  return sd


def opendwm_model_config(model_cfg, mask_cfg, *, dropped_paper_params: bool = False,
                         dropped_action_params: bool = False) -> dict:
  """The model config JSON in OpenDWM's names; refuses models OpenDWM cannot express."""
  if model_cfg.time_modulation and not dropped_paper_params:
    raise ValueError("config.model.time_modulation=True (paper-only Eq. 5 parameters): OpenDWM "
                     "has no such option")
  if model_cfg.action_module is not None and not dropped_action_params:
    raise ValueError("config.model.action_module is set (MaskGWM's action conditioning): OpenDWM "
                     "has no such option")
  return opendwm_config.to_opendwm(model_cfg, mask_cfg)


def write_safetensors(sd: Mapping[str, np.ndarray], path: str, *, dtype: str = "float32",
                      metadata: dict | None = None) -> None:
  """Writes PyTorch-layout arrays as safetensors (no pickle, no torch: bf16 as ml_dtypes'
  bfloat16); floating arrays cast to `dtype`."""
  if dtype not in DTYPES:
    raise ValueError(f"dtype {dtype!r}: choose one of {sorted(DTYPES)}")
  target = DTYPES[dtype]
  arrays = {k: np.ascontiguousarray(v.astype(target) if jnp.issubdtype(v.dtype, jnp.floating)
                                    else v)
            for k, v in sd.items()}
  bad = [m for m in (param_map.non_finite(k, v) for k, v in arrays.items()) if m]
  if bad:
    raise param_map.ConversionError(
        f"values {dtype} cannot hold (NaN or Inf once cast; float16 ends at 65504), nothing "
        "written:\n    " + "\n    ".join(bad))
  from safetensors.numpy import save_file
  save_file(arrays, path, metadata=metadata)
