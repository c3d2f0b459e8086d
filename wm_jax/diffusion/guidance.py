"""Classifier-free guidance: the unconditional inputs, condition dropout, the combination.

Unconditional inputs follow OpenDWM's CTSD pipeline where wm_jax has the same inputs:
  context, pooled  -> zeros (OpenDWM encodes the empty prompt; wm_jax gets precomputed text
                      embeddings, so the null condition is zeros, also during training dropout);
  layout           -> zeros (OpenDWM's uncondition_image_color 0);
  camera           -> the conditioning.CAMERA_SCALARS camera scalars kept; the action scalars
                      after them (speed, steering: camera_scalars 13) set to -1000 as OpenDWM's
                      uncond_added_time_ids does;
  everything else  -> unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from wm_jax.models.conditioning import CAMERA_SCALARS

UNCOND_ACTION = -1000.0    # OpenDWM's value for "no action"
ZEROED_KEYS = ("context", "pooled", "layout")


def uncond_inputs(inputs: dict) -> dict:
  """The unconditional counterpart of the model keyword arguments `inputs`."""
  out = dict(inputs)
  for key in ZEROED_KEYS:
    if out.get(key) is not None:
      out[key] = jnp.zeros_like(out[key])
  camera = out.get("camera")
  if camera is not None and camera.shape[-1] > CAMERA_SCALARS:
    out["camera"] = jnp.asarray(camera).at[..., CAMERA_SCALARS:].set(UNCOND_ACTION)
  return out


def drop_conditions(inputs: dict, drop) -> dict:
  """Per sample: the unconditional inputs where drop[b], else the inputs. drop: bool [B]."""
  uncond = uncond_inputs(inputs)
  out = dict(inputs)
  for key in ZEROED_KEYS + ("camera",):
    if inputs.get(key) is not None:
      cond = jnp.asarray(inputs[key])
      keep = jnp.reshape(drop, drop.shape + (1,) * (cond.ndim - 1))
      out[key] = jnp.where(keep, uncond[key], cond).astype(cond.dtype)
  return out


def batch_with_uncond(inputs: dict) -> dict:
  """[cond; uncond] stacked on the batch axis (every input has a leading batch dim)."""
  uncond = uncond_inputs(inputs)
  return jax.tree.map(lambda c, u: jnp.concatenate([jnp.asarray(c), jnp.asarray(u)], 0),
                      inputs, uncond)


def combine(v_cond, v_uncond, scale):
  """v_uncond + scale * (v_cond - v_uncond)."""
  return v_uncond + scale * (v_cond - v_uncond)
