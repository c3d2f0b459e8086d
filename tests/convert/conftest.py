"""Shared helpers for the conversion tests: models with random weights without eager init."""
import numpy as np
import jax
from flax import nnx


def random_model(factory, seed=0, scale=0.1):
  """factory() built abstractly and filled with N(0, scale^2) numpy draws: every layout gets
  non-trivial values (zero-initialised layers too) and no per-shape init kernel is compiled."""
  graphdef, state = nnx.split(nnx.eval_shape(factory))
  rng = np.random.default_rng(seed)
  state = jax.tree.map(lambda s: (scale * rng.standard_normal(s.shape)).astype(s.dtype), state)
  return nnx.merge(graphdef, state)
