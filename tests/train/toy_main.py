"""`python -m tests.train.toy_main --workdir=DIR`: wm_jax's train loop on the toy model, loss and
Grain iterator of tests/train/toy.py with tests/train/toy_config.py, as a process the resume
tests can kill, signal and restart."""

import argparse
import os

from absl import logging

import wm_jax  # noqa: F401  (package settings)
from tests.train import toy, toy_config
from wm_jax.train import loop


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--workdir", required=True)
  args = parser.parse_args()
  if not os.environ.get("WM_JAX_VERBOSE"):
    logging.set_verbosity(logging.WARNING)
  config = toy_config.get_config()
  summary = loop.train(config, args.workdir, model_factory=toy.make_model(config),
                       loss_fn=toy.make_loss(config), make_iterator=toy.make_iterator)
  print(f"[toy_main] done at step {summary['step']}", flush=True)


if __name__ == "__main__":
  main()
