"""Generation: conditioning -> Euler sampler or autoregressive rollout -> VAE decode.

    latents = generate(model, batch, config, n_ref=2, rng=key, mesh=run.mesh)
    frames = generate(model, batch, config, n_ref=2, rng=key, mesh=run.mesh, vae=vae)

batch: a schema batch (numpy or jax) whose 'latents' [B,T,V,h,w,C] hold the clean context in
their first n_ref frames (the rest is never read: it is replaced by noise) and whose other keys
are the conditions of all T frames (actions, cameras, layout, text). T is the horizon:
- T == config.model.num_frames: one sampler call;
- otherwise an autoregressive rollout of clips of config.model.num_frames frames, each
  conditioned on the last n_ref frames generated so far; T must then be
  rollout.horizon_frames(S, num_frames, n_ref) for some S >= 1.
With `mesh`, the batch is placed with the batch sharding and the sampler runs under the mesh
(`jax.set_mesh`), so a model whose parameters are sharded over it (run.restore) samples sharded.
Returns latents [B,T,V,h,w,C], or with `vae` uint8 frames [B,T,V,H,W,3] (numpy).
drop_actions=True: a model with the action module generates action-free (Conditioning.actions
None; the batch needs no action keys), as an action-free protocol asks.

This is the one path from conditions to videos: the sample videos of training, `--mode=sample`,
evaluation, the demo and the benchmarks all call it.
"""

from __future__ import annotations

import contextlib

import jax
import numpy as np

from wm_jax.diffusion import rollout as rollout_lib
from wm_jax.diffusion import samplers
from wm_jax.models import conditioning
from wm_jax.models import vae as vae_lib
from wm_jax.parallel import shard


def rollout_clips(frames: int, clip_frames: int, n_ref: int) -> int:
  """S, the clips a rollout of `frames` frames needs (1: a single sampler call); ValueError
  naming the numbers when `frames` is no whole number of clips."""
  if frames == clip_frames:
    return 1
  new = clip_frames - n_ref
  if new <= 0 or frames <= n_ref or (frames - n_ref) % new:
    raise ValueError(f"{frames} frames are no rollout of {clip_frames}-frame clips with {n_ref} "
                     f"reference frames (needs n_ref + S * {max(new, 0)} frames for S >= 1)")
  return (frames - n_ref) // new


def _batch_ways(mesh) -> int:
  """Shards of the batch dim under the batch sharding of `mesh`."""
  spec = shard.batch_sharding(mesh).spec
  axes = spec[0] if len(spec) else None
  axes = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
  return int(np.prod([mesh.shape[a] for a in axes]))


def _placed(batch: dict, mesh) -> dict:
  """The numeric entries of `batch`; with a mesh, placed with the batch sharding when the batch
  divides over its data axes, else replicated (a last, smaller evaluation batch)."""
  numeric = {k: v for k, v in batch.items() if np.asarray(v).dtype.kind in "biuf"}
  if mesh is None:
    return numeric
  rows = len(np.asarray(numeric["latents"])) * jax.process_count()
  if rows % _batch_ways(mesh) == 0:
    return shard.device_batch(numeric, mesh)
  if jax.process_count() > 1:
    raise ValueError(f"a batch of {rows} rows does not divide over the {_batch_ways(mesh)} "
                     f"batch shards of the mesh {dict(mesh.shape)}")
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return {k: jax.device_put(np.asarray(v), replicated) for k, v in numeric.items()}


def generate(model, batch: dict, config, *, n_ref: int, rng, steps: int | None = None,
             cfg_scale: float | None = None, vae=None, mesh=None, verbose: bool = False,
             drop_actions: bool = False):
  """See the module docstring. steps / cfg_scale default to config.diffusion's."""
  if "latents" not in batch:
    raise ValueError(f"generate needs batch['latents'] (the context frames); batch has "
                     f"{sorted(batch)}")
  clip_frames = int(config.model.num_frames)
  frames = int(np.shape(batch["latents"])[1])
  num_clips = rollout_clips(frames, clip_frames, n_ref)
  if not 0 < n_ref < clip_frames:
    raise ValueError(f"n_ref={n_ref} reference frames; generation needs 1 <= n_ref < "
                     f"{clip_frames} (config.model.num_frames)")
  placed = _placed(batch, mesh)
  with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
    cond = conditioning.model_inputs(placed, config, drop_actions=drop_actions)
    context = placed["latents"][:, :n_ref]
    if num_clips == 1:
      shape = tuple(placed["latents"].shape)
      out = samplers.euler_sample(model, None, cond, config, steps=steps, cfg_scale=cfg_scale,
                                  ref_latents=context, n_ref=n_ref, rng=rng, shape=shape)
    else:
      out = rollout_lib.rollout(model, cond, context, config, num_clips=num_clips,
                                clip_frames=clip_frames, rng=rng, steps=steps,
                                cfg_scale=cfg_scale, verbose=verbose)
    if vae is None:
      return out
    return np.asarray(vae_lib.decode_latents(vae, out))
