"""Grain pipelines: one random-access source -> validated, shuffled, sharded, batched numpy batches.

    ds = make_dataset(config.data, split='train', seed=0)       # grain.MapDataset of records
    it = make_iterator(config.data, batch_size=8, seed=0)        # checkpointable iterator
    batch = next(it); state = it.get_state(); it.set_state(state)
    it.bad_records, it.bad_record_notes                          # skipped records (skip option)
    it.close()                                                   # stops read threads, workers

Order of operations (every process builds the same pipeline):
  source[i] (sources.py) -> validate (records.CheckedSource: schema.validate, naming source and
  index) -> global shuffle with one seed (the same permutation on every process, reshuffled per
  epoch) -> repeat -> take every `process_count`-th element starting at `process_index` (disjoint
  shards): this process's record stream -> read threads, in `worker_count` worker processes when
  set (worker w reads stream positions w, w + worker_count, ...; Grain interleaves them back into
  stream order) -> drop and count bad records, batch (bad_records.ReportingIterator, in this
  process).

Workers only read records, so the batches, the bad-record count and the iterator state do not
depend on worker_count, and a state saved at one worker_count restores at another. A worker
process ends by itself when the process that started it is gone (a trainer killed with SIGKILL),
and with the workers the multiprocessing resource tracker ends too.

Bad records (corrupt image, missing file, NaN or out-of-range action, trajectory or command, wrong
shape, ...) raise
`records.BadRecordError` naming the source and index. With `config.skip_bad_records` they are
dropped instead and counted in `iterator.bad_records`, which is also part of the iterator state.

Iterator state (`get_state()`) is a dict of ints and strings (JSON-serialisable): the position in
the record stream and the bad-record count. The train loop saves it with Orbax and a restored
iterator continues with the same next batch.

Mixtures (config.source = 'mixture', mixture.py): several sources, each with a weight, e.g.
MaskGWM's stage 2, nuScenes and OpenDV-2K sampled equally:

    config.data.update(source='mixture', mixture_keys=('frames', 'command', 'fps',
                                                       'view_adjacency'))
    config.model.num_views = 1  # both give the front camera only
    config.data.mixture = (
        dict(source='nuscenes', weight=1.0, path='/data/nuscenes', views=('CAM_FRONT',),
             layout=False),
        dict(source='opendv', weight=1.0, path='/data/opendv'))

Each entry's source is validated, shuffled (its own seed, drawn from `seed`), repeated and
sharded over processes as above, on its own; each process interleaves its shards by weight (a
fixed pattern of the weights, exact shares per cycle: mixture.WeightedInterleave, mixed by
Grain's select_from_datasets) into its record stream, read and batched as above. The iterator
(mixture.MixtureIterator) also counts records per entry: `it.source_counts` (drawn, good and
skipped) and `it.source_bad_records`, both in the state beside the position. Entries whose
records differ in keys or shapes are refused at their first record, naming both entries and the
keys; config.mixture_keys keeps the listed keys of every record.
"""

from __future__ import annotations

import functools
import os
import threading
import time

from absl import flags
import grain
import jax

from wm_jax.data import bad_records, mixture, records, sources


def make_dataset(config, *, split: str = "train", seed: int = 0,
                 source=None) -> grain.MapDataset:
  """A MapDataset of validated records (globally shuffled with `seed` when config.shuffle).

  A bad record raises BadRecordError, or with config.skip_bad_records reads as None (Grain's
  "filtered" element, skipped when iterating). `source` overrides config.source (any object
  with __len__ and __getitem__, or a mixture.MixedSource). A mixture's entries are each read
  once, interleaved by weight: the dataset ends where its first entry runs out.
  """
  source = sources.make_source(config, split) if source is None else source
  if isinstance(source, mixture.MixedSource):
    ds, _ = mixture.mixed_stream(source, shuffle=config.shuffle, seed=seed, epochs=1,
                                 skip=config.skip_bad_records)
  else:
    ds = records.record_stream(source, skip_bad_records=config.skip_bad_records,
                               shuffle=config.shuffle, seed=seed)
  return ds.map(lambda r: None if records.is_bad(r) else r)


def make_iterator(config, *, batch_size: int, seed: int = 0, process_index: int | None = None,
                  process_count: int | None = None, split: str = "train",
                  source=None) -> bad_records.ReportingIterator:
  """Checkpointable iterator of numpy batches (per host: `batch_size` records of this process).

  Process p of P reads global positions p, p+P, p+2P, ... of the shuffled, repeated order, so
  processes never read the same element of an epoch. `process_index` / `process_count` default
  to JAX's. State: `get_state()` / `set_state()`. A mixture (config.source = 'mixture', or a
  mixture.MixedSource as `source`) shards each entry so and returns a mixture.MixtureIterator.
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} not in [0, process_count={process_count})")
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  source = sources.make_source(config, split) if source is None else source
  mixed = source if isinstance(source, mixture.MixedSource) else None
  if mixed is not None:
    stream, interleave = mixture.mixed_stream(
        mixed, shuffle=config.shuffle, seed=seed, epochs=config.num_epochs or None,
        skip=config.skip_bad_records, process_index=process_index, process_count=process_count)
  else:
    stream = records.record_stream(
        source, skip_bad_records=config.skip_bad_records, shuffle=config.shuffle, seed=seed,
        epochs=config.num_epochs or None, process_index=process_index,
        process_count=process_count)
  read = grain.ReadOptions(num_threads=config.read_threads, prefetch_buffer_size=config.read_buffer)
  workers = int(config.worker_count)
  if workers < 0:
    raise ValueError(f"worker_count must be >= 0, got {workers}")
  if workers and not flags.FLAGS.is_parsed():  # grain's workers read absl flags (notebooks, pytest)
    flags.FLAGS.mark_as_parsed()
  # Each worker queues `worker_buffer_size` batches' worth of its records.
  options = grain.MultiprocessingOptions(
      num_workers=workers,
      per_worker_buffer_size=config.worker_buffer_size * -(-batch_size // max(workers, 1)))
  watch = functools.partial(_exit_with_parent, os.getpid())

  def records_from(position):
    """This process's records (and bad markers) from stream position `position` on."""
    it = stream[position:].to_iter_dataset(read)
    if workers:
      it = it.mp_prefetch(options, worker_init_fn=watch)
    return iter(it)

  if mixed is not None:
    return mixture.MixtureIterator(records_from, batch_size=batch_size,
                                   drop_remainder=config.drop_remainder, names=mixed.names,
                                   interleave=interleave, keys=mixed.keys)
  return bad_records.ReportingIterator(records_from, batch_size=batch_size,
                                       drop_remainder=config.drop_remainder)


_PARENT_POLL_S = 0.2  # how often a worker checks that its parent process is alive


def _exit_with_parent(parent_pid: int, worker_index: int, worker_count: int) -> None:
  """Worker init: ends this worker process as soon as the process that started it is gone.

  A killed parent's children are re-parented by the OS, so getppid() stops being `parent_pid`. A
  poll rather than prctl(PR_SET_PDEATHSIG): Grain starts workers from a thread pool, and that
  signal fires when the starting thread ends, not the process.
  """
  del worker_index, worker_count

  def watch():
    while os.getppid() == parent_pid:
      time.sleep(_PARENT_POLL_S)
    os._exit(1)  # pylint: disable=protected-access

  threading.Thread(target=watch, name="wm-jax-parent-watch", daemon=True).start()
