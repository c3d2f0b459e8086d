import numpy as np
import pytest

from wm_jax.data import schema


def _record(T=3, V=2, H=8, W=16):
  return {
      "frames": np.zeros((T, V, H, W, 3), np.uint8),
      "actions": np.zeros((T, 4), np.float32),
      "intrinsics": np.tile(np.eye(3, dtype=np.float32), (T, V, 1, 1)),
      "layout": np.zeros((T, V, H, W, 6), np.uint8),
      "fps": np.float32(10.0),
      "view_adjacency": np.ones((V, V), bool),
  }


def test_valid_record_returns_sizes():
  sizes = schema.validate(_record())
  assert sizes["T"] == 3 and sizes["V"] == 2 and sizes["H"] == 8 and sizes["W"] == 16


def test_batched():
  batch = {k: np.stack([v, v]) for k, v in _record().items()}
  assert schema.validate(batch, batched=True)["B"] == 2


@pytest.mark.parametrize("key,value,match", [
    ("actions", np.zeros((4, 4), np.float32), r"'actions' axis 0 \(T\) has size 4"),
    ("layout", np.zeros((3, 2, 8, 16, 5), np.uint8), r"'layout' axis 4 must have size 6"),
    ("frames", np.zeros((3, 2, 8, 16, 3), np.float32), r"'frames' must have dtype uint8"),
    ("intrinsics", np.zeros((3, 2, 3), np.float32), r"'intrinsics' must have rank 4"),
    ("fps", np.float32(0.0), r"'fps' must be positive"),
    ("bogus", np.zeros(3), r"unknown batch keys \['bogus'\]"),
])
def test_bad_records_name_key_source_and_index(key, value, match):
  rec = _record()
  rec[key] = value
  with pytest.raises(schema.SchemaError, match=match) as err:
    schema.validate(rec, source="scene-0007.json", index=12)
  assert "scene-0007.json" in str(err.value) and "index=12" in str(err.value)


def test_nan_is_reported_with_position():
  rec = _record()
  rec["actions"][1, 2] = np.nan
  with pytest.raises(schema.SchemaError, match=r"non-finite values, first at \(1, 2\)"):
    schema.validate(rec)


def test_missing_images():
  rec = _record()
  del rec["frames"]
  with pytest.raises(schema.SchemaError, match="neither 'frames' nor 'latents'"):
    schema.validate(rec)


def _ego_record(T=3, K=2):
  rec = _record(T=T)
  rec["actions"][:, 0] = 5.0
  rec.update(trajectory=np.zeros((T, K, 2), np.float32),
             goal_point=np.full((T, 2), 0.5, np.float32), command=np.array([0, 1, 3], np.int32)[:T])
  return rec


def test_ego_keys_have_symbolic_k():
  sizes = schema.validate(_ego_record(K=4))
  assert sizes["K"] == 4 and sizes["T"] == 3
  assert schema.COMMANDS == ("straight", "left", "right", "stop")
  rec = _ego_record()
  rec["command"] = rec["command"].astype(np.int64)
  with pytest.raises(schema.SchemaError, match="'command' must have dtype int32"):
    schema.validate(rec)


@pytest.mark.parametrize("key,where,value,match", [
    ("actions", (1, 1), np.nan, r"'actions' has 1 non-finite values, first at \(1, 1\) "
                                r"\(steering\)"),
    ("actions", (2, 3), np.inf, r"'actions' has 1 non-finite values, first at \(2, 3\) "
                                r"\(yaw_rate\)"),
    ("actions", (0, 0), -0.5, r"'actions' speed \(column 0\) must be >= 0 m/s, got -0.5 at "
                              r"\(0, 0\)"),
    ("actions", (2, 1), 1.6, r"'actions' steering \(column 1\) must lie in \(-pi/2, pi/2\) rad, "
                             r"got 1.6 at \(2, 1\)"),
    ("trajectory", (1, 0, 1), np.nan, r"'trajectory' has 1 non-finite values, first at "
                                      r"\(1, 0, 1\)"),
    ("goal_point", (2, 0), -np.inf, r"'goal_point' has 1 non-finite values, first at \(2, 0\)"),
    ("command", (1,), 4, r"'command' must be in 0..3 \(straight, left, right, stop\), got 4 at "
                         r"\(1,\)"),
    ("command", (0,), -1, r"'command' must be in 0..3 .*got -1 at \(0,\)"),
])
def test_bad_ego_values_name_key_source_and_index(key, where, value, match):
  rec = _ego_record()
  rec[key][where] = value
  for check_finite in (True, False):  # the ego keys are checked either way
    with pytest.raises(schema.SchemaError, match=match) as err:
      schema.validate(rec, source="scene-0007.json", index=12, check_finite=check_finite)
    assert "source='scene-0007.json', index=12" in str(err.value)
  batch = {k: np.stack([v, v]) for k, v in rec.items()}
  with pytest.raises(schema.SchemaError, match=key):
    schema.validate(batch, batched=True, source="b", index=0)
