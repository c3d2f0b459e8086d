"""Grain pipelines: one random-access source -> validated, shuffled, sharded, batched numpy batches.

    ds = make_dataset(config.data, split='train', seed=0)       # grain.MapDataset of records
    it = make_iterator(config.data, batch_size=8, seed=0)        # checkpointable iterator
    batch = next(it); state = it.get_state(); it.set_state(state)
    it.bad_records, it.bad_record_notes                          # skipped records (skip option)

Order of operations (every process builds the same pipeline):
  source[i] (sources.py) -> validate (records.CheckedSource: schema.validate, naming source and
  index) -> global shuffle with one seed (the same permutation on every process, reshuffled per
  epoch) -> repeat -> take every `process_count`-th element starting at `process_index` (disjoint
  shards) -> read threads -> drop bad records (skip option; bad_records.DropBad) -> batch ->
  optional multiprocess prefetch (`worker_count`) -> count dropped records (bad_records.Report).

Bad records (corrupt image, missing file, NaN action, wrong shape, ...) raise
`records.BadRecordError` naming the source and index. With `config.skip_bad_records` they are
dropped instead and counted in `iterator.bad_records`, which is also part of the iterator state
(bad_records.py says how the count crosses worker processes).

Iterator state (`get_state()`) is a dict of ints and strings (JSON-serialisable): the train loop
saves it with Orbax and a restored iterator continues with the same next batch.
"""

from __future__ import annotations

from absl import flags
import grain
import jax

from wm_jax.data import bad_records, records, sources


def _checked(config, split, source=None) -> records.CheckedSource:
  source = sources.make_source(config, split) if source is None else source
  return records.CheckedSource(source, skip_bad_records=config.skip_bad_records)


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
  return ds.map(lambda r: None if records.is_bad(r) else r)


def make_iterator(config, *, batch_size: int, seed: int = 0, process_index: int | None = None,
                  process_count: int | None = None, split: str = "train",
                  source=None) -> bad_records.ReportingIterator:
  """Checkpointable iterator of numpy batches (per host: `batch_size` records of this process).

  Process p of P reads global positions p, p+P, p+2P, ... of the shuffled, repeated order, so
  processes never read the same element of an epoch. `process_index` / `process_count` default
  to JAX's. State: `get_state()` / `set_state()`.
  """
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
  it = bad_records.DropBad(it).batch(batch_size, drop_remainder=config.drop_remainder)
  if config.worker_count > 0:
    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags (notebooks, pytest)
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=config.worker_count, per_worker_buffer_size=config.worker_buffer_size))
  return iter(bad_records.Report(it))
