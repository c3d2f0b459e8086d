"""Batches of checked records: bad-record markers (records.py) are dropped and counted.

    it = ReportingIterator(records_from, batch_size=8, drop_remainder=True)
    batch = next(it)                          # a dict of numpy arrays, batch_size good records
    it.bad_records, it.bad_record_notes       # how many were dropped, their latest messages
    state = it.get_state(); it.set_state(state)

`records_from(position)` returns an iterator over one process's stream of records (validated
records and bad markers, in stream order) from stream position `position` on; pipeline.py builds
it with Grain, with or without worker processes. The batching runs here, in the process that
iterates, so every record and every marker passes through it: batches, the bad-record count (also
of bad records after the last good one) and the state are the same for any number of workers.

State: {'position': records of the stream consumed (good and bad), 'bad_records': count,
'bad_record_notes': messages}, JSON-serialisable; `set_state` reopens the stream at the position.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np

from wm_jax.data.records import NOTE_KEY, is_bad

_MAX_NOTES = 16  # messages kept in ReportingIterator.bad_record_notes (the latest ones)


def stack(records: list[dict[str, Any]], position: int) -> dict[str, np.ndarray]:
  """One batch from records with the same keys and shapes; `position` (the stream position after
  the batch) names the batch in errors."""
  keys = list(records[0])
  for r in records[1:]:
    if set(r) != set(keys):
      raise ValueError(f"records of the batch ending at stream position {position} have different "
                       f"keys: {sorted(keys)} and {sorted(r)}")
  batch = {}
  for k in keys:
    try:
      batch[k] = np.stack([r[k] for r in records])
    except ValueError as e:
      raise ValueError(f"records of the batch ending at stream position {position} have different "
                       f"shapes of {k!r}: {[np.shape(r[k]) for r in records]}") from e
  return batch


def legacy_position(state: dict) -> int:
  """The stream position in a state saved by the earlier Grain-native layout (batches formed by
  Grain's batch stage, or by each worker process); refuses the layouts it cannot continue."""
  parent = state.get("parent")
  shards = parent.get("iterators_in_use_states") if isinstance(parent, dict) else None
  if shards is not None and len(shards) > 1:
    raise ValueError(f"the data iterator state was saved with worker_count={len(shards)} by an "
                     "earlier pipeline in which every worker process formed its own batches; that "
                     "order cannot be continued (the current pipeline's order does not depend on "
                     "worker_count): resume with the earlier version, or without the data state")
  drop = shards[0] if shards else parent  # one worker, or none: the bad-record stage's state
  try:
    return int(drop["parent"]["next_index"])
  except (KeyError, TypeError, ValueError) as e:
    raise ValueError(f"unrecognised data iterator state with keys {sorted(state)}: expected "
                     "'position', 'bad_records', 'bad_record_notes'") from e


class ReportingIterator:
  """The iterator `pipeline.make_iterator` returns: numpy batches plus a bad-record counter."""

  def __init__(self, records_from: Callable[[int], Iterator[dict]], *, batch_size: int,
               drop_remainder: bool = True):
    self._records_from = records_from
    self.batch_size, self.drop_remainder = int(batch_size), bool(drop_remainder)
    self.position = 0  # records of the stream consumed: the next batch starts here
    self.bad_records = 0
    self.bad_record_notes: list[str] = []
    self._records = None  # the stream from `position` on, opened by the first __next__

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._records is None:
      self._records = self._records_from(self.position)
    good = []
    while len(good) < self.batch_size:
      try:
        record = next(self._records)
      except StopIteration:
        break
      self.position += 1
      if is_bad(record):
        self.bad_records += 1
        self.bad_record_notes = (self.bad_record_notes + [str(record[NOTE_KEY])])[-_MAX_NOTES:]
      else:
        good.append(record)
    if not good or (self.drop_remainder and len(good) < self.batch_size):
      raise StopIteration
    return stack(good, self.position)

  def get_state(self) -> dict:
    return {"position": self.position, "bad_records": self.bad_records,
            "bad_record_notes": list(self.bad_record_notes)}

  def set_state(self, state: dict) -> None:
    position = int(state["position"]) if "position" in state else legacy_position(state)
    self.close()  # the next batch reopens the stream at `position`
    self.position = position
    self.bad_records = int(state["bad_records"])
    self.bad_record_notes = [str(n) for n in state["bad_record_notes"]][-_MAX_NOTES:]

  def close(self) -> None:
    """Stops the stream's threads and worker processes (reopened by the next batch)."""
    if self._records is not None:
      close = getattr(self._records, "close", None)
      if close is not None:
        close()
      self._records = None
