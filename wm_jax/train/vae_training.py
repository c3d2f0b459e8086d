"""Training the tiny AutoencoderKL that the CPU configs and the demo use (no pretrained VAE fits
their 64x128 synthetic frames).

    vae, curve = train_vae(config, frames, steps=300)    # frames uint8 [N,H,W,3]
    vae = calibrate(config, vae, frames)                  # sets config.vae shift/scale
    save(vae, config, path); vae = load(config, path)    # weights + calibration, and back
    config = ensure_vae(config, workdir)                  # WORKDIR/vae: found, or trained now

The loss is L1 on random crops of crop x 2*crop pixels (the VAE is convolutional: a quarter of
the cost of whole 64x128 frames, the same weights) plus a small KL. `calibrate` then sets the
latent shift/scale so the training latents have zero mean and unit variance (SD's convention).
"""

from __future__ import annotations

import json
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from wm_jax.models import vae as vae_lib
from wm_jax.train import checkpoint as ckpt_lib
from wm_jax.train import run as run_lib

CALIBRATION = ("shift_factor", "scaling_factor")


def train_vae(config, frames: np.ndarray, *, steps: int, batch: int = 8, crop: int = 32,
              seed: int = 0, log: Callable[[str], None] = print):
  """frames uint8 [N,H,W,3] -> (trained AutoencoderKL of config.vae, L1 curve)."""
  if frames.ndim != 4 or frames.dtype != np.uint8:
    raise ValueError(f"train_vae wants uint8 frames [N,H,W,3], got {frames.dtype} {frames.shape}")
  crop = min(crop, frames.shape[1], frames.shape[2] // 2)
  vae = vae_lib.AutoencoderKL(config.vae, rngs=nnx.Rngs(seed))
  graphdef, params, rest = nnx.split(vae, nnx.Param, ...)
  warm = min(20, max(steps // 5, 1))
  tx = optax.adam(optax.warmup_cosine_decay_schedule(0.0, 2e-3, warm, max(steps, warm + 1), 2e-4))
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, x, key):
    def loss_fn(p):
      m = nnx.merge(graphdef, p, rest)
      moments = m.moments(x)
      rec = m.decode(vae_lib.posterior_sample(moments, key))
      return jnp.mean(jnp.abs(rec - x)) + 1e-7 * jnp.mean(vae_lib.posterior_kl(moments))
    loss, g = jax.value_and_grad(loss_fn)(params)
    up, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, up), opt, loss

  rng = np.random.default_rng(seed)
  curve = []
  for i in range(steps):
    y0 = rng.integers(0, frames.shape[1] - crop + 1) // 8 * 8
    x0 = rng.integers(0, frames.shape[2] - 2 * crop + 1) // 8 * 8
    x = frames[rng.integers(0, len(frames), batch), y0:y0 + crop, x0:x0 + 2 * crop]
    params, opt, loss = step(params, opt, x.astype(np.float32) / 127.5 - 1.0, jax.random.key(i))
    curve.append(float(loss))
    if (i + 1) % max(steps // 8, 1) == 0:
      log(f"[vae] step {i + 1}/{steps} L1 {np.mean(curve[-10:]):.4f}")
  return nnx.merge(graphdef, params, rest), curve


def calibrate(config, vae, frames: np.ndarray):
  """A VAE whose config.vae shift/scale (set in `config` too) make the latents of `frames`
  ~N(0, 1)."""
  x = frames[:64].astype(np.float32) / 127.5 - 1.0
  z = np.asarray(vae_lib.posterior_sample(jax.jit(vae.moments)(x)))
  config.vae.shift_factor = float(z.mean())
  config.vae.scaling_factor = float(1.0 / (z.std() + 1e-6))
  new = vae_lib.AutoencoderKL(config.vae, rngs=nnx.Rngs(0))
  nnx.update(new, nnx.state(vae, nnx.Param))
  return new


def check_clip_shape(frames_shape, config) -> None:
  """Refuses training clips [B,T,V,H,W,3] whose frame or view count is not the model's, before
  any training spends time on them."""
  t, v = (int(n) for n in frames_shape[1:3])
  m = config.model
  if (t, v) != (int(m.num_frames), int(m.num_views)):
    raise ValueError(
        f"the training data (config.data.source={config.data.source!r}) give clips of {t} "
        f"frames x {v} views, but the model config says model.num_frames={m.num_frames}, "
        f"model.num_views={m.num_views}; set the model's counts (or the data's num_frames and "
        "views / rig) to match")


def training_frames(config, clips: int = 64) -> np.ndarray:
  """uint8 [N,H,W,3]: every frame of every view of the first `clips` training clips."""
  it = run_lib.make_iterator(config, "train", batch_size=min(8, clips))
  out, seen = [], 0
  while seen < clips:
    frames = np.asarray(next(it)["frames"])
    check_clip_shape(frames.shape, config)
    out.append(frames.reshape((-1,) + frames.shape[-3:]))
    seen += len(frames)
  return np.concatenate(out)


def save(vae, config, path: str) -> None:
  """The VAE's parameters (checkpoint.save_module) and its calibration (calibration.json)."""
  ckpt_lib.save_module(vae, path)
  with open(os.path.join(path, "calibration.json"), "w") as f:
    json.dump({k: float(config.vae[k]) for k in CALIBRATION}, f)


def saved_at(path: str) -> bool:
  """Whether `path` holds a VAE that `save` wrote (parameters and calibration)."""
  return os.path.exists(os.path.join(path, "calibration.json")) and ckpt_lib.is_module_dir(path)


def read_calibration(config, path: str) -> None:
  """Sets config.vae's shift/scale to those `save` wrote in `path`."""
  with open(os.path.join(path, "calibration.json")) as f:
    config.vae.update(json.load(f))


def load(config, path: str):
  """The VAE `save` wrote in `path`, of config.vae's architecture; sets its calibration in
  `config`. Orbax raises ValueError when the saved parameters have other shapes."""
  read_calibration(config, path)
  restore = config.copy_and_resolve_references()
  restore.vae.checkpoint = path
  return run_lib.load_vae(restore)


def ensure_vae(config, workdir: str, *, log: Callable[[str], None] = print):
  """`config` with vae.checkpoint set: WORKDIR/vae when it holds a VAE trained earlier, else a
  tiny VAE trained now (config.train.vae_steps) on the training split and saved there."""
  path = os.path.join(os.path.abspath(workdir), "vae")
  if saved_at(path):
    read_calibration(config, path)
    log(f"[vae] config.vae.checkpoint is empty: using the VAE trained earlier in {path}")
  else:
    log(f"[vae] config.vae.checkpoint is empty: training a {config.vae.preset} VAE for "
        f"{config.train.vae_steps} steps on the training frames into {path} (set "
        "--config.vae.checkpoint to use your own)")
    frames = training_frames(config)
    vae, _ = train_vae(config, frames, steps=int(config.train.vae_steps), log=log)
    save(calibrate(config, vae, frames), config, path)
  config.vae.checkpoint = path
  return config
