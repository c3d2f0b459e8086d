"""Weighted mixtures of data sources: records of several sources in one stream, by weight.

    config.data.source = 'mixture'
    config.data.mixture = (dict(source='nuscenes', weight=1.0, path='/data/nuscenes'),
                           dict(source='opendv', weight=1.0, path='/data/opendv'))
    mixed = sources.make_source(config.data, 'train')       # MixedSource of the entries' sources
    it = pipeline.make_iterator(config.data, batch_size=8)   # a MixtureIterator
    it.source_counts, it.source_bad_records                  # {name: records drawn / skipped}

Config. `config.data.mixture` is a tuple (or list) of entries, each a dict: 'source' (a name in
sources.SOURCES), 'weight' (a positive finite number; weights need not sum to 1), an optional
'name' (default: the source's name; it labels the entry's counts and must be unique, so two
entries of one source need names) and any config.data fields the entry overrides (path, views,
layout, skip_bad_records, ...); the other fields come from config.data. The pipeline settings
(PIPELINE_FIELDS: shuffle, num_epochs, read_threads, workers, ...) belong to the whole mixture
and cannot be set per entry. Errors name the entry (config.data.mixture[n] and its name) and the
value at fault. MaskGWM's stage 2 (nuScenes and OpenDV-2K sampled equally, paper 4.2) is

    config.data.update(source='mixture', num_frames=25, image_height=288, image_width=512,
                       fps=10.0, mixture_keys=('frames', 'command', 'fps', 'view_adjacency'))
    config.model.num_views = 1  # both give the front camera only
    config.data.mixture = (
        dict(source='nuscenes', weight=1.0, path='/data/nuscenes', views=('CAM_FRONT',),
             layout=False),
        dict(source='opendv', weight=1.0, path='/data/opendv'))

Interleave (WeightedInterleave, a Grain DatasetSelectionMap; Grain's select_from_datasets does
the mixing). Weights become integer parts p_i of a cycle of S = sum(p) positions: the shortest
S <= RESOLUTION with every share p_i / S within 1/(2 RESOLUTION) of w_i / sum(w) (weights 1:2
give (1, 2); 0.7:0.3 give (7, 3)), else the shares rounded to 1/RESOLUTION (an error when one
rounds to 0). A cycle holds p_i positions of entry i, spread evenly by smooth weighted round
robin (at each step every entry gains p_i credit, the one with most credit, the first on ties,
is taken and pays S). Equal weights alternate (0, 1, 0, 1, ...). Entry i's records are read in
order of its own stream, so position k reads record counts(k)[i] of entry i: the pattern depends
only on the weights, shares are exact per cycle, and any position is found in O(1) (random
access, as the position-based iterator state needs). The seed shuffles each entry's records
(entry i with a seed drawn from (seed, i)); it does not change the pattern.

In the pipeline (pipeline.py) each entry's stream is its checked source, globally shuffled,
repeated (config.num_epochs, 0 = forever) and sharded over processes (every process_count-th
record from process_index) on its own, and each process interleaves its shards: every process
follows the weights, and processes never read the same record of an epoch. With num_epochs > 0
the mixture ends where its first entry runs out (the others are then part way into their last
epoch). The iterator state stays the ReportingIterator's position-based dict (bad_records.py)
plus 'source_counts' (records drawn per entry, good and skipped, derived from the position) and
'source_bad_records' (skipped per entry, restored from the state).

Record keys. Records of different keys or shapes cannot be batched together. With
config.data.mixture_keys = () every entry must give records with the same keys and shapes; the
iterator checks the first good record of each entry and refuses a mismatch with a ValueError
naming both entries and the keys (or shapes). A tuple of keys keeps only those keys of every
record (the others are dropped after validation) and refuses an entry that lacks one.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import sys
from typing import Any, Callable, Iterator, Mapping, Sequence

import grain
import numpy as np

from wm_jax.data import bad_records, records, schema

RESOLUTION = 10_000  # shares are rounded to 1 / RESOLUTION of the total weight
# config.data fields of the whole mixture, not of an entry.
PIPELINE_FIELDS = ("shuffle", "num_epochs", "drop_remainder", "read_threads", "read_buffer",
                   "worker_count", "worker_buffer_size", "mixture", "mixture_keys")


@dataclasses.dataclass(frozen=True)
class Entry:
  name: str  # labels the entry's counts and its errors
  weight: float
  config: Any  # config.data with the entry's source and overrides (a copy)


def _weight(value, where: str) -> float:
  ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
  if not (ok and math.isfinite(value) and value > 0):
    raise ValueError(f"{where}: weight must be a positive finite number, got {value!r}")
  return float(value)


def parse(config, known: Sequence[str]) -> list[Entry]:
  """The entries of config.mixture (config: config.data), validated; `known`: source names."""
  raw = config.get("mixture", ())
  if isinstance(raw, (str, bytes, Mapping)) or not isinstance(raw, Sequence) or not raw:
    raise ValueError("config.data.source='mixture' needs config.data.mixture: a tuple of one or "
                     f"more dict(source=NAME, weight=W, FIELD=VALUE, ...), got {raw!r}")
  entries, first = [], {}
  for n, item in enumerate(raw):
    where = f"config.data.mixture[{n}]"
    if not hasattr(item, "items"):
      raise ValueError(f"{where} must be a dict(source=NAME, weight=W, ...), got {item!r}")
    item = dict(item.items())
    source = item.pop("source", None)
    if source not in known:
      raise ValueError(f"{where}: unknown data source {source!r}; choose one of {sorted(known)}")
    name = item.pop("name", source)
    if not isinstance(name, str) or not name:
      raise ValueError(f"{where}: name must be a non-empty string, got {name!r}")
    where = f"{where} ({name!r})"
    if name in first:
      raise ValueError(f"{where}: config.data.mixture[{first[name]}] has the same name; give one "
                       "of them another 'name'")
    first[name] = n
    if "weight" not in item:
      raise ValueError(f"{where} has no 'weight'")
    weight = _weight(item.pop("weight"), where)
    entry = config.copy_and_resolve_references()
    entry.source, entry.mixture = source, ()
    for key, value in item.items():
      if key in PIPELINE_FIELDS:
        raise ValueError(f"{where}: {key}={value!r}: {key!r} is a setting of the whole mixture, "
                         f"not of an entry; set config.data.{key}")
      if key not in entry:
        raise ValueError(f"{where}: {key}={value!r}: {key!r} is not a config.data field")
      try:
        entry[key] = value
      except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {key}={value!r}: {e}") from e
    entries.append(Entry(name, weight, entry))
  integer_parts([e.weight for e in entries], [e.name for e in entries])  # refuses tiny shares
  return entries


def check_keys(keys: Sequence[str]) -> tuple[str, ...]:
  """config.data.mixture_keys, validated: known batch keys including an image key."""
  keys = tuple(keys)
  unknown = [k for k in keys if k not in schema.FIELDS]
  if unknown:
    raise ValueError(f"config.data.mixture_keys={keys!r}: unknown batch keys {unknown}; known "
                     f"keys are {sorted(schema.FIELDS)}")
  if keys and not set(keys) & set(schema.IMAGE_KEYS):
    raise ValueError(f"config.data.mixture_keys={keys!r} keeps none of {schema.IMAGE_KEYS}")
  return keys


def integer_parts(weights: Sequence[float], names: Sequence[str] | None = None) -> tuple:
  """The parts p_i of the shortest cycle S = sum(p) <= RESOLUTION giving every share w_i / sum(w)
  within 1/(2 RESOLUTION); else the shares rounded to 1/RESOLUTION (an error where one is 0)."""
  total = sum(weights)
  shares = [w / total for w in weights]
  tolerance = 0.5 / RESOLUTION + 1e-12
  for cycle in range(1, RESOLUTION + 1):
    parts = [int(round(s * cycle)) for s in shares]
    if sum(parts) == cycle and all(parts) and all(
        abs(p / cycle - s) <= tolerance for p, s in zip(parts, shares)):
      return tuple(parts)
  parts = [int(round(s * RESOLUTION)) for s in shares]
  names = list(names) if names is not None else [f"entry {i}" for i in range(len(weights))]
  for name, w, p in zip(names, weights, parts):
    if p == 0:
      raise ValueError(f"mixture entry {name!r}: weight {w!r} is below 1/{2 * RESOLUTION} of the "
                       f"total weight {total!r}; shares are resolved to 1/{RESOLUTION}")
  g = functools.reduce(math.gcd, parts)
  return tuple(p // g for p in parts)


class WeightedInterleave(grain.transforms.DatasetSelectionMap):
  """Mixture position k -> (entry i, index in entry i's stream); see the module docstring.

  lengths: the entries' stream lengths (None: endless); the mixture ends at the first position
  whose entry has run out.
  """

  def __init__(self, weights: Sequence[float], lengths: Sequence[int] | None = None):
    self.parts = integer_parts(weights)
    self.cycle = sum(self.parts)
    credit, order = [0] * len(self.parts), []
    for _ in range(self.cycle):  # smooth weighted round robin
      credit = [c + p for c, p in zip(credit, self.parts)]
      i = credit.index(max(credit))
      credit[i] -= self.cycle
      order.append(i)
    self._order = np.asarray(order, np.int32)  # [S] entry of each position of a cycle
    onehot = np.eye(len(self.parts), dtype=np.int64)[self._order]
    self._prefix = np.concatenate([np.zeros((1, len(self.parts)), np.int64),
                                   np.cumsum(onehot, 0)])  # [S+1, n] counts before offset o
    self._rank = self._prefix[np.arange(self.cycle), self._order]  # [S] index within its entry
    self._offsets = [np.flatnonzero(self._order == i) for i in range(len(self.parts))]
    lengths = [sys.maxsize] * len(self.parts) if lengths is None else list(lengths)
    if len(lengths) != len(self.parts):
      raise ValueError(f"{len(lengths)} lengths for {len(self.parts)} weights")
    self._length = min(sys.maxsize, *(self.position(i, int(n)) for i, n in enumerate(lengths)))

  def position(self, i: int, m: int) -> int:
    """The mixture position of record m (from 0) of entry i's stream."""
    c, r = divmod(m, self.parts[i])
    return c * self.cycle + int(self._offsets[i][r])

  def counts(self, k: int) -> list[int]:
    """Records of each entry at mixture positions < k."""
    c, o = divmod(int(k), self.cycle)
    return [c * p + int(n) for p, n in zip(self.parts, self._prefix[o])]

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, k: int) -> tuple[int, int]:
    c, o = divmod(int(k), self.cycle)
    i = int(self._order[o])
    return i, c * self.parts[i] + int(self._rank[o])

  def __repr__(self):
    return f"WeightedInterleave(parts={self.parts}, length={self._length})"


def project(keys: tuple[str, ...], record):
  """`record` with only `keys` (those it has); a bad-record marker or keys=() as it is."""
  if not keys or records.is_bad(record):
    return record
  return {k: v for k, v in record.items() if k in keys}


class MixedSource:
  """The entries' sources as one random-access source (unchecked, unshuffled, read once: it ends
  where its first entry runs out), and what the pipeline needs to mix them itself.

  parts: (name, source) per entry; skip: per entry skip_bad_records, None = config.data's.
  """

  def __init__(self, parts: Sequence[tuple[str, Any]], weights: Sequence[float], *,
               keys: Sequence[str] = (), skip: Sequence[bool | None] | None = None):
    self.names = tuple(str(n) for n, _ in parts)
    self.sources = tuple(s for _, s in parts)
    if not self.sources:
      raise ValueError("a mixture needs at least one source")
    if len(set(self.names)) < len(self.names):
      raise ValueError(f"mixture entry names must be unique, got {self.names}")
    if len(weights) != len(self.sources):
      raise ValueError(f"{len(weights)} weights for the {len(self.sources)} sources {self.names}")
    self.weights = tuple(_weight(w, f"mixture entry {n!r}") for n, w in zip(self.names, weights))
    integer_parts(self.weights, self.names)
    self.keys = check_keys(keys)
    self.skip = tuple(skip) if skip is not None else (None,) * len(self.sources)
    self.interleave = WeightedInterleave(self.weights, [len(s) for s in self.sources])
    self.name = f"mixture({','.join(self.names)})"

  @classmethod
  def from_config(cls, config, split: str, table: Mapping[str, Callable]) -> MixedSource:
    """The mixture of config.mixture (config: config.data); `table`: sources.SOURCES."""
    keys = check_keys(config.get("mixture_keys", ()))
    entries = parse(config, tuple(table))
    parts = [(e.name, table[e.config.source](e.config, split)) for e in entries]
    return cls(parts, [e.weight for e in entries], keys=keys,
               skip=[bool(e.config.skip_bad_records) for e in entries])

  def __len__(self):
    return len(self.interleave)

  def __getitem__(self, index):
    i, j = self.interleave[index]
    return project(self.keys, self.sources[i][j])

  def __repr__(self):
    return f"MixedSource({self.names}, weights={self.weights}, len={len(self)})"


def entry_seed(seed: int, i: int) -> int:
  """The shuffle seed of entry i of a mixture shuffled with `seed`."""
  return int(np.random.SeedSequence([int(seed) % 2**64, i]).generate_state(1)[0])


def mixed_stream(mixed: MixedSource, *, shuffle: bool, seed: int, epochs: int | None,
                 skip: bool, process_index: int = 0,
                 process_count: int = 1) -> tuple[grain.MapDataset, WeightedInterleave]:
  """This process's mixed stream of checked records and bad markers, and its interleave.

  Entry i: records.record_stream (skip: config.data.skip_bad_records, unless the entry sets its
  own; shuffled with entry_seed(seed, i)) -> mixed.keys; then interleaved by weight.
  """
  streams = []
  for i, (name, source) in enumerate(zip(mixed.names, mixed.sources)):
    ds = records.record_stream(
        source, skip_bad_records=skip if mixed.skip[i] is None else mixed.skip[i],
        shuffle=shuffle, seed=entry_seed(seed, i), epochs=epochs, process_index=process_index,
        process_count=process_count, what=f"mixture entry {name!r}: ")
    if mixed.keys:
      ds = ds.map(functools.partial(project, mixed.keys))
    streams.append(ds)
  interleave = WeightedInterleave(mixed.weights, [len(s) for s in streams])
  return grain.MapDataset.select_from_datasets(streams, interleave), interleave


class RecordCheck:
  """Refuses entries whose records cannot be batched together (the first good one of each)."""

  def __init__(self, names: Sequence[str], keys: Sequence[str] = ()):
    self.names, self.keys = tuple(names), frozenset(keys)
    self._seen: dict[int, dict[str, tuple]] = {}  # entry -> {key: shape} of its first record

  def __call__(self, i: int, record: Mapping[str, Any]) -> None:
    if i in self._seen:
      return
    name, shapes = self.names[i], {k: tuple(np.shape(v)) for k, v in record.items()}
    if self.keys and set(shapes) != self.keys:
      raise ValueError(f"mixture entry {name!r} gives no {sorted(self.keys - set(shapes))} "
                       f"(config.data.mixture_keys={sorted(self.keys)}); its records have keys "
                       f"{sorted(shapes)}")
    for j, other in self._seen.items():  # the seen entries agree: one comparison suffices
      a, b = self.names[j], name
      if set(other) != set(shapes):
        raise ValueError(
            f"mixture entries {a!r} and {b!r} give records with different keys, which cannot be "
            f"batched together: only {a!r} has {sorted(set(other) - set(shapes))}, only {b!r} "
            f"has {sorted(set(shapes) - set(other))}; set config.data.mixture_keys to the keys "
            f"to keep, e.g. {tuple(sorted(set(other) & set(shapes)))}")
      differ = sorted(k for k in shapes if shapes[k] != other[k])
      if differ:
        raise ValueError(
            f"mixture entries {a!r} and {b!r} give records of different shapes, which cannot be "
            "batched together: " + ", ".join(f"{k!r} {other[k]} vs {shapes[k]}" for k in differ))
      break
    self._seen[i] = shapes


class MixtureIterator(bad_records.ReportingIterator):
  """The ReportingIterator of a mixture, counting records per entry.

  source_counts: {name: records drawn} (good and skipped, at the stream positions consumed);
  source_bad_records: {name: records skipped}. Both are in get_state(); set_state() derives the
  drawn counts from the position and restores the skipped ones (0 for a name the state lacks).
  """

  def __init__(self, records_from: Callable[[int], Iterator[dict]], *, batch_size: int,
               drop_remainder: bool, names: Sequence[str], interleave: WeightedInterleave,
               keys: Sequence[str] = ()):
    super().__init__(self._watched, batch_size=batch_size, drop_remainder=drop_remainder)
    self._read = records_from
    self.names, self.interleave = tuple(names), interleave
    self._bad = [0] * len(self.names)
    self._check = RecordCheck(self.names, keys)

  def _watched(self, position: int):
    """The records from `position` on, counted per entry and checked (in this process)."""
    stream = self._read(position)
    try:
      for k, record in enumerate(stream, position):
        i = self.interleave[k][0]
        if records.is_bad(record):
          self._bad[i] += 1
        else:
          self._check(i, record)
        yield record
    finally:
      close = getattr(stream, "close", None)
      if close is not None:
        close()

  @property
  def source_counts(self) -> dict[str, int]:
    return dict(zip(self.names, self.interleave.counts(self.position)))

  @property
  def source_bad_records(self) -> dict[str, int]:
    return dict(zip(self.names, self._bad))

  def get_state(self) -> dict:
    return super().get_state() | {"source_counts": self.source_counts,
                                  "source_bad_records": self.source_bad_records}

  def set_state(self, state: dict) -> None:
    super().set_state(state)
    bad = state.get("source_bad_records") or {}
    self._bad = [int(bad.get(n, 0)) for n in self.names]
