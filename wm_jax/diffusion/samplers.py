"""Euler sampler for rectified flow with classifier-free guidance and clean reference frames.

Integrates dz/dtau = v(z, tau) from tau = 1 (noise) to 0 over the shifted sigma schedule
(schedules.sigma_schedule): z <- z + (sigma_next - sigma) * v. With guidance, the conditional and
unconditional inputs run as one batch of 2B and v = v_u + g (v_c - v_u). The first n_ref frames
hold the reference latents at tau = 0 through every step.

The whole loop is one jitted function (lax.fori_loop over steps) keyed by the model's graph, the
shapes, n_ref and whether guidance is on, so repeated calls with the same shapes (rollout steps,
evaluation batches) reuse one compilation.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from wm_jax.diffusion import guidance, schedules
from wm_jax.models.conditioning import Conditioning
from wm_jax.parallel import shard


@functools.partial(jax.jit, static_argnames=("graphdef", "n_ref", "use_cfg"))
def _euler(graphdef, state, x, cond, ref, sigmas, cfg_scale, *, n_ref, use_cfg):
  b, t, v = x.shape[:3]
  is_ref = (jnp.arange(t) < n_ref)[None, :, None]  # [1,T,1]
  hold = is_ref[..., None, None, None]
  if n_ref:
    x = x.at[:, :n_ref].set(ref.astype(x.dtype))
  cond = guidance.batch_with_uncond(cond) if use_cfg else cond

  def step(i, x):
    # merged (fresh Variables) inside the loop body: NNX transforms in the model (nnx.scan of
    # scan_layers, nnx.remat) refuse Variables created at an outer trace level
    model = nnx.merge(graphdef, state, copy=True)
    sigma, sigma_next = sigmas[i], sigmas[i + 1]
    tau = jnp.broadcast_to(jnp.where(is_ref, 0.0, sigma), (b, t, v)).astype(jnp.float32)
    if use_cfg:
      out = model(jnp.concatenate([x, x]), jnp.concatenate([tau, tau]), cond)
      vel = guidance.combine(out[:b], out[b:], cfg_scale)
    else:
      vel = model(x, tau, cond)
    moved = x + (sigma_next - sigma) * vel.astype(x.dtype)
    return jnp.where(hold, x, moved)

  return jax.lax.fori_loop(0, sigmas.shape[0] - 1, step, x)


def euler_sample(model, noise, cond, config, *, steps=None, cfg_scale=None, ref_latents=None,
                 n_ref: int = 0, rng=None, shape=None):
  """Samples latents [B,T,V,h,w,C].

  model: called as model(latents, timesteps [B,T,V], cond) (CTSDDiT's inference forward).
  noise: the starting noise [B,T,V,h,w,C]; or None to draw it from `rng` with `shape`.
  cond: the conditioning.Conditioning (conditioning.model_inputs), every field with a leading
    batch dim B.
  config: the full config (uses config.diffusion.shift, sample_steps, cfg_scale).
  steps, cfg_scale: override the config; cfg_scale 1 runs no unconditional branch (0 samples
    unconditionally, through the same batched call).
  ref_latents [B,n_ref,V,h,w,C]: clean latents of the first n_ref frames, held at tau = 0.
  """
  cfg = config.diffusion
  steps = int(cfg.sample_steps if steps is None else steps)
  cfg_scale = float(cfg.cfg_scale if cfg_scale is None else cfg_scale)
  if noise is None:
    if rng is None or shape is None:
      raise ValueError("euler_sample needs `noise`, or `rng` and `shape` to draw it")
    noise = shard.flat_normal(rng, shape)
  noise = jnp.asarray(noise)
  noise = jnp.asarray(noise, noise.dtype)  # an explicit dtype: no weak type in the jit cache key
  if noise.ndim != 6:
    raise ValueError(f"noise must be [B,T,V,h,w,C], got shape {tuple(noise.shape)}")
  n_ref = int(n_ref)
  if not 0 <= n_ref < noise.shape[1]:
    raise ValueError(f"n_ref={n_ref} must be in [0, T) with T={noise.shape[1]} frames")
  if n_ref:
    want = (noise.shape[0], n_ref) + tuple(noise.shape[2:])
    if ref_latents is None or tuple(ref_latents.shape) != want:
      got = None if ref_latents is None else tuple(ref_latents.shape)
      raise ValueError(f"ref_latents must have shape {want} for n_ref={n_ref}, got {got}")
  ref = jnp.asarray(ref_latents, noise.dtype) if n_ref else jnp.zeros((), noise.dtype)
  if not isinstance(cond, Conditioning):
    raise TypeError(f"cond must be a conditioning.Conditioning (conditioning.model_inputs "
                    f"builds one), got {type(cond).__name__}")
  sigmas = jnp.asarray(schedules.sigma_schedule(steps, float(cfg.shift)))
  graphdef, state = nnx.split(model)
  return _euler(graphdef, state, noise, cond, ref, sigmas, jnp.float32(cfg_scale),
                n_ref=n_ref, use_cfg=cfg_scale != 1.0)
