"""Autoregressive rollout for long horizons.

Clip s covers frames [s*(T - n_ref), s*(T - n_ref) + T) of the horizon. Its first n_ref frames are
the last n_ref frames generated so far (for s = 0: the given context latents), held clean at
tau = 0; the other T - n_ref frames are sampled. Per-frame conditions (actions inside the camera
scalars, layout, text) come from horizon-long inputs sliced per clip, so every clip has the same
shapes and reuses one compiled sampler.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from wm_jax.diffusion import samplers
from wm_jax.models.conditioning import FRAME_FIELDS, Conditioning


def horizon_frames(num_clips: int, clip_frames: int, n_ref: int) -> int:
  """Frames a rollout of num_clips clips covers, context frames included."""
  return n_ref + num_clips * (clip_frames - n_ref)


def clip_inputs(inputs: Conditioning, start: int, clip_frames: int) -> Conditioning:
  """The conditioning of frames [start, start + clip_frames); frame-free fields unchanged."""
  return inputs.replace(**{
      name: jax.lax.slice_in_dim(getattr(inputs, name), start, start + clip_frames, axis=1)
      for name in FRAME_FIELDS if getattr(inputs, name) is not None})


def rollout(model, inputs: Conditioning, context_latents, config, *, num_clips: int,
            clip_frames: int, rng, steps=None, cfg_scale=None, verbose: bool = True):
  """Latents [B, n_ref + num_clips*(T - n_ref), V, h, w, C] for a long horizon.

  inputs: the conditioning.Conditioning whose FRAME_FIELDS span the whole horizon
    (horizon_frames).
  context_latents [B, n_ref, V, h, w, C]: the clean frames the rollout starts from (n_ref >= 1).
  clip_frames: T, the frames per sampler call (the model's clip length).
  """
  context_latents = jnp.asarray(context_latents)
  if context_latents.ndim != 6:
    raise ValueError(f"context_latents must be [B,n_ref,V,h,w,C], got {context_latents.shape}")
  n_ref = context_latents.shape[1]
  if not 1 <= n_ref < clip_frames:
    raise ValueError(f"rollout needs 1 <= n_ref < clip_frames, got n_ref={n_ref}, "
                     f"clip_frames={clip_frames}")
  total = horizon_frames(num_clips, clip_frames, n_ref)
  for name in FRAME_FIELDS:
    value = getattr(inputs, name)
    if value is not None and value.shape[1] != total:
      raise ValueError(f"inputs.{name} has {value.shape[1]} frames; a rollout of {num_clips} "
                       f"clips of {clip_frames} frames with n_ref={n_ref} needs {total}")
  new = clip_frames - n_ref
  shape = (context_latents.shape[0], clip_frames) + tuple(context_latents.shape[2:])
  frames = [context_latents]
  ref = context_latents
  for s, key in enumerate(jax.random.split(rng, num_clips)):
    if verbose:
      print(f"[rollout] clip {s + 1}/{num_clips}: frames {s * new}..{s * new + clip_frames - 1}",
            flush=True)
    out = samplers.euler_sample(model, None, clip_inputs(inputs, s * new, clip_frames), config,
                                steps=steps, cfg_scale=cfg_scale, ref_latents=ref, n_ref=n_ref,
                                rng=key, shape=shape)
    frames.append(out[:, n_ref:])
    ref = out[:, clip_frames - n_ref:]
  return jnp.concatenate(frames, axis=1)
