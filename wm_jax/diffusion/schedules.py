"""Rectified-flow time: z_tau = (1 - tau) z0 + tau eps, tau in [0, 1] (0 clean, 1 pure noise).

The network predicts the velocity dz/dtau = eps - z0 (SD3/diffusers' flow-matching convention, so
SD3 weights work unchanged). The MaskGWM paper's Eq. 1 writes the target as z0 - eps, the negation;
the two differ only by the sign of the output layer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from wm_jax.parallel import shard


def shift_tau(tau, shift: float):
  """SD3's timestep shift: s*tau / (1 + (s-1)*tau). Maps [0,1] onto [0,1], favours noise for s>1."""
  if shift <= 0:
    raise ValueError(f"timestep shift must be positive, got shift={shift}")
  return shift * tau / (1 + (shift - 1) * tau)


def sample_tau(rng, shape, config):
  """tau = shift(sigmoid(logit_mean + logit_std * n)), n ~ N(0, 1); float32 of `shape`.

  `config` is config.diffusion (logit_mean, logit_std, shift). logit(tau) ~ N(mean + log s, std).
  """
  normal = shard.flat_normal(rng, shape)
  u = jax.nn.sigmoid(config.logit_mean + config.logit_std * normal)
  return shift_tau(u, float(config.shift)).astype(jnp.float32)


def sigma_schedule(steps: int, shift: float) -> np.ndarray:
  """Sampler noise levels [steps + 1], from 1 down to 0: shift(linspace(1, 0, steps + 1)).

  diffusers' FlowMatchEulerDiscreteScheduler stops its linspace at 1/1000 before the final 0; this
  schedule runs to 0 evenly, which differs from it only in the last step's length.
  """
  if int(steps) != steps or steps < 1:
    raise ValueError(f"sampler steps must be a positive integer, got steps={steps}")
  return shift_tau(np.linspace(1.0, 0.0, int(steps) + 1), float(shift)).astype(np.float32)
