"""Generating evaluation clips with the model's Euler sampler under a protocol's settings.

    frames = sample_clips(model, batch, config, protocol=p, rng=rng, decode=decode_fn)

batch: a schema batch with 'latents' [B,T,V,h,w,C] (VAE-encoded ground truth) and conditioning
keys; its first `protocol.reference_frames` latent frames are the clean condition frames (tau = 0),
the rest are generated from noise with `protocol.sample_steps` Euler steps and
`protocol.cfg_scale` guidance. Protocols with `rollout_steps` S > 1 roll out autoregressively
(diffusion/rollout.py): the batch then spans the whole horizon,
T = n_ref + S * (clip_frames - n_ref) frames, and each sampler call generates one clip of
`clip_frames` conditioned on the last n_ref frames generated so far. decode: latents -> uint8 frames [B,T,V,H,W,3] (the VAE's
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
  n_ref = protocol.reference_frames
  want = horizon_frames(protocol)
  if t != want:
    what = (f"{protocol.clip_frames}-frame clips" if protocol.rollout_steps == 1 else
            f"{protocol.rollout_steps} rollout steps of {protocol.clip_frames}-frame clips "
            f"({want} frames)")
    raise ValueError(f"protocol {protocol.name} generates {what}; the batch has {t} latent frames")
  cond = conditioning.model_inputs(batch, config)
  if protocol.rollout_steps > 1:
    from wm_jax.diffusion import rollout
    out = rollout.rollout(model, cond, latents[:, :n_ref], config, num_clips=protocol.rollout_steps,
                          clip_frames=protocol.clip_frames, rng=rng, steps=protocol.sample_steps,
                          cfg_scale=protocol.cfg_scale, verbose=False)
    return np.asarray(decode(out))
  noise = jax.random.normal(rng, latents.shape, latents.dtype)
  out = samplers.euler_sample(model, noise, cond, config, steps=protocol.sample_steps,
                              cfg_scale=protocol.cfg_scale, ref_latents=latents[:, :n_ref],
                              n_ref=n_ref)
  return np.asarray(decode(out))


def horizon_frames(protocol: Protocol) -> int:
  """Frames of a generated clip, reference frames included (a whole rollout for rollout_steps > 1):
  the frames the reference batch must hold."""
  return protocol.clip_frames + (protocol.rollout_steps - 1) * (
      protocol.clip_frames - protocol.reference_frames)
