"""How much a trained model relies on its actions: its denoising loss with the true actions beside
the same loss with the actions shuffled across the batch and with no actions at all.

    result = action_reliance(model, config, batch, seeds=range(6), n_ref=2)
    result["shuffled_minus_true"]   # {'mean', 'se'}: > 0 when the true actions help

Each variant sees the same latents, noise, tau and reference frames (the rng of one seed), so the
differences are paired and their standard errors small. The loss is diffusion.losses.loss_fn in
evaluation mode (no condition or action dropout) with exactly `n_ref` clean reference frames, the
mean over the predicted frames. A model that ignores its actions (an untrained action module, whose
output projection is zero) reads exactly 0 for both differences; the pixel-motion protocol
(controllability.py) asks whether the use shows in the generated frames.
"""

from __future__ import annotations

from typing import Iterable

import jax
import numpy as np

from wm_jax.diffusion import losses
from wm_jax.models import conditioning
from wm_jax.evaluation.protocols import ACTION_KEYS


def _no_actions(batch, config):
  return conditioning.model_inputs(batch, config, drop_actions=True)


def action_reliance(model, config, batch: dict, *, seeds: Iterable[int], n_ref: int) -> dict:
  """{'true', 'shuffled', 'none'}: mean loss of each variant; '<variant>_minus_true': the paired
  difference {'mean', 'se'} over seeds; 'pairs': how many. batch: a schema batch with 'latents'
  and the action keys, B >= 2 (shuffling rolls the action keys by one sample)."""
  missing = [k for k in ACTION_KEYS if k not in batch]
  if "latents" not in batch or missing:
    raise ValueError(f"action_reliance needs batch['latents'] and the action keys; missing "
                     f"{(['latents'] if 'latents' not in batch else []) + missing}")
  if len(batch["latents"]) < 2:
    raise ValueError(f"shuffling actions across the batch needs B >= 2, got "
                     f"{len(batch['latents'])}")
  frames = np.shape(batch["latents"])[1]
  if not 0 < n_ref < frames:
    raise ValueError(f"n_ref={n_ref} must lie in [1, {frames - 1}] for clips of {frames} frames")
  cfg = config.copy_and_resolve_references()
  cfg.diffusion.min_reference_frames = cfg.diffusion.max_reference_frames = int(n_ref)
  shuffled = dict(batch, **{k: np.roll(np.asarray(batch[k]), 1, axis=0) for k in ACTION_KEYS})
  variants = {"true": (batch, None), "shuffled": (shuffled, None), "none": (batch, _no_actions)}
  values = {name: [] for name in variants}
  for seed in seeds:
    for name, (b, inputs_fn) in variants.items():
      loss, _ = losses.loss_fn(model, b, jax.random.key(int(seed)), cfg, train=False,
                               inputs_fn=inputs_fn)
      values[name].append(float(loss))
  out = {name: float(np.mean(v)) for name, v in values.items()}
  true = np.asarray(values["true"])
  for name in ("shuffled", "none"):
    d = np.asarray(values[name]) - true
    out[f"{name}_minus_true"] = {"mean": float(d.mean()),
                                 "se": float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1
                                 else float("nan")}
  out["pairs"] = len(true)
  return out
