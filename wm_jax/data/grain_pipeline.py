"""Grain pipelines: one random-access source -> validated, shuffled, sharded, batched numpy batches.

    ds = make_dataset(config.data, split='train', seed=0)       # grain.MapDataset of records
    it = make_iterator(config.data, batch_size=8, seed=0)        # checkpointable iterator
    batch = next(it); state = it.get_state(); it.set_state(state)
    it.bad_records, it.bad_record_notes                          # skipped records (skip option)

Order of operations (every process builds the same pipeline):
  source[i] -> validate (schema.validate, naming source and index) -> global shuffle with one seed
  (the same permutation on every process, reshuffled per epoch) -> repeat -> take every
  `process_count`-th element starting at `process_index` (disjoint shards) -> read threads ->
  drop bad records (skip option) -> batch -> optional multiprocess prefetch (`worker_count`).

Bad records (corrupt image, missing file, NaN action, wrong shape, ...) raise `BadRecordError`
naming the source and index. With `config.skip_bad_records` they are dropped instead; the number
dropped travels with the batches (so it survives worker processes) and is summed by the last stage
into `iterator.bad_records`, which is also part of the iterator state. Bad records after the last
good one of a finite iteration are added when the iterator ends (with worker processes they
stay in the workers and are only logged).

Iterator state (`get_state()`) is a dict of ints and strings (JSON-serialisable): the train helper
saves it with Orbax and a restored iterator continues with the same next batch.
"""

from __future__ import annotations

import logging
import zlib
from typing import Any, Callable, Mapping, Sequence

from absl import flags
import grain
import ml_collections
import numpy as np

from wm_jax.data import schema

_SKIPPED = "_skipped"  # internal per-record key: bad records dropped just before this one
_NOTE = "_skip_note"  # internal per-record key: their messages, one per line
_MAX_NOTES = 16


def defaults() -> ml_collections.ConfigDict:
  """`config.data`: which source, where, and the clip shape."""
  c = ml_collections.ConfigDict()
  c.source = "synthetic"  # 'synthetic' | 'nuscenes' | 'video' | 'tfds'
  c.path = ""  # nuScenes root (with the version folder) / video folder / TFDS data_dir
  c.version = "v1.0-trainval"  # nuScenes: table folder under path
  c.tfds_name = ""  # tfds source: 'wm_synthetic/NAME' etc. (see data/tfds_builders.py)
  # clip shape
  c.num_frames = 8
  c.views = ("CAM_FRONT",)  # nuScenes camera channels, in view order (synthetic: see `rig`)
  c.image_height = 64
  c.image_width = 128
  c.fps = 12.0  # frame rate of a clip (resampled from the source's rate)
  c.clip_stride = 0  # frames between clip starts (source frames at `fps`); 0 = num_frames
  # content
  c.layout = True  # render the 6-channel layout image
  c.depth = False  # synthetic: also return depth [T,V,H,W] (metres)
  c.max_boxes = 32  # N: boxes per frame (nearest first, padded with valid=0)
  # synthetic world
  c.rig = "front"  # 'front' (1 view) | 'nuscenes6' (6 views)
  c.domain = "boston"  # style domain of training scenes
  c.val_domain = ""  # domain of validation scenes ('' = same as domain): a domain split
  c.num_train = 1024  # scenes (= clips) per split
  c.num_val = 64
  c.scene_seed = 0  # scene of index i is seeded with scene_seed + i (+ offset for validation)
  c.render_device = "cpu"  # JAX platform the renderer runs on ('' = JAX's default): keeps data
  #                          threads off the accelerator that trains
  # nuScenes
  c.keyframes_only = False  # True: 2 Hz annotated samples; False: all 12 Hz camera sweeps
  c.box_mode = "interpolate"  # sweeps: 'interpolate' between keyframes | 'nearest' keyframe
  c.use_can_bus = True  # actions from can_bus/*.json when present, else from ego poses
  c.wheelbase = 2.588  # m (Renault Zoe, nuScenes); steering from yaw rate when no CAN bus
  c.steering_ratio = 16.0  # CAN steering-wheel angle / road-wheel angle (synthetic export: 16)
  c.locations = ()  # keep only logs from these locations (e.g. 'boston-seaport'); () = all
  c.val_locations = ()  # domain split: validation from these locations instead
  c.val_fraction = 0.15  # nuScenes/video without location split: share of scenes/files in val
  # pipeline
  c.shuffle = True
  c.num_epochs = 0  # 0 = repeat forever
  c.drop_remainder = True
  c.skip_bad_records = False
  c.read_threads = 4  # grain.ReadOptions
  c.read_buffer = 16
  c.worker_count = 0  # >0: grain mp_prefetch with that many processes
  c.worker_buffer_size = 2
  return c


class BadRecordError(ValueError):
  """A record that cannot be read or does not follow the batch contract."""


def in_validation(key: str, val_fraction: float) -> bool:
  """Deterministic split by name: the same key is in the same split on every host and run."""
  return (zlib.crc32(key.encode()) % 10_000) < val_fraction * 10_000


# --------------------------------------------------------------------------------------------
# Sources: random-access objects with __len__, __getitem__ and a `name` for error messages.


class SyntheticSource:
  """Renders clip i of a split from scene seed `scene_seed + i` (validation: + 10**6)."""

  def __init__(self, config, split: str):
    from wm_jax.data.synthetic import rig  # pylint: disable=g-import-not-at-top
    val = split != "train"
    self.domain = (config.val_domain or config.domain) if val else config.domain
    self.size = config.num_val if val else config.num_train
    self.seed0 = config.scene_seed + (10**6 if val else 0)
    self.rig = rig.make_rig(config.rig, (config.image_height, config.image_width))
    self.config = config
    self.name = f"synthetic:{config.rig}:{self.domain}:{split}"

  def __len__(self):
    return self.size

  def _device(self):
    import contextlib
    import jax
    if not self.config.render_device:
      return contextlib.nullcontext()
    return jax.default_device(jax.devices(self.config.render_device)[0])

  def __getitem__(self, index):
    index = int(index)
    if not 0 <= index < self.size:
      raise IndexError(f"{self.name}: index {index} out of range [0, {self.size})")
    from wm_jax.data.synthetic import render, world  # (modules do not pickle to workers)
    c = self.config
    scene = world.make_scene(self.seed0 + index, domain=self.domain)
    with self._device():
      record = render.render_clip(scene, self.rig, num_frames=c.num_frames, fps=c.fps,
                                        image_size=(c.image_height, c.image_width),
                                        max_boxes=c.max_boxes, layout=c.layout)
    if not c.layout:
      record.pop("layout", None)
    if not c.depth:
      record.pop("depth", None)
    return {k: np.asarray(v) for k, v in record.items()}


def _nuscenes_source(config, split):
  from wm_jax.data import nuscenes
  return nuscenes.ClipSource.from_config(config, split)


def _video_source(config, split):
  from wm_jax.data import video
  return video.VideoClipSource.from_config(config, split)


def _tfds_source(config, split):
  from wm_jax.data import tfds_builders
  return tfds_builders.data_source(config.tfds_name, split=split, data_dir=config.path or None)


SOURCES: dict[str, Callable[[Any, str], Any]] = {
    "synthetic": SyntheticSource,
    "nuscenes": _nuscenes_source,
    "video": _video_source,
    "tfds": _tfds_source,
}


def make_source(config, split: str = "train"):
  """The random-access source named by `config.source`."""
  if config.source not in SOURCES:
    raise ValueError(f"unknown data source {config.source!r}; choose one of {sorted(SOURCES)}")
  return SOURCES[config.source](config, split)


# --------------------------------------------------------------------------------------------
# Validation


class CheckedSource(grain.sources.RandomAccessDataSource):
  """Reads and validates record i; on failure raises BadRecordError or returns a bad marker."""

  def __init__(self, source, *, skip_bad_records: bool = False, name: str | None = None):
    self.source = source
    self.skip = skip_bad_records
    self.name = name or getattr(source, "name", type(source).__name__)

  def __len__(self):
    return len(self.source)

  def __getitem__(self, index):
    index = int(index)
    try:
      record = self.source[index]
      record = {k: np.asarray(v) for k, v in record.items()}
      schema.validate(record, source=self.name, index=index)
    except Exception as e:  # pylint: disable=broad-except
      message = f"bad record: source={self.name!r} index={index}: {type(e).__name__}: {e}"
      if not self.skip:
        raise BadRecordError(message) from e
      logging.warning("skipping %s", message)
      return {_NOTE: np.asarray(message)}
    return record

  def __repr__(self):
    return f"CheckedSource({self.name!r}, len={len(self)}, skip={self.skip})"


def is_bad(record) -> bool:
  return isinstance(record, Mapping) and _NOTE in record and _SKIPPED not in record


class _DropBad(grain.IterDataset):
  """Drops bad markers; the next good record carries how many were dropped and their notes."""

  def __init__(self, parent):
    super().__init__(parent)

  def __iter__(self):
    return _DropBadIterator(self._parent.__iter__())


class _DropBadIterator(grain.DatasetIterator):

  def __init__(self, parent):
    super().__init__(parent)
    self._pending, self._note = 0, ""

  def __next__(self):
    while True:
      try:
        record = next(self._parent)
      except StopIteration:
        if self._pending:
          logging.warning("%d bad records at the end of the data were dropped (last: %s)",
                          self._pending, self._note)
        raise
      if is_bad(record):
        self._pending += 1
        self._note = "\n".join(n for n in (self._note, str(record[_NOTE])) if n)
        continue
      record = dict(record)
      record[_SKIPPED] = np.int64(self._pending)
      record[_NOTE] = np.asarray(self._note)
      self._pending, self._note = 0, ""
      return record

  def get_state(self):
    return {"parent": self._parent.get_state(), "pending": self._pending, "note": self._note}

  def set_state(self, state):
    self._parent.set_state(state["parent"])
    self._pending, self._note = int(state["pending"]), str(state["note"])


def _find(iterator, kind) -> list:
  """Iterators of type `kind` upstream of `iterator` in this process."""
  found, stack = [], [iterator]
  while stack:
    it = stack.pop()
    if isinstance(it, kind):
      found.append(it)
    stack.extend(getattr(it, "_parents", ()) or ())
  return found


class _Report(grain.IterDataset):
  """Last stage: strips the carried bad-record counts from batches into `bad_records`."""

  def __init__(self, parent):
    super().__init__(parent)

  def __iter__(self):
    return ReportingIterator(self._parent.__iter__())


class ReportingIterator(grain.DatasetIterator):
  """The iterator `make_iterator` returns: numpy batches plus a bad-record counter."""

  def __init__(self, parent):
    super().__init__(parent)
    self.bad_records = 0
    self.bad_record_notes: list[str] = []
    self._local_drops = _find(parent, _DropBadIterator)  # empty with worker processes

  def _count(self, skipped, notes):
    if skipped:
      self.bad_records += skipped
      lines = [line for n in notes for line in str(n).splitlines() if line]
      self.bad_record_notes = (self.bad_record_notes + lines)[-_MAX_NOTES:]

  def __next__(self):
    try:
      batch = dict(next(self._parent))
    except StopIteration:
      # Bad records after the last good one never reach a batch; collect them here.
      for drop in self._local_drops:
        self._count(drop._pending, [drop._note])
        drop._pending, drop._note = 0, ""
      raise
    self._count(int(np.sum(batch.pop(_SKIPPED))), np.ravel(batch.pop(_NOTE)))
    return batch

  def get_state(self):
    return {"parent": self._parent.get_state(), "bad_records": self.bad_records,
            "bad_record_notes": list(self.bad_record_notes)}

  def set_state(self, state):
    self._parent.set_state(state["parent"])
    self.bad_records = int(state["bad_records"])
    self.bad_record_notes = [str(n) for n in state["bad_record_notes"]]


# --------------------------------------------------------------------------------------------
# Datasets and iterators


def _checked(config, split, source=None) -> CheckedSource:
  source = make_source(config, split) if source is None else source
  return CheckedSource(source, skip_bad_records=config.skip_bad_records)


def make_dataset(config, *, split: str = "train", seed: int = 0,
                 source=None) -> grain.MapDataset:
  """A MapDataset of validated records (globally shuffled with `seed` when config.shuffle).

  A bad record raises BadRecordError, or with config.skip_bad_records reads as None (Grain's
  "filtered" element, skipped when iterating). `source` overrides config.source (any object
  with __len__ and __getitem__).
  """
  ds = grain.MapDataset.source(_checked(config, split, source))
  if config.shuffle:
    ds = ds.shuffle(seed=seed)
  return ds.map(lambda r: None if is_bad(r) else r)


def make_iterator(config, *, batch_size: int, seed: int = 0, process_index: int | None = None,
                  process_count: int | None = None, split: str = "train",
                  source=None) -> ReportingIterator:
  """Checkpointable iterator of numpy batches (per host: `batch_size` records of this process).

  Process p of P reads global positions p, p+P, p+2P, ... of the shuffled, repeated order, so
  processes never read the same element of an epoch. State: `get_state()` / `set_state()`.
  """
  if process_index is None or process_count is None:
    import jax  # here, so Grain worker processes that unpickle this module skip importing JAX
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} not in [0, process_count={process_count})")
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  checked = _checked(config, split, source)
  if len(checked) < process_count:
    raise ValueError(f"source {checked.name!r} has {len(checked)} records, fewer than "
                     f"process_count={process_count}")
  ds = grain.MapDataset.source(checked)
  if config.shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(config.num_epochs or None)
  ds = ds[process_index::process_count]
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=config.read_threads,
                                            prefetch_buffer_size=config.read_buffer))
  it = _DropBad(it).batch(batch_size, drop_remainder=config.drop_remainder)
  if config.worker_count > 0:
    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags (notebooks, pytest)
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=config.worker_count, per_worker_buffer_size=config.worker_buffer_size))
  return iter(_Report(it))


class ListSource:
  """A random-access source over records in memory (tests, small caches)."""

  def __init__(self, records: Sequence[Mapping[str, Any]], name: str = "list"):
    self.records, self.name = list(records), name

  def __len__(self):
    return len(self.records)

  def __getitem__(self, index):
    return self.records[int(index)]
