"""config.model / config.mask <-> OpenDWM's model config (DiTCrossviewTemporalConditionModel
constructor arguments, as in its JSON configs, plus a `mask_module` entry for MaskController).

    opendwm = to_opendwm(config.model, config.mask)     # dict, JSON-able
    model_cfg, mask_cfg = from_opendwm(opendwm, base)   # ConfigDicts; base supplies the run-time
                                                         # fields OpenDWM does not store

Run-time fields (num_frames, num_views, latent size, text_tokens, dtype, attention_impl, remat,
scan_layers, p_time's uses) are not part of OpenDWM's model config and come from `base`.

What OpenDWM computes from these options, and how the two directions keep it equal to wm_jax:
  - the camera embedding joins the temporal blocks only with enable_crossview=True and
    disable_view_emb_on_temporal_module=False (the cross-view blocks always take it); wm_jax
    always adds it to both. A model with camera scalars and temporal but no cross-view blocks
    exports enable_crossview=True with crossview_block_layers=[] (no cross-view block is built
    or run), which export_notes says; an import where OpenDWM leaves it out is refused.
  - MaskController's "trans" mask tokens are context[target[0]] * tau + context[target[1]] *
    (1 - tau); target ["learnable", "noise"] is paper Eq. 3 (what wm_jax computes), the only
    one imported. Its noise_proj is Conv3d(16, D, (1,3,3), stride (1,2,2)) whatever the latent
    channels and patch size: mask_differences names a mask module OpenDWM cannot load or
    computes differently.
  - every other option that changes the computation and that wm_jax does not implement
    (merge_strategy other than learned_with_images, mask types, ...), and any key this module
    does not know, is refused on import, naming the key and value.
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
NOISE_PROJ_CHANNELS = 16  # MaskController's noise_proj: Conv3d(16, D, (1, 3, 3), stride (1, 2, 2))
NOISE_PROJ_STRIDE = 2
# tau * mask_token + (1 - tau) * noise_proj(eps): paper Eq. 3, as wm_jax computes it.
MASK_TOKEN = {"type": "trans", "target": ["learnable", "noise"]}
MERGE_STRATEGY = "learned_with_images"
# OpenDWM name -> config.model name, copied as they are.
SAME = {"patch_size": "patch_size", "in_channels": "in_channels", "out_channels": "out_channels",
        "num_layers": "num_layers", "num_attention_heads": "num_heads",
        "attention_head_dim": "head_dim", "joint_attention_dim": "joint_attention_dim",
        "pooled_projection_dim": "pooled_projection_dim",
        "pos_embed_max_size": "pos_embed_max_size", "sample_size": "sample_size",
        "qk_norm": "qk_norm", "merge_factor": "merge_factor"}


# Keys of DiTCrossviewTemporalConditionModel (and its SD3Transformer2DModel base) this module
# reads; the gradient checkpointing ones are run-time choices.
MODEL_KEYS = set(SAME) | {
    "caption_projection_dim", "dual_attention_layers", "qk_norm_on_additional_modules",
    "perspective_modeling_type", "projection_class_embeddings_input_dim",
    "condition_image_adapter_config", "enable_crossview", "enable_temporal",
    "crossview_attention_type", "temporal_attention_type", "crossview_block_layers",
    "temporal_block_layers", "crossview_gradient_checkpointing",
    "temporal_gradient_checkpointing", "mixer_type", "merge_strategy",
    "disable_view_emb_on_temporal_module", "mask_module"}
# MaskController's constructor defaults: what OpenDWM builds for a key its config leaves out.
MASK_DEFAULTS = {
    "num_heads": 24, "attention_head_dim": 64, "mlp_ratio": 4.0, "decode_layer": 5,
    "interpolater_layer": 1, "mask_ratio": 0.25, "mae_mask_type": "constant",
    "mae_mask_probs": None, "forward_mix_interpolater": False, "use_origin_mask_token": None,
    "mask_token_type": None, "temporal_pos_embed_size": None, "decoder_pos_embed_recipe": None,
    "mask_embed_config": None}


def _ints(values) -> list[int]:
  return [int(v) for v in (values or [])]


def _camera_only_on_temporal(model) -> bool:
  """Camera scalars and temporal blocks but no cross-view blocks."""
  return bool(int(model.camera_scalars) and _ints(model.temporal_block_layers)
              and not _ints(model.crossview_block_layers))


def export_notes(model, mask=None) -> list[str]:
  """Where to_opendwm spells a model differently from the plain reading of its config, and why
  the OpenDWM model still computes what the wm_jax one does."""
  del mask
  if not _camera_only_on_temporal(model):
    return []
  return [f"enable_crossview=True with crossview_block_layers=[]: the model has camera scalars "
          f"({int(model.camera_scalars)}, perspective_modeling_type='implicit') and temporal "
          "blocks but no cross-view blocks; OpenDWM adds the camera embedding to the temporal "
          "blocks only when enable_crossview=True (and builds no cross-view block for an empty "
          "list), so this is the OpenDWM config that keeps the camera (and action) conditioning"]


def mask_differences(model, mask) -> list[str]:
  """Where OpenDWM's MaskController cannot load or computes differently the mask module of this
  model ([] without a mask module)."""
  if mask is None or not mask.enabled:
    return []
  dim = int(model.num_heads) * int(model.head_dim)
  channels, patch = int(model.in_channels), int(model.patch_size)
  out = []
  if channels != NOISE_PROJ_CHANNELS:
    out.append(f"mask_module.noise_proj.weight: wm_jax {(dim, channels, 1, 3, 3)} (the model's "
               f"{channels} latent channels), OpenDWM's MaskController builds "
               f"Conv3d({NOISE_PROJ_CHANNELS}, {dim}, ...) = "
               f"{(dim, NOISE_PROJ_CHANNELS, 1, 3, 3)}: OpenDWM cannot load it (a size mismatch "
               "fails even with strict=False)")
  if patch != NOISE_PROJ_STRIDE:
    out.append(f"mask_module.noise_proj: wm_jax strides it by patch_size={patch}, OpenDWM's "
               f"MaskController by {NOISE_PROJ_STRIDE}, so its noise features miss the token grid")
  if mask.pos_table != "3d_sincos":
    out.append(f"mask.pos_table={mask.pos_table!r}: OpenDWM's MaskPatchEmbed always adds the "
               "3-D sin-cos table to the mask tokens, so its mask module computes other tokens")
  return out


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
  # OpenDWM gives the temporal blocks the camera embedding only with enable_crossview=True.
  if _camera_only_on_temporal(model):
    out["enable_crossview"] = True
  out["disable_view_emb_on_temporal_module"] = False
  out["mixer_type"] = "AlphaBlender"
  out["merge_strategy"] = MERGE_STRATEGY
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
        "use_origin_mask_token": copy.deepcopy(MASK_TOKEN),
        "decoder_pos_embed_recipe": "3d_sincos",
    }
  else:
    out["mask_module"] = None
  return out


def from_opendwm(opendwm: Mapping[str, Any], base: ml_collections.ConfigDict,
                 base_mask: ml_collections.ConfigDict | None = None):
  """(config.model, config.mask) from OpenDWM's model config; `base`/`base_mask` give the rest.

  Raises ValueError naming the key and value of every OpenDWM option wm_jax does not implement,
  and of keys it does not know (keys starting with '_' are metadata and skipped).
  """
  d = dict(opendwm)
  cls = d.get("_class_name", MODEL_CLASS)
  if cls != MODEL_CLASS:
    raise ValueError(f"model config _class_name {cls!r}: only {MODEL_CLASS} converts")
  unknown = sorted(k for k in d if not k.startswith("_") and k not in MODEL_KEYS)
  if unknown:
    raise ValueError(f"model config keys {unknown}: not options of {MODEL_CLASS} that wm_jax "
                     "knows, so what they change cannot be reproduced")
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
  merge = d.get("merge_strategy", MERGE_STRATEGY)
  if merge != MERGE_STRATEGY:
    raise ValueError(f"merge_strategy={merge!r}: wm_jax's AlphaBlender is {MERGE_STRATEGY!r} "
                     "(alpha = sigmoid(mix_factor), 1 where the block is disabled)")
  for kind in ("crossview", "temporal"):
    layers = _ints(d.get(f"{kind}_block_layers")) if d.get(f"enable_{kind}", False) else []
    model[f"{kind}_block_layers"] = layers
    if layers:
      model[f"{kind}_attention_type"] = d.get(f"{kind}_attention_type")
  if model.camera_scalars and model.temporal_block_layers:
    if d.get("disable_view_emb_on_temporal_module", False):
      raise ValueError("disable_view_emb_on_temporal_module=True: OpenDWM then leaves the camera "
                       "embedding out of the temporal blocks, and wm_jax always adds it there; no "
                       "wm_jax config computes this model")
    if not d.get("enable_crossview", False):
      raise ValueError("enable_crossview=False with perspective_modeling_type='implicit' and "
                       "temporal blocks: OpenDWM adds the camera embedding to the temporal blocks "
                       "only with enable_crossview=True (here it is unused), and wm_jax always "
                       "adds it there; no wm_jax config computes this model")
  model.time_modulation = False  # OpenDWM has no Eq. 5 modulation (paper-only parameters)
  adapter = d.get("condition_image_adapter_config")
  with model.ignore_type():
    model.layout_adapter = (None if adapter is None else ml_collections.ConfigDict(
        {k: adapter[k] for k in ADAPTER_KEYS if k in adapter}))
  mask = copy.deepcopy(base_mask) if base_mask is not None else ml_collections.ConfigDict()
  mask_d = d.get("mask_module")
  if mask_d is None:
    mask.enabled = False
    return model, mask
  _mask_from_opendwm(mask_d, model, mask)
  return model, mask


def _mask_from_opendwm(mask_d: Mapping[str, Any], model, mask) -> None:
  """Sets `mask` from OpenDWM's mask_module entry (MaskController arguments; a key left out
  takes MaskController's default), refusing what wm_jax's mask module does not compute."""
  cls = mask_d.get("_class_name", MASK_CLASS)
  if cls != MASK_CLASS:
    raise ValueError(f"mask_module._class_name {cls!r}: only {MASK_CLASS} converts")
  unknown = sorted(k for k in mask_d if not k.startswith("_") and k not in MASK_DEFAULTS)
  if unknown:
    raise ValueError(f"mask_module keys {unknown}: not options of {MASK_CLASS}")
  m = dict(MASK_DEFAULTS, **{k: v for k, v in mask_d.items() if not k.startswith("_")})
  for key, ours in (("num_heads", model.num_heads), ("attention_head_dim", model.head_dim)):
    if int(m[key]) != int(ours):
      raise ValueError(f"mask_module.{key}={m[key]} but the model has {ours}: wm_jax's mask "
                       "module has the model's heads")
  if float(m["mlp_ratio"]) != 4.0:
    raise ValueError(f"mask_module.mlp_ratio={m['mlp_ratio']}: wm_jax's side blocks have 4")
  if m["mae_mask_type"] != "row_t_rc":
    raise ValueError(f"mask_module.mae_mask_type={m['mae_mask_type']!r}: wm_jax implements only "
                     "'row_t_rc' (row-wise masks, shared by the frames or drawn per frame)")
  if not m["forward_mix_interpolater"]:
    raise ValueError(f"mask_module.forward_mix_interpolater={m['forward_mix_interpolater']!r}: "
                     "wm_jax always runs the temporal side blocks (MaskGWM Eq. 4)")
  probs = m["mae_mask_probs"]
  if not isinstance(probs, Mapping) or "constant" not in probs:
    raise ValueError(f"mask_module.mae_mask_probs={probs!r}: 'row_t_rc' needs "
                     "{'constant': probability of the frame-shared mask}")
  extra = {k: v for k, v in probs.items()
           if k != "constant" and not (k == "align_scale" and v == 1)}
  if extra:
    raise ValueError(f"mask_module.mae_mask_probs has {extra}: wm_jax masks rows of the token "
                     "grid as they are (align_scale 1) and knows no other entry")
  token = m["use_origin_mask_token"]
  if not (isinstance(token, Mapping) and token.get("type") == MASK_TOKEN["type"]
          and list(token.get("target", ())) == MASK_TOKEN["target"]
          and token.get("proj_field", "large") == "large"
          and set(token) <= {"type", "target", "proj_field"}):
    raise ValueError(f"mask_module.use_origin_mask_token={token!r}: wm_jax implements only "
                     f"{MASK_TOKEN} (mask tokens tau * mask_token + (1 - tau) * noise_proj(noise), "
                     "paper Eq. 3; target ['noise', 'learnable'] weights them the other way)")
  if m["mask_token_type"] is not None:
    raise ValueError(f"mask_module.mask_token_type={m['mask_token_type']!r}: wm_jax has one "
                     "mask token for all frames (mask_token_type None)")
  if m["decoder_pos_embed_recipe"] is None:
    raise ValueError("mask_module.decoder_pos_embed_recipe=None: OpenDWM's mask reconstruction "
                     "needs it set; wm_jax's mask tokens take the 3-D sin-cos table")
  ratio = m["mask_ratio"]
  if not isinstance(ratio, (int, float)) or not 0 < ratio < 1:
    raise ValueError(f"mask_module.mask_ratio={ratio!r}: wm_jax needs a ratio in (0, 1)")
  mask.enabled = True
  mask.decode_layers = int(m["decode_layer"])
  mask.side_blocks = int(m["interpolater_layer"])
  mask.ratio = float(ratio)
  mask.p_time = 1.0 - float(probs["constant"])
  mask.pos_table = "3d_sincos"
