"""Writes synthetic scenes as a Waymo Open Dataset v2 split (parquet component tables).

    scenes = [world.make_scene(seed, domain) for seed, domain in [(0, "boston"), (1, "singapore")]]
    write_waymo("/tmp/waymo_syn", scenes, split="validation", rig="waymo5", image_size=(128, 192),
                num_frames=40)

Layout on disk (the released v2 layout, so data/waymo.py reads both):

  OUT/<split>/camera_image/<segment>.parquet        one row per frame and camera
  OUT/<split>/camera_calibration/<segment>.parquet  one row per camera
  OUT/<split>/vehicle_pose/<segment>.parquet        one row per frame

One scene is one segment, named like Waymo's (<19 digits>_<start>_000_<end>_000: digits from the
scene's domain and seed, start/end seconds of the run). Columns (names and types as the v2
components declare them; waymo.py's constants):
  camera_image        key.segment_context_name, key.frame_timestamp_micros (int64), key.camera_name
                      (int8), [CameraImageComponent].image (JPEG, quality `jpeg_quality`),
                      .pose.transform (world-from-vehicle at the frame), .pose_timestamp (float64
                      seconds, the frame's time)
  camera_calibration  key.segment_context_name, key.camera_name,
                      [CameraCalibrationComponent].intrinsic.{f_u, f_v, c_u, c_v, k1, k2, p1, p2,
                      k3} (the rig's pinhole intrinsics in pixels of the written images; no
                      distortion: all 0), .extrinsic.transform, .width, .height (int32),
                      .rolling_shutter_direction (int8, 5 = GLOBAL_SHUTTER: the renderer has none)
  vehicle_pose        key.segment_context_name, key.frame_timestamp_micros,
                      [VehiclePoseComponent].world_from_vehicle.transform
Transforms: 16 float64, a row-major 4x4 (fixed-size lists of 16, as the components declare).

Waymo's conventions: the vehicle frame is the synthetic ego frame (x forward, y left, z up, origin
at the rear axle on the ground) and the global frame the world; the extrinsic is
vehicle-from-camera in Waymo's camera axes (x forward along the optical axis, y left, z up):
rig extrinsic (ego-from-camera, OpenCV axes) @ inverse(waymo.WAYMO_FROM_OPENCV). Frames are
`fps` apart (Waymo: 10 Hz); all cameras of a frame share its timestamp, BASE_MICROS + an hour per
segment + i * 1e6 / fps. Camera names: a rig camera named as a Waymo camera (rig 'waymo5') keeps
its name; nuScenes' CAM_FRONT, CAM_FRONT_LEFT and CAM_FRONT_RIGHT (rigs 'front', 'front2',
'front3') become FRONT, FRONT_LEFT, FRONT_RIGHT; other cameras (CAM_BACK*) have no Waymo
counterpart and raise.

The ego drives its scene's plan (world.autopilot); images are render.render_clip's. No boxes are
written (the reader reads none: see waymo.py). The reader's clips need K (trajectory_points)
frames after them in the segment: choose num_frames to fit.
"""

from __future__ import annotations

import hashlib
import io
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from wm_jax.data import waymo
from wm_jax.data.synthetic import render, rig as rig_lib, world

BASE_MICROS = 1767225600000000  # 2026-01-01T00:00:00Z
NUSCENES_TO_WAYMO = {"CAM_FRONT": "FRONT", "CAM_FRONT_LEFT": "FRONT_LEFT",
                     "CAM_FRONT_RIGHT": "FRONT_RIGHT"}
GLOBAL_SHUTTER = 5  # RollingShutterReadOutDirection
ROW_GROUP_ROWS = 16  # camera_image rows per parquet row group (small, so clips read a few)
_TRANSFORM = pa.list_(pa.float64(), 16)


def waymo_camera(name: str) -> str:
  """The Waymo camera name a rig camera stands for (see the module docstring)."""
  if name in waymo.CAMERA_IDS:
    return name
  if name in NUSCENES_TO_WAYMO:
    return NUSCENES_TO_WAYMO[name]
  raise ValueError(f"rig camera {name!r} has no Waymo counterpart (Waymo's cameras: "
                   f"{list(waymo.CAMERA_IDS)}); use rig 'waymo5' or a front rig")


def segment_name(scene: world.SceneSpec, index: int, duration_s: float) -> str:
  """A Waymo-shaped segment name: 19 digits of the scene's domain and seed, start and end (s)."""
  digits = int(hashlib.md5(f"{scene.domain.name}/{scene.seed}".encode()).hexdigest(), 16)
  start = 20 * index
  return f"{digits % 10**19:019d}_{start}_000_{start + int(np.ceil(duration_s))}_000"


def _jpeg(image: np.ndarray, quality: int) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="JPEG", quality=quality)
  return buf.getvalue()


def _transforms(mats) -> pa.Array:
  return pa.array([np.asarray(m, np.float64).reshape(16).tolist() for m in mats], _TRANSFORM)


def write_waymo(out_dir, scenes, *, split: str = "validation", rig: str = "waymo5",
                image_size=(64, 96), num_frames: int = 20, fps: float = waymo.FRAME_HZ,
                jpeg_quality: int = 95, verbose: bool = False) -> dict:
  """Renders `scenes` (world.SceneSpec list) and writes them as Waymo v2 segments of `split`.

  Each scene gives one segment of `num_frames` frames `1/fps` apart, every camera of `rig`
  (rig.make_rig) rendered at `image_size` (H, W). Returns {'out_dir', 'split', 'segments': names,
  'cameras': Waymo names in rig order, 'num_frames', 'fps'}.
  """
  if split not in ("training", "validation", "testing"):
    raise ValueError(f"split must be 'training', 'validation' or 'testing', got {split!r}")
  if num_frames < 1 or not fps > 0:
    raise ValueError(f"need num_frames >= 1 and fps > 0, got {num_frames}, {fps}")
  h, w = (int(s) for s in image_size)
  the_rig = rig_lib.make_rig(rig, (h, w))
  cameras = [waymo_camera(c) for c in the_rig.channels]
  ids = [waymo.CAMERA_IDS[c] for c in cameras]
  for component in waymo.COMPONENTS:
    os.makedirs(os.path.join(out_dir, split, component), exist_ok=True)
  opencv_to_waymo = np.linalg.inv(waymo.WAYMO_FROM_OPENCV)
  names = []
  for si, scene in enumerate(scenes):
    name = segment_name(scene, si, num_frames / fps)
    names.append(name)
    if verbose:
      print(f"[export_waymo] {name}: domain={scene.domain.name} seed={scene.seed} {num_frames} "
            f"frames x {len(cameras)} cameras at {h}x{w}", flush=True)
    speed, steering = world.autopilot(scene, num_frames, fps)
    rec = render.render_clip(scene, the_rig, num_frames=num_frames, fps=fps, image_size=(h, w),
                             actions=np.stack([speed, steering], -1), layout=False)
    poses = render.ego_poses(scene, speed, steering, fps)  # float64, as the renderer's
    t0 = BASE_MICROS + si * 3_600_000_000
    micros = [t0 + int(round(i * 1e6 / fps)) for i in range(num_frames)]
    path = lambda component: os.path.join(out_dir, split, component, f"{name}.parquet")

    n = num_frames * len(cameras)
    pq.write_table(pa.table({
        waymo.SEGMENT: pa.array([name] * n, pa.string()),
        waymo.TIMESTAMP: pa.array([micros[i] for i in range(num_frames) for _ in ids], pa.int64()),
        waymo.CAMERA: pa.array([c for _ in range(num_frames) for c in ids], pa.int8()),
        waymo.IMAGE: pa.array([_jpeg(rec["frames"][i, v], jpeg_quality)
                               for i in range(num_frames) for v in range(len(ids))], pa.binary()),
        waymo.IMAGE_POSE: _transforms([poses[i] for i in range(num_frames) for _ in ids]),
        waymo.IMAGE_POSE_TIMESTAMP: pa.array([micros[i] * 1e-6 for i in range(num_frames)
                                              for _ in ids], pa.float64()),
    }), path("camera_image"), row_group_size=ROW_GROUP_ROWS)

    k = the_rig.intrinsics.astype(np.float64)
    calibration = {
        waymo.SEGMENT: pa.array([name] * len(ids), pa.string()),
        waymo.CAMERA: pa.array(ids, pa.int8()),
    }
    values = {"f_u": k[:, 0, 0], "f_v": k[:, 1, 1], "c_u": k[:, 0, 2], "c_v": k[:, 1, 2]}
    for field, column in zip(waymo.INTRINSIC_FIELDS, waymo.INTRINSIC):
      calibration[column] = pa.array(values.get(field, np.zeros(len(ids))), pa.float64())
    calibration[waymo.EXTRINSIC] = _transforms(e.astype(np.float64) @ opencv_to_waymo
                                               for e in the_rig.extrinsics)
    calibration[waymo.WIDTH] = pa.array([w] * len(ids), pa.int32())
    calibration[waymo.HEIGHT] = pa.array([h] * len(ids), pa.int32())
    calibration[waymo.ROLLING_SHUTTER] = pa.array([GLOBAL_SHUTTER] * len(ids), pa.int8())
    pq.write_table(pa.table(calibration), path("camera_calibration"))

    pq.write_table(pa.table({
        waymo.SEGMENT: pa.array([name] * num_frames, pa.string()),
        waymo.TIMESTAMP: pa.array(micros, pa.int64()),
        waymo.VEHICLE_POSE: _transforms(poses),
    }), path("vehicle_pose"))
  return {"out_dir": str(out_dir), "split": split, "segments": names, "cameras": cameras,
          "num_frames": int(num_frames), "fps": float(fps)}
