"""config.model / config.mask <-> OpenDWM's model config (DiTCrossviewTemporalConditionModel
constructor arguments, as in its JSON configs, plus a `mask_module` entry for MaskController).

    opendwm = to_opendwm(config.model, config.mask)     # dict, JSON-able
    model_cfg, mask_cfg = from_opendwm(opendwm, base)   # ConfigDicts; base supplies the run-time
                                                         # fields OpenDWM does not store

Run-time fields (num_frames, num_views, latent size, text_tokens, dtype, attention_impl, remat,
scan_layers, p_time's uses) are not part of OpenDWM's model config and come from `base`.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

import ml_collections

MODEL_CLASS = "dwm.models.crossview_temporal_dit.DiTCrossviewTemporalConditionModel"
MASK_CLASS = "dwm.models.mask_layers.MaskController"
TIMESTEP_CHANNELS = 256  # OpenDWM embeds each camera scalar with a 256-d sin-cos (view_cam_proj)
ADAPTER_KEYS = ("in_channels", "channels", "is_downblocks", "num_res_blocks", "downscale_factor",
                "use_zero_convs")
# OpenDWM name -> config.model name, copied as they are.
SAME = {"patch_size": "patch_size", "in_channels": "in_channels", "out_channels": "out_channels",
        "num_layers": "num_layers", "num_attention_heads": "num_heads",
        "attention_head_dim": "head_dim", "joint_attention_dim": "joint_attention_dim",
        "pooled_projection_dim": "pooled_projection_dim",
        "pos_embed_max_size": "pos_embed_max_size", "sample_size": "sample_size",
        "qk_norm": "qk_norm", "merge_factor": "merge_factor"}


def _ints(values) -> list[int]:
  return [int(v) for v in (values or [])]


def to_opendwm(model, mask=None) -> dict:
  """OpenDWM's model config for a wm_jax config.model (and config.mask, or None)."""
  dim = int(model.num_heads) * int(model.head_dim)
  out: dict[str, Any] = {"_class_name": MODEL_CLASS}
  for theirs, ours in SAME.items():
    value = model.get(ours, 128 if ours == "sample_size" else None)
    out[theirs] = float(value) if ours == "merge_factor" else value
  out["caption_projection_dim"] = dim
  out["dual_attention_layers"] = _ints(model.dual_attention_layers)
  out["qk_norm_on_additional_modules"] = model.qk_norm
  cameras = int(model.camera_scalars)
  out["perspective_modeling_type"] = "implicit" if cameras else ""
  out["projection_class_embeddings_input_dim"] = cameras * TIMESTEP_CHANNELS if cameras else None
  remat = model.remat_policy != "none"
  for kind in ("crossview", "temporal"):
    layers = _ints(model[f"{kind}_block_layers"])
    out[f"enable_{kind}"] = bool(layers)
    out[f"{kind}_attention_type"] = model[f"{kind}_attention_type"] if layers else None
    out[f"{kind}_block_layers"] = layers
    out[f"{kind}_gradient_checkpointing"] = remat
  out["mixer_type"] = "AlphaBlender"
  adapter = model.layout_adapter
  out["condition_image_adapter_config"] = (
      None if adapter is None else
      {k: (list(adapter[k]) if isinstance(adapter[k], (list, tuple)) else adapter[k])
       for k in ADAPTER_KEYS if k in adapter})
  if mask is not None and mask.enabled:
    out["mask_module"] = {
        "_class_name": MASK_CLASS,
        "num_heads": int(model.num_heads),
        "attention_head_dim": int(model.head_dim),
        "mlp_ratio": 4.0,
        "decode_layer": int(mask.decode_layers),
        "interpolater_layer": int(mask.side_blocks),
        "mask_ratio": float(mask.ratio),
        "mae_mask_type": "row_t_rc",
        # OpenDWM draws the frame-shared ('constant') mask with this probability: 1 - p_time.
        "mae_mask_probs": {"constant": 1.0 - float(mask.p_time)},
        "forward_mix_interpolater": True,
        "use_origin_mask_token": {"type": "trans", "target": ["noise", "learnable"]},
        "decoder_pos_embed_recipe": "3d_sincos",
    }
  else:
    out["mask_module"] = None
  return out


def from_opendwm(opendwm: Mapping[str, Any], base: ml_collections.ConfigDict,
                 base_mask: ml_collections.ConfigDict | None = None):
  """(config.model, config.mask) from OpenDWM's model config; `base`/`base_mask` give the rest.

  Raises ValueError for OpenDWM options wm_jax does not implement.
  """
  d = dict(opendwm)
  cls = d.get("_class_name", MODEL_CLASS)
  if cls != MODEL_CLASS:
    raise ValueError(f"model config _class_name {cls!r}: only {MODEL_CLASS} converts")
  model = copy.deepcopy(base)
  for theirs, ours in SAME.items():
    if d.get(theirs) is not None:
      model[ours] = d[theirs]
  dim = int(model.num_heads) * int(model.head_dim)
  if d.get("caption_projection_dim") not in (None, dim):
    raise ValueError(f"caption_projection_dim={d['caption_projection_dim']} but "
                     f"num_attention_heads*attention_head_dim={dim}: wm_jax needs them equal")
  extra_qk = d.get("qk_norm_on_additional_modules", model.qk_norm)
  if extra_qk != model.qk_norm:
    raise ValueError(f"qk_norm={model.qk_norm!r} but qk_norm_on_additional_modules={extra_qk!r}: "
                     "wm_jax uses one qk_norm for both")
  model.dual_attention_layers = _ints(d.get("dual_attention_layers"))
  perspective = d.get("perspective_modeling_type", "")
  if perspective not in ("", "implicit", None):
    raise ValueError(f"perspective_modeling_type={perspective!r}: only 'implicit' (camera "
                     "scalars) or none is supported")
  if perspective == "implicit":
    dim_in = int(d["projection_class_embeddings_input_dim"])
    if dim_in % TIMESTEP_CHANNELS:
      raise ValueError(f"projection_class_embeddings_input_dim={dim_in} is not a multiple of "
                       f"{TIMESTEP_CHANNELS}")
    model.camera_scalars = dim_in // TIMESTEP_CHANNELS
  else:
    model.camera_scalars = 0
  if d.get("mixer_type", "AlphaBlender") != "AlphaBlender":
    raise ValueError(f"mixer_type={d['mixer_type']!r}: only AlphaBlender is supported")
  for kind in ("crossview", "temporal"):
    if d.get(f"enable_{kind}", False):
      model[f"{kind}_block_layers"] = _ints(d.get(f"{kind}_block_layers"))
      model[f"{kind}_attention_type"] = d.get(f"{kind}_attention_type")
    else:
      model[f"{kind}_block_layers"] = []
  model.time_modulation = False  # OpenDWM has no Eq. 5 modulation (paper-only parameters)
  adapter = d.get("condition_image_adapter_config")
  with model.ignore_type():
    model.layout_adapter = (None if adapter is None else ml_collections.ConfigDict(
        {k: adapter[k] for k in ADAPTER_KEYS if k in adapter}))
  mask_d = d.get("mask_module")
  if mask_d is None:
    mask = copy.deepcopy(base_mask) if base_mask is not None else ml_collections.ConfigDict()
    mask.enabled = False
    return model, mask
  mask = copy.deepcopy(base_mask) if base_mask is not None else ml_collections.ConfigDict()
  if not mask_d.get("forward_mix_interpolater", True):
    raise ValueError("mask_module.forward_mix_interpolater=False (no temporal side blocks) is not "
                     "supported")
  mask.enabled = True
  mask.decode_layers = int(mask_d.get("decode_layer", 5))
  mask.side_blocks = int(mask_d.get("interpolater_layer", 1))
  mask.ratio = float(mask_d.get("mask_ratio", 0.25))
  probs = mask_d.get("mae_mask_probs") or {}
  mask.p_time = 1.0 - float(probs.get("constant", 0.5))
  return model, mask
