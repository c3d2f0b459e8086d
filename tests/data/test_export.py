"""The nuScenes-format exporter: tables read back with plain json agree with the rendered record."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from wm_jax.data import layout_render
from wm_jax.data.synthetic import export, render, rig as rig_lib, world

SIZE = (48, 96)
NUM_SAMPLES = 3


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  out = tmp_path_factory.mktemp("nusc")
  scene = world.make_scene(5, "singapore", length=200.0)
  summary = export.write_nuscenes(out, [scene], rig="nuscenes6", image_size=SIZE,
                                  num_samples=NUM_SAMPLES, image_format="png", verbose=False)
  tables = {}
  for name in os.listdir(out / "v1.0-synthetic"):
    with open(out / "v1.0-synthetic" / name) as f:
      tables[name[:-5]] = json.load(f)
  num_frames = (NUM_SAMPLES - 1) * export.KEYFRAME_EVERY + 1
  record = render.render_clip(scene, "nuscenes6", num_frames=num_frames, fps=12.0,
                              image_size=SIZE, layout=False, max_boxes=128)
  return out, tables, record, summary


def _by_token(rows):
  return {r["token"]: r for r in rows}


def _matrix(rotation, translation):
  w, x, y, z = rotation
  r = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
  m = np.eye(4)
  m[:3, :3], m[:3, 3] = r, translation
  return m


def _quaternion_yaw(q) -> np.ndarray:
  """Yaw about z (rad) of quaternions [...,4] (w, x, y, z), the nuScenes order."""
  w, x, y, z = np.moveaxis(np.asarray(q, np.float64), -1, 0)
  return np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))


def _nuscenes_boxes_to_ego(translation, size_wlh, rotation, classes, track_ids, world_from_ego):
  """Rows [N,10] of the batch contract from nuScenes sample_annotation fields.

  translation [N,3] and rotation [N,4] (w, x, y, z) are global; size_wlh [N,3] is nuScenes'
  (width, length, height); classes [N] are class indices (class_index of the category name);
  world_from_ego [4,4] is the ego pose of the image the boxes go with. Rows are valid (= 1).
  """
  translation = np.asarray(translation, np.float64).reshape(-1, 3)
  n = len(translation)
  size = np.asarray(size_wlh, np.float64).reshape(n, 3)
  ego_from_world = np.linalg.inv(np.asarray(world_from_ego, np.float64))
  xyz = translation @ ego_from_world[:3, :3].T + ego_from_world[:3, 3]
  ego_yaw = np.arctan2(world_from_ego[1][0], world_from_ego[0][0])
  yaw = _quaternion_yaw(np.asarray(rotation, np.float64).reshape(n, 4)) - ego_yaw
  yaw = np.mod(yaw + np.pi, 2 * np.pi) - np.pi
  return np.concatenate([xyz, size[:, [1, 0, 2]], yaw[:, None],
                         np.asarray(classes, np.float64).reshape(n, 1),
                         np.asarray(track_ids, np.float64).reshape(n, 1), np.ones((n, 1))],
                        1).astype(np.float32)


def _camera_chain(tables, channel):
  """CAM sample_data rows of the scene in time order, following prev/next from the first sample."""
  sd = _by_token(tables["sample_data"])
  calib = _by_token(tables["calibrated_sensor"])
  sensors = _by_token(tables["sensor"])
  first = tables["scene"][0]["first_sample_token"]
  start = [r for r in tables["sample_data"] if r["sample_token"] == first and r["is_key_frame"]
           and sensors[calib[r["calibrated_sensor_token"]]["sensor_token"]]["channel"] == channel]
  assert len(start) == 1
  chain, row = [], start[0]
  while True:
    chain.append(row)
    if not row["next"]:
      return chain
    row = sd[row["next"]]


def test_tables_structure_and_timing(exported):
  out, tables, record, summary = exported
  for name in ("scene", "sample", "sample_data", "ego_pose", "calibrated_sensor", "sensor",
               "sample_annotation", "instance", "category", "attribute", "visibility", "log", "map"):
    assert name in tables and summary[f"num_{name}"] == len(tables[name])
  scene = tables["scene"][0]
  samples = _by_token(tables["sample"])
  chain, tok = [], scene["first_sample_token"]
  while tok:
    chain.append(samples[tok])
    tok = samples[tok]["next"]
  assert len(chain) == scene["nbr_samples"] == NUM_SAMPLES
  assert chain[-1]["token"] == scene["last_sample_token"]
  assert np.all(np.diff([s["timestamp"] for s in chain]) == 500000)  # 2 Hz key frames
  assert {c["channel"] for c in tables["sensor"]} == set(rig_lib.make_rig("nuscenes6", SIZE).channels)
  cams = _camera_chain(tables, "CAM_FRONT")
  assert len(cams) == len(record["frames"])
  stamps = np.array([c["timestamp"] for c in cams])
  assert np.all(np.abs(np.diff(stamps) - 1e6 / 12) <= 1)  # 12 Hz sweeps
  assert [c["is_key_frame"] for c in cams] == [i % 6 == 0 for i in range(len(cams))]
  for i, c in enumerate(cams):
    folder = "samples" if c["is_key_frame"] else "sweeps"
    assert c["filename"].startswith(f"{folder}/CAM_FRONT/") and (c["height"], c["width"]) == SIZE
    image = np.asarray(Image.open(out / c["filename"]))
    np.testing.assert_array_equal(image, record["frames"][i, 0])
    if c["is_key_frame"]:
      assert samples[c["sample_token"]]["timestamp"] == c["timestamp"]
  log = tables["log"][0]
  assert log["location"] == "singapore-onenorth"
  assert tables["map"][0]["log_tokens"] == [log["token"]]
  assert os.path.exists(out / tables["map"][0]["filename"])


def test_poses_and_calibrations_round_trip(exported):
  _, tables, record, _ = exported
  poses = _by_token(tables["ego_pose"])
  calib = _by_token(tables["calibrated_sensor"])
  sensors = _by_token(tables["sensor"])
  rig = rig_lib.make_rig("nuscenes6", SIZE)
  for v, channel in enumerate(rig.channels):
    cams = _camera_chain(tables, channel)
    for i, c in enumerate(cams):
      p = poses[c["ego_pose_token"]]
      assert p["timestamp"] == c["timestamp"]
      np.testing.assert_allclose(_matrix(p["rotation"], p["translation"]), record["ego_pose"][i],
                                 atol=1e-4)
    cs = calib[cams[0]["calibrated_sensor_token"]]
    assert sensors[cs["sensor_token"]]["channel"] == channel
    np.testing.assert_allclose(_matrix(cs["rotation"], cs["translation"]),
                               record["extrinsics"][0, v], atol=1e-6)
    np.testing.assert_allclose(cs["camera_intrinsic"], record["intrinsics"][0, v], atol=1e-4)


def test_boxes_round_trip(exported):
  _, tables, record, _ = exported
  samples = _by_token(tables["sample"])
  poses = _by_token(tables["ego_pose"])
  instances = _by_token(tables["instance"])
  categories = _by_token(tables["category"])
  key_rows = {c["sample_token"]: c for c in _camera_chain(tables, "CAM_FRONT") if c["is_key_frame"]}
  frame_of = {tok: i * 6 for i, tok in enumerate(
      r["token"] for r in sorted(samples.values(), key=lambda r: r["timestamp"]))}
  matched = 0
  for ann in tables["sample_annotation"]:
    i = frame_of[ann["sample_token"]]
    pose = poses[key_rows[ann["sample_token"]]["ego_pose_token"]]
    ego_from_world = np.linalg.inv(_matrix(pose["rotation"], pose["translation"]))
    box_world = _matrix(ann["rotation"], ann["translation"])
    box_ego = ego_from_world @ box_world
    yaw = np.arctan2(box_ego[1, 0], box_ego[0, 0])
    w, l, h = ann["size"]
    cls = layout_render.class_index(categories[instances[ann["instance_token"]]["category_token"]]
                                    ["name"])
    boxes = record["boxes"][i]
    d = np.linalg.norm(boxes[:, :3] - box_ego[:3, 3], axis=1) + 1e3 * (boxes[:, 9] < 0.5)
    j = int(np.argmin(d))
    assert d[j] < 1e-3, (ann["token"], d[j])
    np.testing.assert_allclose(boxes[j, 3:6], [l, w, h], atol=1e-4)
    assert abs(np.angle(np.exp(1j * (boxes[j, 6] - yaw)))) < 1e-4
    assert boxes[j, 7] == cls
    # A second conversion of the raw fields (quaternion yaw, wlh -> lwh) gives the same row.
    row = _nuscenes_boxes_to_ego(ann["translation"], ann["size"], ann["rotation"], [cls],
                                 [boxes[j, 8]], _matrix(pose["rotation"], pose["translation"]))[0]
    np.testing.assert_allclose(row[:6], boxes[j, :6], atol=1e-4)
    assert abs(np.angle(np.exp(1j * (row[6] - boxes[j, 6])))) < 1e-4 and row[7] == boxes[j, 7]
    matched += 1
  assert matched >= 5
  # Annotation chains per instance are consistent.
  anns = _by_token(tables["sample_annotation"])
  for inst in tables["instance"]:
    n, tok = 0, inst["first_annotation_token"]
    while tok:
      n += 1
      last, tok = tok, anns[tok]["next"]
    assert n == inst["nbr_annotations"] and last == inst["last_annotation_token"]


def test_can_bus_matches_actions(exported):
  out, tables, record, _ = exported
  with open(out / "can_bus" / "scene-0001_pose.json") as f:
    pose = json.load(f)
  with open(out / "can_bus" / "scene-0001_steeranglefeedback.json") as f:
    steer = json.load(f)
  cams = _camera_chain(tables, "CAM_FRONT")
  utime = np.array([p["utime"] for p in pose])
  assert np.all(np.abs(np.diff(utime) - 20000) <= 1)  # 50 Hz
  for i, c in enumerate(cams):
    k = int(np.argmin(np.abs(utime - c["timestamp"])))
    lag = abs(utime[k] - c["timestamp"]) * 1e-6
    if c["is_key_frame"]:
      assert lag < 2e-6  # 2 Hz key frames fall on the 50 Hz grid
    assert lag <= 0.01 + 1e-6
    moved = np.linalg.norm(np.subtract(pose[k]["pos"][:2], record["ego_pose"][i, :2, 3]))
    assert moved <= record["actions"][i, 0] * lag + 1e-4, (i, moved, lag)
    # Speed and yaw rate are held over a frame interval: compare with that interval's actions.
    j = int(np.floor((utime[k] - cams[0]["timestamp"]) * 12e-6 + 1e-6))
    np.testing.assert_allclose(pose[k]["vel"][0], record["actions"][j, 0], rtol=1e-5)
    np.testing.assert_allclose(pose[k]["rotation_rate"][2], record["actions"][j, 3], atol=1e-6)
    # The first 100 Hz steering row at or after the frame lies in the frame's interval.
    s = next(q for q in range(len(steer)) if steer[q]["utime"] >= c["timestamp"])
    np.testing.assert_allclose(steer[s]["value"] / export.STEERING_RATIO, record["actions"][i, 1],
                               atol=1e-6)


def test_export_rejects_bad_arguments(tmp_path):
  scene = world.make_scene(0, "boston", length=150.0)
  with pytest.raises(ValueError, match="num_samples"):
    export.write_nuscenes(tmp_path, [scene], num_samples=0, verbose=False)
  with pytest.raises(ValueError, match="image_format"):
    export.write_nuscenes(tmp_path, [scene], image_format="bmp", verbose=False)
