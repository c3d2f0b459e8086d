"""Sample videos of held-out clips: during training (config.train.sample_every / sample_at_end)
and for `python -m wm_jax.main --mode=sample`.

The first config.train.sample_clips clips of the 'val' split are fixed on first use. Their first
n_ref frames (config.diffusion.max_reference_frames, at most T - 1) are the clean context; the rest
are generated (diffusion/generate.py) with config.train.sample_steps Euler steps under the clips'
own conditions, decoded by the VAE, and written as WORKDIR/samples/clip<i>_step<step>.{mp4,gif}
(ground truth | generated) and as image strips to TensorBoard.
"""

from __future__ import annotations

import jax
import numpy as np

from wm_jax.diffusion import generate as generate_lib
from wm_jax.models import vae as vae_lib
from wm_jax.train import metrics as metrics_lib
from wm_jax.train import run as run_lib


def reference_frames(config) -> int:
  """Context frames of a sample: max_reference_frames, within [1, num_frames - 1]."""
  return max(1, min(int(config.diffusion.max_reference_frames), int(config.model.num_frames) - 1))


def make_sample_fn(run: run_lib.Run, workdir: str):
  """fn(model, step, writer) -> the paths written. Data and VAE are loaded on first use."""
  config = run.config
  cache = {}

  def fn(model, step, writer):
    if not cache:
      it = run.iterator("val", batch_size=int(config.train.sample_clips) * jax.process_count())
      cache["batch"] = run_lib.latents_preparer(config)(next(it))
      cache["vae"] = run_lib.load_vae(config)
    batch, vae = cache["batch"], cache["vae"]
    gen = generate_lib.generate(model, batch, config, n_ref=reference_frames(config),
                                rng=jax.random.key(int(step)),
                                steps=int(config.train.sample_steps), vae=vae, mesh=run.mesh)
    truth = (batch["frames"] if "frames" in batch else
             np.asarray(vae_lib.decode_latents(vae, batch["latents"])))
    videos = {f"clip{i}": np.concatenate([truth[i], gen[i]], axis=-2) for i in range(len(gen))}
    fps = float(batch["fps"][0]) if "fps" in batch else float(config.data.fps)
    paths = metrics_lib.write_samples(writer, workdir, int(step), videos, fps=fps)
    print(f"[sample] step {step}: wrote {len(paths)} files under {workdir}/samples", flush=True)
    return paths

  return fn


def sample_from_workdir(workdir: str, config=None, *, params: str = "auto") -> list[str]:
  """Restores the newest checkpoint of `workdir` (with its saved config unless `config` is
  given) and writes sample videos under it."""
  run, model, info = run_lib.restore(workdir, config=config, params=params)
  writer = metrics_lib.create_writer(workdir)
  paths = make_sample_fn(run, workdir)(model, info["step"], writer)
  writer.flush()
  return paths
