"""Entry point: train or sample a world model from an ml_collections config.

  python -m wm_jax.main --config=configs/maskgwm_tiny.py --workdir=/tmp/run
  python -m wm_jax.main --config=configs/maskgwm_tiny.py --workdir=/tmp/run --config.train.num_steps=200
  python -m wm_jax.main --workdir=/tmp/run --mode=sample       # the config saved in the workdir

A config file's get_config(arg) builds on wm_jax.defaults and is locked: `--config.KEY=VALUE`
changes a value, and a key the defaults lack is an error. When the data give frames and
config.vae.checkpoint is empty, a tiny VAE is trained first into WORKDIR/vae (or the one found
there is used), and the log says which. A run resumes from the newest complete checkpoint in
--workdir; a second run on a workdir in use refuses at once (WORKDIR/lock names the holder).

Multi-host (TPU pod slices, multi-node GPU): pass --distributed (or set WM_JAX_DISTRIBUTED=1) and
every process calls jax.distributed.initialize() first (arguments from the environment, as set by
the TPU runtime / xpk / SLURM).
"""

from __future__ import annotations

import os

from absl import app, flags, logging
from ml_collections import config_flags

import jax

import wm_jax  # noqa: F401  (package settings)
from wm_jax import defaults
from wm_jax.train import loop
from wm_jax.train import preview
from wm_jax.train import vae_training
from wm_jax.train import workdir_lock

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (get_config(arg)); `file.py:arg` "
                                "passes arg. --mode=sample defaults to the workdir's saved config.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, TensorBoard logs and samples go.")
flags.DEFINE_enum("mode", "train", ["train", "sample"], "What to run.")
flags.DEFINE_enum("params", "auto", ["auto", "ema", "params"],
                  "--mode=sample: which weights (auto: the EMA copy when the run kept one).")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host).")


def needs_vae(config) -> bool:
  """Whether training must encode frames: no VAE named, and a source that gives frames (every
  source but a TFDS latent cache)."""
  return not config.vae.checkpoint and not (
      config.data.source == "tfds" and "latent" in config.data.tfds_name)


def main(argv):
  del argv
  if not os.environ.get("WM_JAX_VERBOSE"):
    logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO
  if FLAGS.distributed or os.environ.get("WM_JAX_DISTRIBUTED") == "1":
    jax.distributed.initialize()
  if FLAGS.mode == "sample":
    paths = preview.sample_from_workdir(FLAGS.workdir, FLAGS.config, params=FLAGS.params)
    print(f"[main] wrote {len(paths)} files under "
          f"{os.path.join(os.path.abspath(FLAGS.workdir), 'samples')}", flush=True)
    return 0
  if FLAGS.config is None:
    raise app.UsageError("--config is required to train")
  config = FLAGS.config
  defaults.check(config, what=f"--config={FLAGS['config'].config_filename}")
  with workdir_lock.hold(FLAGS.workdir):  # the VAE and the run: one writer per workdir
    if needs_vae(config):
      config = vae_training.ensure_vae(config, FLAGS.workdir)
    summary = loop.train(config, FLAGS.workdir)
  print(f"[main] done at step {summary['step']}; workdir {os.path.abspath(FLAGS.workdir)}",
        flush=True)
  return 0


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
