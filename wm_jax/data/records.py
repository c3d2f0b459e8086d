"""Checked reading of records: a record follows the batch contract (schema.py) or is bad.

    checked = CheckedSource(source, skip_bad_records=False)
    record = checked[i]        # validated numpy dict, or raises BadRecordError
    is_bad(checked[i])         # with skip_bad_records: True for a bad-record marker
    stream = record_stream(source, skip_bad_records=False, shuffle=True, seed=0, epochs=None)

A bad record (corrupt image, missing file, NaN action, wrong shape, ...) raises `BadRecordError`
naming the source and index. With `skip_bad_records` it reads as a marker instead, a dict holding
only the message under NOTE_KEY; bad_records.py drops the markers and counts them.
"""

from __future__ import annotations

import logging
from typing import Mapping

import grain
import numpy as np

from wm_jax.data import schema

# The one key of a bad-record marker: its message (bad_records.ReportingIterator drops and counts
# the markers).
NOTE_KEY = "_skip_note"


class BadRecordError(ValueError):
  """A record that cannot be read or does not follow the batch contract."""


def is_bad(record) -> bool:
  """Whether `record` is the marker CheckedSource returns for a skipped bad record."""
  return isinstance(record, Mapping) and NOTE_KEY in record


def good_index(name: str, index, num_good: int, bad, error=ValueError) -> int:
  """int(index) when it names one of a source's `num_good` readable items. Unreadable items
  (files, segments, index entries) found when the source was built stand as the indices after
  them: for those this raises error(message) of bad[index - num_good], a (what, message) pair, so
  that CheckedSource reports (or skips and counts) each once per epoch. IndexError out of range."""
  index = int(index)
  if not 0 <= index < num_good + len(bad):
    raise IndexError(f"{name}: clip index {index} out of range [0, {num_good + len(bad)})")
  if index >= num_good:
    raise error(bad[index - num_good][1])
  return index


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
      return {NOTE_KEY: np.asarray(message)}
    return record

  def __repr__(self):
    return f"CheckedSource({self.name!r}, len={len(self)}, skip={self.skip})"


def record_stream(source, *, skip_bad_records: bool, shuffle: bool, seed: int,
                  epochs: int | None = 1, process_index: int = 0, process_count: int = 1,
                  what: str = "") -> grain.MapDataset:
  """This process's stream of the checked records (and bad markers) of `source`: CheckedSource ->
  global shuffle with `seed` (when `shuffle`) -> repeat `epochs` (None: forever) -> every
  process_count-th record from process_index. `what` opens the error of a source with fewer
  records than processes (e.g. "mixture entry 'x': ")."""
  checked = CheckedSource(source, skip_bad_records=skip_bad_records)
  if len(checked) < process_count:
    raise ValueError(f"{what}source {checked.name!r} has {len(checked)} records, fewer than "
                     f"process_count={process_count}")
  ds = grain.MapDataset.source(checked)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  if epochs != 1:
    ds = ds.repeat(epochs)
  return ds[process_index::process_count]
