"""Weighted mixtures of sources (data/mixture.py) through the pipeline: shares, determinism,
resumption (also sharded and with skipped bad records), per-source counts, record keys, config;
and MaskGWM's stage-2 mixture on the project's own nuScenes and OpenDV-style exports.

Sources are in memory: record i of source `tag` carries i as its speed (actions[:, 0]) and the tag
as its acceleration (actions[:, 2]), so every batch tells which record of which source it holds.
"""

import json
import math
import textwrap

import numpy as np
import pytest

from wm_jax import defaults
from wm_jax.data import mixture, pipeline, records, sources
from wm_jax.data.synthetic import export, export_opendv, world


def _record(tag, i, actions=True, width=6):
  r = {"frames": np.full((2, 1, 4, width, 3), i % 256, np.uint8), "fps": np.float32(12.0)}
  if actions:
    a = np.zeros((2, 4), np.float32)
    a[:, 0], a[:, 2] = i, tag
    r["actions"] = a
  return r


class _Mem:
  """Records 0..n-1 of source `tag`; indices in `bad` have a NaN action (a bad record)."""

  def __init__(self, tag, n, bad=(), **kw):
    self.tag, self.n, self.bad, self.kw = tag, n, set(bad), kw
    self.name = f"mem{tag}"

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    r = _record(self.tag, i, **self.kw)
    if i in self.bad:
      r["actions"][1, 1] = np.nan
    return r


_MEM = {}  # config.data.path -> source, for the 'mem' source registered below


@pytest.fixture(autouse=True)
def _mem_source(monkeypatch):
  _MEM.clear()
  monkeypatch.setitem(sources.SOURCES, "mem", lambda config, split: _MEM[config.path])


def _entry(tag, n, weight, bad=(), **kw):
  _MEM[f"mem{tag}"] = _Mem(tag, n, bad, **kw)
  return dict(source="mem", weight=weight, path=f"mem{tag}", name=f"s{tag}")


def _config(entries, **kw):
  c = defaults.data()
  c.update(source="mixture", mixture=tuple(entries), read_threads=2, read_buffer=4)
  c.update(kw)
  return c


def _make(config, seed=0, process_index=0, process_count=1, batch_size=8):
  return pipeline.make_iterator(config, batch_size=batch_size, seed=seed,
                                process_index=process_index, process_count=process_count)


def _drawn(batch):
  """(source tag, record index) of every record of a batch."""
  a = batch["actions"][:, 0]
  return list(zip(a[:, 2].astype(int).tolist(), a[:, 0].astype(int).tolist()))


def _take(it, batches):
  return sum((_drawn(next(it)) for _ in range(batches)), [])


def test_shares_follow_the_weights_and_counts_are_kept():
  weights, sizes = (1.0, 2.0, 5.0), (37, 53, 71)
  it = _make(_config([_entry(t, n, w) for t, (n, w) in enumerate(zip(sizes, weights))]),
             batch_size=40)
  drawn = _take(it, 100)  # 4000 records, each source through several epochs
  total = len(drawn)
  tags = np.array([t for t, _ in drawn])
  for t, w in enumerate(weights):
    share = w / sum(weights)
    n = int((tags == t).sum())
    # What a random sampler of these weights would meet (3 binomial standard deviations) ...
    assert abs(n - total * share) <= 3 * math.sqrt(total * share * (1 - share)), (t, n)
    # ... and what the interleave guarantees: every prefix within one record of its share.
    prefix = np.cumsum(tags == t)
    assert np.abs(prefix - np.arange(1, total + 1) * share).max() < 1
    # Each source is read epoch by epoch: its first len(source) draws are all its records.
    ids = [i for s, i in drawn if s == t]
    assert sorted(ids[:sizes[t]]) == list(range(sizes[t]))
    assert sorted(ids[sizes[t]:2 * sizes[t]]) == list(range(sizes[t]))
  assert it.source_counts == {f"s{t}": int((tags == t).sum()) for t in range(3)}
  assert it.source_counts == json.loads(json.dumps(it.get_state()))["source_counts"]
  assert it.source_bad_records == {"s0": 0, "s1": 0, "s2": 0} and it.position == total


def test_same_seed_same_sequence_another_seed_another():
  config = _config([_entry(0, 30, 1.0), _entry(1, 30, 1.0)])
  a, b, c = (_take(_make(config, seed=s), 10) for s in (3, 3, 4))
  assert a == b and a != c
  # The pattern is the weights' (equal: alternating); the seed shuffles each source ...
  assert [t for t, _ in a] == [t for t, _ in c] == [0, 1] * 40
  # ... each with its own seed: two sources of one size are not read in the same order.
  assert [i for t, i in a if t == 0][:30] != [i for t, i in a if t == 1][:30]


@pytest.mark.parametrize("process_count,bad", [(1, ()), (2, ()), (1, (3, 10, 17)),
                                               (2, (3, 10, 17))])
def test_resume_continues_the_same_mixed_sequence(process_count, bad):
  config = _config([_entry(0, 23, 1.0), _entry(1, 31, 3.0, bad=bad)],
                   skip_bad_records=bool(bad))
  for p in range(process_count):
    make = lambda: _make(config, seed=5, process_index=p, process_count=process_count,
                         batch_size=5)
    whole = make()
    expected = _take(whole, 14)  # crosses the epochs of both sources
    first = make()
    head = _take(first, 6)
    state = json.loads(json.dumps(first.get_state()))
    resumed = make()
    resumed.set_state(state)
    assert head + _take(resumed, 8) == expected
    assert resumed.get_state() == whole.get_state()
    counts, skipped = whole.source_counts, whole.source_bad_records
    assert sum(counts.values()) == whole.position
    assert counts == dict(zip(("s0", "s1"), whole.interleave.counts(whole.position)))
    got = {f"s{t}": sum(s == t for s, _ in expected) for t in (0, 1)}
    assert skipped == {"s0": 0, "s1": counts["s1"] - got["s1"]}  # drawn - batched
    assert counts["s0"] == got["s0"] and whole.bad_records == skipped["s1"]
    if bad:
      assert skipped["s1"] > 0 and all(i not in bad for s, i in expected if s == 1)


def test_process_shards_are_disjoint_and_each_follows_the_weights():
  config = _config([_entry(0, 40, 1.0), _entry(1, 60, 1.0)])
  shards = [_take(_make(config, seed=2, process_index=p, process_count=2), 5) for p in (0, 1)]
  for shard in shards:  # 40 records: 20 of each source (no process holds one source only)
    assert [t for t, _ in shard] == [0, 1] * 20
  for t, n in ((0, 40), (1, 60)):  # within an epoch the processes read disjoint records
    a, b = ({i for s, i in shard if s == t} for shard in shards)
    assert len(a) == len(b) == 20 and not a & b and a | b <= set(range(n))


def test_finite_epochs_end_where_the_first_source_runs_out():
  config = _config([_entry(0, 5, 1.0), _entry(1, 20, 1.0)], num_epochs=1, drop_remainder=False)
  it = _make(config, batch_size=4)
  drawn = sum((_drawn(b) for b in it), [])
  assert sorted(i for t, i in drawn if t == 0) == list(range(5))
  assert len(drawn) == 10 and it.source_counts == {"s0": 5, "s1": 5}


def test_interleave_counts_and_positions_match_a_scan():
  for weights, parts in (((1, 1), (1, 1)), ((1, 2), (1, 2)), ((0.7, 0.3), (7, 3)),
                         ((2, 2, 2), (1, 1, 1)), ((3, 1, 0.01), (297, 99, 1))):
    m = mixture.WeightedInterleave(weights)
    assert m.parts == parts and m.cycle == sum(parts)
    seen = [0] * len(parts)
    for k in range(2 * m.cycle + 5):
      assert m.counts(k) == seen
      i, j = m[k]
      assert j == seen[i] and m.position(i, j) == k
      seen[i] += 1
    assert m.counts(m.cycle) == list(parts)  # each cycle holds exactly the parts
  assert len(mixture.WeightedInterleave((1, 1), [3, 10])) == 6  # ends as entry 0 runs out


def test_records_of_different_keys_are_refused_naming_both_sources():
  config = _config([_entry(0, 6, 1.0), _entry(1, 6, 1.0, actions=False)])
  with pytest.raises(ValueError, match=r"entries 's0' and 's1' give records with different keys.*"
                                       r"only 's0' has \['actions'\]"):
    next(_make(config))
  config.mixture_keys = ("frames", "fps")  # keep what both give
  batch = next(_make(config))
  assert set(batch) == {"frames", "fps"} and batch["frames"].shape == (8, 2, 1, 4, 6, 3)
  config.mixture_keys = ("frames", "fps", "actions")
  with pytest.raises(ValueError, match=r"entry 's1' gives no \['actions'\]"):
    next(_make(config))
  config = _config([_entry(0, 6, 1.0), _entry(1, 6, 1.0, width=8)])
  with pytest.raises(ValueError, match=r"'s0' and 's1' give records of different shapes.*"
                                       r"'frames' \(2, 1, 4, 6, 3\) vs \(2, 1, 4, 8, 3\)"):
    next(_make(config))


def test_bad_record_raises_naming_its_source_without_skip():
  config = _config([_entry(0, 6, 1.0), _entry(1, 6, 1.0, bad=range(6))], shuffle=False)
  with pytest.raises(records.BadRecordError, match=r"source='mem1' index=0"):
    next(_make(config))


@pytest.mark.parametrize("mix,pattern", [
    ((), r"needs config.data.mixture: a tuple of one or more"),
    (("mem",), r"mixture\[0\] must be a dict"),
    (({"source": "mem", "path": "mem0"},), r"mixture\[0\] \('mem'\) has no 'weight'"),
    (({"source": "nope", "weight": 1.0},), r"mixture\[0\]: unknown data source 'nope'"),
    (({"source": "mixture", "weight": 1.0},), r"mixture\[0\]: unknown data source 'mixture'"),
    *[((None, {"weight": w}), rf"mixture\[1\] \('s1'\): weight must be a positive finite "
                              rf"number, got {w!r}")
      for w in (0, -1.0, float("nan"), float("inf"), "1", True)],
    ((None, {"colour": "red"}), r"mixture\[1\] \('s1'\): colour='red': 'colour' is not a "
                                r"config.data field"),
    ((None, {"num_epochs": 2}), r"num_epochs=2: 'num_epochs' is a setting of the whole mixture"),
    ((None, {"num_frames": "eight"}), r"mixture\[1\] \('s1'\): num_frames='eight'"),
    ((None, {"name": "s0"}), r"mixture\[1\] \('s0'\): config.data.mixture\[0\] has the same name"),
    ((None, {"weight": 1e-5}), r"entry 's1': weight 1e-05 is below 1/20000"),
])
def test_config_errors_name_the_entry_and_value(mix, pattern):
  if mix and mix[0] is None:  # a good entry 0 and entry 1 with the change
    mix = (_entry(0, 4, 1.0), dict(_entry(1, 4, 1.0), **mix[1]))
  with pytest.raises(ValueError, match=pattern):
    sources.make_source(_config(mix))


def test_mixture_keys_errors():
  entries = [_entry(0, 4, 1.0), _entry(1, 4, 1.0)]
  with pytest.raises(ValueError, match=r"unknown batch keys \['bogus'\]"):
    sources.make_source(_config(entries, mixture_keys=("frames", "bogus")))
  with pytest.raises(ValueError, match=r"keeps none of \('frames', 'latents'\)"):
    sources.make_source(_config(entries, mixture_keys=("fps",)))


def test_entries_override_fields_and_make_source_mixes_in_order():
  config = _config([_entry(0, 4, 1.0), dict(_entry(1, 6, 3.0), num_frames=4, views=["A"])])
  entries = mixture.parse(config, tuple(sources.SOURCES))
  assert [(e.name, e.weight, e.config.path) for e in entries] == [("s0", 1.0, "mem0"),
                                                                  ("s1", 3.0, "mem1")]
  assert entries[1].config.num_frames == 4 and entries[1].config.views == ("A",)
  assert entries[0].config.num_frames == config.num_frames and config.mixture  # a copy
  mixed = sources.make_source(config)
  assert isinstance(mixed, mixture.MixedSource) and mixed.name == "mixture(s0,s1)"
  # A cycle of 1:3 is s1, s0, s1, s1 (the most credit first); s1's 6 records end it at 8.
  assert len(mixed) == 8
  assert [_drawn({"actions": mixed[k]["actions"][None]})[0] for k in range(8)] == [
      (1, 0), (0, 0), (1, 1), (1, 2), (1, 3), (0, 1), (1, 4), (1, 5)]
  ds = pipeline.make_dataset(_config([_entry(0, 4, 1.0), _entry(1, 4, 1.0, bad=[2])],
                                     shuffle=False, skip_bad_records=True))
  assert len(ds) == 8 and ds[5] is None and ds[4]["actions"][0, 0] == 2  # s1's record 2 is bad


def _doc_example(doc):
  """The stage-2 config block of a docstring (its lines from `config.data.update(source=...`)."""
  lines = doc.split("\n")
  start = next(n for n, line in enumerate(lines)
               if line.strip().startswith("config.data.update(source='mixture'"))
  end = next(n for n in range(start, len(lines)) if not lines[n].strip())
  return textwrap.dedent("\n".join(lines[start:end]))


@pytest.mark.parametrize("module", [mixture, pipeline])
def test_stage2_example_of_the_docstrings_is_a_valid_equal_mixture(module):
  config = defaults.config()
  exec(_doc_example(module.__doc__), {"config": config})  # pylint: disable=exec-used
  entries = mixture.parse(config.data, tuple(sources.SOURCES))
  assert [(e.name, e.weight) for e in entries] == [("nuscenes", 1.0), ("opendv", 1.0)]
  assert config.model.num_views == len(entries[0].config.views) == 1
  nus, odv = (e.config for e in entries)
  assert nus.views == ("CAM_FRONT",) and not nus.layout and nus.path == "/data/nuscenes"
  assert odv.source == "opendv" and odv.path == "/data/opendv"
  assert set(mixture.check_keys(config.data.mixture_keys)) == {"frames", "command", "fps",
                                                               "view_adjacency"}


@pytest.mark.slow  # worker processes import wm_jax (flax, jax): several seconds
def test_mixture_through_worker_processes_matches_and_restores():
  entries = [_entry(0, 9, 1.0), _entry(1, 7, 2.0, bad=[4])]
  config = lambda workers: _config(entries, worker_count=workers, skip_bad_records=True)
  it0 = _make(config(0), batch_size=3)
  head = _take(it0, 3)
  state = it0.get_state()
  tail = _take(it0, 4)
  it1 = _make(config(1), batch_size=3)
  it1.set_state(json.loads(json.dumps(state)))
  assert _take(it1, 4) == tail and it1.get_state() == it0.get_state()
  it1.close()
  assert len(head) == 9


def _stage2_config(nus_root, odv_root):
  """The stage-2 example of mixture.py's docstring at test size, on the given exports (every
  nuScenes scene in the train split)."""
  config = defaults.config()
  exec(_doc_example(mixture.__doc__), {"config": config})  # pylint: disable=exec-used
  config.data.update(num_frames=8, image_height=32, image_width=64)
  nus, odv = (dict(e.items()) for e in config.data.mixture)
  config.data.mixture = (dict(nus, path=nus_root, version="v1.0-synthetic", val_fraction=0.0),
                         dict(odv, path=odv_root))
  return config.data


def test_stage2_mixture_reads_nuscenes_and_opendv_exports_in_turn(tmp_path):
  nus_root, odv_root = str(tmp_path / "nuscenes"), str(tmp_path / "opendv")
  export.write_nuscenes(nus_root, [world.make_scene(3, "boston"), world.make_scene(5, "boston")],
                        rig="front", image_size=(32, 64), num_samples=4, image_format="png", verbose=False)
  export_opendv.write_opendv(odv_root, [world.make_scene(0, "boston", manoeuvre="turn_left")],
                             image_size=(32, 64), num_frames=40, fps=10.0, clip_frames=10)
  config = _stage2_config(nus_root, odv_root)
  entries = mixture.parse(config, tuple(sources.SOURCES))
  own = [sources.make_source(e.config, "train") for e in entries]  # each entry's source alone
  assert [len(s) for s in own] == [2, 4]
  own_frames = [[s[j]["frames"] for j in range(len(s))] for s in own]
  it = _make(config, seed=1, batch_size=4)
  batches = [next(it)]
  resumed = _make(config, seed=1, batch_size=4)
  resumed.set_state(json.loads(json.dumps(it.get_state())))
  batches += [next(it), next(it)]
  for batch in batches[1:]:  # the resumed iterator continues the same mixed sequence
    again = next(resumed)
    assert all(np.array_equal(batch[k], again[k]) for k in batch)
  mixed = [{k: v[r] for k, v in batch.items()} for batch in batches for r in range(4)]
  for k, record in enumerate(mixed):
    assert set(record) == {"frames", "command", "fps", "view_adjacency"}
    assert record["frames"].shape == (8, 1, 32, 64, 3) and record["fps"] == 10.0
    i = k % 2  # equal weights alternate nuScenes, OpenDV
    hits = [j for j, f in enumerate(own_frames[i]) if np.array_equal(f, record["frames"])]
    assert len(hits) == 1, (k, i)
    np.testing.assert_array_equal(record["command"], own[i][hits[0]]["command"])
  assert it.source_counts == {"nuscenes": 6, "opendv": 6}
  assert it.source_bad_records == {"nuscenes": 0, "opendv": 0}
