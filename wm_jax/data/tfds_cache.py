"""A prepared TFDS ArrayRecord cache (tfds_builders.py writes it) as a random-access source.

    source = data_source('wm_synthetic/tiny', split='train', data_dir='/data/tfds')
    record = source[i]     # == record i of the source the cache was built from

Keys and dtypes are the cache's features: exactly those of the source's records (so the ego's
trajectory, goal_point and command are there when the source gave them; command stays int32).

Only the ArrayRecord file format is read, through `tfds.data_source`: random access without
TensorFlow in the read path.
"""

from __future__ import annotations

import os

import numpy as np


class CachedSource:
  """A `tfds.data_source` with a name for error messages; records as numpy dicts."""

  def __init__(self, source, name: str):
    self.source, self.name = source, name
    features = source.dataset_info.features
    self.dtypes = {k: np.dtype(features[k].np_dtype) for k in features.keys()}

  def __len__(self):
    return len(self.source)

  def __getitem__(self, index):
    # Scalars come back as Python numbers; give every key its feature dtype again.
    return {k: np.asarray(v, self.dtypes[k]) for k, v in self.source[int(index)].items()}


def data_source(name: str, *, split: str, data_dir: str | None = None) -> CachedSource:
  """Random-access source over a prepared cache, e.g. name='wm_synthetic/tiny'."""
  # Imported here: tensorflow_datasets is heavy, and only the 'tfds' source needs it, so the
  # pipeline over the other sources never loads it.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if not name:
    raise ValueError("config.data.tfds_name is empty; set it to e.g. 'wm_synthetic/tiny'")
  if split == "val":
    split = "validation"
  if data_dir is not None and not os.path.isdir(os.path.join(data_dir, name)):
    raise FileNotFoundError(f"no prepared TFDS cache {name!r} under data_dir={data_dir}; build it "
                            "with tools/make_dataset.py")
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=False,
                              try_gcs=False)
  except tfds.core.DatasetNotFoundError as e:
    raise FileNotFoundError(f"no prepared TFDS cache {name!r} (split {split!r}) under data_dir="
                            f"{data_dir}; build it with tools/make_dataset.py: {e}") from e
  return CachedSource(source, name=f"tfds:{name}:{split}")
