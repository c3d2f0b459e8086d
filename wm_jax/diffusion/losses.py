"""Rectified-flow training loss with clean reference frames and mask reconstruction.

Per sample b: one tau_b ~ logit-normal (+shift) shared by every frame and view to predict; the
first n_b frames (n_b uniform in [min_reference_frames, max_reference_frames], both at most T-1)
are reference frames: fed clean (z = z0), given tau = 0 (which the backbone turns into the m_c*tau
modulation of Eq. 5), and left out of the loss. Elsewhere z_tau = (1 - tau) z0 + tau eps and the
target is the velocity eps - z0 (schedules.py). With probability uncond_prob a sample's conditions
are replaced by the unconditional ones (guidance.py) so that classifier-free guidance has
something to contrast. With model.action_module, each action group of each sample is also left out
with its own probability (action_module.dropout; cond.action_keep [B,G], a dropped group
contributes exactly zero), independently of uncond_prob, so the model learns every subset of the
groups and the action-free mode (all dropped == cond.actions None). Only in training (train=True).

When training with config.mask.enabled, a RowMask is drawn (M_time with probability p_time) and the
model runs its mask-reconstruction path (row_mask + noise, keyword arguments next to the
conditioning). With feature_loss_weight lambda > 0 the
model is also asked for features (return_features=True): feats['reconstructed'] is the mask
module's full-width output [B,T,V,h,W,D]; the target is feats['encoder_target'] if the model
returns it, else feats['reconstructed'] of a second, unmasked forward, under stop_gradient. The
auxiliary loss is the MSE at dropped positions only. lambda = 0 runs no second forward.

loss_target 'x0' reproduces OpenDWM's loss (MSE between z_tau - tau*v and z0, i.e. the velocity
error weighted by tau^2); 'velocity' (default) is the plain v-prediction loss of the paper's Eq. 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from wm_jax.diffusion import guidance, schedules
from wm_jax.models import action_module, conditioning, masking
from wm_jax.parallel import shard


# fold_in data of the action-dropout key (the other keys come from one split of the step's rng)
ACTION_DROPOUT_STREAM = 0xAC7


def reference_count(rng, batch: int, frames: int, max_reference_frames: int,
                    min_reference_frames: int = 0):
  """int32 [B]: clean leading frames per sample, uniform in [min, max], both capped at T-1."""
  if min_reference_frames > max_reference_frames:
    raise ValueError(f"config.diffusion.min_reference_frames={min_reference_frames} exceeds "
                     f"max_reference_frames={max_reference_frames}")
  top = max(0, min(int(max_reference_frames), frames - 1))
  low = max(0, min(int(min_reference_frames), top))
  return jax.random.randint(rng, (batch,), low, top + 1, dtype=jnp.int32)


def _feature(feats, key, which):
  if key not in feats:
    raise ValueError(f"the feature loss needs features[{key!r}] from the {which} forward "
                     f"(return_features=True); the model returned keys {sorted(feats)}")
  return feats[key]


def _masked_mean(values, weight):
  return jnp.sum(values * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def loss_fn(model, batch, rng, config, train: bool = True, *, inputs_fn=None):
  """(loss, metrics) for one batch. `model(latents, timesteps, cond, row_mask=, noise=,
  return_features=)` as CTSDDiT.

  batch: schema dict with 'latents' [B,T,V,h,w,C] (already VAE-scaled) and conditioning keys.
  inputs_fn(batch, config) -> the model's conditioning.Conditioning; default
  models.conditioning.model_inputs.
  """
  cfg = config.diffusion
  if cfg.loss_target not in ("velocity", "x0"):
    raise ValueError(f"config.diffusion.loss_target must be 'velocity' or 'x0', got "
                     f"{cfg.loss_target!r}")
  if "latents" not in batch:
    raise ValueError(f"loss_fn needs batch['latents']; batch has keys {sorted(batch)}")
  z0 = jnp.asarray(batch["latents"], jnp.float32)
  if z0.ndim != 6:
    raise ValueError(f"batch['latents'] must be [B,T,V,h,w,C], got shape {tuple(z0.shape)}")
  b, t, v, h, w, _ = z0.shape
  cond = (inputs_fn or conditioning.model_inputs)(batch, config)
  rng_tau, rng_ref, rng_eps, rng_drop, rng_mask = jax.random.split(rng, 5)

  tau_b = schedules.sample_tau(rng_tau, (b,), cfg)
  n_ref = reference_count(rng_ref, b, t, cfg.max_reference_frames, cfg.min_reference_frames)
  is_ref = jnp.arange(t)[None, :] < n_ref[:, None]  # [B, T]
  tau = jnp.broadcast_to(jnp.where(is_ref, 0.0, tau_b[:, None])[:, :, None], (b, t, v))
  eps = shard.flat_normal(rng_eps, z0.shape)
  tau6 = tau[..., None, None, None]
  z_tau = (1 - tau6) * z0 + tau6 * eps
  target = eps - z0

  if train and cfg.uncond_prob > 0:
    cond = guidance.drop_conditions(cond, jax.random.uniform(rng_drop, (b,)) < cfg.uncond_prob)
  actions_cfg = config.model.action_module
  if train and actions_cfg is not None and cond.actions is not None:
    keep = action_module.sample_keep(jax.random.fold_in(rng, ACTION_DROPOUT_STREAM), b,
                                     actions_cfg)
    if cond.action_keep is not None:
      keep = keep & jnp.asarray(cond.action_keep, bool)
    cond = cond.replace(action_keep=keep)

  mask_cfg = config.mask
  row_mask = noise = None
  if train and mask_cfg.enabled:
    p = config.model.patch_size
    row_mask = masking.sample_row_mask(rng_mask, b, t, v, h // p, w // p, mask_cfg.ratio,
                                       mask_cfg.p_time)
    noise = eps
  lam = float(cfg.feature_loss_weight)
  with_features = row_mask is not None and lam > 0

  if with_features:
    pred, feats = model(z_tau, tau, cond, row_mask=row_mask, noise=noise, return_features=True)
  else:
    pred = model(z_tau, tau, cond, row_mask=row_mask, noise=noise)
  pred = pred.astype(jnp.float32)
  err = jnp.square(pred - target)
  if cfg.loss_target == "x0":
    err = err * jnp.square(tau6)
  frame_err = jnp.mean(err, axis=(3, 4, 5))  # [B,T,V]
  weight = jnp.broadcast_to((~is_ref)[:, :, None], (b, t, v)).astype(jnp.float32)
  diffusion_loss = _masked_mean(frame_err, weight)
  loss = diffusion_loss
  metrics = {
      "diffusion_loss": diffusion_loss,
      "tau_mean": _masked_mean(tau, weight),
      "reference_frames": jnp.mean(n_ref.astype(jnp.float32)),
  }
  if train and actions_cfg is not None and cond.actions is not None:
    metrics["action_groups_dropped"] = jnp.mean((~cond.action_keep).astype(jnp.float32))
  if row_mask is not None:
    metrics["mask_time_fraction"] = jnp.mean(row_mask.is_time.astype(jnp.float32))
  if with_features:
    recon = _feature(feats, "reconstructed", "masked").astype(jnp.float32)
    if "encoder_target" in feats:
      ref_feats = feats["encoder_target"]
    else:
      _, plain = model(z_tau, tau, cond, return_features=True)
      ref_feats = _feature(plain, "reconstructed", "unmasked")
    ref_feats = jax.lax.stop_gradient(ref_feats.astype(jnp.float32))
    grid = tuple(row_mask.keep_idx.shape[:4]) + (row_mask.width,)
    if recon.shape != ref_feats.shape or tuple(recon.shape[:5]) != grid:
      raise ValueError(f"feature loss: reconstructed {tuple(recon.shape)} and target "
                       f"{tuple(ref_feats.shape)} must both be [B,T,V,h,W,D] on the mask's grid "
                       f"{grid}")
    dropped = masking.dropped_positions(row_mask).astype(jnp.float32)
    feature_loss = _masked_mean(jnp.mean(jnp.square(recon - ref_feats), -1), dropped)
    loss = loss + lam * feature_loss
    metrics["feature_loss"] = feature_loss
  metrics["loss"] = loss
  return loss, metrics
