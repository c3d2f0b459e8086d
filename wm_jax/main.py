"""Entry point: train or sample a world model from an ml_collections config.

  python -m wm_jax.main --config=configs/maskgwm_tiny.py --workdir=/tmp/run
  python -m wm_jax.main --config=configs/maskgwm_tiny.py --workdir=/tmp/run --config.train.num_steps=200
  python -m wm_jax.main --config=configs/maskgwm_tiny.py --workdir=/tmp/run --mode=sample

Multi-host (TPU pod slices, multi-node GPU): pass --distributed (or set WM_JAX_DISTRIBUTED=1) and
every process calls jax.distributed.initialize() first (arguments from the environment, as set by
the TPU runtime / xpk / SLURM). A run resumes from the newest complete checkpoint in --workdir.

Components are the defaults of wm_jax.train.loop unless the config has a `components` section
naming replacements as 'module:function' (function(config) -> the component), e.g. for tests.
"""

from __future__ import annotations

import importlib
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (get_config(arg)); `file.py:arg` passes arg.",
                                lock_config=False)
flags.DEFINE_string("workdir", None, "Where checkpoints, TensorBoard logs and samples go.")
flags.DEFINE_enum("mode", "train", ["train", "sample"], "What to run.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host).")


def _resolve(name: str):
  module, _, fn = name.partition(":")
  if not fn:
    raise ValueError(f"component {name!r} must be 'module:function'")
  return getattr(importlib.import_module(module), fn)


def components(config) -> dict:
  """Keyword arguments for loop.train from config.components (model, loss, iterator, prepare)."""
  out = {}
  section = config.get("components") or {}
  table = {"model": "model_factory", "loss": "loss_fn", "iterator": "make_iterator",
           "prepare": "prepare_batch"}
  for key, value in dict(section).items():
    if key not in table:
      raise ValueError(f"config.components.{key} is not one of {sorted(table)}")
    if value:
      out[table[key]] = _resolve(value) if key == "iterator" else _resolve(value)(config)
  return out


def main(argv):
  del argv
  if not os.environ.get("WM_JAX_VERBOSE"):
    logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO
  if FLAGS.config is None or FLAGS.workdir is None:
    raise app.UsageError("--config and --workdir are required")
  if FLAGS.distributed or os.environ.get("WM_JAX_DISTRIBUTED") == "1":
    import jax
    jax.distributed.initialize()
  import wm_jax  # noqa: F401  (package settings: eager sharding off)
  from wm_jax.train import config as train_config
  config = train_config.fill(FLAGS.config)
  if FLAGS.mode == "train":
    from wm_jax.train import loop
    summary = loop.train(config, FLAGS.workdir, **components(config))
    print(f"[main] done at step {summary['step']}; workdir {os.path.abspath(FLAGS.workdir)}", flush=True)
  else:
    from wm_jax.train import sample
    paths = sample.sample_from_workdir(config, FLAGS.workdir)
    print(f"[main] wrote {len(paths)} files under {os.path.join(os.path.abspath(FLAGS.workdir), 'samples')}",
          flush=True)
  return 0


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
