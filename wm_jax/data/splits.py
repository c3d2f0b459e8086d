"""Train / validation split by name, the same on every host and run.

    val = in_validation('scene-0103', config.val_fraction)

A key (nuScenes scene name, video path relative to the folder) goes to validation when a CRC32
hash of it, modulo 10000, falls below val_fraction * 10000. The readers (nuscenes.py, video.py)
use it when no location split is configured.
"""

from __future__ import annotations

import zlib


def in_validation(key: str, val_fraction: float) -> bool:
  """Deterministic split by name: the same key is in the same split on every host and run."""
  return (zlib.crc32(key.encode()) % 10_000) < val_fraction * 10_000
