"""The synthetic source through the pipeline and into a TFDS cache (one tiny shape: one compile)."""

import numpy as np
import pytest

from wm_jax import defaults
from wm_jax.data import pipeline, schema, sources, tfds_builders, tfds_cache
from wm_jax.data.synthetic import source as synthetic_source


def _config(**kw):
  c = defaults.data()
  c.update(num_frames=2, image_height=16, image_width=32, num_train=3, num_val=2,
           val_domain="singapore", read_threads=1, trajectory_points=3)
  c.update(kw)
  return c


@pytest.fixture(scope="module")
def train_source():
  return sources.make_source(_config(), "train")


def test_index_maps_to_a_seeded_scene_and_domain_split(train_source):
  a = train_source[1]
  schema.validate(a, source=train_source.name, index=1)
  assert a["frames"].shape == (2, 1, 16, 32, 3) and "depth" not in a
  # The ego's future with K = config.trajectory_points, from the poses the world drove.
  assert a["trajectory"].shape == (2, 3, 2) and a["goal_point"].shape == (2, 2)
  assert a["command"].dtype == np.int32 and a["actions"].shape == (2, 4)
  next_in_frame0 = np.linalg.inv(a["ego_pose"][0].astype(np.float64)) @ np.append(
      a["ego_pose"][1, :3, 3], 1.0)
  np.testing.assert_allclose(a["trajectory"][0, 0], next_in_frame0[:2], atol=1e-3)
  b = sources.make_source(_config(), "train")[1]  # a fresh source renders the same clip
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  assert not np.array_equal(train_source[0]["frames"], a["frames"])
  val = sources.make_source(_config(), "validation")
  assert len(val) == 2 and val.domain == "singapore" and train_source.domain == "boston"
  assert val.seed0 != train_source.seed0


def test_steer_takeover_drives_the_drawn_share_of_clips_off_their_plans(train_source):
  plan, taken = train_source[1], sources.make_source(_config(steer_takeover=1.0), "train")[1]
  schema.validate(taken, source="takeover", index=1)
  changed = np.flatnonzero(plan["actions"][:, 1] != taken["actions"][:, 1])
  np.testing.assert_array_equal(changed, [1])  # 2 frames: the takeover starts at frame 1
  # Frame 1's pose follows frame 0's steering, so both frames still show the plan ...
  np.testing.assert_array_equal(plan["frames"], taken["frames"])
  # ... and the future the model is told of is the taken-over one, read off the driven poses.
  assert not np.allclose(plan["trajectory"][1], taken["trajectory"][1], atol=1e-3)
  np.testing.assert_array_equal(plan["trajectory"][0, 0], taken["trajectory"][0, 0])
  share = 0.5
  some = sources.make_source(_config(steer_takeover=share), "train")
  drawn = [synthetic_source._draw(some.seed0 + i) < share for i in range(3)]
  moved = [not np.array_equal(some[i]["actions"], train_source[i]["actions"]) for i in range(3)]
  assert moved == drawn and 0 < sum(drawn) < 3  # the share is drawn per clip


def test_iterator_over_rendered_clips_and_tfds_cache(train_source, tmp_path):
  config = _config(shuffle=False, num_epochs=1, drop_remainder=False)
  it = pipeline.make_iterator(config, batch_size=2, process_index=0, process_count=1,
                              source=train_source)
  batches = list(it)
  assert [len(b["frames"]) for b in batches] == [2, 1]
  np.testing.assert_array_equal(batches[1]["ego_pose"][0], train_source[2]["ego_pose"])
  builder = tfds_builders.make_builder("synthetic", _config(), name="t", data_dir=str(tmp_path),
                                       splits=("train",), max_examples=2)
  builder.download_and_prepare()
  cached = tfds_cache.data_source("wm_synthetic/t", split="train", data_dir=str(tmp_path))
  assert len(cached) == 2
  want, got = train_source[1], cached[1]
  assert sorted(got) == sorted(want)
  assert {"actions", "trajectory", "goal_point", "command"} <= set(got)  # the cache keeps them
  for key in want:
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert got[key].dtype == want[key].dtype, key
