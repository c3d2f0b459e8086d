"""TFDS builders (ArrayRecord format) caching the clips of any source (sources.py).

    builder = make_builder('synthetic', data_config, name='tiny', data_dir='/data/tfds')
    builder.download_and_prepare()                   # writes ArrayRecord shards
    source = tfds_cache.data_source('wm_synthetic/tiny', split='train', data_dir='/data/tfds')
    record = source[i]                               # == the source's record i

Builders: `wm_synthetic` (the procedural world), `wm_nuscenes` (nuScenes clips), `wm_video` (video
folders). A builder config carries the whole `config.data` (as JSON) so the cache says exactly what
it holds; features (keys, shapes, dtypes) come from the first record, so the cache holds every key
its source gives (the ego's actions, trajectory, goal_point and command from the synthetic world
and nuScenes, with the K of the config's trajectory_points; none of them from videos). Records
are validated (schema.validate) before they are written, in source order (TFDS shuffling is off:
cache index i is source index i; Grain shuffles at read time). With `encode_fn` (frames uint8
[T,V,H,W,3] -> latents [T,V,h,w,C] float) the cache holds precomputed `latents` instead of frames
(keep_frames=True keeps both). Only the ArrayRecord file format is written, so tfds_cache.py
reads a cache back with random access and without TensorFlow in the read path.

`tools/make_dataset.py` runs the builders from the command line.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Callable

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from wm_jax import defaults
from wm_jax.data import records, schema, sources

FILE_FORMAT = "array_record"
# Big arrays are zlib-compressed inside each record; small ones are stored raw.
_COMPRESS_BYTES = 4096


@dataclasses.dataclass
class ClipConfig(tfds.core.BuilderConfig):
  """One cache: the data config (JSON of config.data) plus what to store."""
  data: str = "{}"
  splits: tuple = ("train", "validation")
  max_examples: int = 0  # per split; 0 = all
  latents: str = ""  # description of the encoder when the cache holds latents ('' = frames)
  keep_frames: bool = False


class _ClipBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared body of the three builders; subclasses name the source."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Clips per wm_jax/data/schema.py."}
  BUILDER_CONFIGS = []
  SOURCE = ""
  # These builders download nothing, so they have no URL checksums file next to their code.
  # (TFDS' default code_path lookup also needs the optional `importlib_resources` package.)
  code_path = None

  def __init__(self, *, encode_fn: Callable[[np.ndarray], np.ndarray] | None = None,
               skip_bad_records: bool | None = None, log_every: int = 50, **kwargs):
    self._encode_fn = encode_fn
    self._skip = skip_bad_records
    self._log_every = log_every
    self._sources = {}
    super().__init__(**kwargs)
    if bool(self.builder_config.latents) != (encode_fn is not None):
      raise ValueError(f"builder config {self.builder_config.name!r} has latents="
                       f"{self.builder_config.latents!r} but encode_fn is "
                       f"{'set' if encode_fn else 'None'}")

  @property
  def data_config(self) -> ml_collections.ConfigDict:
    c = defaults.data()
    c.update(json.loads(self.builder_config.data))
    c.source = self.SOURCE
    return c

  def _source(self, split):
    if split not in self._sources:
      self._sources[split] = sources.make_source(self.data_config, split)
    return self._sources[split]

  def _convert(self, record):
    record = {k: np.asarray(v) for k, v in record.items()}
    if self._encode_fn is not None:
      latents = np.asarray(self._encode_fn(record["frames"]), np.float32)
      if not self.builder_config.keep_frames:
        record.pop("frames")
      record["latents"] = latents
    return {k: (v.astype(np.float32) if v.dtype.kind == "f" else v) for k, v in record.items()}

  def _info(self) -> tfds.core.DatasetInfo:
    split = self.builder_config.splits[0]
    source = self._source(split)
    if not len(source):
      raise ValueError(f"{self.name}: split {split!r} of the source is empty")
    probe = self._convert(source[0])
    schema.validate(probe, source=getattr(source, "name", self.name), index=0)
    self._probe = (split, probe)  # written as record 0 of that split without reading it again
    features = {}
    for key, value in sorted(probe.items()):
      encoding = (tfds.features.Encoding.ZLIB if value.nbytes > _COMPRESS_BYTES
                  else tfds.features.Encoding.NONE)
      features[key] = tfds.features.Tensor(shape=value.shape, dtype=value.dtype,
                                           encoding=encoding, doc=schema.FIELDS[key].doc)
    return tfds.core.DatasetInfo(
        builder=self, description=f"wm_jax clips from the {self.SOURCE!r} source: "
        f"{self.builder_config.data}", features=tfds.features.FeaturesDict(features),
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in self.builder_config.splits}

  def _generate_examples(self, split):
    source = self._source(split)
    name = getattr(source, "name", f"{self.name}:{split}")
    checked = records.CheckedSource(
        source, skip_bad_records=(self.data_config.skip_bad_records if self._skip is None
                                  else self._skip), name=name)
    n = len(source)
    if self.builder_config.max_examples:
      n = min(n, self.builder_config.max_examples)
    start, bad = time.time(), 0
    for i in range(n):
      probe_split, probe = getattr(self, "_probe", (None, None))
      if i == 0 and probe_split == split:
        yield i, probe
        continue
      record = checked[i]
      if records.is_bad(record):
        bad += 1
        continue
      yield i, self._convert(record)
      if self._log_every and (i + 1) % self._log_every == 0:
        logging.info("%s: %d/%d records (%.1f/s), %d bad skipped", name, i + 1, n,
                     (i + 1) / (time.time() - start), bad)
    if bad:
      logging.warning("%s: skipped %d bad records of %d", name, bad, n)


class WmSynthetic(_ClipBuilder):
  """Clips rendered by the procedural world (wm_jax/data/synthetic)."""
  SOURCE = "synthetic"


class WmNuscenes(_ClipBuilder):
  """Clips of a nuScenes v1.0 data set (wm_jax/data/nuscenes.py)."""
  SOURCE = "nuscenes"


class WmVideo(_ClipBuilder):
  """Single-view clips of a folder of driving videos (wm_jax/data/video.py)."""
  SOURCE = "video"


BUILDERS = {"synthetic": WmSynthetic, "nuscenes": WmNuscenes, "video": WmVideo}


def make_builder(source: str, data_config, *, name: str, data_dir: str,
                 splits=("train", "validation"), max_examples: int = 0, encode_fn=None,
                 latents: str = "", keep_frames: bool = False, skip_bad_records=None):
  """A builder of `source` ('synthetic' | 'nuscenes' | 'video') writing ArrayRecord files."""
  if source not in BUILDERS:
    raise ValueError(f"unknown builder source {source!r}; choose one of {sorted(BUILDERS)}")
  if encode_fn is not None and not latents:
    latents = getattr(encode_fn, "__name__", "encoder")
  data = dict(data_config.to_dict() if hasattr(data_config, "to_dict") else data_config)
  data["source"] = source
  config = ClipConfig(name=name, data=json.dumps(data, sort_keys=True, default=list),
                      splits=tuple(splits), max_examples=max_examples, latents=latents,
                      keep_frames=keep_frames,
                      description=f"{source} clips" + (f", latents from {latents}" if latents
                                                       else ""))
  return BUILDERS[source](config=config, data_dir=data_dir, file_format=FILE_FORMAT,
                          encode_fn=encode_fn, skip_bad_records=skip_bad_records)
