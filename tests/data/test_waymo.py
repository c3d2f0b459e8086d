"""Synthetic exporter (synthetic/export_waymo.py) -> Waymo v2 reader (data/waymo.py): frames, poses,
calibrations (Waymo's camera axes converted to OpenCV's), actions and the future keys come back;
the reader's cameras project the world where the renderer drew it; bad tables raise naming the
file and the row, or are skipped and counted.

Two scenes (boston 7 turns, singapore 1 changes lane) are written with the 5-camera 'waymo5' rig,
14 frames at 10 Hz. Ground truth comes from the world model (autopilot, integrated poses, the rig),
not from the written files.
"""

import os
import re
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from wm_jax import defaults
from wm_jax.data import actions as actions_lib
from wm_jax.data import layout_render, pipeline, records, schema, sources, waymo
from wm_jax.data.synthetic import ego as ego_lib
from wm_jax.data.synthetic import export_waymo, render, rig as rig_lib, world

from tests.data import projection

SIZE, SEGMENT_FRAMES, FPS, K = (48, 72), 14, 10.0, 6
FRAMES = SEGMENT_FRAMES - K  # one 8-frame clip per segment, 6 future frames after it
SPLIT = "validation"
JPEG_MEAN_TOL = 6.0  # grey levels: mean |read - rendered| of a JPEG (quality 95, PIL's 4:2:0
                     # chroma) of 48x72 images of saturated synthetic colours, per camera


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("waymo_syn"))
  scenes = [world.make_scene(7, "boston"), world.make_scene(1, "singapore")]
  summary = export_waymo.write_waymo(root, scenes, split=SPLIT, rig="waymo5", image_size=SIZE,
                                     num_frames=SEGMENT_FRAMES, fps=FPS)
  return root, scenes, summary


def _truth(scene):
  """Speed/steering, world-from-ego poses [14,4,4], actions [14,4] as the world drove."""
  speed, steering = world.autopilot(scene, SEGMENT_FRAMES, FPS)
  poses = render.ego_poses(scene, speed, steering, FPS)
  return speed, steering, poses, ego_lib.make_actions(speed, steering, 1.0 / FPS)


def _source(root, **kw):
  args = dict(split=SPLIT, views=waymo.CAMERA_RING, num_frames=FRAMES, fps=FPS, image_size=SIZE,
              trajectory_points=K)
  args.update(kw)
  return waymo.ClipSource(root, **args)


def test_roundtrip_frames_poses_calibration_actions(exported):
  root, scenes, summary = exported
  assert summary["cameras"] == list(waymo.CAMERA_RING)  # the rig's order is the reader's ring
  src = _source(root)
  assert len(src) == 2 and src.clips == [(0, 0), (1, 0)]
  assert [s["name"] for s in src.segments] == sorted(summary["segments"])
  rig = rig_lib.make_rig("waymo5", SIZE)
  for index, name in enumerate(sorted(summary["segments"])):
    scene = scenes[summary["segments"].index(name)]
    r = src[index]
    schema.validate(r, source="waymo roundtrip", index=index)
    assert "boxes" not in r and "layout" not in r  # camera_box has no 3-D boxes (waymo.py)
    speed, steering, poses, actions = _truth(scene)
    rendered = render.render_clip(scene, rig, num_frames=FRAMES, fps=FPS, image_size=SIZE,
                                  actions=np.stack([speed, steering], -1), layout=False)
    diff = np.abs(r["frames"].astype(np.int16) - rendered["frames"])
    assert r["frames"].shape == (FRAMES, 5, *SIZE, 3)
    assert diff.mean(axis=(0, 2, 3, 4)).max() < JPEG_MEAN_TOL, diff.mean(axis=(0, 2, 3, 4))
    # every camera in its slot: each read view is nearest to its own rendered view
    cross = np.abs(r["frames"][:, :, None].astype(np.int16)
                   - rendered["frames"][:, None]).mean(axis=(0, 3, 4, 5))  # [V read, V rendered]
    np.testing.assert_array_equal(np.argmin(cross, axis=1), np.arange(5))
    np.testing.assert_allclose(r["ego_pose"], poses[:FRAMES], atol=1e-5)
    np.testing.assert_allclose(r["intrinsics"], np.broadcast_to(rig.intrinsics, (FRAMES, 5, 3, 3)),
                               atol=1e-5)
    np.testing.assert_allclose(r["extrinsics"], np.broadcast_to(rig.extrinsics, (FRAMES, 5, 4, 4)),
                               atol=1e-6)
    np.testing.assert_array_equal(r["view_adjacency"], rig.view_adjacency)
    assert float(r["fps"]) == FPS
    # Actions from finite differences of the 10 Hz poses (nuscenes.pose_actions): central
    # differences average the two frames around t, so allow the change from frame to frame
    # (twice that for accel, a second difference).
    step = np.abs(np.diff(actions, axis=0)).max(0)
    np.testing.assert_allclose(r["actions"][:, 0], actions[:FRAMES, 0], atol=0.01 + step[0])
    np.testing.assert_allclose(r["actions"][:, 1], actions[:FRAMES, 1], atol=1e-3 + step[1])
    np.testing.assert_allclose(r["actions"][:, 2], actions[:FRAMES, 2], atol=0.01 + 2 * step[2])
    np.testing.assert_allclose(r["actions"][:, 3], actions[:FRAMES, 3], atol=1e-3 + step[3])
    future = actions_lib.future_actions(poses, num_points=K, front_intrinsics=rig.intrinsics[0],
                                        front_extrinsics=rig.extrinsics[0], image_size=SIZE)
    np.testing.assert_allclose(r["trajectory"], future["trajectory"], atol=1e-4)
    np.testing.assert_allclose(r["goal_point"], future["goal_point"], atol=1e-5)
    np.testing.assert_array_equal(r["command"], future["command"])
  assert np.abs(_source(root)[0]["actions"][:, 1]).max() > 0.1  # the turn: steering is tested


def test_written_tables_follow_waymo_conventions(exported):
  """The files as Waymo writes them, read with plain pyarrow: column types, 10 Hz microsecond
  timestamps, extrinsics in Waymo's camera axes (FRONT looks along vehicle x with y left and z up,
  SIDE_LEFT along vehicle y), and Waymo's projection u = f_u * -y/x + c_u, v = f_v * -z/x + c_v
  of the written calibration equals the reader's OpenCV K @ (E^-1 p)."""
  root, _, summary = exported
  seg = summary["segments"][0]
  read = lambda component: pq.read_table(os.path.join(root, SPLIT, component, f"{seg}.parquet"))
  images, calib, poses = read("camera_image"), read("camera_calibration"), read("vehicle_pose")
  assert images.schema.field(waymo.CAMERA).type == pa.int8()
  assert images.schema.field(waymo.TIMESTAMP).type == pa.int64()
  assert calib.schema.field(waymo.EXTRINSIC).type == pa.list_(pa.float64(), 16)
  assert images.num_rows == SEGMENT_FRAMES * 5 and poses.num_rows == SEGMENT_FRAMES
  np.testing.assert_array_equal(np.diff(poses.column(waymo.TIMESTAMP).to_numpy()), 100000)
  cams = calib.column(waymo.CAMERA).to_pylist()
  ext = {c: np.asarray(e).reshape(4, 4) for c, e in zip(cams, calib.column(waymo.EXTRINSIC)
                                                        .to_pylist())}
  np.testing.assert_allclose(ext[waymo.CAMERA_IDS["FRONT"]][:3, :3], np.eye(3), atol=1e-9)
  np.testing.assert_allclose(ext[waymo.CAMERA_IDS["SIDE_LEFT"]][:3, 0], [0, 1, 0], atol=1e-9)
  row = cams.index(waymo.CAMERA_IDS["FRONT_LEFT"])
  f_u, f_v, c_u, c_v = (calib.column(c)[row].as_py() for c in waymo.INTRINSIC[:4])
  points = np.array([[20.0, 12.0, 1.0], [8.0, 5.0, 0.5], [30.0, 25.0, 4.0]])  # vehicle frame
  cam = (points - ext[waymo.CAMERA_IDS["FRONT_LEFT"]][:3, 3]) @ \
      ext[waymo.CAMERA_IDS["FRONT_LEFT"]][:3, :3]
  waymo_uv = np.stack([f_u * -cam[:, 1] / cam[:, 0] + c_u, f_v * -cam[:, 2] / cam[:, 0] + c_v], 1)
  r = _source(root)[sorted(summary["segments"]).index(seg)]
  v = waymo.CAMERA_RING.index("FRONT_LEFT")
  e, k = r["extrinsics"][0, v].astype(np.float64), r["intrinsics"][0, v].astype(np.float64)
  uvw = (points - e[:3, 3]) @ e[:3, :3] @ k.T
  np.testing.assert_allclose(uvw[:, :2] / uvw[:, 2:], waymo_uv, atol=1e-3)
  assert (waymo_uv > 0).all() and (waymo_uv < [SIZE[1], SIZE[0]]).all()  # inside the image


def test_resample_resize_image_pose_and_config(exported):
  """5 Hz from 10 Hz, half-size images (intrinsics scaled), the image pose instead of
  vehicle_pose, and the source built from config.data through sources.make_source."""
  root, scenes, summary = exported
  small = (SIZE[0] // 2, SIZE[1] // 2)
  src = _source(root, views=("FRONT", "SIDE_LEFT"), fps=5.0, num_frames=3, trajectory_points=2,
                image_size=small, pose_source="camera_image")
  assert len(src) == 2  # 7 frames at 5 Hz a segment: one clip of 3 + 2 future frames
  rig = rig_lib.make_rig("waymo5", small)
  poses = _truth(scenes[summary["segments"].index(src.segments[0]["name"])])[2]
  r = src[0]
  np.testing.assert_allclose(r["ego_pose"], poses[0:6:2], atol=1e-5)
  np.testing.assert_allclose(r["intrinsics"][0], rig.intrinsics[[0, 3]], atol=1e-4)
  assert r["frames"].shape == (3, 2, *small, 3) and float(r["fps"]) == 5.0
  with pytest.raises(ValueError, match=r"fps=20.0 exceeds the FRONT frame rate 10.00 Hz"):
    _source(root, fps=20.0)
  with pytest.raises(ValueError, match=r"unknown Waymo camera\(s\) \['CAM_FRONT'\]"):
    _source(root, views=("CAM_FRONT",))
  c = defaults.data()
  c.update(source="waymo", path=root, views=("FRONT",), num_frames=FRAMES, fps=FPS,
           image_height=SIZE[0], image_width=SIZE[1], trajectory_points=K)
  val = sources.make_source(c, "val")
  assert len(val) == 2 and val.name == f"waymo:{root}/validation"
  with pytest.raises(FileNotFoundError, match=r"training/camera_image does not exist"):
    sources.make_source(c, "train")


def test_cameras_project_where_the_renderer_drew(exported):
  """Every actor the renderer drew in a camera lies inside its 3-D box projected with the
  reader's ego pose, extrinsics and intrinsics (projection.py)."""
  root, scenes, summary = exported
  src = _source(root)
  checked = 0
  for index, seg in enumerate(src.segments):
    scene = scenes[summary["segments"].index(seg["name"])]
    speed, steering, _, _ = _truth(scene)
    hit = projection.first_frame_hits(scene, rig_lib.make_rig("waymo5", SIZE), speed, steering,
                                      FPS)
    checked += projection.check_boxes_project_onto_hits(scene, src[index], hit)
  assert checked >= 10, checked


# --------------------------------------------------------------------------------------------
# bad input


def _rewrite(path, change):
  """Rewrites a parquet file with `change(table) -> table`."""
  pq.write_table(change(pq.read_table(path)), path)


def _set_column(table, name, values, kind):
  return table.set_column(table.schema.get_field_index(name), name, pa.array(values, kind))


def _corrupt(src_root, dst, what):
  """Copies the export and breaks segment 1 (sorted order); returns (root, file, pattern)."""
  shutil.copytree(src_root, dst)
  seg = sorted(os.listdir(os.path.join(dst, SPLIT, "camera_image")))[1][:-len(".parquet")]
  path = lambda component: os.path.join(dst, SPLIT, component, f"{seg}.parquet")
  if what == "truncated":
    data = open(path("camera_calibration"), "rb").read()
    open(path("camera_calibration"), "wb").write(data[:len(data) // 2])
    return dst, path("camera_calibration"), r"cannot be read as parquet \(truncated or corrupt\?\)"
  if what == "column":
    _rewrite(path("vehicle_pose"), lambda t: t.drop_columns([waymo.VEHICLE_POSE]))
    return dst, path("vehicle_pose"), r"has no column '\[VehiclePoseComponent\]\.world_from_vehicle"
  if what == "calibration":
    _rewrite(path("camera_calibration"), lambda t: t.filter(pc.not_equal(
        t.column(waymo.CAMERA), waymo.CAMERA_IDS["SIDE_LEFT"])))
    return dst, path("camera_calibration"), (rf"has no calibration row for camera SIDE_LEFT "
                                             rf"\(key.camera_name 4\) of segment {seg}")
  if what == "nan_pose":
    def nan_row(t):
      poses = t.column(waymo.VEHICLE_POSE).to_pylist()
      poses[3] = [float("nan")] * 16
      return _set_column(t, waymo.VEHICLE_POSE, poses, pa.list_(pa.float64(), 16))
    _rewrite(path("vehicle_pose"), nan_row)
    return dst, path("vehicle_pose"), (r"row 3 \(segment \w+, frame timestamp \d+; clip 1 of "
                                       r".*\): \[VehiclePoseComponent\]\.world_from_vehicle"
                                       r"\.transform is not finite")
  assert what == "jpeg"
  table = pq.read_table(path("camera_image"))
  row = next(i for i, (c, t) in enumerate(zip(table.column(waymo.CAMERA).to_pylist(),
                                              table.column(waymo.TIMESTAMP).to_pylist()))
             if c == waymo.CAMERA_IDS["SIDE_RIGHT"] and t == min(table.column(waymo.TIMESTAMP)
                                                                  .to_pylist()) + 200000)
  images = table.column(waymo.IMAGE).to_pylist()
  images[row] = images[row][:40] + b"\x00" * 64  # a JPEG header, then garbage
  pq.write_table(_set_column(table, waymo.IMAGE, images, pa.binary()), path("camera_image"),
                 row_group_size=export_waymo.ROW_GROUP_ROWS)
  return dst, path("camera_image"), (rf"row {row} \(camera SIDE_RIGHT, segment {seg}, frame "
                                     r"timestamp \d+; clip 1 frame 2 of .*\): the image \(104 "
                                     r"bytes\) cannot be decoded as JPEG")


def _config(root, skip):
  c = defaults.data()
  c.update(source="waymo", path=root, views=waymo.CAMERA_RING, num_frames=FRAMES, fps=FPS,
           image_height=SIZE[0], image_width=SIZE[1], trajectory_points=K, shuffle=False,
           num_epochs=1, drop_remainder=False, skip_bad_records=skip)
  return c


def _skipped_and_counted(root):
  it = pipeline.make_iterator(_config(root, True), batch_size=1, process_index=0,
                              process_count=1, split=SPLIT)
  batches = list(it)
  assert len(batches) == 1 and it.bad_records == 1
  return it.bad_record_notes[0]


@pytest.mark.parametrize("what", ["truncated", "column", "calibration"])
def test_bad_segment_raises_naming_file_or_is_skipped(exported, tmp_path, what):
  """A segment whose tables cannot be read raises when the source is built; with the skip option
  it is one bad record after the clips, skipped and counted by the pipeline."""
  root, file, pattern = _corrupt(exported[0], str(tmp_path / "bad"), what)
  with pytest.raises(ValueError, match=pattern) as e:
    _source(root)
  assert file in str(e.value)
  src = _source(root, skip_bad_segments=True)
  assert len(src) == 2 and len(src.clips) == 1 and src.bad_segments[0][0] in file
  schema.validate(src[0])
  with pytest.raises(ValueError, match=pattern):
    src[1]
  note = _skipped_and_counted(root)
  assert "index=1" in note and file in note


@pytest.mark.parametrize("what", ["nan_pose", "jpeg"])
def test_bad_clip_raises_naming_file_and_record(exported, tmp_path, what):
  """A non-finite pose or an undecodable JPEG fails the clip that reads it, naming the file, the
  row and the clip; the other segment's clip reads; with skip_bad_records it is counted."""
  root, file, pattern = _corrupt(exported[0], str(tmp_path / "bad"), what)
  src = _source(root)
  assert len(src) == 2
  schema.validate(src[0])
  with pytest.raises(ValueError, match=rf"Waymo file {re.escape(file)} {pattern}"):
    src[1]
  checked = records.CheckedSource(src)
  with pytest.raises(records.BadRecordError, match=r"index=1: ValueError: Waymo file"):
    checked[1]
  note = _skipped_and_counted(root)
  assert "index=1" in note and file in note
