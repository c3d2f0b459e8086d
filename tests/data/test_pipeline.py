"""The Grain pipeline: shuffle, process sharding, checkpointable state, validation, bad records."""

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from wm_jax import defaults
from wm_jax.data import pipeline, records, sources


def _record(i, nan=False, shape=(2, 1, 4, 6, 3)):
  actions = np.zeros((shape[0], 4), np.float32)
  actions[:, 0] = i  # the record's id, as its speed (a valid action)
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


def test_batches_and_state_do_not_depend_on_worker_count():
  """Worker processes only read: the batches, the bad-record count and the state are those of
  worker_count=0, and a state saved at one worker_count restores at another."""
  config = lambda workers: _config(worker_count=workers, skip_bad_records=True)
  make = lambda workers: pipeline.make_iterator(config(workers), batch_size=3, seed=4,
                                                process_index=0, process_count=1,
                                                source=_Source(11, bad={5: "nan"}))
  it0 = make(0)
  head = [_ids(next(it0)) for _ in range(2)]
  state0 = json.loads(json.dumps(it0.get_state()))
  tail = [_ids(next(it0)) for _ in range(3)]  # crosses the epoch boundary (11 records)
  it2 = make(2)
  assert [_ids(next(it2)) for _ in range(2)] == head
  assert json.loads(json.dumps(it2.get_state())) == state0
  it2.close()
  it2 = make(2)
  it2.set_state(state0)  # saved at worker_count=0
  assert [_ids(next(it2)) for _ in range(3)] == tail
  assert it2.bad_records == it0.bad_records == 2  # record 5 in both epochs
  state2 = it2.get_state()
  it2.close()
  it0 = make(0)
  it0.set_state(state2)  # saved at worker_count=2
  assert it0.get_state() == state2


_ORPHAN_SCRIPT = """
import os, sys, time
import numpy as np
from wm_jax import defaults
from wm_jax.data import pipeline, sources
c = defaults.data()
c.update(worker_count=2, read_threads=1, read_buffer=2)
records = [{"frames": np.zeros((2, 1, 4, 6, 3), np.uint8), "fps": np.float32(12.0),
            "actions": np.zeros((2, 4), np.float32)} for _ in range(8)]
it = pipeline.make_iterator(c, batch_size=2, process_index=0, process_count=1,
                            source=sources.ListSource(records))
next(it)
print("ready", flush=True)
time.sleep(120)
"""


def _children(pid):
  """Pids of the live (not zombie) processes whose parent is `pid`."""
  out = []
  for name in os.listdir("/proc"):
    try:
      with open(f"/proc/{name}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
      continue
    if int(fields[1]) == pid and fields[0] != "Z":
      out.append(int(name))
  return out


def _alive(pid):
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except OSError:
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_die_with_a_killed_trainer():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  trainer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_ORPHAN_SCRIPT)], cwd=root,
                             env=env, stdout=subprocess.PIPE, text=True)
  try:
    assert select.select([trainer.stdout], [], [], 120)[0], "the trainer did not start its workers"
    assert trainer.stdout.readline().strip() == "ready"
    children = _children(trainer.pid)  # 2 workers and the multiprocessing resource tracker
    commands = [open(f"/proc/{p}/cmdline", "rb").read() for p in children]
    assert sum(b"spawn_main" in c for c in commands) == 2, commands
  finally:
    trainer.kill()
    trainer.wait()
  deadline = time.time() + 10
  while any(_alive(p) for p in children) and time.time() < deadline:
    time.sleep(0.1)
  left = [p for p in children if _alive(p)]
  for p in left:
    os.kill(p, signal.SIGKILL)
  assert not left, f"processes {left} outlived the killed trainer {trainer.pid}"


def test_states_of_the_earlier_layout_restore_or_refuse_clearly():
  make = lambda: pipeline.make_iterator(_config(), batch_size=3, seed=7, process_index=0,
                                        process_count=1, source=_Source(10))
  it = make()
  next(it), next(it)
  expected = [_ids(next(it)) for _ in range(2)]
  earlier = {"parent": {"parent": {"next_index": 6}, "pending": 0, "note": ""},
             "bad_records": 1, "bad_record_notes": ["n"]}  # as saved with worker_count=0
  it = make()
  it.set_state(earlier)
  assert [_ids(next(it)) for _ in range(2)] == expected and it.bad_records == 1
  shard = {"parent": {"next_index": 3}, "pending": 0, "note": ""}
  earlier["parent"] = {"next_index_in_cycle": 0, "next_index_in_datasets": 2,
                       "iterators_in_use_indices": [0, 1], "iterators_in_use_states": [shard] * 2,
                       "exhausted": [0, 0], "future_states": {}}  # worker_count=2
  with pytest.raises(ValueError, match="saved with worker_count=2 by an earlier pipeline"):
    make().set_state(earlier)
  with pytest.raises(ValueError, match="unrecognised data iterator state with keys"):
    make().set_state({"bad_records": 0, "bad_record_notes": []})
