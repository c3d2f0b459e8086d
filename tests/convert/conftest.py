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


def load_torch_strict(torch_module, flax_module):
  """Flax weights -> `torch_module` through param_map (what users run), strict: every key on both
  sides with the same shapes. Returns the module in eval mode."""
  import torch
  from wm_jax.convert import param_map
  sd = {k: torch.from_numpy(np.array(v)) for k, v in param_map.to_torch_state_dict(flax_module).items()}
  torch_module.load_state_dict(sd, strict=True)
  return torch_module.eval()
