"""Toy config for the subprocess tests of wm_jax.main (components from tests/train/toy.py)."""

import ml_collections

from tests.train import toy


def get_config(arg=None):
  c = toy.config(batch_size=4)
  c.train.num_steps = 8
  c.train.log_every = 1
  c.train.warmup_steps = 2
  c.train.ema_decay = 0.9
  c.checkpoint.every_steps = 1
  c.checkpoint.keep = 2
  c.components = ml_collections.ConfigDict({"model": "tests.train.toy:make_model",
                                            "loss": "tests.train.toy:make_loss",
                                            "iterator": "tests.train.toy:make_iterator"})
  return c
