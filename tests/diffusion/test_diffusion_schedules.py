"""Logit-normal timestep sampling with SD3's shift, and the sampler's sigma schedule."""

import jax
import numpy as np
import pytest

from wm_jax import defaults
from wm_jax.diffusion import schedules


def test_defaults():
  cfg = defaults.diffusion()
  assert (cfg.logit_mean, cfg.logit_std, cfg.shift) == (0.0, 1.0, 1.0)
  assert (cfg.max_reference_frames, cfg.feature_loss_weight) == (3, 0.0)
  assert (cfg.sample_steps, cfg.cfg_scale, cfg.loss_target) == (30, 4.0, "velocity")
  assert defaults.from_dict({"diffusion": {"shift": 3.0}}).diffusion.shift == 3.0
  with pytest.raises(ValueError, match="shfit"):
    defaults.from_dict({"diffusion": {"shfit": 3.0}})


@pytest.mark.parametrize("mean,std,shift", [(0.0, 1.0, 1.0), (0.5, 0.6, 3.0)])
def test_logit_normal_with_shift_statistics(mean, std, shift):
  cfg = defaults.diffusion()
  cfg.update(dict(logit_mean=mean, logit_std=std, shift=shift))
  tau = schedules.sample_tau(jax.random.key(0), (200, 200), cfg)
  assert tau.shape == (200, 200) and tau.dtype == np.float32
  tau = np.asarray(tau, np.float64).ravel()
  assert tau.min() > 0 and tau.max() < 1
  logit = np.log(tau / (1 - tau))
  # shift s multiplies the odds: logit(tau) ~ N(mean + log s, std)
  assert abs(logit.mean() - (mean + np.log(shift))) < 0.02
  assert abs(logit.std() - std) < 0.02
  # median of tau is shift(sigmoid(mean))
  expect = schedules.shift_tau(1 / (1 + np.exp(-mean)), shift)
  assert abs(np.median(tau) - expect) < 0.01


def test_shift_formula_and_sigma_schedule():
  np.testing.assert_allclose(schedules.shift_tau(np.array([0.0, 0.25, 1.0]), 3.0),
                             [0.0, 0.5, 1.0])
  sig = schedules.sigma_schedule(4, 3.0)
  assert sig.shape == (5,) and sig[0] == 1.0 and sig[-1] == 0.0
  np.testing.assert_allclose(sig, [3 * t / (1 + 2 * t) for t in (1, 0.75, 0.5, 0.25, 0)], rtol=1e-6)
  np.testing.assert_allclose(schedules.sigma_schedule(2, 1.0), [1.0, 0.5, 0.0])
  with pytest.raises(ValueError, match="steps=0"):
    schedules.sigma_schedule(0, 1.0)
  with pytest.raises(ValueError, match="shift=-1"):
    schedules.shift_tau(0.5, -1)
