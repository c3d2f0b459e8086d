"""The batch contract: the one place that names every key, its shape, dtype and meaning.

Data code produces these dicts (numpy, per host); model and training code consume them. Channels
last everywhere. Shapes are written with symbolic dimensions; one symbol means one size across all
keys of a batch (e.g. every `T` is the same number of frames).

  B batch, T frames, V views (cameras), H/W image size, h/w latent size, C latent channels,
  N boxes per frame, L text tokens, D text width, P pooled text width, A action width,
  K future trajectory points (config.data.trajectory_points).

The ego's motion: `actions` per frame (ACTION_NAMES), and the future of each frame t, derived from
the ego poses of frames t+1..t+K by data/actions.py (which documents the conventions):
`trajectory` (those positions in the ego frame of t), `goal_point` (its last point in the front
camera, view 0, normalised) and `command` (an index into COMMANDS).

`validate(example_or_batch, ...)` checks a record or a batch against the table and raises
`SchemaError` (a ValueError) naming the key, the source and the index. Nothing is repaired. The ego
keys are always checked for values (they are small): finite actions, trajectory and goal point,
speed >= 0, steering inside (-pi/2, pi/2), command in 0..len(COMMANDS)-1.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

ACTION_NAMES = ("speed", "steering", "accel", "yaw_rate")  # units: m/s, rad, m/s^2, rad/s
COMMANDS = ("straight", "left", "right", "stop")  # values of `command` (data/actions.py)
BOX_FIELDS = ("x", "y", "z", "l", "w", "h", "yaw", "class", "track_id", "valid")
LAYOUT_CHANNELS = 6


@dataclasses.dataclass(frozen=True)
class Field:
  dims: tuple[str, ...]  # without the leading batch dim
  dtype: str  # 'uint8', 'float', 'float32', 'int32', 'bool'
  doc: str


FIELDS: dict[str, Field] = {
    "frames": Field(("T", "V", "H", "W", 3), "uint8", "camera images"),
    "latents": Field(("T", "V", "h", "w", "C"), "float", "VAE latents (when cached), scaled"),
    "actions": Field(("T", "A"), "float32", "ego actions per frame: " + ", ".join(ACTION_NAMES)),
    "trajectory": Field(("T", "K", 2), "float32",
                        "next K ego positions (x forward, y left, m) in the ego frame of frame t"),
    "goal_point": Field(("T", 2), "float32",
                        "trajectory[t, K-1] in the front camera (view 0): u/W, v/H in [-1, 2]"),
    "command": Field(("T",), "int32", "driving command: " + ", ".join(
        f"{i} {c}" for i, c in enumerate(COMMANDS))),
    "ego_pose": Field(("T", 4, 4), "float32", "world-from-ego"),
    "intrinsics": Field(("T", "V", 3, 3), "float32", "per camera, in pixels of frames"),
    "extrinsics": Field(("T", "V", 4, 4), "float32", "ego-from-camera"),
    "boxes": Field(("T", "N", len(BOX_FIELDS)), "float32", "3-D boxes: " + ", ".join(BOX_FIELDS)),
    "layout": Field(("T", "V", "H", "W", LAYOUT_CHANNELS), "uint8",
                    "projected boxes + map lines (condition image)"),
    "text_embeddings": Field(("T", "V", "L", "D"), "float", "optional, precomputed"),
    "pooled_text": Field(("T", "V", "P"), "float", "optional, precomputed"),
    "depth": Field(("T", "V", "H", "W"), "float32", "optional, metres along the optical axis"),
    "fps": Field((), "float32", "frame rate of the clip"),
    "view_adjacency": Field(("V", "V"), "bool", "which cameras attend to each other"),
}

# A record must carry images in one of these forms.
IMAGE_KEYS = ("frames", "latents")
# The ego's motion: checked for values on every validation (see _check_ego).
EGO_KEYS = ("actions", "trajectory", "goal_point", "command")


class SchemaError(ValueError):
  """A record or batch that does not follow the batch contract."""


def _where(source: str | None, index: Any) -> str:
  parts = []
  if source is not None:
    parts.append(f"source={source!r}")
  if index is not None:
    parts.append(f"index={index!r}")
  return f" ({', '.join(parts)})" if parts else ""


def _dtype_ok(kind: str, dtype: np.dtype) -> bool:
  if kind == "float":
    return np.issubdtype(dtype, np.floating) or dtype.name == "bfloat16"
  return dtype == np.dtype(kind)


def validate(record: Mapping[str, Any], *, batched: bool = False, source: str | None = None,
             index: Any = None, check_finite: bool = True) -> dict[str, int]:
  """Checks `record` against FIELDS and returns the sizes of the symbolic dimensions.

  Args:
    record: dict of arrays. With `batched=True` every array has a leading batch dim `B`.
    source, index: where the record came from; both appear in every error message.
    check_finite: also reject NaN/Inf in the other float arrays (costs one pass over the data);
      the ego keys (EGO_KEYS) are always checked.

  Raises:
    SchemaError: unknown key, missing images, wrong rank, size, dtype, a symbolic dimension that
      disagrees between keys, non-finite values, non-positive fps, or ego values out of range
      (negative speed, steering outside (-pi/2, pi/2), a command outside COMMANDS).
  """
  where = _where(source, index)
  unknown = sorted(set(record) - set(FIELDS))
  if unknown:
    raise SchemaError(f"unknown batch keys {unknown}; known keys are {sorted(FIELDS)}{where}")
  if not any(k in record for k in IMAGE_KEYS):
    raise SchemaError(f"record has neither 'frames' nor 'latents' (keys: {sorted(record)}){where}")
  sizes: dict[str, int] = {}
  for key, value in record.items():
    field = FIELDS[key]
    arr = np.asarray(value) if not hasattr(value, "shape") else value
    dims = (("B",) if batched else ()) + field.dims
    if len(arr.shape) != len(dims):
      raise SchemaError(f"{key!r} must have rank {len(dims)} with dims {dims}, got shape "
                        f"{tuple(arr.shape)}{where}")
    if not _dtype_ok(field.dtype, np.dtype(arr.dtype)):
      raise SchemaError(f"{key!r} must have dtype {field.dtype}, got {arr.dtype}{where}")
    for axis, (dim, size) in enumerate(zip(dims, arr.shape)):
      if isinstance(dim, int):
        if size != dim:
          raise SchemaError(f"{key!r} axis {axis} must have size {dim}, got {size} "
                            f"(shape {tuple(arr.shape)}){where}")
      elif dim in sizes and sizes[dim] != size:
        raise SchemaError(f"{key!r} axis {axis} ({dim}) has size {size} but another key set "
                          f"{dim}={sizes[dim]}{where}")
      else:
        sizes[dim] = int(size)
    if check_finite and field.dtype.startswith("float") and key not in EGO_KEYS:
      bad = ~np.isfinite(np.asarray(arr, dtype=np.float32))
      if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise SchemaError(f"{key!r} has {int(bad.sum())} non-finite values, first at {first}{where}")
  if "fps" in record and np.any(np.asarray(record["fps"]) <= 0):
    raise SchemaError(f"'fps' must be positive, got {np.asarray(record['fps']).tolist()}{where}")
  _check_ego(record, where)
  return sizes


def _first(mask: np.ndarray) -> tuple[int, ...]:
  return tuple(int(i) for i in np.argwhere(mask)[0])


def _check_ego(record: Mapping[str, Any], where: str) -> None:
  """Values of the ego keys: finite, speed >= 0, |steering| < pi/2, command in range."""
  for key in ("actions", "trajectory", "goal_point"):
    if key in record:
      bad = ~np.isfinite(np.asarray(record[key], np.float32))
      if bad.any():
        first = _first(bad)
        name = f" ({ACTION_NAMES[first[-1]]})" if key == "actions" and first[-1] < 4 else ""
        raise SchemaError(f"{key!r} has {int(bad.sum())} non-finite values, first at "
                          f"{first}{name}{where}")
  if "actions" in record:
    a = np.asarray(record["actions"], np.float32)
    if a.shape[-1] >= 1 and (a[..., 0] < 0).any():
      first = _first(a[..., 0] < 0)
      raise SchemaError(f"'actions' speed (column 0) must be >= 0 m/s, got "
                        f"{a[first + (0,)]:.4g} at {first + (0,)}{where}")
    if a.shape[-1] >= 2 and (np.abs(a[..., 1]) >= np.pi / 2).any():
      first = _first(np.abs(a[..., 1]) >= np.pi / 2)
      raise SchemaError(f"'actions' steering (column 1) must lie in (-pi/2, pi/2) rad, got "
                        f"{a[first + (1,)]:.4g} at {first + (1,)}{where}")
  if "command" in record:
    c = np.asarray(record["command"])
    bad = (c < 0) | (c >= len(COMMANDS))
    if bad.any():
      first = _first(bad)
      raise SchemaError(f"'command' must be in 0..{len(COMMANDS) - 1} ({', '.join(COMMANDS)}), "
                        f"got {int(c[first])} at {first}{where}")
