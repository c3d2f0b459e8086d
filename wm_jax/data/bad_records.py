"""Iterator stages that drop bad-record markers (records.py) and count them.

    it = DropBad(iter_dataset).batch(batch_size)    # per process, after the read threads
    it = iter(Report(it))                           # last stage: a ReportingIterator
    it.bad_records, it.bad_record_notes             # how many were dropped, their last messages

The number dropped travels with the next good record (so it survives Grain worker processes, which
only pass batches back) and is summed by the last stage into `bad_records`, which is also part of
the iterator state. Bad records after the last good one of a finite iteration never reach a batch:
without worker processes the last stage collects them from the DropBad iterators of its own
process when the iterator ends; with worker processes they stay in the workers and are only logged.
"""

from __future__ import annotations

import logging

import grain
import numpy as np

from wm_jax.data.records import NOTE_KEY, SKIPPED_KEY, is_bad

_MAX_NOTES = 16  # messages kept in ReportingIterator.bad_record_notes (the latest ones)


class DropBad(grain.IterDataset):
  """Drops bad markers; the next good record carries how many were dropped and their notes."""

  def __init__(self, parent):
    super().__init__(parent)

  def __iter__(self):
    return DropBadIterator(self._parent.__iter__())


class DropBadIterator(grain.DatasetIterator):
  """The iterator of DropBad; `pending` / `note`: dropped records not yet carried by a record."""

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
        self._note = "\n".join(n for n in (self._note, str(record[NOTE_KEY])) if n)
        continue
      record = dict(record)
      record[SKIPPED_KEY] = np.int64(self._pending)
      record[NOTE_KEY] = np.asarray(self._note)
      self._pending, self._note = 0, ""
      return record

  def take_pending(self) -> tuple[int, str]:
    """(count, notes) of the records dropped since the last good one; resets them."""
    pending, note = self._pending, self._note
    self._pending, self._note = 0, ""
    return pending, note

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


class Report(grain.IterDataset):
  """Last stage: strips the carried bad-record counts from batches into `bad_records`."""

  def __init__(self, parent):
    super().__init__(parent)

  def __iter__(self):
    return ReportingIterator(self._parent.__iter__())


class ReportingIterator(grain.DatasetIterator):
  """The iterator `pipeline.make_iterator` returns: numpy batches plus a bad-record counter."""

  def __init__(self, parent):
    super().__init__(parent)
    self.bad_records = 0
    self.bad_record_notes: list[str] = []
    self._local_drops = _find(parent, DropBadIterator)  # empty with worker processes

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
        pending, note = drop.take_pending()
        self._count(pending, [note])
      raise
    self._count(int(np.sum(batch.pop(SKIPPED_KEY))), np.ravel(batch.pop(NOTE_KEY)))
    return batch

  def get_state(self):
    return {"parent": self._parent.get_state(), "bad_records": self.bad_records,
            "bad_record_notes": list(self.bad_record_notes)}

  def set_state(self, state):
    self._parent.set_state(state["parent"])
    self.bad_records = int(state["bad_records"])
    self.bad_record_notes = [str(n) for n in state["bad_record_notes"]]
