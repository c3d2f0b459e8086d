"""The batch contract: the one place that names every key, its shape, dtype and meaning.

Data code produces these dicts (numpy, per host); model and training code consume them. Channels
last everywhere. Shapes are written with symbolic dimensions; one symbol means one size across all
keys of a batch (e.g. every `T` is the same number of frames).

  B batch, T frames, V views (cameras), H/W image size, h/w latent size, C latent channels,
  N boxes per frame, L text tokens, D text width, P pooled text width, A action width.

`validate(example_or_batch, ...)` checks a record or a batch against the table and raises
`SchemaError` (a ValueError) naming the key, the source and the index. Nothing is repaired.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

ACTION_NAMES = ("speed", "steering", "accel", "yaw_rate")  # units: m/s, rad, m/s^2, rad/s
BOX_FIELDS = ("x", "y", "z", "l", "w", "h", "yaw", "class", "track_id", "valid")
LAYOUT_CHANNELS = 6


@dataclasses.dataclass(frozen=True)
class Field:
  dims: tuple[str, ...]  # without the leading batch dim
  dtype: str  # 'uint8', 'float', 'float32', 'bool'
  doc: str


FIELDS: dict[str, Field] = {
    "frames": Field(("T", "V", "H", "W", 3), "uint8", "camera images"),
    "latents": Field(("T", "V", "h", "w", "C"), "float", "VAE latents (when cached), scaled"),
    "actions": Field(("T", "A"), "float32", "ego actions per frame: " + ", ".join(ACTION_NAMES)),
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
    check_finite: also reject NaN/Inf in float arrays (costs one pass over the data).

  Raises:
    SchemaError: unknown key, missing images, wrong rank, size, dtype, a symbolic dimension that
      disagrees between keys, non-finite values, or non-positive fps.
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
    if check_finite and field.dtype.startswith("float"):
      bad = ~np.isfinite(np.asarray(arr, dtype=np.float32))
      if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise SchemaError(f"{key!r} has {int(bad.sum())} non-finite values, first at {first}{where}")
  if "fps" in record and np.any(np.asarray(record["fps"]) <= 0):
    raise SchemaError(f"'fps' must be positive, got {np.asarray(record['fps']).tolist()}{where}")
  return sizes
