"""Names and layouts between wm_jax (Flax NNX) state and PyTorch state_dicts, in both directions.

One rule, no renaming table: the module path joined with '.' IS the PyTorch key, except the leaf:

  Flax leaf   PyTorch leaf   layout (Flax <-> PyTorch)
  kernel      weight         Linear (in, out) <-> (out, in); Conv2d (kH, kW, I, O) <-> (O, I, kH, kW);
                             Conv3d (kD, kH, kW, I, O) <-> (O, I, kD, kH, kW)
  scale       weight         norms: same layout
  embedding   weight         nn.Embedding: same layout
  other       same name      same layout (bias, mix_factor, mask_token, scale_shift_table, ...)

A model built with scan_layers=True stores runs of layers stacked (wm_jax.models.scan); every
function here unstacks such a tree to the canonical names first, and stacks values back when it
builds a state for it, so PyTorch keys never depend on scanning.

Converting into wm_jax needs the target structure (an abstract state from nnx.eval_shape) to know
whether a PyTorch `weight` is a kernel, a scale or an embedding; every missing, unexpected or
mis-shaped key, every array holding NaN or Inf, and every array whose dtype the model does not
hold (a floating array converts to the model's floating dtype; anything else, e.g. an int64
array for a float parameter, must have the model's dtype exactly) is reported together in one
ConversionError. The action module's parameters (ctsd_dit.ACTION_PARAMS) are the exception: no
OpenDWM checkpoint has them, so a state_dict without them leaves them at the target's values (for
an abstract target, from_torch fills them from the model's init, whose zero output projections
keep the converted model computing what the checkpoint computes).
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wm_jax.models import scan
from wm_jax.models.ctsd_dit import ACTION_PARAMS
from wm_jax.models.buffers import Buffer

LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "embedding": "weight"}
# What a converted checkpoint holds: trainable params and persistent buffers (Buffer subclasses
# included, e.g. mask_reconstruction.UnusedWeight: weights PyTorch keeps but never applies).
CHECKPOINT_FILTER = nnx.Any(nnx.Param, Buffer)


class ConversionError(ValueError):
  """A checkpoint that does not match the model, with every offending key listed."""


def action_keys(keys: Iterable[str]) -> list[str]:
  """The keys of the action module's parameters (ctsd_dit.ACTION_PARAMS) among `keys`, sorted."""
  patterns = [re.compile(p) for p in ACTION_PARAMS]
  return sorted(k for k in keys if any(p.fullmatch(k) for p in patterns))


def torch_key(path: tuple) -> str:
  """('transformer_blocks', 0, 'attn', 'to_q', 'kernel') -> 'transformer_blocks.0.attn.to_q.weight'."""
  *parents, leaf = (str(p) for p in path)
  return ".".join([*parents, LEAF_TO_TORCH.get(leaf, leaf)])


def torch_shape(leaf: str, shape: tuple) -> tuple:
  """The PyTorch shape of a Flax array of `shape` whose leaf name is `leaf`."""
  shape = tuple(shape)
  if leaf != "kernel" or len(shape) < 2:
    return shape
  return (shape[1], shape[0]) if len(shape) == 2 else (shape[-1], shape[-2], *shape[:-2])


def to_torch_layout(leaf: str, value: np.ndarray) -> np.ndarray:
  """Flax layout -> PyTorch layout for one array whose Flax leaf name is `leaf`."""
  if leaf != "kernel" or value.ndim < 2:
    return value
  if value.ndim == 2:
    return value.T
  # (k..., I, O) -> (O, I, k...)
  n = value.ndim
  return np.transpose(value, (n - 1, n - 2, *range(n - 2)))


def from_torch_layout(leaf: str, value: np.ndarray) -> np.ndarray:
  """PyTorch layout -> Flax layout (inverse of to_torch_layout)."""
  if leaf != "kernel" or value.ndim < 2:
    return value
  if value.ndim == 2:
    return value.T
  # (O, I, k...) -> (k..., I, O)
  n = value.ndim
  return np.transpose(value, (*range(2, n), 1, 0))


def flat_state(state: nnx.State) -> dict[tuple, Any]:
  """{path tuple: array or ShapeDtypeStruct} of an nnx State."""
  out = {}
  for path, var in nnx.to_flat_state(state):
    out[tuple(path)] = var.get_value() if hasattr(var, "get_value") else var
  return out


def checkpoint_state(model_or_state) -> nnx.State:
  """The part of a model's state that checkpoints and conversion carry (params + buffers)."""
  if isinstance(model_or_state, nnx.State):
    return model_or_state.filter(CHECKPOINT_FILTER)
  return nnx.state(model_or_state, CHECKPOINT_FILTER)


def torch_shapes(model_or_state) -> dict[str, tuple[int, ...]]:
  """PyTorch key -> PyTorch shape, from a model or (abstract) state; no array is materialised."""
  out = {}
  for path, value in scan.unstack_flat(flat_state(checkpoint_state(model_or_state))).items():
    out[torch_key(path)] = torch_shape(str(path[-1]), value.shape)
  return out


def to_torch_state_dict(model_or_state) -> dict[str, np.ndarray]:
  """PyTorch-layout numpy arrays keyed by OpenDWM/diffusers names."""
  return flat_to_torch(flat_state(checkpoint_state(model_or_state)))


def flat_to_torch(flat: Mapping[tuple, Any]) -> dict[str, Any]:
  """{wm_jax path tuple: array} -> PyTorch state_dict (names and layouts by the one rule).

  Abstract values (jax.ShapeDtypeStruct) map to ShapeDtypeStructs of the PyTorch shape, so a
  full-size conversion can be checked without memory. A scanned tree is unstacked first."""
  out = {}
  for path, value in scan.unstack_flat(flat).items():
    key = torch_key(path)
    if key in out:
      raise ConversionError(f"two wm_jax parameters map to the PyTorch key {key!r}")
    leaf = str(path[-1])
    if isinstance(value, jax.ShapeDtypeStruct):
      out[key] = jax.ShapeDtypeStruct(torch_shape(leaf, value.shape), value.dtype)
    else:
      out[key] = np.ascontiguousarray(to_torch_layout(leaf, np.asarray(value)))
  return out


def non_finite(key: str, value) -> str:
  """'key: n of m values are NaN or Inf' for a floating array holding any, else ''."""
  if not jnp.issubdtype(value.dtype, jnp.floating):
    return ""
  bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
  return f"{key}: {bad} of {np.size(value)} values are NaN or Inf" if bad else ""


def value_problems(values: Mapping[str, Any], want_dtypes: Mapping[str, Any]
                   ) -> tuple[list[str], list[str]]:
  """(dtype mismatches, non-finite arrays) of the keys of `values` that `want_dtypes` has.

  A floating array may convert to another floating dtype (bf16/fp16 files, fp32 params); any
  other dtype must be the model's exactly, so an integer array is never cast to float. Abstract
  values (jax.ShapeDtypeStruct) are checked for their dtype only."""
  dtypes, finite = [], []
  for key in sorted(k for k in values if k in want_dtypes):
    value = values[key]
    have, want = np.dtype(value.dtype), np.dtype(want_dtypes[key])
    both_float = jnp.issubdtype(have, jnp.floating) and jnp.issubdtype(want, jnp.floating)
    if have != want and not both_float:
      dtypes.append(f"{key}: checkpoint {have}, model wants {want}")
    elif not isinstance(value, jax.ShapeDtypeStruct):
      finite.append(non_finite(key, value))
  return dtypes, [m for m in finite if m]


def format_problems(missing=(), unexpected=(), mismatched=(), dtypes=(), non_finite_keys=(),
                    limit: int = 50) -> str:
  """One message listing every missing, unexpected, mis-shaped, wrongly typed and non-finite
  key ('' when none)."""
  parts = []
  for title, items in (("missing", missing), ("unexpected", unexpected),
                       ("shape mismatch", mismatched), ("dtype mismatch", dtypes),
                       ("non-finite", non_finite_keys)):
    items = list(items)
    if items:
      shown = "\n    ".join(items[:limit])
      more = f"\n    ... {len(items) - limit} more" if len(items) > limit else ""
      parts.append(f"  {len(items)} {title} key(s):\n    {shown}{more}")
  return "\n".join(parts)


def compare_shapes(have: Mapping[str, tuple], want: Mapping[str, tuple], *, ignore=()) -> str:
  """Differences between two {PyTorch key: shape} maps as format_problems text ('' = equal)."""
  ignore = set(ignore)
  missing = sorted(k for k in want if k not in have and k not in ignore)
  unexpected = sorted(k for k in have if k not in want and k not in ignore)
  mismatched = [f"{k}: checkpoint {tuple(have[k])}, model wants {tuple(want[k])}"
                for k in sorted(want) if k in have and k not in ignore
                and tuple(have[k]) != tuple(want[k])]
  return format_problems(missing, unexpected, mismatched)


def from_torch_state_dict(state_dict: Mapping[str, Any], target, *,
                          ignore: Iterable[str] = ()) -> nnx.State:
  """A wm_jax checkpoint state (params + buffers) from a PyTorch state_dict.

  Args:
    state_dict: PyTorch key -> array (numpy, or torch tensors converted by the caller).
    target: the model, or its abstract state (nnx.eval_shape), giving structure, shapes, dtypes.
    ignore: PyTorch keys to leave out on either side (not reported as missing or unexpected).
      Action-module keys the state_dict lacks are always left out (they keep the target's value).

  Raises:
    ConversionError: listing every missing key, unexpected key, shape mismatch, dtype mismatch
    and array with NaN or Inf.
  """
  ignore = set(ignore)
  target_state = checkpoint_state(target)
  target_flat = flat_state(target_state)
  flat = scan.unstack_flat(target_flat)
  by_key = {torch_key(path): path for path in flat}
  ignore |= {k for k in action_keys(by_key) if k not in state_dict}
  missing = sorted(k for k in by_key if k not in state_dict and k not in ignore)
  unexpected = sorted(k for k in state_dict if k not in by_key and k not in ignore)
  mismatched, values = [], {}
  for key, path in by_key.items():
    if key in ignore or key not in state_dict:
      continue
    array = from_torch_layout(str(path[-1]), np.asarray(state_dict[key]))
    want = tuple(flat[path].shape)
    if tuple(array.shape) != want:
      mismatched.append(f"{key}: checkpoint {tuple(np.shape(state_dict[key]))} -> "
                        f"{tuple(array.shape)} in Flax layout, model wants {want}")
      continue
    values[path] = array
  arrays = {torch_key(path): array for path, array in values.items()}
  dtypes, finite = value_problems(arrays, {k: flat[by_key[k]].dtype for k in arrays})
  if missing or unexpected or mismatched or dtypes or finite:
    raise ConversionError("checkpoint does not match the model:\n" +
                          format_problems(missing, unexpected, mismatched, dtypes, finite))
  return replace_values(target_state, {path: array.astype(flat[path].dtype, copy=False)
                                       for path, array in values.items()})


def replace_values(target_state: nnx.State, canonical: Mapping[tuple, Any]) -> nnx.State:
  """`target_state` with the values of `canonical` (canonical paths; stacked where the target is
  scanned). Paths `canonical` does not give keep the target's value."""
  try:
    values = scan.stack_flat(canonical, flat_state(target_state))
  except ValueError as e:
    raise ConversionError(str(e)) from None
  return nnx.from_flat_state([(path, var.replace(values[tuple(path)]) if tuple(path) in values
                               else var) for path, var in nnx.to_flat_state(target_state)])
