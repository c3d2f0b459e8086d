"""Waymo Open Dataset v2 reader (parquet component tables read with pyarrow; no TensorFlow, no
waymo-open-dataset package) -> clips per data/schema.py.

    source = ClipSource('/data/waymo_v2', split='validation', views=('FRONT',), num_frames=25,
                        fps=10, image_size=(576, 1024))
    record = source[i]

Layout on disk (as released): ROOT/<split>/<component>/<segment_context_name>.parquet with split
training | validation | testing (SPLITS maps 'train', 'val', 'test' to them). A segment (a run of
about 20 s, ~199 frames at 10 Hz) is a camera_image file; its other components are the files of
the same name in their folders:
  camera_image        one row per frame and camera
  camera_calibration  one row per camera
  vehicle_pose        one row per frame (read with pose_source='vehicle_pose', the default)

Columns read: the v2 component dataclasses flattened (waymo_open_dataset/v2/component.py and
perception/{base,camera_image,context,pose}.py): key fields as 'key.<field>', component fields as
'[<Component class>].<field path>'.
  camera_image        key.segment_context_name (string), key.frame_timestamp_micros (int64,
                      microseconds; all cameras of a frame carry the frame's timestamp),
                      key.camera_name (int8), [CameraImageComponent].image (JPEG bytes) and, with
                      pose_source='camera_image', [CameraImageComponent].pose.transform
                      (world-from-vehicle at the image's pose_timestamp)
  camera_calibration  key.segment_context_name, key.camera_name,
                      [CameraCalibrationComponent].intrinsic.{f_u, f_v, c_u, c_v, k1, k2, p1, p2,
                      k3}, .extrinsic.transform (vehicle-from-camera), .width, .height (int32: the
                      image size the intrinsics are for)
  vehicle_pose        key.segment_context_name, key.frame_timestamp_micros,
                      [VehiclePoseComponent].world_from_vehicle.transform
A transform is 16 numbers, a row-major 4x4 with p_to = T @ p_from: float64 as the components
declare them, or float32 (as the package's own test data stores them). key.camera_name is the
CameraName enum, CAMERA_IDS: FRONT 1, FRONT_LEFT 2, FRONT_RIGHT 3, SIDE_LEFT 4, SIDE_RIGHT 5
(0 UNKNOWN); the name as a string reads too. Other columns are not read.

Boxes: camera_box holds 2-D image boxes (no depth, size or heading), which the batch contract's
3-D boxes cannot take, so it is not read; Waymo's 3-D labels (lidar_box) are not read either.
Records have no `boxes` and no `layout`.

Conventions. Waymo's vehicle frame (x forward, y left, z up, as the ego frame of data/actions.py)
is the records' ego frame as it is (the origin stays Waymo's), and ego_pose = world_from_vehicle.
Waymo's camera frame has x along the optical axis out of the lens, y left and z up; records use
OpenCV camera axes (x right, y down, z forward), so

  extrinsics = vehicle_from_camera @ WAYMO_FROM_OPENCV,   WAYMO_FROM_OPENCV = [[ 0,  0, 1, 0],
                                                                             [-1,  0, 0, 0],
                                                                             [ 0, -1, 0, 0],
                                                                             [ 0,  0, 0, 1]]

(Waymo x = OpenCV z, Waymo y = -OpenCV x, Waymo z = -OpenCV y). Waymo's camera model maps a camera
point (x, y, z) to (u, v) = (f_u * -y / x + c_u, f_v * -z / x + c_v) (before distortion) on an
image spanning [0, width) x [0, height), its middle at width / 2: that is
K = [[f_u, 0, c_u], [0, f_v, c_v], [0, 0, 1]] applied to the OpenCV point, in the continuous pixel
frame of the batch contract (pixel (u, v) centred at (u + 0.5, v + 0.5), synthetic/rig.py), so no
half-pixel shift. K is then adjusted for the resize + centre crop (video.resize_crop,
video.crop_intrinsics). The lens distortion (k1, k2, p1, p2, k3; OpenCV's model) must be finite
but is not applied: images stay as recorded and K is their pinhole part, so points away from the
image centre are off by the distortion. An image of another size than its calibration's
width x height (a downscaled copy) has K scaled by its size over that size
(image_size_mismatch='rescale', the default) or raises ('error'); another aspect ratio (a crop)
always raises.

Clips. The first view's images (its camera_image rows, by timestamp) are the segment's timeline,
10 Hz; it is resampled to `fps` by taking the frame nearest to t0 + k / fps (fps above the
segment's frame rate raises). Every other view needs an image at the same frame timestamp. Clips
are windows of `num_frames` timeline frames every `clip_stride` frames (default: non-overlapping),
only where the K = `trajectory_points` timeline frames after the window are in the segment too, as
in nuscenes.py: a segment of n timeline frames gives clips starting at 0, clip_stride, ... up to
n - num_frames - K. Segments come in sorted name order.

Per frame t and view v (views: any of CAMERA_IDS in the order given; CAMERA_RING is all five
clockwise from the front):
  frames      the JPEG decoded, resized to cover image_size and centre-cropped [T,V,H,W,3] uint8
  intrinsics  K above [T,V,3,3]; extrinsics ego-from-camera in OpenCV axes [T,V,4,4]
  ego_pose    world-from-ego [T,4,4]: the vehicle_pose row of the frame's timestamp, or with
              pose_source='camera_image' the first view's image pose
  actions     nuscenes.pose_actions of the segment's 10 Hz ego poses (finite differences; steering
              = atan(wheelbase * yaw_rate / speed), 0 below 0.5 m/s), speed clipped at 0. Only the
              poses from two frames before a clip's first frame to two after its last enter (the
              values are those of the whole sequence), so a bad pose elsewhere does not reach it.
              `wheelbase` defaults to data/actions.py's; Waymo's vehicles are about 3 m.
  trajectory, goal_point, command
              data/actions.py future_actions of the clip's ego poses and the K timeline frames
              after them, projected with view 0
  fps, view_adjacency  as nuscenes.py: the clip's rate; cameras whose horizontal fields of view
              overlap (or the same camera)
A clip reads only the image column of the row groups that hold its images.

Errors name the file, the row and the value at fault. Errors of a segment, raised when the source
is built: a file that is missing, truncated or not parquet, a missing column (named), a null key,
a row of another segment, two rows for one (frame, camera), a view without a calibration row or
without an image at a timeline frame, a non-finite, non-positive or non-rigid calibration, a frame
without a vehicle_pose row, a transform that is not 16 numbers. With skip_bad_segments
(config.data.skip_bad_records) such a segment is left out instead and stands as one index after
the clips whose reading raises its error, so the pipeline skips and counts it like any other bad
record (records.py, bad_records.py), as video.py does with unreadable files. Errors of a clip,
raised when it is read (records.CheckedSource skips and counts them under skip_bad_records): a
non-finite or non-rigid ego pose, an image missing from its row or that cannot be decoded.
"""

from __future__ import annotations

import io
import logging
import math
import os
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from wm_jax.data import actions as actions_lib
from wm_jax.data import nuscenes, records, video

SPLITS = {"training": "training", "train": "training", "validation": "validation",
          "val": "validation", "testing": "testing", "test": "testing"}
COMPONENTS = ("camera_image", "camera_calibration", "vehicle_pose")
CAMERA_IDS = {"FRONT": 1, "FRONT_LEFT": 2, "FRONT_RIGHT": 3, "SIDE_LEFT": 4, "SIDE_RIGHT": 5}
CAMERA_RING = ("FRONT", "FRONT_RIGHT", "SIDE_RIGHT", "SIDE_LEFT", "FRONT_LEFT")  # clockwise
POSE_SOURCES = ("vehicle_pose", "camera_image")
FRAME_HZ = 10.0  # Waymo's camera and pose rate

SEGMENT = "key.segment_context_name"
TIMESTAMP = "key.frame_timestamp_micros"
CAMERA = "key.camera_name"
IMAGE = "[CameraImageComponent].image"
IMAGE_POSE = "[CameraImageComponent].pose.transform"
IMAGE_POSE_TIMESTAMP = "[CameraImageComponent].pose_timestamp"
_CALIBRATION = "[CameraCalibrationComponent]"
INTRINSIC_FIELDS = ("f_u", "f_v", "c_u", "c_v", "k1", "k2", "p1", "p2", "k3")
INTRINSIC = tuple(f"{_CALIBRATION}.intrinsic.{k}" for k in INTRINSIC_FIELDS)
EXTRINSIC = f"{_CALIBRATION}.extrinsic.transform"
WIDTH, HEIGHT = f"{_CALIBRATION}.width", f"{_CALIBRATION}.height"
ROLLING_SHUTTER = f"{_CALIBRATION}.rolling_shutter_direction"
VEHICLE_POSE = "[VehiclePoseComponent].world_from_vehicle.transform"

WAYMO_FROM_OPENCV = np.array([[0.0, 0.0, 1.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0],
                              [0.0, 0.0, 0.0, 1.0]])


# --------------------------------------------------------------------------------------------
# parquet


def open_parquet(path: str) -> pq.ParquetFile:
  """The parquet file at `path`; errors name it (missing, truncated, not parquet)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"Waymo file {path} does not exist")
  try:
    return pq.ParquetFile(path)
  except (OSError, pa.ArrowException) as e:
    raise ValueError(f"Waymo file {path} cannot be read as parquet (truncated or corrupt?): "
                     f"{e}") from e


def read_columns(path: str, columns: Sequence[str], row_groups=None) -> pa.Table:
  """`columns` of the file (of `row_groups` only, if given); a missing column raises naming it."""
  f = open_parquet(path)
  names = f.schema_arrow.names
  missing = [c for c in columns if c not in names]
  if missing:
    raise ValueError(f"Waymo file {path} has no column {missing[0]!r}"
                     + (f" (nor {missing[1:]})" if len(missing) > 1 else "")
                     + f"; its columns: {names}")
  try:
    if row_groups is None:
      table = f.read(columns=list(columns))
    else:
      table = f.read_row_groups(list(row_groups), columns=list(columns))
  except (OSError, pa.ArrowException) as e:
    raise ValueError(f"Waymo file {path} cannot be read (truncated or corrupt?): {e}") from e
  for c in columns:
    if c.startswith("key.") and table.column(c).null_count:
      row = int(np.flatnonzero(table.column(c).is_null().to_numpy(zero_copy_only=False))[0])
      raise ValueError(f"Waymo file {path} row {row}: key column {c!r} is null")
  return table


def camera_id(value) -> int:
  """key.camera_name as the CameraName number (an int, or the enum's name as a string)."""
  if isinstance(value, str):
    return CAMERA_IDS.get(value, int(value) if value.isdigit() else -1)
  return int(value)


def matrices(table: pa.Table, column: str, path: str) -> np.ndarray:
  """[N,4,4] float64 of a transform column (16 numbers a row, row-major); a null or another
  length raises naming the row. Null numbers read as NaN (callers check finiteness)."""
  out = np.empty((table.num_rows, 4, 4))
  for i, value in enumerate(table.column(column).to_pylist()):
    if value is None or len(value) != 16:
      raise ValueError(f"Waymo file {path} row {i}: {column} must hold 16 numbers (a row-major "
                       f"4x4), got {'null' if value is None else f'{len(value)} numbers'}")
    out[i] = np.asarray(value, np.float64).reshape(4, 4)
  return out


def rigid_problem(m: np.ndarray) -> str | None:
  """Why a 4x4 is not a finite rigid transform, or None."""
  if not np.isfinite(m).all():
    return f"is not finite: {m.reshape(-1).tolist()}"
  r = m[:3, :3]
  if (np.abs(r.T @ r - np.eye(3)).max() > 1e-3 or np.linalg.det(r) < 0
      or np.abs(m[3] - [0.0, 0.0, 0.0, 1.0]).max() > 1e-6):
    return f"is not a rigid transform (rotation + translation): {m.reshape(-1).tolist()}"
  return None


# --------------------------------------------------------------------------------------------
# clips


class ClipSource:
  """Random-access clips of `num_frames` frames from `views` cameras of a Waymo v2 split."""

  def __init__(self, root: str, *, split: str = "validation", views: Sequence[str] = ("FRONT",),
               num_frames: int = 8, fps: float = FRAME_HZ, image_size: tuple[int, int] = (64, 128),
               clip_stride: int = 0, trajectory_points: int = 6,
               wheelbase: float = actions_lib.WHEELBASE, pose_source: str = "vehicle_pose",
               image_size_mismatch: str = "rescale", segments: Sequence[str] | None = None,
               skip_bad_segments: bool = False, name: str | None = None):
    if split not in SPLITS:
      raise ValueError(f"unknown Waymo split {split!r}; use one of {sorted(SPLITS)}")
    if not views:
      raise ValueError("views must name at least one Waymo camera")
    unknown = [v for v in views if v not in CAMERA_IDS]
    if unknown:
      raise ValueError(f"unknown Waymo camera(s) {unknown}; cameras are {list(CAMERA_IDS)} "
                       f"(e.g. views=('FRONT',) or waymo.CAMERA_RING)")
    if len(set(views)) != len(views):
      raise ValueError(f"views {list(views)} name a camera twice")
    if pose_source not in POSE_SOURCES:
      raise ValueError(f"pose_source must be one of {POSE_SOURCES}, got {pose_source!r}")
    if image_size_mismatch not in nuscenes.IMAGE_SIZE_MISMATCH:
      raise ValueError(f"image_size_mismatch must be one of {nuscenes.IMAGE_SIZE_MISMATCH}, got "
                       f"{image_size_mismatch!r}")
    if int(num_frames) < 1 or not fps > 0 or int(trajectory_points) < 1:
      raise ValueError(f"need num_frames >= 1, fps > 0 and trajectory_points >= 1, got "
                       f"{num_frames}, {fps}, {trajectory_points}")
    self.root, self.split = root, SPLITS[split]
    self.dir = os.path.join(root, self.split)
    self.views = tuple(views)
    self.num_frames, self.fps = int(num_frames), float(fps)
    self.image_size = tuple(int(s) for s in image_size)
    self.clip_stride = int(clip_stride) or self.num_frames
    self.trajectory_points = int(trajectory_points)
    self.wheelbase, self.pose_source = float(wheelbase), pose_source
    self.image_size_mismatch = image_size_mismatch
    self.name = name or f"waymo:{self.dir}"

    image_dir = os.path.join(self.dir, "camera_image")
    if not os.path.isdir(image_dir):
      raise FileNotFoundError(f"Waymo folder {image_dir} does not exist (layout: "
                              "ROOT/<split>/<component>/<segment>.parquet)")
    names = sorted(f[:-len(".parquet")] for f in os.listdir(image_dir) if f.endswith(".parquet"))
    if segments is not None:
      missing = sorted(set(segments) - set(names))
      if missing:
        raise ValueError(f"segments {missing} have no file in {image_dir}")
      names = [n for n in names if n in set(segments)]
    if not names:
      raise ValueError(f"no segments (*.parquet) in {image_dir}")
    self.segments = []  # per readable segment: see _segment
    self.bad_segments = []  # (segment name, message) of segments left out (skip_bad_segments)
    self.clips = []  # (segment index, start position on its timeline)
    for seg in names:
      try:
        info = self._segment(seg)
      except (OSError, ValueError) as e:
        if not skip_bad_segments:
          raise
        logging.warning("skipping Waymo segment %s: %s", seg, e)
        self.bad_segments.append((seg, str(e)))
        continue
      self._timeline(info)
      si = len(self.segments)
      self.segments.append(info)
      last = len(info["timeline"]) - self.num_frames - self.trajectory_points
      for start in range(0, last + 1, self.clip_stride):
        self.clips.append((si, start))
    if not self.segments:
      raise ValueError(f"no readable Waymo segments in {self.dir}; unreadable: "
                       f"{[s for s, _ in self.bad_segments]}")

  @classmethod
  def from_config(cls, config, split: str = "train"):
    return cls(config.path, split=split, views=tuple(config.views), num_frames=config.num_frames,
               fps=config.fps, image_size=(config.image_height, config.image_width),
               clip_stride=config.clip_stride, trajectory_points=config.trajectory_points,
               wheelbase=config.wheelbase, image_size_mismatch=config.image_size_mismatch,
               skip_bad_segments=config.skip_bad_records,
               name=f"waymo:{config.path}/{SPLITS.get(split, split)}")

  def path(self, component: str, segment: str) -> str:
    return os.path.join(self.dir, component, f"{segment}.parquet")

  # ---- segments

  def _segment(self, seg: str) -> dict:
    """A segment's timeline frames, image rows, calibration and poses (raises on bad tables)."""
    path = self.path("camera_image", seg)
    columns = [SEGMENT, TIMESTAMP, CAMERA] + ([IMAGE_POSE] if self.pose_source == "camera_image"
                                              else [])
    table = read_columns(path, columns)
    meta = open_parquet(path).metadata
    row_starts = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
    _check_segment_name(table, path, seg)
    stamps = table.column(TIMESTAMP).to_numpy().astype(np.int64)
    cams = [camera_id(c) for c in table.column(CAMERA).to_pylist()]
    rows = {}
    for i, key in enumerate(zip(cams, stamps.tolist())):
      if key in rows:
        raise ValueError(f"Waymo file {path} rows {rows[key]} and {i} are both camera "
                         f"{key[0]} at frame timestamp {key[1]}")
      rows[key] = i
    ids = [CAMERA_IDS[v] for v in self.views]
    frames = np.array(sorted(t for c, t in rows if c == ids[0]), np.int64)
    if not len(frames):
      raise ValueError(f"Waymo file {path} has no {self.views[0]} image (key.camera_name "
                       f"{ids[0]}); cameras present: {sorted(set(cams))}")
    image_rows = np.zeros((len(frames), len(ids)), np.int64)
    for j, t in enumerate(frames.tolist()):
      for v, cid in enumerate(ids):
        r = rows.get((cid, t))
        if r is None:
          raise ValueError(f"Waymo file {path} has no {self.views[v]} image (key.camera_name "
                           f"{cid}) at frame timestamp {t} (frame {j} of segment {seg}), where "
                           f"{self.views[0]} has one")
        image_rows[j, v] = r
    if self.pose_source == "camera_image":
      poses, pose_rows, pose_path = matrices(table, IMAGE_POSE, path)[image_rows[:, 0]], \
          image_rows[:, 0], path
    else:
      poses, pose_rows, pose_path = self._vehicle_poses(seg, frames, path)
    return {"name": seg, "path": path, "row_starts": row_starts, "stamps": frames,
            "image_rows": image_rows, "calibration": self._calibration(seg, ids, path),
            "poses": poses, "pose_rows": pose_rows, "pose_path": pose_path}

  def _calibration(self, seg: str, ids: list[int], image_path: str) -> list[dict]:
    """Per view: k [3,3] (pixels of a `size` image), e [4,4] ego-from-camera (OpenCV axes),
    size (width, height), path and row."""
    path = self.path("camera_calibration", seg)
    table = read_columns(path, [SEGMENT, CAMERA, *INTRINSIC, EXTRINSIC, WIDTH, HEIGHT])
    _check_segment_name(table, path, seg)
    cams = [camera_id(c) for c in table.column(CAMERA).to_pylist()]
    extrinsics = matrices(table, EXTRINSIC, path)
    out = []
    for view, cid in zip(self.views, ids):
      rows = [i for i, c in enumerate(cams) if c == cid]
      if not rows:
        raise ValueError(f"Waymo file {path} has no calibration row for camera {view} "
                         f"(key.camera_name {cid}) of segment {seg}, which has images of it in "
                         f"{image_path}; calibrated cameras: {sorted(set(cams))}")
      if len(rows) > 1:
        raise ValueError(f"Waymo file {path} rows {rows} all calibrate camera {view}")
      i = rows[0]
      where = f"Waymo file {path} row {i} (camera {view})"
      intr = np.array([table.column(c)[i].as_py() for c in INTRINSIC], np.float64)
      if not np.isfinite(intr).all() or intr[0] <= 0 or intr[1] <= 0:
        raise ValueError(f"{where} has a non-finite or non-positive intrinsic: "
                         f"{dict(zip(INTRINSIC_FIELDS, intr.tolist()))}")
      w, h = table.column(WIDTH)[i].as_py(), table.column(HEIGHT)[i].as_py()
      if not (isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0):
        raise ValueError(f"{where} has image size width={w!r} height={h!r}")
      problem = rigid_problem(extrinsics[i])
      if problem:
        raise ValueError(f"{where}: {EXTRINSIC} {problem}")
      f_u, f_v, c_u, c_v = intr[:4]
      k = np.array([[f_u, 0.0, c_u], [0.0, f_v, c_v], [0.0, 0.0, 1.0]])
      out.append({"k": k, "e": extrinsics[i] @ WAYMO_FROM_OPENCV, "size": (w, h), "path": path,
                  "row": i})
    return out

  def _vehicle_poses(self, seg: str, frames: np.ndarray, image_path: str):
    """(poses [S,4,4], rows [S], path) of the vehicle_pose rows at the timeline's timestamps."""
    path = self.path("vehicle_pose", seg)
    table = read_columns(path, [SEGMENT, TIMESTAMP, VEHICLE_POSE])
    _check_segment_name(table, path, seg)
    poses = matrices(table, VEHICLE_POSE, path)
    row_of = {}
    for i, t in enumerate(table.column(TIMESTAMP).to_numpy().astype(np.int64).tolist()):
      if t in row_of:
        raise ValueError(f"Waymo file {path} rows {row_of[t]} and {i} both hold frame timestamp "
                         f"{t}")
      row_of[t] = i
    rows = []
    for j, t in enumerate(frames.tolist()):
      if t not in row_of:
        raise ValueError(f"Waymo file {path} has no row at frame timestamp {t} (frame {j} of "
                         f"segment {seg}, which {image_path} has)")
      rows.append(row_of[t])
    rows = np.asarray(rows, np.int64)
    return poses[rows], rows, path

  def _timeline(self, info: dict) -> None:
    """info['timeline']: the frame index (into info['stamps']) of each frame at `fps`."""
    times = (info["stamps"] - info["stamps"][0]) * 1e-6
    rate = (len(times) - 1) / times[-1] if len(times) > 1 and times[-1] > 0 else math.inf
    if self.fps > rate * 1.05:
      raise ValueError(f"fps={self.fps} exceeds the {self.views[0]} frame rate {rate:.2f} Hz of "
                       f"Waymo segment {info['name']} ({info['path']})")
    count = int(math.floor(times[-1] * self.fps + 1e-6)) + 1
    info["timeline"] = video.nearest_indices(times, np.arange(count) / self.fps)

  # ---- per-clip data

  def __len__(self):
    return len(self.clips) + len(self.bad_segments)

  def __getitem__(self, index):
    index = records.good_index(self.name, index, len(self.clips), self.bad_segments)
    si, start = self.clips[index]
    seg = self.segments[si]
    t_count, k = self.num_frames, self.trajectory_points
    picks = seg["timeline"][start:start + t_count]
    ahead = seg["timeline"][start + t_count:start + t_count + k]
    images = self._images(seg, picks, index)
    frames, ks, es = [], [], []
    for t in range(t_count):
      ff, fk, fe = [], [], []
      for v in range(len(self.views)):
        cal = seg["calibration"][v]
        sx, sy = self._calibration_scale(images[t][v].shape[:2], cal, seg, picks[t], index, t)
        image, affine = video.resize_crop(images[t][v], self.image_size)
        ff.append(image)
        fk.append(video.crop_intrinsics(cal["k"], affine @ np.diag([sx, sy, 1.0])))
        fe.append(cal["e"])
      frames.append(ff), ks.append(fk), es.append(fe)
    ks, es = np.asarray(ks, np.float64), np.asarray(es, np.float64)
    poses = self._poses(seg, np.concatenate([picks, ahead]), index)
    future = actions_lib.future_actions(poses, num_points=k, front_intrinsics=ks[:, 0],
                                        front_extrinsics=es[:, 0], image_size=self.image_size)
    return {
        "frames": np.asarray(frames, np.uint8),
        "intrinsics": ks.astype(np.float32),
        "extrinsics": es.astype(np.float32),
        "ego_pose": poses[:t_count].astype(np.float32),
        "actions": self._actions(seg, picks, index),
        **future,
        "fps": np.float32(self.fps),
        "view_adjacency": nuscenes.view_adjacency(ks[0], es[0], self.image_size[1]),
    }

  def _where(self, seg, frame, index, t=None) -> str:
    clip = f"clip {index}" + (f" frame {t}" if t is not None else "")
    return (f"segment {seg['name']}, frame timestamp {int(seg['stamps'][frame])}; {clip} of "
            f"{self.name}")

  def _images(self, seg: dict, picks: np.ndarray, index: int) -> list[list[np.ndarray]]:
    """Decoded images [T][V] of [h,w,3] uint8 (the image column of the row groups they are in)."""
    rows = seg["image_rows"][picks]  # [T,V] rows of the camera_image file
    starts = seg["row_starts"]
    groups = np.searchsorted(starts, rows, side="right") - 1
    needed = sorted(set(groups.ravel().tolist()))
    base = {}  # row group -> its first row in the table read
    for g in needed:
      base[g] = sum(starts[h + 1] - starts[h] for h in needed if h < g)
    column = read_columns(seg["path"], [IMAGE], row_groups=needed).column(IMAGE)
    out = []
    for t in range(len(picks)):
      row = []
      for v, view in enumerate(self.views):
        r, g = int(rows[t, v]), int(groups[t, v])
        data = column[int(base[g] + r - starts[g])].as_py()
        where = (f"Waymo file {seg['path']} row {r} (camera {view}, "
                 f"{self._where(seg, picks[t], index, t)})")
        if not data:
          raise ValueError(f"{where} has no image bytes in {IMAGE}")
        try:
          with Image.open(io.BytesIO(data)) as im:
            row.append(np.asarray(im.convert("RGB")))
        except (OSError, ValueError, SyntaxError) as e:
          raise ValueError(f"{where}: the image ({len(data)} bytes) cannot be decoded as JPEG: "
                           f"{e}") from e
      out.append(row)
    return out

  def _calibration_scale(self, actual, cal, seg, frame, index, t) -> tuple[float, float]:
    """(sx, sy): the image's size over the size its calibration is for (see the docstring)."""
    h, w = actual
    cw, ch = cal["size"]
    return video.calibration_scale(
        actual, (cw, ch), self.image_size_mismatch,
        f"Waymo image of {self._where(seg, frame, index, t)} is {w}x{h} but its calibration "
        f"({cal['path']} row {cal['row']}) is for {cw}x{ch}")

  def _poses(self, seg: dict, frames: np.ndarray, index: int) -> np.ndarray:
    """World-from-ego [len(frames),4,4] float64 of timeline frames; raises on a bad pose."""
    column = VEHICLE_POSE if self.pose_source == "vehicle_pose" else IMAGE_POSE
    out = seg["poses"][np.asarray(frames, np.int64)]
    for j, m in zip(frames, out):
      problem = rigid_problem(m)
      if problem:
        raise ValueError(f"Waymo file {seg['pose_path']} row {int(seg['pose_rows'][j])} "
                         f"({self._where(seg, j, index)}): {column} {problem}")
    return out

  def _actions(self, seg: dict, picks: np.ndarray, index: int) -> np.ndarray:
    """[T,4] actions at the clip's frames from the 10 Hz poses around them, speed clipped at 0."""
    lo = max(int(picks.min()) - 2, 0)
    hi = min(int(picks.max()) + 2, len(seg["stamps"]) - 1)
    window = np.arange(lo, hi + 1)
    poses = self._poses(seg, window, index)
    t0 = seg["stamps"][0]
    acts = nuscenes.pose_actions((seg["stamps"][window] - t0) * 1e-6, poses,
                                 (seg["stamps"][picks] - t0) * 1e-6, self.wheelbase)
    acts[:, 0] = np.maximum(acts[:, 0], 0.0)
    return acts


def _check_segment_name(table: pa.Table, path: str, segment: str) -> None:
  """Every row of a segment's file must name that segment."""
  names = table.column(SEGMENT).to_pylist()
  bad = next((i for i, n in enumerate(names) if n != segment), None)
  if bad is not None:
    raise ValueError(f"Waymo file {path} row {bad} belongs to segment {names[bad]!r}, not to "
                     f"{segment!r} (the file's name)")
