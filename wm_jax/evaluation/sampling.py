"""Generating evaluation clips with the model's Euler sampler under a protocol's settings.

    frames = sample_clips(model, batch, config, protocol=p, rng=rng, decode=decode_fn)

batch: a schema batch with 'latents' [B,T,V,h,w,C] (VAE-encoded ground truth) and conditioning
keys; its first `protocol.reference_frames` latent frames are the clean condition frames (tau = 0),
the rest are generated from noise with `protocol.sample_steps` Euler steps and
`protocol.cfg_scale` guidance. decode: latents -> uint8 frames [B,T,V,H,W,3] (the VAE's
decode_latents). Protocols that evaluate without actions (Vista's setting) drop 'actions' from the
batch; a model whose camera embedding needs actions (camera_scalars 13) is then refused.
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from wm_jax.evaluation.protocols import Protocol


def sample_clips(model, batch: dict, config, *, protocol: Protocol, rng, decode: Callable):
  from wm_jax.diffusion import samplers
  from wm_jax.models import conditioning
  batch = dict(batch)
  if "latents" not in batch:
    raise ValueError(f"sample_clips needs batch['latents']; batch has {sorted(batch)}")
  if not protocol.use_actions and "actions" in batch:
    if int(config.model.get("camera_scalars", 11)) == 13:
      raise ValueError(f"protocol {protocol.name} evaluates without actions, but the model embeds "
                       "actions (model.camera_scalars=13); use protocols.replace(p, "
                       "use_actions=True) or a model with camera_scalars=11")
    batch.pop("actions")
  latents = np.asarray(batch["latents"])
  t = latents.shape[1]
  if t != protocol.clip_frames:
    raise ValueError(f"protocol {protocol.name} generates {protocol.clip_frames}-frame clips; the "
                     f"batch has {t} latent frames")
  n_ref = protocol.reference_frames
  cond = conditioning.model_inputs(batch, config)
  noise = jax.random.normal(rng, latents.shape, latents.dtype)
  out = samplers.euler_sample(model, noise, cond, config, steps=protocol.sample_steps,
                              cfg_scale=protocol.cfg_scale, ref_latents=latents[:, :n_ref],
                              n_ref=n_ref)
  return np.asarray(decode(out))
