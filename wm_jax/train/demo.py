"""The end-to-end demo (tools/demo.sh): synthetic world -> tiny VAE -> maskgwm_tiny with mask
reconstruction -> action-conditioned rollouts of held-out scenes -> videos + metrics summary.

  python -m wm_jax.train.demo --workdir=/tmp/wm_demo

Stages (each prints progress; sizes are flags, defaults fit ~10 minutes on 2 CPU cores):
  1 data     render `train_clips` + `val_clips` clips of the synthetic world (front camera)
  2 vae      train the 'tiny' AutoencoderKL on the training frames (L1 + small KL); set its latent
             shift/scale from the training latents so they have zero mean and unit variance
  3 latents  encode every clip once (the DiT trains on cached latents)
  4 train    wm_jax.train.loop.train on maskgwm_tiny (mask reconstruction on), Grain iterator over
             the cached records, Orbax checkpoints and TensorBoard in WORKDIR/dit
  5 sample   for each held-out scene: condition on its first frames and roll out the rest with its
             own actions, and again with the steering bent left; decode; write
             WORKDIR/videos/scene*_{real,left}.{mp4,gif} (ground truth | generated, side by side)
  6 summary  WORKDIR/summary.json: loss curve, first/last loss, VAE PSNR, rollout PSNR, timings
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np

import wm_jax  # noqa: F401  (package settings)
from wm_jax import defaults
from wm_jax.data import pipeline
from wm_jax.data import sources
from wm_jax.data.synthetic import source as synthetic_source
from wm_jax.diffusion import generate as generate_lib
from wm_jax.diffusion import rollout as rollout_lib
from wm_jax.evaluation import videos as videos_lib
from wm_jax.models import vae as vae_lib
from wm_jax.train import loop
from wm_jax.train import metrics as metrics_lib
from wm_jax.train import run as run_lib
from wm_jax.train import vae_training

T0 = time.time()


def say(msg: str) -> None:
  print(f"[demo {time.time() - T0:6.1f}s] {msg}", flush=True)


def demo_config(args):
  """maskgwm_tiny's model on the synthetic 'front' rig (one camera), sized by the flags."""
  c = defaults.config()
  c.model.update(num_views=1, num_frames=args.clip_frames)
  c.mask.decode_layers = 1
  c.data.update(source="synthetic", rig="front", num_frames=args.clip_frames,
                image_height=c.model.latent_height * 8, image_width=c.model.latent_width * 8,
                num_train=args.train_clips, num_val=args.val_clips, read_threads=1)
  c.diffusion.max_reference_frames = args.ref_frames
  c.train.update(batch_size=args.batch, num_steps=args.steps, learning_rate=args.lr,
                 warmup_steps=max(1, args.steps // 20), schedule="cosine", log_every=args.log_every,
                 weight_decay=0.0, vae_steps=args.vae_steps)
  c.mesh.data = 1                             # one CPU device: the demo is about the curve
  c.checkpoint.update(every_steps=max(args.steps // 4, 1), keep=2)
  return c


# -- 1 data ---------------------------------------------------------------------------------------

def render(config, split: str, n: int, frames: int) -> list[dict]:
  data = config.data.copy_and_resolve_references()
  data.num_frames = frames
  src = synthetic_source.SyntheticSource(data, split)
  out = []
  for i in range(n):
    out.append(src[i])
    if (i + 1) % max(n // 4, 1) == 0 or i + 1 == n:
      say(f"rendered {split} clip {i + 1}/{n}")
  return out


# -- 2 vae: wm_jax.train.vae_training ----------------------------------------------------------

def psnr(a: np.ndarray, b: np.ndarray) -> float:
  mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
  return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-10)))


# -- 3 latents ------------------------------------------------------------------------------------

def encode_clips(vae, clips: list[dict]) -> list[dict]:
  out = []
  for clip in clips:
    rec = {k: v for k, v in clip.items() if k not in ("frames", "depth", "boxes", "ego_pose")}
    rec["latents"] = np.asarray(vae_lib.encode_frames(vae, clip["frames"]), np.float32)
    out.append(rec)
  return out


# -- 5 sample -------------------------------------------------------------------------------------

def rollout_videos(run, model, vae, clip: dict, record: dict, args, seed: int):
  """Ground truth | generated videos (uint8 [T,H,2W,3]) for the real and the steered actions."""
  out, scores = {}, {}
  n_ref, t_clip = args.ref_frames, args.clip_frames
  num_clips = (args.val_frames - n_ref) // (t_clip - n_ref)
  total = rollout_lib.horizon_frames(num_clips, t_clip, n_ref)
  batch = {k: np.asarray(v)[None, :total] if np.ndim(v) and k not in ("fps", "view_adjacency")
           else np.asarray(v)[None] for k, v in record.items()}
  gt = clip["frames"][:total]
  for name, steer in (("real", 0.0), ("left", args.steer_left)):
    b = dict(batch)
    if steer:
      actions = b["actions"].copy()
      actions[..., 1] += steer  # steering (rad), see data/schema.py ACTION_NAMES
      b["actions"] = actions
    z = generate_lib.generate(model, b, run.config, n_ref=n_ref, rng=jax.random.key(seed),
                              steps=args.sample_steps, cfg_scale=args.cfg_scale, mesh=run.mesh)
    video = np.asarray(vae_lib.decode_latents(vae, z))[0]          # [T,V,H,W,3]
    if name == "real":
      scores["rollout_psnr"] = psnr(video[n_ref:], gt[n_ref:])
      scores["latent_mse"] = float(np.mean((np.asarray(z)[0, n_ref:] - b["latents"][0, n_ref:]) ** 2))
    out[name] = np.concatenate([gt[:, 0], video[:, 0]], axis=2)    # [T,H,2W,3]
  return out, scores


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True)
  p.add_argument("--train_clips", type=int, default=64)
  p.add_argument("--val_clips", type=int, default=2)
  p.add_argument("--clip_frames", type=int, default=4)
  p.add_argument("--val_frames", type=int, default=8)
  p.add_argument("--ref_frames", type=int, default=2)
  p.add_argument("--vae_steps", type=int, default=300)
  p.add_argument("--vae_batch", type=int, default=8)
  p.add_argument("--vae_crop", type=int, default=32, help="VAE training crop height (width 2x)")
  p.add_argument("--steps", type=int, default=400)
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--log_every", type=int, default=10)
  p.add_argument("--sample_steps", type=int, default=8)
  p.add_argument("--cfg_scale", type=float, default=2.0)
  p.add_argument("--steer_left", type=float, default=0.3)
  args = p.parse_args(argv)
  workdir = os.path.abspath(args.workdir)
  os.makedirs(workdir, exist_ok=True)
  config = demo_config(args)
  timings = {}

  say(f"1/6 rendering {args.train_clips} training and {args.val_clips} held-out clips "
      f"({config.data.image_height}x{config.data.image_width}, front camera)")
  t = time.time()
  train_clips = render(config, "train", args.train_clips, args.clip_frames)
  val_clips = render(config, "val", args.val_clips, args.val_frames)
  timings["data_s"] = time.time() - t

  say(f"2/6 training the tiny VAE for {args.vae_steps} steps")
  t = time.time()
  frames = np.concatenate([c["frames"].reshape((-1,) + c["frames"].shape[-3:]) for c in train_clips])
  vae, vae_curve = vae_training.train_vae(config, frames, steps=args.vae_steps,
                                          batch=args.vae_batch, crop=args.vae_crop,
                                          log=lambda m: say(m.replace("[vae] ", "vae ")))
  vae = vae_training.calibrate(config, vae, frames)
  vae_training.save(vae, config, os.path.join(workdir, "vae"))
  config.vae.checkpoint = os.path.join(workdir, "vae")  # saved with the DiT's config: evaluate finds it
  rec = np.asarray(vae_lib.decode_latents(vae, vae_lib.encode_frames(vae, val_clips[0]["frames"])))
  vae_psnr = psnr(rec, val_clips[0]["frames"])
  timings["vae_s"] = time.time() - t
  say(f"vae held-out reconstruction PSNR {vae_psnr:.2f} dB; latent shift "
      f"{config.vae.shift_factor:.3f} scale {config.vae.scaling_factor:.3f}")

  say("3/6 encoding clips to latents")
  t = time.time()
  train_records = encode_clips(vae, train_clips)
  val_records = encode_clips(vae, val_clips)
  timings["encode_s"] = time.time() - t

  say(f"4/6 training maskgwm_tiny (mask ratio {config.mask.ratio}) for {args.steps} steps, "
      f"batch {args.batch}")
  t = time.time()
  source = sources.ListSource(train_records, name="demo-latents")
  make_iterator = lambda cfg: pipeline.make_iterator(cfg.data, batch_size=args.batch,
                                                     seed=int(cfg.train.seed), source=source)
  dit_dir = os.path.join(workdir, "dit")
  summary = loop.train(config, dit_dir, make_iterator=make_iterator,
                       log=lambda m: say(m.replace("[train] ", "")))
  timings["train_s"] = time.time() - t

  say(f"5/6 action-conditioned rollouts of {args.val_clips} held-out scenes "
      f"({args.ref_frames} context frames -> {args.val_frames} frames)")
  t = time.time()
  run, model, _ = run_lib.restore(dit_dir)
  writer = metrics_lib.create_writer(dit_dir)
  scores, paths = [], []
  for i, (clip, rec) in enumerate(zip(val_clips, val_records)):
    videos, sc = rollout_videos(run, model, vae, clip, rec, args, seed=i)
    scores.append(sc)
    for name, video in videos.items():
      paths += videos_lib.save_video(os.path.join(workdir, "videos", f"scene{i}_{name}"), video,
                                     fps=float(config.data.fps) / 2)
    writer.write_images(summary["step"], {f"rollout/scene{i}": np.concatenate(list(videos["real"]), 0)[None]})
    say(f"scene {i}: rollout PSNR {sc['rollout_psnr']:.2f} dB, latent MSE {sc['latent_mse']:.3f}")
  writer.flush()
  timings["sample_s"] = time.time() - t

  hist = summary["history"]
  curve = [(h["step"], h["loss_mean"]) for h in hist]
  k = max(1, len(curve) // 5)
  first, last = float(np.mean([c[1] for c in curve[:k]])), float(np.mean([c[1] for c in curve[-k:]]))
  result = {"loss_curve": curve, "loss_first": first, "loss_last": last,
            "loss_fell_by": first / max(last, 1e-9), "vae_psnr_db": vae_psnr, "vae_l1_curve_last": vae_curve[-1],
            "rollouts": scores, "params": summary["params"], "steps": summary["step"],
            "flops_per_step": summary["flops_per_step"], "timings_s": timings,
            "videos": sorted(paths), "tensorboard": os.path.join(dit_dir, "tensorboard"),
            "total_s": time.time() - T0}
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(result, f, indent=2)
  say("6/6 summary")
  bars = "▁▂▃▄▅▆▇█"
  lo, hi = min(c[1] for c in curve), max(c[1] for c in curve)
  spark = "".join(bars[int((v - lo) / max(hi - lo, 1e-9) * (len(bars) - 1))] for _, v in curve)
  print(f"  loss curve (every {args.log_every} steps): {spark}")
  print(f"  loss {first:.4f} -> {last:.4f} (x{first / max(last, 1e-9):.2f} lower)")
  print(f"  VAE PSNR {vae_psnr:.2f} dB; rollout PSNR "
        f"{np.mean([s_['rollout_psnr'] for s_ in scores]):.2f} dB")
  print(f"  videos:      {os.path.join(workdir, 'videos')}  ({len(paths)} files)")
  print(f"  summary:     {os.path.join(workdir, 'summary.json')}")
  print(f"  tensorboard: tensorboard --logdir {os.path.join(dit_dir, 'tensorboard')}")
  print(f"  total {time.time() - T0:.0f} s", flush=True)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
