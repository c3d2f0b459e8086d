"""Random-access sources: objects with __len__, __getitem__ (a record dict) and a `name`.

    source = make_source(config.data, 'train')      # the source named by config.data.source
    source = ListSource(records, name='cache')      # records held in memory

SOURCES maps config.data.source to a constructor (config.data, split) -> source:
  synthetic  synthetic/source.py SyntheticSource: clips rendered from the procedural world
  nuscenes   nuscenes.py ClipSource: multi-view clips of a nuScenes v1.0 data set
  video      video.py VideoClipSource: single-view clips of a folder of mp4s
  opendv     opendv.py OpenDVSource: single-view clips of an OpenDV-style JSON index of videos
  waymo      waymo.py ClipSource: clips of a Waymo Open Dataset v2 split (parquet tables)
  tfds       tfds_cache.py data_source: a prepared ArrayRecord cache (tfds_builders.py)
The `name` appears in every error about a bad record (records.py). The ego keys (actions,
trajectory, goal_point, command; data/actions.py) come from synthetic and nuScenes records, and
from a TFDS cache of them; video records lack them.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from wm_jax.data import mixture, nuscenes, opendv, tfds_cache, video, waymo
from wm_jax.data.synthetic.source import SyntheticSource


def _tfds_source(config, split):
  return tfds_cache.data_source(config.tfds_name, split=split, data_dir=config.path or None)


SOURCES: dict[str, Callable[[Any, str], Any]] = {
    "synthetic": SyntheticSource,
    "nuscenes": nuscenes.ClipSource.from_config,
    "video": video.VideoClipSource.from_config,
    "opendv": opendv.OpenDVSource.from_config,
    "waymo": waymo.ClipSource.from_config,
    "tfds": _tfds_source,
}


def make_source(config, split: str = "train"):
  """The random-access source named by `config.source`; 'mixture': a mixture.MixedSource of the
  sources of config.mixture's entries, each weighted (data/mixture.py)."""
  if config.source == "mixture":
    return mixture.MixedSource.from_config(config, split, SOURCES)
  if config.source not in SOURCES:
    raise ValueError(f"unknown data source {config.source!r}; choose one of {sorted(SOURCES)}")
  return SOURCES[config.source](config, split)


class ListSource:
  """A random-access source over records in memory (tests, small caches)."""

  def __init__(self, records: Sequence[Mapping[str, Any]], name: str = "list"):
    self.records, self.name = list(records), name

  def __len__(self):
    return len(self.records)

  def __getitem__(self, index):
    return self.records[int(index)]
