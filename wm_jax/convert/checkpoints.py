"""A flat {path: array} map of converted weights -> the state of a wm_jax model.

    state = state_from_flat(flat, model)     # model: an nnx module or its abstract state
    nnx.update(model, state)

Paths are matched by their OpenDWM (PyTorch) names (param_map.torch_key), so either side may be
scanned (wm_jax.models.scan); every missing, unexpected, mis-shaped, wrongly typed (an integer
array for a float parameter) or non-finite path raises ConversionError.
Native checkpoints are read and written by wm_jax.train.checkpoint, never here.
"""

from __future__ import annotations

import numpy as np
from flax import nnx

from wm_jax.convert import param_map
from wm_jax.models import scan


def state_from_flat(flat: dict[tuple, np.ndarray], target) -> nnx.State:
  """A checkpoint state for `target` (model or abstract state) from a flat path map; any
  missing/unexpected/mis-shaped/wrongly typed/non-finite path raises ConversionError. Either side may be scanned
  (wm_jax.models.scan): they are compared and matched by their canonical names."""
  target_state = param_map.checkpoint_state(target)
  want = scan.unstack_flat(param_map.flat_state(target_state))
  have = scan.unstack_flat(flat)
  have_t = {param_map.torch_key(p): param_map.torch_shape(str(p[-1]), v.shape) for p, v in have.items()}
  want_t = {param_map.torch_key(p): param_map.torch_shape(str(p[-1]), v.shape) for p, v in want.items()}
  by_key = {param_map.torch_key(p): np.asarray(v) for p, v in have.items()}
  dtypes, finite = param_map.value_problems(
      by_key, {param_map.torch_key(p): v.dtype for p, v in want.items()})
  problems = "\n".join(p for p in (param_map.compare_shapes(have_t, want_t),
                                    param_map.format_problems(dtypes=dtypes,
                                                              non_finite_keys=finite)) if p)
  if problems:
    raise param_map.ConversionError("checkpoint does not match the model:\n" + problems)
  values = {p: by_key[param_map.torch_key(p)].astype(v.dtype) for p, v in want.items()}
  return param_map.replace_values(target_state, values)
