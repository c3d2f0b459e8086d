"""nuScenes reader semantics on a tiny hand-written v1.0 set with analytic ground truth.

The set: one scene, cameras CAM_FRONT and CAM_BACK at 12 Hz (CAM_BACK fires 20 ms later), a
keyframe every 6th frame (2 Hz). The ego drives a circle (5 m/s, yaw rate 0.2 rad/s); a car moves
on a straight line at constant velocity (so linear interpolation between keyframes is exact), a
pedestrian stands still, a cone is annotated in the first two keyframes only. Image pixels encode
(frame, camera). The exporter round trip on rendered synthetic scenes is test_nuscenes_roundtrip.
"""

import json
import math
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from wm_jax import defaults
from wm_jax.data import nuscenes, pipeline, records, schema

V_EGO, OMEGA, DT, N_FRAMES, KEY_EVERY = 5.0, 0.2, 1 / 12, 25, 6
T0 = 1_500_000_000_000_000  # microseconds
CAMS = {"CAM_FRONT": ((1.7, 0.0, 1.5), 0.0, 0), "CAM_BACK": ((0.0, 0.0, 1.6), math.pi, 20_000)}
K_NATIVE = [[40.0, 0.0, 32.0], [0.0, 40.0, 18.0], [0.0, 0.0, 1.0]]
IMAGE = (36, 64)  # native H, W


def ego_state(t):
  """Ego x, y, yaw at time t (s): circle from the origin, heading 0.3 rad at t=0."""
  yaw0, r = 0.3, V_EGO / OMEGA
  yaw = yaw0 + OMEGA * t
  return r * (math.sin(yaw) - math.sin(yaw0)), -r * (math.cos(yaw) - math.cos(yaw0)), yaw


def car_state(t):
  return np.array([8.0 + 3.0 * t, 6.0 + 1.0 * t, 0.8]), math.atan2(1.0, 3.0)


def quat_z(yaw):
  return [math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)]


def quat_cam(yaw):
  """Rotation ego-from-camera of an OpenCV camera looking along ego heading `yaw`."""
  fwd = np.array([math.cos(yaw), math.sin(yaw), 0.0])
  right = np.array([math.sin(yaw), -math.cos(yaw), 0.0])
  m = np.stack([right, np.cross(fwd, right), fwd], 1)
  w = math.sqrt(max(1e-12, 1 + m[0, 0] + m[1, 1] + m[2, 2])) / 2
  if w > 1e-3:
    return [w, (m[2, 1] - m[1, 2]) / (4 * w), (m[0, 2] - m[2, 0]) / (4 * w),
            (m[1, 0] - m[0, 1]) / (4 * w)]
  x = math.sqrt(max(0.0, 1 + m[0, 0] - m[1, 1] - m[2, 2])) / 2
  return [(m[2, 1] - m[1, 2]) / (4 * x), x, (m[0, 1] + m[1, 0]) / (4 * x),
          (m[0, 2] + m[2, 0]) / (4 * x)]


def write_set(root, can_bus=False):
  tables = {k: [] for k in nuscenes.TABLES}
  tok = lambda *a: "-".join(str(x) for x in a)
  tables["log"].append({"token": "log0", "location": "boston-seaport", "vehicle": "v",
                        "date_captured": "2026-01-01", "logfile": ""})
  for name, cat in (("car", "vehicle.car"), ("ped", "human.pedestrian.adult"),
                    ("cone", "movable_object.trafficcone")):
    tables["category"].append({"token": tok("cat", name), "name": cat, "description": ""})
    tables["instance"].append({"token": tok("inst", name), "category_token": tok("cat", name),
                               "nbr_annotations": 0, "first_annotation_token": "",
                               "last_annotation_token": ""})
  samples = list(range(0, N_FRAMES, KEY_EVERY))
  for si, f in enumerate(samples):
    tables["sample"].append({"token": tok("sample", si), "timestamp": T0 + round(f * DT * 1e6),
                             "scene_token": "scene0",
                             "prev": tok("sample", si - 1) if si else "",
                             "next": tok("sample", si + 1) if si + 1 < len(samples) else ""})
    t = f * DT
    pos, yaw = car_state(t)
    anns = [("car", pos, yaw, [1.8, 4.5, 1.5]), ("ped", np.array([15.0, -4.0, 0.9]), 1.0,
                                                  [0.6, 0.7, 1.8])]
    if si < 2:
      anns.append(("cone", np.array([5.0, 1.0, 0.3]), 0.0, [0.4, 0.4, 0.6]))
    for name, p, y, size in anns:
      tables["sample_annotation"].append({
          "token": tok("ann", name, si), "sample_token": tok("sample", si),
          "instance_token": tok("inst", name), "translation": list(map(float, p)),
          "rotation": quat_z(y), "size": size, "visibility_token": "4", "attribute_tokens": [],
          "prev": "", "next": "", "num_lidar_pts": 1, "num_radar_pts": 0})
  tables["scene"].append({"token": "scene0", "name": "scene-0001", "log_token": "log0",
                          "nbr_samples": len(samples), "first_sample_token": tok("sample", 0),
                          "last_sample_token": tok("sample", len(samples) - 1),
                          "description": ""})
  for ci, (cam, (trans, yaw, offset)) in enumerate(CAMS.items()):
    tables["sensor"].append({"token": tok("sensor", cam), "channel": cam, "modality": "camera"})
    tables["calibrated_sensor"].append({"token": tok("cs", cam), "sensor_token": tok("sensor", cam),
                                        "translation": list(trans), "rotation": quat_cam(yaw),
                                        "camera_intrinsic": K_NATIVE})
    os.makedirs(f"{root}/sweeps/{cam}", exist_ok=True)
    for f in range(N_FRAMES):
      stamp = T0 + round(f * DT * 1e6) + offset
      x, y, yaw_e = ego_state((stamp - T0) * 1e-6)
      key = f % KEY_EVERY == 0
      tables["ego_pose"].append({"token": tok("pose", cam, f), "timestamp": stamp,
                                 "translation": [x, y, 0.0], "rotation": quat_z(yaw_e)})
      filename = f"sweeps/{cam}/{f:03d}.png"
      Image.fromarray(np.stack(np.broadcast_arrays(
          np.uint8(8 * f), np.uint8(100 * ci), np.zeros(IMAGE, np.uint8)), -1)).save(
              f"{root}/{filename}")
      tables["sample_data"].append({
          "token": tok("sd", cam, f), "sample_token": tok("sample", min(
              (f + KEY_EVERY - 1) // KEY_EVERY, len(samples) - 1)),
          "ego_pose_token": tok("pose", cam, f), "calibrated_sensor_token": tok("cs", cam),
          "timestamp": stamp, "fileformat": "png", "is_key_frame": key, "height": IMAGE[0],
          "width": IMAGE[1], "filename": filename,
          "prev": tok("sd", cam, f - 1) if f else "",
          "next": tok("sd", cam, f + 1) if f + 1 < N_FRAMES else ""})
  os.makedirs(f"{root}/v1.0-test", exist_ok=True)
  for name, rows in tables.items():
    with open(f"{root}/v1.0-test/{name}.json", "w") as fh:
      json.dump(rows, fh)
  if can_bus:
    os.makedirs(f"{root}/can_bus", exist_ok=True)
    times = np.arange(0, 2.2, 0.02)
    pose = [{"utime": T0 + int(t * 1e6), "vel": [4.0 + t, 0.0, 0.0], "accel": [1.0, 0.1, 9.8],
             "rotation_rate": [0.0, 0.0, 0.25], "pos": [0, 0, 0], "orientation": [1, 0, 0, 0]}
            for t in times]
    steer = [{"utime": T0 + int(t * 1e6), "value": 2.0 * t} for t in times]
    for suffix, rows in (("pose", pose), ("steeranglefeedback", steer)):
      with open(f"{root}/can_bus/scene-0001_{suffix}.json", "w") as fh:
        json.dump(rows, fh)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("nusc"))
  write_set(root)
  return root


def _source(root, **kw):
  args = dict(version="v1.0-test", views=("CAM_FRONT", "CAM_BACK"), num_frames=3, fps=2,
              image_size=(18, 32), keyframes_only=True, max_boxes=4, trajectory_points=2)
  args.update(kw)
  return nuscenes.ClipSource(root, **args)


def _ego_boxes(t, world_from_ego):
  """Expected ego-frame (x, y, yaw) of the car at time t."""
  pos, yaw = car_state(t)
  p = np.linalg.inv(world_from_ego) @ np.append(pos, 1.0)
  return p[:3], yaw - math.atan2(world_from_ego[1, 0], world_from_ego[0, 0])


def test_keyframe_clips_poses_calibrations_boxes(root):
  src = _source(root)
  assert len(src) == 1  # 5 keyframes -> one 3-frame clip (and the 2 future keyframes it needs)
  r = src[0]
  schema.validate(r, source="nusc", index=0)
  assert r["frames"].shape == (3, 2, 18, 32, 3)
  # Pixels say which frame and camera was read: keyframes 0, 6, 12.
  np.testing.assert_array_equal(r["frames"][:, :, 5, 5, 0], [[0, 0], [48, 48], [96, 96]])
  np.testing.assert_array_equal(r["frames"][0, :, 5, 5, 1], [0, 100])
  for t, f in enumerate((0, 6, 12)):
    x, y, yaw = ego_state(f * DT)
    np.testing.assert_allclose(r["ego_pose"][t][:2, 3], [x, y], atol=1e-4)
    assert abs(math.atan2(r["ego_pose"][t][1, 0], r["ego_pose"][t][0, 0]) - yaw) < 1e-5
  # Extrinsics: CAM_BACK at (0, 0, 1.6) looking backwards (optical axis = -x of the ego).
  np.testing.assert_allclose(r["extrinsics"][1, 1, :3, 3], [0.0, 0.0, 1.6], atol=1e-6)
  np.testing.assert_allclose(r["extrinsics"][1, 1, :3, 2], [-1.0, 0.0, 0.0], atol=1e-6)
  # Intrinsics follow the resize 36x64 -> 18x32 (half).
  np.testing.assert_allclose(r["intrinsics"][0, 0], np.array(K_NATIVE) * [[.5], [.5], [1]],
                             atol=1e-5)
  # Boxes: rows per track (car nearest, cone, ped), car in the ego frame as computed here.
  boxes = r["boxes"]
  for t, f in enumerate((0, 6, 12)):
    car = boxes[t][boxes[t][:, 8] == 1][0]
    want, want_yaw = _ego_boxes(f * DT, r["ego_pose"][t].astype(np.float64))
    np.testing.assert_allclose(car[:3], want, atol=1e-3)
    assert abs((car[6] - want_yaw + math.pi) % (2 * math.pi) - math.pi) < 1e-4
    np.testing.assert_allclose(car[3:6], [4.5, 1.8, 1.5])  # (l, w, h) from nuScenes (w, l, h)
    assert car[7] == 0 and car[9] == 1  # class car, valid
  cone = boxes[:, boxes[0, :, 8] == 3][:, 0]
  np.testing.assert_array_equal(cone[:, 9], [1, 1, 0])  # annotated in keyframes 0 and 1 only
  assert set(boxes[0, :, 8][boxes[0, :, 9] > 0]) == {1, 2, 3}  # 1 + instance row
  assert boxes[0, 3, 9] == 0  # padding row (4 rows, 3 tracks)
  # The car is ahead-left of the front camera: the layout has box lines there.
  assert r["layout"][:, 0, ..., :3].any() and not r["layout"][..., 3:].any()
  # Front and back cameras (each 77 deg wide) do not overlap.
  np.testing.assert_array_equal(r["view_adjacency"], np.eye(2, dtype=bool))


def test_sweeps_interpolate_boxes_align_views_and_resample_fps(root):
  src = _source(root, keyframes_only=False, fps=6, num_frames=4, clip_stride=4,
                trajectory_points=1)
  # 25 frames at 12 Hz resampled to 6 Hz -> 13 timeline frames -> 3 clips of 4 (+ 1 future).
  assert len(src) == 3
  r = src[1]  # timeline frames 4..7 = camera frames 8, 10, 12, 14
  np.testing.assert_array_equal(r["frames"][:, 0, 5, 5, 0], [64, 80, 96, 112])
  np.testing.assert_array_equal(r["frames"][:, 1, 5, 5, 0], [64, 80, 96, 112])  # +20 ms aligned
  for t, f in enumerate((8, 10, 12, 14)):
    car = r["boxes"][t][r["boxes"][t][:, 8] == 1][0]
    want, _ = _ego_boxes(f * DT, r["ego_pose"][t].astype(np.float64))
    np.testing.assert_allclose(car[:3], want, atol=1e-3)  # exact: the car moves linearly
  near = _source(root, keyframes_only=False, fps=6, num_frames=4, clip_stride=4,
                 box_mode="nearest", trajectory_points=1)[1]
  car = near["boxes"][0][near["boxes"][0][:, 8] == 1][0]  # frame 8 takes keyframe 6's box
  assert np.abs(car[:3] - r["boxes"][0][r["boxes"][0][:, 8] == 1][0][:3]).max() > 0.1
  with pytest.raises(ValueError, match="exceeds"):
    _source(root, keyframes_only=True, fps=6)


def test_actions_from_poses_and_can_bus(root, tmp_path):
  r = _source(root, keyframes_only=False, fps=12, num_frames=5)[1]
  a = r["actions"]
  np.testing.assert_allclose(a[:, 0], V_EGO, rtol=2e-3)
  np.testing.assert_allclose(a[:, 3], OMEGA, rtol=2e-3)
  np.testing.assert_allclose(a[:, 1], math.atan(2.588 * OMEGA / V_EGO), rtol=5e-3)
  np.testing.assert_allclose(a[:, 2], 0.0, atol=0.02)
  can_root = str(tmp_path)
  write_set(can_root, can_bus=True)
  r = _source(can_root, keyframes_only=False, fps=12, num_frames=5, steering_ratio=2.0)[1]
  t = np.arange(5, 10) * DT  # frames 5..9
  np.testing.assert_allclose(r["actions"][:, 0], 4.0 + t, atol=1e-3)
  np.testing.assert_allclose(r["actions"][:, 1], 2.0 * t / 2.0, atol=1e-3)
  np.testing.assert_allclose(r["actions"][:, 2:], np.broadcast_to([1.0, 0.25], (5, 2)), atol=1e-6)


def test_trajectory_goal_and_command_from_future_poses(root):
  """The ego circles left (5 m/s, 0.2 rad/s: radius 25 m): its future in its own frame is the
  same arc from every frame; a scene's clips stop K frames before its end."""
  k = 3
  src = _source(root, num_frames=2, trajectory_points=k, clip_stride=1)
  assert len(src) == 1  # 5 keyframes: only the clip at 0 has 3 keyframes after its 2 frames
  assert len(_source(root, num_frames=2, trajectory_points=1, clip_stride=1)) == 3
  r = src[0]
  schema.validate(r, source="nusc", index=0)
  radius, tau = V_EGO / OMEGA, np.arange(1, k + 1) * 0.5  # keyframes 0.5 s apart
  arc = np.stack([radius * np.sin(OMEGA * tau), radius * (1 - np.cos(OMEGA * tau))], -1)
  assert r["trajectory"].shape == (2, k, 2) and r["trajectory"].dtype == np.float32
  np.testing.assert_allclose(r["trajectory"], np.broadcast_to(arc, (2, k, 2)), atol=1e-3)
  assert r["command"].tolist() == [1, 1]  # left: bearing 0.15 rad, 1.1 m to the left
  # Goal: the arc's end projected into CAM_FRONT (1.7 m ahead, 1.5 m up) at the clip's size.
  cam = np.array([-arc[-1, 1], 1.5, arc[-1, 0] - 1.7])
  k_img = np.array(K_NATIVE) * [[0.5], [0.5], [1]]
  uv = (k_img @ cam)[:2] / cam[2] / [32, 18]
  np.testing.assert_allclose(r["goal_point"], np.broadcast_to(uv, (2, 2)), atol=1e-4)
  assert 0 < uv[0] < 0.5 and 0.5 < uv[1] < 1  # left of centre, below the horizon


def _corrupt(tmp_path, what):
  root = str(tmp_path)
  write_set(root)
  d = f"{root}/v1.0-test"
  if what == "image":
    os.remove(f"{root}/sweeps/CAM_BACK/006.png")
  elif what == "json":
    text = open(f"{d}/sample_annotation.json").read()
    open(f"{d}/sample_annotation.json", "w").write(text[:len(text) // 2])
  elif what in ("nan", "token"):
    rows = json.load(open(f"{d}/ego_pose.json"))
    i = next(i for i, p in enumerate(rows) if p["token"] == "pose-CAM_FRONT-12")
    if what == "nan":
      rows[i]["translation"][1] = float("nan")
      json.dump(rows, open(f"{d}/ego_pose.json", "w"))
    else:
      sd = json.load(open(f"{d}/sample_data.json"))
      j = next(j for j, s in enumerate(sd) if s["token"] == "sd-CAM_FRONT-12")
      sd[j]["ego_pose_token"] = "no-such-pose"
      json.dump(sd, open(f"{d}/sample_data.json", "w"))
  return root


@pytest.mark.parametrize("what,error,pattern", [
    ("image", FileNotFoundError, r"sweeps/CAM_BACK/006.png is missing \(clip 0 frame 1 view "
                                 r"CAM_BACK"),
    ("json", ValueError, r"sample_annotation.json is not valid JSON"),
    ("nan", ValueError, r"ego_pose.json\[\d+\] \(token pose-CAM_FRONT-12\) has a non-finite"),
    ("token", KeyError, r"sample_data.json\[\d+\].ego_pose_token refers to ego_pose token "
                        r"'no-such-pose'"),
])
def test_corrupt_sets_raise_errors_naming_file_and_index(tmp_path, what, error, pattern):
  root = _corrupt(tmp_path, what)
  with pytest.raises(error, match=pattern):
    _source(root)[0]


def test_pipeline_names_source_and_index_or_skips(tmp_path):
  root = _corrupt(tmp_path, "image")
  c = defaults.data()
  c.update(source="nuscenes", path=root, version="v1.0-test", views=("CAM_FRONT", "CAM_BACK"),
           num_frames=2, fps=2, keyframes_only=True, image_height=18, image_width=32,
           max_boxes=4, val_fraction=0.0, shuffle=False, num_epochs=1, drop_remainder=False,
           trajectory_points=1)
  it = pipeline.make_iterator(c, batch_size=1, process_index=0, process_count=1)
  with pytest.raises(records.BadRecordError,
                     match=r"source='nuscenes:.*:train' index=0: FileNotFoundError.*006.png"):
    next(it)
  c.skip_bad_records = True
  batches = list(pipeline.make_iterator(c, batch_size=1, process_index=0, process_count=1))
  assert len(batches) == 1  # clips [0,6] (bad: frame 6 of CAM_BACK missing) and [12,18]
  assert batches[0]["frames"][0, 0, 0, 0, 0, 0] == 96
  assert batches[0]["layout"].shape == (1, 2, 2, 18, 32, 6)


def _downscaled_copy(src_root, dst_root, size):
  """A copy of the set with every image resized to `size` (H, W); the tables stay as they are
  (sample_data width/height and the intrinsics still describe the full-size images)."""
  shutil.copytree(src_root, dst_root)
  for dirpath, _, names in os.walk(f"{dst_root}/sweeps"):
    for name in names:
      path = os.path.join(dirpath, name)
      with Image.open(path) as im:
        small = im.convert("RGB").resize(size[::-1], Image.BILINEAR)
      small.save(path)
  return dst_root


def test_downscaled_images_rescale_the_calibration_or_raise(root, tmp_path):
  full = _source(root, image_size=(9, 16))[0]
  for size in ((18, 32), (9, 16)):  # half and quarter size copies, as users make them
    small_root = _downscaled_copy(root, str(tmp_path / f"{size[0]}"), size)
    small = _source(small_root, image_size=(9, 16))[0]
    np.testing.assert_allclose(small["intrinsics"], full["intrinsics"], atol=1e-5)
    np.testing.assert_allclose(small["intrinsics"][0, 0], np.array(K_NATIVE) * [[.25], [.25], [1]],
                               atol=1e-5)
    np.testing.assert_array_equal(small["layout"], full["layout"])
    np.testing.assert_array_equal(small["view_adjacency"], full["view_adjacency"])
  with pytest.raises(ValueError, match=r"sweeps/CAM_FRONT/000.png is 16x9 but .*sample_data.json"
                                       r"\[\d+\] .* 64x36 .*clip 0 frame 0 view CAM_FRONT"):
    _source(small_root, image_size=(9, 16), image_size_mismatch="error")[0]
  _source(root, image_size=(9, 16), image_size_mismatch="error")[0]  # full size: no mismatch


def test_image_size_mismatch_config_and_cropped_images(root, tmp_path):
  with pytest.raises(ValueError, match="image_size_mismatch must be 'rescale' or 'error', got 'x'"):
    _source(root, image_size_mismatch="x")
  small_root = _downscaled_copy(root, str(tmp_path / "half"), (18, 32))
  c = defaults.data()
  c.update(source="nuscenes", path=small_root, version="v1.0-test", views=("CAM_FRONT",),
           num_frames=2, fps=2, keyframes_only=True, image_height=9, image_width=16,
           max_boxes=4, val_fraction=0.0, image_size_mismatch="error", trajectory_points=1)
  with pytest.raises(records.BadRecordError, match=r"000.png is 32x18 but"):
    pipeline.make_dataset(c, split="train", seed=0)[0]
  # A crop (another aspect ratio) cannot be told from the calibration: an error in either mode.
  crop_root = _downscaled_copy(root, str(tmp_path / "crop"), (30, 64))
  with pytest.raises(ValueError, match=r"000.png is 64x30 .* aspect ratio"):
    _source(crop_root)[0]
