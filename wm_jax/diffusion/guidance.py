"""Classifier-free guidance: the unconditional inputs, condition dropout, the combination.

Unconditional inputs follow OpenDWM's CTSD pipeline where wm_jax has the same inputs:
  context, pooled  -> zeros (OpenDWM encodes the empty prompt; wm_jax gets precomputed text
                      embeddings, so the null condition is zeros, also during training dropout);
  layout           -> zeros (OpenDWM's uncondition_image_color 0);
  action_keep      -> all False: no action group given (the action module's action-free mode);
  camera           -> the conditioning.CAMERA_SCALARS camera scalars kept; the action scalars
                      after them (speed, steering: camera_scalars 13) set to -1000 as OpenDWM's
                      uncond_added_time_ids does;
  everything else  -> unchanged.
All functions take and return a conditioning.Conditioning.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from wm_jax.models.conditioning import CAMERA_SCALARS, Conditioning

UNCOND_ACTION = -1000.0    # OpenDWM's value for "no action"
ZEROED_FIELDS = ("context", "pooled", "layout")


def uncond_inputs(cond: Conditioning) -> Conditioning:
  """The unconditional counterpart of `cond`."""
  changes = {name: jnp.zeros_like(getattr(cond, name)) for name in ZEROED_FIELDS
             if getattr(cond, name) is not None}
  if cond.camera is not None and cond.camera.shape[-1] > CAMERA_SCALARS:
    changes["camera"] = jnp.asarray(cond.camera).at[..., CAMERA_SCALARS:].set(UNCOND_ACTION)
  if cond.action_keep is not None:
    changes["action_keep"] = jnp.zeros_like(jnp.asarray(cond.action_keep, bool))
  return cond.replace(**changes)


def drop_conditions(cond: Conditioning, drop) -> Conditioning:
  """Per sample: the unconditional inputs where drop[b], else `cond`. drop: bool [B]."""
  uncond = uncond_inputs(cond)
  changes = {}
  for name in ZEROED_FIELDS + ("camera", "action_keep"):
    value = getattr(cond, name)
    if value is not None:
      value = jnp.asarray(value)
      keep = jnp.reshape(drop, drop.shape + (1,) * (value.ndim - 1))
      changes[name] = jnp.where(keep, getattr(uncond, name), value).astype(value.dtype)
  return cond.replace(**changes)


def batch_with_uncond(cond: Conditioning) -> Conditioning:
  """[cond; uncond] stacked on the batch axis (every field has a leading batch dim)."""
  uncond = uncond_inputs(cond)
  return jax.tree.map(lambda c, u: jnp.concatenate([jnp.asarray(c), jnp.asarray(u)], 0),
                      cond, uncond)


def combine(v_cond, v_uncond, scale):
  """v_uncond + scale * (v_cond - v_uncond)."""
  return v_uncond + scale * (v_cond - v_uncond)
