"""Synthetic exporter -> nuScenes reader: poses, calibrations, actions, the future keys
(trajectory, goal point, command) and boxes come back.

Two synthetic scenes (boston, singapore) are written by wm_jax/data/synthetic/export.py with the
6-camera rig, then read with wm_jax/data/nuscenes.py. Ground truth comes straight from the world
model (autopilot actions, integrated poses, actor boxes), not from the exported files.
"""

import json
import math
import os
import shutil

import numpy as np
from PIL import Image
import pytest

from wm_jax import defaults
from wm_jax.data import actions as actions_lib
from wm_jax.data import nuscenes, pipeline, records, schema, sources
from wm_jax.data.synthetic import ego as ego_lib
from wm_jax.data.synthetic import export, render, rig as rig_lib, world

from tests.data import projection

SIZE, SAMPLES, FPS, K = (32, 64), 4, 12.0, 6
FRAMES = (SAMPLES - 1) * export.KEYFRAME_EVERY + 1 - K  # a 13-frame clip, 6 future frames after it
VERSION = "v1.0-synthetic"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("nusc_syn"))
  scenes = [world.make_scene(3, "boston"), world.make_scene(4, "singapore")]
  export.write_nuscenes(root, scenes, rig="nuscenes6", image_size=SIZE, num_samples=SAMPLES,
                        version=VERSION, image_format="png", verbose=False)
  return root, scenes


def _truth(scene):
  """Poses, actions, boxes of the clip's frames; the future keys from K more frames of poses."""
  speed, steering = world.autopilot(scene, FRAMES + K, FPS)
  poses = render.ego_poses(scene, speed, steering, FPS)
  actions = ego_lib.make_actions(speed, steering, 1.0 / FPS)[:FRAMES]
  boxes = [render._to_ego(render.actor_boxes(scene, i / FPS), poses[i]) for i in range(FRAMES)]
  front = rig_lib.make_rig("nuscenes6", SIZE)
  future = actions_lib.future_actions(poses, num_points=K, front_intrinsics=front.intrinsics[0],
                                      front_extrinsics=front.extrinsics[0], image_size=SIZE)
  return poses[:FRAMES], actions, boxes, future


def _source(root, **kw):
  args = dict(version=VERSION, views=rig_lib.make_rig("nuscenes6", SIZE).channels,
              num_frames=FRAMES, fps=FPS, image_size=SIZE, max_boxes=64, trajectory_points=K)
  args.update(kw)
  return nuscenes.ClipSource(root, **args)


def _match(got, want_all, tol):
  """Actor row (of want_all, ego frame) nearest to box `got`; asserts it is within `tol` m."""
  d = np.linalg.norm(want_all[:, :3] - got[:3], axis=1)
  j = int(np.argmin(d))
  assert d[j] < tol, (got, want_all[j], d[j])
  return want_all[j]


def test_roundtrip_poses_calibrations_actions_boxes(exported):
  root, scenes = exported
  src = _source(root)
  assert len(src) == 2  # one 13-frame clip per scene
  rig = rig_lib.make_rig("nuscenes6", SIZE)
  for index, scene in enumerate(scenes):
    r = src[index]
    schema.validate(r, source="roundtrip", index=index)
    poses, actions, boxes, future = _truth(scene)
    np.testing.assert_allclose(r["ego_pose"], poses, atol=2e-4)
    np.testing.assert_allclose(r["intrinsics"], np.broadcast_to(rig.intrinsics, (FRAMES, 6, 3, 3)),
                               atol=1e-5)
    np.testing.assert_allclose(r["extrinsics"], np.broadcast_to(rig.extrinsics, (FRAMES, 6, 4, 4)),
                               atol=1e-5)
    np.testing.assert_array_equal(r["view_adjacency"], rig.view_adjacency)
    # CAN bus: speed exact, steering = wheel angle / 16, accel and yaw rate as the ego model says.
    # The messages (50 / 100 Hz) hold each frame's value; a frame time between two messages reads
    # a blend of that frame's and the next one's, so allow the change from frame to frame.
    step = np.abs(np.diff(actions, axis=0)).max(0)
    np.testing.assert_allclose(r["actions"][:, 0], actions[:, 0], atol=0.05 + step[0])
    np.testing.assert_allclose(r["actions"][:, 1], actions[:, 1], atol=2e-3 + step[1])
    np.testing.assert_allclose(r["actions"][:, 3], actions[:, 3], atol=2e-3 + step[3])
    # Future keys from the exported poses of the 6 frames after the clip, as the world drove.
    np.testing.assert_allclose(r["trajectory"], future["trajectory"], atol=2e-3)
    np.testing.assert_allclose(r["goal_point"], future["goal_point"], atol=2e-3)
    np.testing.assert_array_equal(r["command"], future["command"])
    tracks = {}
    for t in range(FRAMES):
      valid = r["boxes"][t][r["boxes"][t][:, 9] > 0]
      truth = boxes[t][boxes[t][:, 9] > 0]
      key = t % export.KEYFRAME_EVERY == 0
      if key:  # every actor the exporter annotated (within its range) is read back
        near = truth[np.hypot(*(truth[:, :2] - 0).T) < export.ANNOTATION_RANGE - 1]
        assert len(valid) >= len(near) > 0
      lo = t // export.KEYFRAME_EVERY * export.KEYFRAME_EVERY
      hi = min(lo + export.KEYFRAME_EVERY, FRAMES - 1)
      for b in valid:
        # Keyframes: exact. Sweeps: interpolated between keyframes 0.5 s apart (actors keep to
        # smooth paths: a few cm, 0.3 m when turning or braking); an actor annotated in one of
        # them only (entering or leaving the annotation range) moves at its annotation
        # velocity, or stands if it has none.
        row = np.flatnonzero(r["boxes"][t, :, 8] == b[8])[0]
        both = r["boxes"][lo, row, 9] > 0 and r["boxes"][hi, row, 9] > 0
        want = _match(b, truth, 2e-3 if key else 0.3 if both else 4.0)
        np.testing.assert_allclose(b[3:6], want[3:6], atol=1e-4)
        assert b[7] == want[7]  # class
        if key:
          assert abs((b[6] - want[6] + math.pi) % (2 * math.pi) - math.pi) < 1e-4
        assert tracks.setdefault(b[8], want[8]) == want[8]  # one reader track = one actor


def test_cameras_project_where_the_renderer_drew(exported):
  """Every actor the renderer drew in a camera lies inside its 3-D box projected with the
  reader's ego pose, extrinsics and intrinsics (projection.py)."""
  root, scenes = exported
  src = _source(root)
  checked = 0
  for index, scene in enumerate(scenes):
    speed, steering = world.autopilot(scene, FRAMES + K, FPS)
    hit = projection.first_frame_hits(scene, rig_lib.make_rig("nuscenes6", SIZE), speed,
                                      steering, FPS)
    checked += projection.check_boxes_project_onto_hits(scene, src[index], hit)
  assert checked >= 10, checked


def test_keyframes_only_and_location_split(exported):
  root, scenes = exported
  src = _source(root, keyframes_only=True, fps=2, num_frames=SAMPLES - 1, trajectory_points=1)
  poses = _truth(scenes[1])[0]
  np.testing.assert_allclose(src[1]["ego_pose"], poses[::export.KEYFRAME_EVERY], atol=2e-4)
  c = defaults.data()
  c.update(source="nuscenes", path=root, version=VERSION, views=("CAM_FRONT",), num_frames=3,
           fps=2, keyframes_only=True, image_height=16, image_width=32,
           val_locations=("singapore-onenorth",))
  train, val = sources.make_source(c, "train"), sources.make_source(c, "validation")
  assert [s["scene"]["name"] for s in train.scenes] == ["scene-0001"]
  assert [s["scene"]["name"] for s in val.scenes] == ["scene-0002"]


def _corrupt(src_root, dst, what):
  shutil.copytree(src_root, dst)
  meta = os.path.join(dst, VERSION)
  sd = json.load(open(f"{meta}/sample_data.json"))
  # The CAM_FRONT_RIGHT sweep 2 of scene-0002 (clip 1, frame 2).
  i, row = next((i, s) for i, s in enumerate(sd) if s["token"] == export.token(
      "scene-0002", "sample_data", "CAM_FRONT_RIGHT", 2))
  if what == "image":
    os.remove(os.path.join(dst, row["filename"]))
    return dst, row["filename"]
  if what == "json":
    text = open(f"{meta}/ego_pose.json").read()
    open(f"{meta}/ego_pose.json", "w").write(text[: len(text) * 2 // 3])
    return dst, "ego_pose.json"
  poses = json.load(open(f"{meta}/ego_pose.json"))
  j = next(j for j, p in enumerate(poses) if p["token"] == export.token(
      "scene-0002", "ego_pose", "CAM_FRONT", 2))
  poses[j]["rotation"][0] = float("nan")
  json.dump(poses, open(f"{meta}/ego_pose.json", "w"))
  return dst, rf"ego_pose.json\[{j}\]"


@pytest.mark.parametrize("what,pattern", [
    ("image", r"index=1: FileNotFoundError: nuScenes image .*{} is missing \(clip 1 frame 2 "
              r"view CAM_FRONT_RIGHT"),
    ("nan", r"index=1: ValueError: nuScenes .*{} \(token \w+\) has a non-finite"),
])
def test_corrupted_export_errors_name_file_and_index(exported, tmp_path, what, pattern):
  root, _ = _corrupt(exported[0], str(tmp_path / "bad"), what)[0], None
  root, name = _corrupt(exported[0], str(tmp_path / "bad2"), what)
  c = defaults.data()
  c.update(source="nuscenes", path=root, version=VERSION, num_frames=4, fps=FPS, clip_stride=13,
           views=("CAM_FRONT", "CAM_FRONT_RIGHT"), image_height=16, image_width=32,
           val_fraction=0.0, shuffle=False, num_epochs=1, drop_remainder=False)
  ds = pipeline.make_dataset(c, split="train")
  ds[0]  # scene-0001 is intact
  with pytest.raises(records.BadRecordError, match=pattern.format(name)):
    ds[1]
  c.skip_bad_records = True
  it = pipeline.make_iterator(c, batch_size=1, process_index=0, process_count=1)
  assert len(list(it)) == 1 and it.bad_records == 1


def test_truncated_table_names_the_file(exported, tmp_path):
  root, _ = _corrupt(exported[0], str(tmp_path / "bad"), "json")
  with pytest.raises(ValueError, match=rf"{VERSION}/ego_pose.json is not valid JSON"):
    _source(root)


def test_quarter_size_copy_reads_with_the_rigs_calibration(exported, tmp_path):
  """A 6-camera export whose images were shrunk to a quarter afterwards (tables untouched) reads
  back with the same intrinsics and layout as the full-size export, or raises in 'error' mode."""
  root = str(tmp_path / "small")
  shutil.copytree(exported[0], root)
  for dirpath, _, names in os.walk(root):
    for name in names:
      if name.endswith(".png"):
        path = os.path.join(dirpath, name)
        with Image.open(path) as im:
          im.convert("RGB").resize((SIZE[1] // 4, SIZE[0] // 4), Image.BILINEAR).save(path)
  out = (SIZE[0] // 4, SIZE[1] // 4)
  kw = dict(keyframes_only=True, fps=2, num_frames=SAMPLES - 1, image_size=out, trajectory_points=1)
  full = _source(exported[0], **kw)[0]
  small = _source(root, **kw)[0]
  rig = rig_lib.make_rig("nuscenes6", out)
  np.testing.assert_allclose(small["intrinsics"],
                             np.broadcast_to(rig.intrinsics, (SAMPLES - 1, 6, 3, 3)), atol=1e-5)
  np.testing.assert_array_equal(small["layout"], full["layout"])
  np.testing.assert_array_equal(small["view_adjacency"], rig.view_adjacency)
  with pytest.raises(ValueError, match=rf"is {SIZE[1] // 4}x{SIZE[0] // 4} but .*"
                                       rf"{SIZE[1]}x{SIZE[0]}"):
    _source(root, image_size_mismatch="error", **kw)[0]
