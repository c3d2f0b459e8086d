"""config.diffusion: rectified-flow training and sampling settings (defaults for every config)."""

from __future__ import annotations

import ml_collections


def defaults(**overrides) -> ml_collections.ConfigDict:
  """Rectified flow with SD3's conventions; keyword overrides, e.g. defaults(shift=3.0).

  tau ~ shift(sigmoid(N(logit_mean, logit_std))): SD3's logit-normal sampling; `shift` s maps
  tau -> s*tau / (1 + (s-1)*tau) for training and for the sampler's sigma schedule. 1.0 suits the
  tiny CPU configs; the real sizes set 3.0 as SD3/SD3.5 do.
  """
  config = ml_collections.ConfigDict(dict(
      logit_mean=0.0,
      logit_std=1.0,
      shift=1.0,
      max_reference_frames=3,     # clean leading frames per sample drawn from [0, this] (paper 7.2)
      feature_loss_weight=0.0,    # lambda of the auxiliary feature-reconstruction loss
      uncond_prob=0.1,            # per-sample probability of dropping all conditions in training
      loss_target="velocity",     # 'velocity' (MSE on v) or 'x0' (OpenDWM's: MSE on z_tau - tau*v)
      sample_steps=30,            # paper 7.3
      cfg_scale=4.0,              # paper 7.3
  ))
  unknown = sorted(set(overrides) - set(config))
  if unknown:
    raise ValueError(f"unknown config.diffusion keys {unknown}; known: {sorted(config)}")
  config.update(overrides)
  return config
