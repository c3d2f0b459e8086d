"""Schema batch -> the conditioning of CTSDDiT, one pytree.

    cond = model_inputs(batch, config)        # config: the full config or config.model
    v = model(noisy_latents, tau, cond)

Conditioning fields (None where absent; every array has the leading batch dim B):
  context [B,T,V,L,Dj]   text embeddings (model_inputs: zeros when the batch has no text)
  pooled [B,T,V,P]       pooled text (model_inputs: zeros when the batch has no text)
  camera [B,T,V,S]       camera (and action) scalars, S = model.camera_scalars (None when the model
                         has no camera embedding or the batch no cameras)
  layout [B,T,V,H,W,6]   condition image, float in [0, 1] at image resolution (None without a
                         layout adapter or layout)
  view_adjacency [B,V,V] bool: view i's rows attend to view j's (None: every view to every view)
  disable_temporal [B], disable_crossview [B]  bool: switch a sample's temporal / cross-view
                         blocks off (None: on; model_inputs leaves them None)
  actions [B,T,P]        float32, the action module's inputs (model.action_module; see
                         models.action_module: speed, steering, trajectory, goal point, command,
                         concatenated in that order); None: no actions (action-free), and always
                         None for a model without the module
  action_keep [B,G]      bool: which of the G action groups of a sample are given (None: all;
                         training drops groups with their dropout probabilities, diffusion.losses)

model_inputs(batch, config, drop_actions=False): with model.action_module set, the batch must
carry the keys of its groups (actions, trajectory, goal_point, command), else a ValueError names
the missing one; drop_actions=True is the explicit action-free choice (actions None).

Camera scalars, in OpenDWM's order (S = CAMERA_SCALARS = 11): fps; fx/H, fy/H, cx/W, cy/H
(intrinsics in pixels of the frames, divided by image height H / width W); the camera z axis in
the ego frame (extrinsics[:3, 2]); the camera position in the ego frame (extrinsics[:3, 3]).
S = CAMERA_WITH_ACTIONS = 13 appends the ego speed (m/s) and steering (rad) of the frame from
`actions` (MaskGWM's action conditioning). model.camera_scalars = 0: no camera embedding.

VAE_FACTOR: image pixels per latent pixel (along each side); layouts and camera intrinsics are in
image pixels, the model's latent_height / latent_width in latent pixels.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np
from flax import struct

from wm_jax.data import schema
from wm_jax.models import action_module

VAE_FACTOR = 8
CAMERA_SCALARS = 11          # fps, 4 normalised intrinsics, camera z axis (3), camera position (3)
CAMERA_WITH_ACTIONS = 13     # the camera scalars, then speed and steering
CAMERA_SCALAR_COUNTS = (0, CAMERA_SCALARS, CAMERA_WITH_ACTIONS)  # valid model.camera_scalars


@struct.dataclass
class Conditioning:
  """The conditioning inputs of CTSDDiT (see the module docstring); a pytree, None where absent."""
  context: Any = None
  pooled: Any = None
  camera: Any = None
  layout: Any = None
  view_adjacency: Any = None
  disable_temporal: Any = None
  disable_crossview: Any = None
  actions: Any = None
  action_keep: Any = None


# fields with a frame axis (axis 1)
FRAME_FIELDS = ("context", "pooled", "camera", "layout", "actions")


def _model_config(config):
  return config.model if "model" in config else config


def _image_size(batch: Mapping[str, Any], cfg) -> tuple[int, int]:
  for key in ("frames", "layout"):
    if key in batch:
      return int(batch[key].shape[-3]), int(batch[key].shape[-2])  # [..., H, W, channels]
  return cfg.latent_height * VAE_FACTOR, cfg.latent_width * VAE_FACTOR


def camera_scalars(batch: Mapping[str, Any], count: int, image_size: tuple[int, int]):
  """[B,T,V,count] float32 camera (and action) scalars; see the module docstring."""
  if count not in (CAMERA_SCALARS, CAMERA_WITH_ACTIONS):
    raise ValueError(f"camera_scalars must be {CAMERA_SCALARS} or {CAMERA_WITH_ACTIONS}, got "
                     f"{count}")
  needs_actions = count == CAMERA_WITH_ACTIONS
  for key in ("intrinsics", "extrinsics", "fps") + (("actions",) if needs_actions else ()):
    if key not in batch:
      raise ValueError(f"camera_scalars={count} needs batch key {key!r}; batch has "
                       f"{sorted(batch)}")
  k = jnp.asarray(batch["intrinsics"], jnp.float32)  # [B,T,V,3,3]
  e = jnp.asarray(batch["extrinsics"], jnp.float32)  # [B,T,V,4,4]
  height, width = image_size
  fps = jnp.broadcast_to(jnp.asarray(batch["fps"], jnp.float32)[:, None, None], k.shape[:3])
  parts = [fps[..., None],
           k[..., 0, 0:1] / height, k[..., 1, 1:2] / height,
           k[..., 0, 2:3] / width, k[..., 1, 2:3] / height,
           e[..., :3, 2], e[..., :3, 3]]
  if needs_actions:
    actions = jnp.asarray(batch["actions"], jnp.float32)  # [B,T,A]: speed, steering, ...
    speed_steer = jnp.broadcast_to(actions[:, :, None, :2], k.shape[:3] + (2,))
    parts.append(speed_steer)
  return jnp.concatenate(parts, -1)


def model_inputs(batch: Mapping[str, Any], config, *, drop_actions: bool = False) -> Conditioning:
  """The Conditioning of CTSDDiT for a schema batch with 'latents'; drop_actions: leave the
  action module's inputs out (actions None) instead of requiring their batch keys."""
  cfg = _model_config(config)
  if "latents" not in batch:
    raise ValueError(f"model_inputs needs batch['latents'] (VAE-encoded); batch has "
                     f"{sorted(batch)}")
  unknown = sorted(set(batch) - set(schema.FIELDS))
  if unknown:
    raise ValueError(f"unknown batch keys {unknown}; known keys are {sorted(schema.FIELDS)}")
  latents = batch["latents"]
  if latents.ndim != 6:
    raise ValueError(f"batch['latents'] must be [B,T,V,h,w,C], got shape {tuple(latents.shape)}")
  b, t, v = latents.shape[:3]
  if "text_embeddings" in batch:
    context = jnp.asarray(batch["text_embeddings"])
  else:
    context = jnp.zeros((b, t, v, cfg.text_tokens, cfg.joint_attention_dim), jnp.float32)
  if "pooled_text" in batch:
    pooled = jnp.asarray(batch["pooled_text"])
  else:
    pooled = jnp.zeros((b, t, v, cfg.pooled_projection_dim), jnp.float32)
  camera = None
  if cfg.camera_scalars and "intrinsics" in batch and "extrinsics" in batch:
    camera = camera_scalars(batch, cfg.camera_scalars, _image_size(batch, cfg))
  layout = None
  if cfg.layout_adapter is not None and "layout" in batch:
    layout = jnp.asarray(batch["layout"], jnp.float32)
    if np.dtype(batch["layout"].dtype) == np.uint8:
      layout = layout / 255.0
  view_adjacency = (jnp.asarray(batch["view_adjacency"], bool)
                    if "view_adjacency" in batch else None)
  actions = action_keep = None
  if cfg.action_module is not None and not drop_actions:
    actions = action_module.pack(batch, cfg.action_module)
    if tuple(actions.shape[:2]) != (b, t):
      raise ValueError(f"the action keys have [B,T]={tuple(actions.shape[:2])}, batch['latents'] "
                       f"{(b, t)}")
    # every group given; guidance's unconditional branch and training dropout clear it
    action_keep = jnp.ones((b, len(action_module.ordered_groups(cfg.action_module))), bool)
  return Conditioning(context=context, pooled=pooled, camera=camera, layout=layout,
                      view_adjacency=view_adjacency, actions=actions, action_keep=action_keep)
