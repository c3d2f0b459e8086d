"""Toy config for the subprocess tests (tests/train/toy_main.py, components from toy.py)."""

from tests.train import toy


def get_config(arg=None):
  del arg
  c = toy.config(batch_size=4)
  c.train.num_steps = 8
  c.train.log_every = 1
  c.train.warmup_steps = 2
  c.train.ema_decay = 0.9
  c.checkpoint.every_steps = 1
  c.checkpoint.keep = 2
  return c
