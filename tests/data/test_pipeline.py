"""The Grain pipeline: shuffle, process sharding, checkpointable state, validation, bad records."""

import json

import numpy as np
import pytest

from wm_jax import defaults
from wm_jax.data import pipeline, records, sources


def _record(i, nan=False, shape=(2, 1, 4, 6, 3)):
  actions = np.full((shape[0], 4), float(i), np.float32)
  if nan:
    actions[1, 2] = np.nan
  return {"frames": np.full(shape, i % 256, np.uint8), "actions": actions,
          "fps": np.float32(12.0)}


class _Source:
  """Records 0..n-1; `bad` maps index -> kind of damage."""

  name = "toy"

  def __init__(self, n, bad=None):
    self.n, self.bad = n, dict(bad or {})

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    kind = self.bad.get(i)
    if kind == "missing":
      raise FileNotFoundError(f"/data/img_{i}.jpg")
    if kind == "shape":
      return _record(i, shape=(2, 1, 4, 5, 3)) | {"layout": np.zeros((2, 1, 4, 6, 5), np.uint8)}
    return _record(i, nan=kind == "nan")


def _config(**kw):
  c = defaults.data()
  c.read_threads, c.read_buffer = 2, 4
  c.update(kw)
  return c


def _ids(batch):
  return batch["actions"][:, 0, 0].astype(int).tolist()


def test_state_restore_mid_epoch_continues_with_same_batches():
  config = _config()
  it = pipeline.make_iterator(config, batch_size=3, seed=7, process_index=0, process_count=1,
                              source=_Source(10))
  for _ in range(2):
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # JSON-serialisable
  expected = [_ids(next(it)) for _ in range(4)]  # crosses the epoch boundary (10 records)
  it2 = pipeline.make_iterator(config, batch_size=3, seed=7, process_index=0, process_count=1,
                               source=_Source(10))
  it2.set_state(state)
  assert [_ids(next(it2)) for _ in range(4)] == expected


def test_shuffle_is_seeded_global_and_reshuffled_per_epoch():
  config = _config(num_epochs=2, drop_remainder=False)
  order = lambda seed: sum((_ids(b) for b in pipeline.make_iterator(
      config, batch_size=4, seed=seed, process_index=0, process_count=1, source=_Source(12))), [])
  a, b = order(1), order(1)
  assert a == b and len(a) == 24
  assert sorted(a[:12]) == list(range(12)) and sorted(a[12:]) == list(range(12))
  assert a[:12] != list(range(12)) and a[:12] != a[12:]
  assert order(2) != a


@pytest.mark.parametrize("count", [2, 3])
def test_process_shards_are_disjoint_and_cover_an_epoch(count):
  config = _config(num_epochs=1, drop_remainder=False)
  shards = [sum((_ids(b) for b in pipeline.make_iterator(
      config, batch_size=2, seed=3, process_index=p, process_count=count, source=_Source(12))), [])
            for p in range(count)]
  assert all(len(s) == 12 // count for s in shards)
  flat = sum(shards, [])
  assert sorted(flat) == list(range(12))  # disjoint and complete


@pytest.mark.parametrize("kind,pattern", [("nan", "non-finite"), ("missing", "FileNotFoundError"),
                                          ("shape", "layout")])
def test_bad_record_raises_naming_source_and_index(kind, pattern):
  config = _config(shuffle=False)
  it = pipeline.make_iterator(config, batch_size=2, process_index=0, process_count=1,
                              source=_Source(8, bad={5: kind}))
  next(it), next(it)
  with pytest.raises(records.BadRecordError, match=rf"source='toy' index=5.*{pattern}"):
    next(it)


def test_skip_bad_records_counts_them_and_state_keeps_the_count():
  bad = {1: "nan", 4: "missing", 6: "shape"}
  config = _config(skip_bad_records=True, num_epochs=1, drop_remainder=False)
  it = pipeline.make_iterator(config, batch_size=2, seed=0, process_index=0, process_count=1,
                              source=_Source(10, bad))
  seen = []
  for batch in it:
    assert set(batch) == {"frames", "actions", "fps"}
    seen += _ids(batch)
  assert sorted(seen) == [0, 2, 3, 5, 7, 8, 9]
  assert it.bad_records == 3
  assert {n.split("index=")[1].split(":")[0] for n in it.bad_record_notes} == {"1", "4", "6"}
  state = json.loads(json.dumps(it.get_state()))
  assert state["bad_records"] == 3


def test_skipped_records_after_the_last_good_one_are_counted_at_the_end():
  config = _config(skip_bad_records=True, shuffle=False, num_epochs=1, drop_remainder=False)
  it = pipeline.make_iterator(config, batch_size=2, process_index=0, process_count=1,
                              source=_Source(5, {3: "nan", 4: "missing"}))
  assert sum((_ids(b) for b in it), []) == [0, 1, 2]
  assert it.bad_records == 2 and len(it.bad_record_notes) == 2


def test_make_dataset_validates_and_marks_skipped_records_none():
  ds = pipeline.make_dataset(_config(shuffle=False, skip_bad_records=True),
                             source=_Source(4, {2: "nan"}))
  assert len(ds) == 4 and ds[2] is None and _ids({"actions": ds[3]["actions"][None]}) == [3]
  ds = pipeline.make_dataset(_config(shuffle=False), source=_Source(4, {2: "nan"}))
  with pytest.raises(records.BadRecordError, match="index=2"):
    ds[2]


@pytest.mark.slow  # worker processes import wm_jax (flax, jax): ~7 s idle, ~25 s on a busy CI box
def test_multiprocess_prefetch_yields_every_record_once_and_restores():
  config = _config(worker_count=1, num_epochs=1, drop_remainder=False)
  make = lambda: pipeline.make_iterator(config, batch_size=2, seed=5, process_index=0,
                                        process_count=1, source=_Source(8))
  it = make()
  first = _ids(next(it))
  state = it.get_state()
  json.dumps(state)
  rest = sum((_ids(b) for b in it), [])
  assert sorted(first + rest) == list(range(8))
  it2 = make()
  it2.set_state(state)
  assert sum((_ids(b) for b in it2), []) == rest


def test_config_errors():
  with pytest.raises(ValueError, match="unknown data source 'nope'"):
    sources.make_source(_config(source="nope"))
  with pytest.raises(ValueError, match="process_index=2"):
    pipeline.make_iterator(_config(), batch_size=1, process_index=2, process_count=2,
                           source=_Source(4))


def test_list_source_feeds_the_pipeline_and_names_its_bad_records():
  source = sources.ListSource([_record(i, nan=i == 2) for i in range(4)], name="mem")
  assert len(source) == 4 and _ids({"actions": source[3]["actions"][None]}) == [3]
  it = pipeline.make_iterator(_config(shuffle=False, num_epochs=1), batch_size=2,
                              process_index=0, process_count=1, source=source)
  assert _ids(next(it)) == [0, 1]
  with pytest.raises(records.BadRecordError, match="source='mem' index=2"):
    next(it)
