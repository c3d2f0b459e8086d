"""nuScenes v1.0 reader (JSON tables, no devkit) -> multi-view clips per data/schema.py.

    source = ClipSource('/data/nuscenes', version='v1.0-trainval', views=CAMERA_RING,
                        num_frames=8, fps=12, image_size=(256, 448))
    record = source[i]

Layout on disk (as released): ROOT/VERSION/{scene,sample,sample_data,ego_pose,calibrated_sensor,
sensor,sample_annotation,instance,category,log}.json, images at ROOT/<sample_data.filename>, and
optionally ROOT/can_bus/<scene name>_{pose,steeranglefeedback}.json and the map expansion
ROOT/maps/expansion/<location>.json (one vector map per log location, nuscenes_map.py).

Clips. Per scene, the first view's camera defines the timeline: its keyframes (2 Hz annotated
samples, `keyframes_only=True`) or all its frames (~12 Hz sweeps). The timeline is resampled to
`fps` by taking the frame nearest to t0 + k/fps (fps above the camera's rate raises). Other views
are aligned by timestamp: in keyframe mode the same sample's frame of that camera, otherwise the
nearest frame of that camera (at most one camera period away, else an error). Clips are windows of
`num_frames` timeline frames every `clip_stride` frames (default: non-overlapping), and only those
whose `trajectory_points` (K) following timeline frames are in the scene too: the trajectory of a
clip's last frame needs them, so near a scene's end no clip starts where fewer than K future ego
poses exist (nothing is extrapolated). A scene of n timeline frames gives clips starting at 0,
clip_stride, ... up to n - num_frames - K.

Per frame t and view v:
  intrinsics  calibrated_sensor.camera_intrinsic, adjusted for the resize + centre crop. The
              intrinsics hold for images of the size sample_data.width/height records (1600x900
              for nuScenes cameras); an image on disk of another size (a downscaled copy) has them
              scaled by its size over that size (image_size_mismatch='rescale', the default) or
              raises (image_size_mismatch='error'). Another aspect ratio (a crop) always raises;
  extrinsics  ego-from-camera from calibrated_sensor (translation, rotation quaternion w,x,y,z);
  ego_pose    world-from-ego of the first view's frame (each camera frame has its own ego_pose);
  boxes       sample_annotation moved into the ego frame of frame t. Keyframes use their sample's
              annotations. Sweeps (box_mode='interpolate', default) interpolate each instance
              annotated in both neighbouring keyframes linearly in position and by slerp in
              rotation at the frame's timestamp; an instance annotated in only one of them is
              kept when that keyframe is the nearer one, moved at the velocity its previous/next
              annotation gives (nuScenes' own velocity estimate). box_mode='nearest' takes the
              nearest keyframe's boxes unchanged. nuScenes sizes are (w, l, h); records hold
              (l, w, h). class = layout_render.class_index of the category (-1: no detection
              class); track id = 1 + row of the instance in instance.json (0: padding). One row
              per track for the whole clip (as the synthetic renderer): the `max_boxes` tracks
              nearest to the ego at any frame, rows all zero (valid=0) where a track is absent.
  actions     speed (m/s), steering (rad), accel (m/s^2), yaw rate (rad/s): from the CAN bus
              (`<scene>_pose.json`: vel[0], accel[0], rotation_rate[2]; `_steeranglefeedback.json`:
              value / steering_ratio), interpolated at frame times, when the files exist; otherwise
              from the ego poses of the first camera's full frame sequence (finite differences;
              steering = atan(wheelbase * yaw_rate / speed), 0 below 0.5 m/s). Speed is the
              forward speed clipped at 0: reversing (or noise around a standstill) reads as 0,
              as the batch contract has no negative speed.
  trajectory, goal_point, command
              data/actions.py future_actions of the first view's ego poses at the clip's frames
              and the K timeline frames after them, projected with the first view's calibration
              (view 0, as adjusted for the resize + crop).
  layout      wm_jax/data/layout_render.py draws the boxes and the map lines: with
              map_lines=True (config.data.map_lines) and ROOT/maps/expansion/<location>.json
              present for the location of the scene's log, the lines nuscenes_map.lines_near
              gives for the frame's ego pose (within nuscenes_map.RADIUS; ped crossings, lane
              and road dividers, drivable-area outlines as road edges); without that file (or
              with map_lines=False) the map channels stay empty. The raster maps of
              ROOT/maps/*.png are not read.
  view_adjacency  cameras whose horizontal fields of view overlap (or the same camera).

Errors name the file and the index: a missing or truncated table, a token that a row refers to
but no table holds, a non-finite pose or calibration, a missing or unreadable image, an image of
another size than its calibration (in 'error' mode, or cropped), a malformed map expansion (its
file and the layer record at fault; raised by each clip of that location, so skip_bad_records
skips and counts those clips).
"""

from __future__ import annotations

import bisect
import collections
import functools
import json
import math
import os
from typing import Any, Sequence

import numpy as np
from PIL import Image

from wm_jax.data import actions as actions_lib
from wm_jax.data import layout_render
from wm_jax.data import nuscenes_map
from wm_jax.data import video
from wm_jax.data.splits import in_validation

TABLES = ("scene", "sample", "sample_data", "ego_pose", "calibrated_sensor", "sensor",
          "sample_annotation", "instance", "category", "log")
CAMERA_RING = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK", "CAM_BACK_LEFT",
               "CAM_FRONT_LEFT")
# What an image of another size than its calibration (sample_data width/height) does.
IMAGE_SIZE_MISMATCH = ("rescale", "error")


# --------------------------------------------------------------------------------------------
# geometry


def quat_to_matrix(q: Sequence[float]) -> np.ndarray:
  """Rotation matrix of a unit quaternion (w, x, y, z) (nuScenes order)."""
  w, x, y, z = (float(v) for v in q)
  n = math.sqrt(w * w + x * x + y * y + z * z)
  w, x, y, z = w / n, x / n, y / n, z / n
  return np.array([
      [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
      [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
      [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
  ])


def transform(translation, rotation) -> np.ndarray:
  """4x4 from a translation and a (w, x, y, z) rotation: p_parent = T @ p_child."""
  t = np.eye(4)
  t[:3, :3] = quat_to_matrix(rotation)
  t[:3, 3] = translation
  return t


def _slerp(q0, q1, a):
  q0, q1 = np.asarray(q0, np.float64), np.asarray(q1, np.float64)
  d = float(np.dot(q0, q1))
  if d < 0:
    q1, d = -q1, -d
  if d > 0.9995:
    q = q0 + a * (q1 - q0)
  else:
    th = math.acos(d)
    q = (math.sin((1 - a) * th) * q0 + math.sin(a * th) * q1) / math.sin(th)
  return q / np.linalg.norm(q)


def yaw_of(r: np.ndarray) -> float:
  """Heading (rotation about z) of a rotation matrix's x axis."""
  return math.atan2(r[1, 0], r[0, 0])


# --------------------------------------------------------------------------------------------
# tables


def load_json(path: str) -> Any:
  """json.load with errors that name the file (missing, truncated, invalid)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"nuScenes file {path} does not exist")
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"nuScenes file {path} is not valid JSON (truncated or corrupt?): {e.msg} "
                     f"at line {e.lineno} column {e.colno} (char {e.pos})") from e


class Tables:
  """The JSON tables of one nuScenes version, indexed by token."""

  def __init__(self, root: str, version: str):
    self.root, self.version = root, version
    self.dir = os.path.join(root, version)
    if not os.path.isdir(self.dir):
      raise FileNotFoundError(f"nuScenes table folder {self.dir} does not exist")
    self.rows: dict[str, list[dict]] = {}
    self.index: dict[str, dict[str, int]] = {}
    for name in TABLES:
      path = self.path(name)
      rows = load_json(path)
      if not isinstance(rows, list):
        raise ValueError(f"nuScenes table {path} must hold a JSON list, got {type(rows).__name__}")
      index = {}
      for i, row in enumerate(rows):
        if not isinstance(row, dict) or "token" not in row:
          raise ValueError(f"nuScenes table {path} row {i} has no 'token': {str(row)[:200]}")
        index[row["token"]] = i
      self.rows[name], self.index[name] = rows, index

  def path(self, table: str) -> str:
    return os.path.join(self.dir, f"{table}.json")

  def get(self, table: str, token: str, *, referrer: str) -> dict:
    """Row of `table` with `token`; `referrer` says who points at it (for the error)."""
    i = self.index[table].get(token)
    if i is None:
      raise KeyError(f"nuScenes: {referrer} refers to {table} token {token!r}, which "
                     f"{self.path(table)} does not contain")
    return self.rows[table][i]

  def where(self, table: str, token: str) -> str:
    return f"{self.path(table)}[{self.index[table][token]}]"

  def ref(self, table: str, row: dict, field: str, target: str) -> dict:
    """Follows `row[field]` (a token of table `target`)."""
    return self.get(target, row[field], referrer=f"{self.where(table, row['token'])}.{field}")

  def finite_transform(self, table: str, row: dict) -> np.ndarray:
    """4x4 from a row's translation/rotation; raises on NaN/Inf naming the row."""
    t, r = np.asarray(row["translation"], np.float64), np.asarray(row["rotation"], np.float64)
    if t.shape != (3,) or r.shape != (4,) or not (np.isfinite(t).all() and np.isfinite(r).all()):
      raise ValueError(f"nuScenes {self.where(table, row['token'])} (token {row['token']}) has a "
                       f"non-finite or malformed pose: translation={t.tolist()} "
                       f"rotation={r.tolist()}")
    if not abs(np.linalg.norm(r) - 1.0) < 1e-3:
      raise ValueError(f"nuScenes {self.where(table, row['token'])}: rotation {r.tolist()} is not "
                       "a unit quaternion")
    return transform(t, r)


# --------------------------------------------------------------------------------------------
# clips


class ClipSource:
  """Random-access clips of `num_frames` frames from `views` cameras of a nuScenes version."""

  def __init__(self, root: str, *, version: str = "v1.0-trainval",
               views: Sequence[str] = ("CAM_FRONT",), num_frames: int = 8, fps: float = 12.0,
               image_size: tuple[int, int] = (64, 128), keyframes_only: bool = False,
               clip_stride: int = 0, box_mode: str = "interpolate", max_boxes: int = 32,
               layout: bool = True, use_can_bus: bool = True, wheelbase: float = 2.588,
               steering_ratio: float = 16.0, scenes: Sequence[str] | None = None,
               image_size_mismatch: str = "rescale", trajectory_points: int = 6,
               name: str | None = None, map_lines: bool = True):
    if box_mode not in ("interpolate", "nearest"):
      raise ValueError(f"box_mode must be 'interpolate' or 'nearest', got {box_mode!r}")
    if image_size_mismatch not in IMAGE_SIZE_MISMATCH:
      raise ValueError(f"image_size_mismatch must be 'rescale' or 'error', got "
                       f"{image_size_mismatch!r}")
    if not views:
      raise ValueError("views must name at least one camera channel")
    self.image_size_mismatch = image_size_mismatch
    self.root, self.views = root, tuple(views)
    self.num_frames, self.fps = int(num_frames), float(fps)
    self.image_size = tuple(int(s) for s in image_size)
    self.keyframes_only, self.box_mode = keyframes_only, box_mode
    self.max_boxes, self.layout = int(max_boxes), layout
    self.map_lines = bool(map_lines)
    if int(trajectory_points) < 1:
      raise ValueError(f"trajectory_points must be >= 1, got {trajectory_points}")
    self.trajectory_points = int(trajectory_points)
    self.use_can_bus, self.wheelbase = use_can_bus, wheelbase
    self.steering_ratio = steering_ratio
    self.clip_stride = int(clip_stride) or self.num_frames
    self.name = name or f"nuscenes:{root}/{version}"
    self.tables = tb = Tables(root, version)

    self._channel = {}  # calibrated_sensor token -> channel
    for cs in tb.rows["calibrated_sensor"]:
      sensor = tb.ref("calibrated_sensor", cs, "sensor_token", "sensor")
      self._channel[cs["token"]] = sensor["channel"]
    self._by_sample = collections.defaultdict(dict)  # sample token -> channel -> keyframe sd
    for sd in tb.rows["sample_data"]:
      if sd.get("is_key_frame"):
        ch = self._channel.get(sd["calibrated_sensor_token"])
        if ch is None:
          tb.ref("sample_data", sd, "calibrated_sensor_token", "calibrated_sensor")
        self._by_sample[sd["sample_token"]][ch] = sd
    self._anns = collections.defaultdict(list)  # sample token -> annotation rows
    for ann in tb.rows["sample_annotation"]:
      self._anns[ann["sample_token"]].append(ann)

    known = {s["name"] for s in tb.rows["scene"]}
    if scenes is not None:
      unknown = sorted(set(scenes) - known)
      if unknown:
        raise ValueError(f"scenes {unknown} are not in {tb.path('scene')}")
    self.scenes = []  # per scene: dict(name, samples, frames per view)
    self.clips = []  # (scene index, start position on the timeline)
    for scene in tb.rows["scene"]:
      if scenes is not None and scene["name"] not in scenes:
        continue
      info = self._scene_timeline(scene)
      si = len(self.scenes)
      self.scenes.append(info)
      last = len(info["timeline"]) - self.num_frames - self.trajectory_points
      for start in range(0, last + 1, self.clip_stride):
        self.clips.append((si, start))

  @classmethod
  def from_config(cls, config, split: str = "train"):
    return cls(config.path, version=config.version, views=tuple(config.views),
               num_frames=config.num_frames, fps=config.fps,
               image_size=(config.image_height, config.image_width),
               keyframes_only=config.keyframes_only, clip_stride=config.clip_stride,
               box_mode=config.box_mode, max_boxes=config.max_boxes, layout=config.layout,
               trajectory_points=config.trajectory_points,
               use_can_bus=config.use_can_bus, wheelbase=config.wheelbase,
               steering_ratio=config.steering_ratio,
               image_size_mismatch=config.image_size_mismatch,
               map_lines=config.get("map_lines", True),
               scenes=split_scenes(config.path, config.version, split, config),
               name=f"nuscenes:{config.path}/{config.version}:{split}")

  # ---- timeline

  def _samples(self, scene) -> list[dict]:
    tb, out = self.tables, []
    token = scene["first_sample_token"]
    referrer = f"{tb.where('scene', scene['token'])}.first_sample_token"
    while token:
      sample = tb.get("sample", token, referrer=referrer)
      out.append(sample)
      referrer = f"{tb.where('sample', token)}.next"
      token = sample["next"]
      if len(out) > len(tb.rows["sample"]):
        raise ValueError(f"nuScenes: the sample chain of scene {scene['name']} loops")
    return out

  def _channel_frames(self, scene, samples, channel) -> list[dict]:
    """All sample_data of `channel` in the scene (keyframes and sweeps), by time."""
    tb = self.tables
    first = next((self._by_sample[s["token"]].get(channel) for s in samples
                  if channel in self._by_sample[s["token"]]), None)
    if first is None:
      raise ValueError(f"nuScenes: scene {scene['name']} ({tb.where('scene', scene['token'])}) "
                       f"has no keyframe of camera {channel}")
    scene_samples = {s["token"] for s in samples}
    sd = first
    while sd["prev"]:
      prev = tb.get("sample_data", sd["prev"],
                    referrer=f"{tb.where('sample_data', sd['token'])}.prev")
      if prev["sample_token"] not in scene_samples:
        break
      sd = prev
    out = []
    while True:
      out.append(sd)
      if not sd["next"]:
        break
      nxt = tb.get("sample_data", sd["next"],
                   referrer=f"{tb.where('sample_data', sd['token'])}.next")
      if nxt["sample_token"] not in scene_samples:
        break
      sd = nxt
    return out

  def _scene_timeline(self, scene) -> dict:
    samples = self._samples(scene)
    ref = self.views[0]
    if self.keyframes_only:
      frames = {}
      for v in self.views:
        frames[v] = []
        for s in samples:
          if v not in self._by_sample[s["token"]]:
            raise ValueError(f"nuScenes: sample {self.tables.where('sample', s['token'])} of scene "
                             f"{scene['name']} has no keyframe of camera {v}")
          frames[v].append(self._by_sample[s["token"]][v])
    else:
      frames = {v: self._channel_frames(scene, samples, v) for v in self.views}
    times = np.array([sd["timestamp"] for sd in frames[ref]], np.float64) * 1e-6
    rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else math.inf
    if self.fps > rate * 1.05:
      raise ValueError(f"fps={self.fps} exceeds the {ref} frame rate {rate:.2f} Hz of scene "
                       f"{scene['name']} ({'keyframes' if self.keyframes_only else 'sweeps'})")
    count = int(math.floor((times[-1] - times[0]) * self.fps + 1e-6)) + 1
    targets = times[0] + np.arange(count) / self.fps
    pick = video.nearest_indices(times, targets)
    view_times = {v: np.array([sd["timestamp"] for sd in frames[v]], np.float64) * 1e-6
                  for v in self.views}
    timeline = []  # per timeline frame: {view: sample_data row}
    for p in pick:
      entry = {ref: frames[ref][p]}
      for v in self.views[1:]:
        if self.keyframes_only:
          entry[v] = frames[v][p]
          continue
        vt = view_times[v]
        j = int(video.nearest_indices(vt, np.array([times[p]]))[0])
        if abs(vt[j] - times[p]) > 1.0 / rate + 1e-3:
          where = self.tables.where("sample_data", frames[ref][p]["token"])
          raise ValueError(f"nuScenes: scene {scene['name']}: no {v} frame within "
                           f"{1 / rate:.3f} s of {ref} frame {where}")
        entry[v] = frames[v][j]
      timeline.append(entry)
    return {"scene": scene, "samples": samples, "timeline": timeline, "ref_frames": frames[ref]}

  # ---- per-clip data

  def __len__(self):
    return len(self.clips)

  def __getitem__(self, index):
    index = int(index)
    if not 0 <= index < len(self.clips):
      raise IndexError(f"{self.name}: clip index {index} out of range [0, {len(self.clips)})")
    si, start = self.clips[index]
    info = self.scenes[si]
    entries = info["timeline"][start:start + self.num_frames]
    tb = self.tables
    frames, ks, es, poses, times = [], [], [], [], []
    for t, entry in enumerate(entries):
      fk, fe, ff = [], [], []
      for v in self.views:
        sd = entry[v]
        where = f"clip {index} frame {t} view {v}"
        cs = tb.ref("sample_data", sd, "calibrated_sensor_token", "calibrated_sensor")
        image, affine = self._image(sd, where)
        k = np.asarray(cs.get("camera_intrinsic") or [], np.float64)
        if k.shape != (3, 3) or not np.isfinite(k).all():
          raise ValueError(f"nuScenes {tb.where('calibrated_sensor', cs['token'])} ({where}) has "
                           f"no valid camera_intrinsic: {k.tolist()}")
        ff.append(image)
        fk.append(video.crop_intrinsics(k, affine))
        fe.append(tb.finite_transform("calibrated_sensor", cs))
      frames.append(ff), ks.append(fk), es.append(fe)
      ref = entry[self.views[0]]
      poses.append(tb.finite_transform("ego_pose", tb.ref("sample_data", ref, "ego_pose_token",
                                                          "ego_pose")))
      times.append(ref["timestamp"] * 1e-6)
    record = {
        "frames": np.asarray(frames, np.uint8),
        "intrinsics": np.asarray(ks, np.float32),
        "extrinsics": np.asarray(es, np.float32),
        "ego_pose": np.asarray(poses, np.float32),
        "boxes": clip_boxes([self._boxes(info, e[self.views[0]], p)
                             for e, p in zip(entries, poses)], self.max_boxes),
        "actions": self._actions(info, np.asarray(times)),
        **self._future(info, start, index, poses, ks, es),
        "fps": np.float32(self.fps),
        "view_adjacency": view_adjacency(ks[0], es[0], self.image_size[1]),
    }
    if self.layout:
      vmap = self._vector_map(info) if self.map_lines else None
      record["layout"] = np.stack([
          layout_render.render_layout(
              b, None if vmap is None else nuscenes_map.lines_near(vmap, p), k, e,
              self.image_size)
          for b, k, e, p in zip(record["boxes"], record["intrinsics"], record["extrinsics"],
                                poses)])
    return record

  def _vector_map(self, info):
    """The map expansion of the scene's log location (nuscenes_map.VectorMap), or None."""
    log = self.tables.ref("scene", info["scene"], "log_token", "log")
    location = log.get("location") or ""
    path = nuscenes_map.expansion_path(self.root, location)
    if not location or not os.path.exists(path):
      return None
    return vector_map(path)

  def _future(self, info, start, index, poses, ks, es) -> dict[str, np.ndarray]:
    """trajectory, goal_point, command of the clip: its poses and the K timeline frames after."""
    tb, k = self.tables, self.trajectory_points
    ahead = info["timeline"][start + self.num_frames:start + self.num_frames + k]
    future = [tb.finite_transform("ego_pose", tb.ref("sample_data", e[self.views[0]],
                                                     "ego_pose_token", "ego_pose"))
              for e in ahead]
    try:
      return actions_lib.future_actions(np.asarray(poses + future), num_points=k,
                                        front_intrinsics=np.asarray(ks, np.float64)[:, 0],
                                        front_extrinsics=np.asarray(es, np.float64)[:, 0],
                                        image_size=self.image_size)
    except ValueError as e:
      raise ValueError(f"nuScenes: clip {index} of scene {info['scene']['name']}: {e}") from e

  def _image(self, sd, where):
    """(image [H,W,3], affine [2,3]): the image resized and cropped to `image_size`, and the map
    from pixel coordinates of the calibrated image (sample_data width x height) to it."""
    row = self.tables.where("sample_data", sd["token"])
    path = os.path.join(self.root, sd["filename"])
    if not os.path.exists(path):
      raise FileNotFoundError(f"nuScenes image {path} is missing ({where}, {row})")
    try:
      with Image.open(path) as im:
        image = np.asarray(im.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as e:
      raise ValueError(f"nuScenes image {path} cannot be decoded ({where}): {e}") from e
    scale = self._calibration_scale(sd, image.shape[:2], path, f"{row} width/height", where)
    image, affine = video.resize_crop(image, self.image_size)
    return image, affine @ np.diag([scale[0], scale[1], 1.0])

  def _calibration_scale(self, sd, actual, path, row, where) -> tuple[float, float]:
    """(sx, sy): actual image size over the size its calibration is for (sample_data width and
    height); raises on a missing calibrated size, another aspect ratio, or in 'error' mode."""
    h, w = actual
    ch, cw = sd.get("height"), sd.get("width")
    if not (isinstance(cw, (int, float)) and isinstance(ch, (int, float)) and cw > 0 and ch > 0):
      raise ValueError(f"nuScenes {row} is {sd.get('width')!r}x{sd.get('height')!r}: a camera "
                       f"frame needs its calibrated image size to check {path} ({where})")
    return video.calibration_scale(
        actual, (cw, ch), self.image_size_mismatch,
        f"nuScenes image {path} is {w}x{h} but its calibration ({row}) is for {cw}x{ch}", where)

  def _annotation_boxes(self, sample_token):
    """{instance token: (translation, rotation, size, ann row)} of a keyframe."""
    return {a["instance_token"]: a for a in self._anns[sample_token]}

  def _velocity(self, ann) -> np.ndarray:
    """World velocity (m/s) of an annotation from its next (or previous) annotation; 0 if none."""
    tb = self.tables
    for field, sign in (("next", 1.0), ("prev", -1.0)):
      if ann.get(field):
        other = tb.get("sample_annotation", ann[field],
                       referrer=f"{tb.where('sample_annotation', ann['token'])}.{field}")
        t0 = tb.ref("sample_annotation", ann, "sample_token", "sample")["timestamp"]
        t1 = tb.ref("sample_annotation", other, "sample_token", "sample")["timestamp"]
        if t1 != t0:
          return ((np.asarray(other["translation"], np.float64)
                   - np.asarray(ann["translation"], np.float64)) / ((t1 - t0) * 1e-6))
    return np.zeros(3)

  def _boxes(self, info, sd, world_from_ego) -> list[list[float]]:
    """Ego-frame box rows of the frame `sd` (see the module docstring)."""
    tb = self.tables
    t = sd["timestamp"]
    samples = info["samples"]
    stamps = [s["timestamp"] for s in samples]
    if sd.get("is_key_frame"):
      boxes = [(a, a["translation"], a["rotation"]) for a in self._anns[sd["sample_token"]]]
    else:
      j = bisect.bisect_right(stamps, t)
      lo, hi = samples[max(j - 1, 0)], samples[min(j, len(samples) - 1)]
      near = lo if abs(t - lo["timestamp"]) <= abs(hi["timestamp"] - t) else hi
      if self.box_mode == "nearest" or lo is hi:
        boxes = [(a, a["translation"], a["rotation"]) for a in self._anns[near["token"]]]
      else:
        a0, a1 = self._annotation_boxes(lo["token"]), self._annotation_boxes(hi["token"])
        w = (t - lo["timestamp"]) / max(hi["timestamp"] - lo["timestamp"], 1)
        boxes = []
        for inst in sorted(set(a0) | set(a1)):
          if inst in a0 and inst in a1:
            x0, x1 = np.asarray(a0[inst]["translation"]), np.asarray(a1[inst]["translation"])
            boxes.append((a0[inst], x0 + w * (x1 - x0),
                          _slerp(a0[inst]["rotation"], a1[inst]["rotation"], w)))
          elif inst in (a0 if near is lo else a1):
            a = (a0 if near is lo else a1)[inst]
            at = (lo if near is lo else hi)["timestamp"]
            boxes.append((a, np.asarray(a["translation"], np.float64)
                          + self._velocity(a) * (t - at) * 1e-6, a["rotation"]))
    ego_from_world = np.linalg.inv(world_from_ego)
    rows = []
    for ann, translation, rotation in boxes:
      where = tb.where("sample_annotation", ann["token"])
      box = np.concatenate([np.asarray(translation, np.float64), np.asarray(rotation, np.float64),
                            np.asarray(ann["size"], np.float64)])
      if box.shape != (10,) or not np.isfinite(box).all():
        raise ValueError(f"nuScenes {where} has a non-finite or malformed box: {box.tolist()}")
      m = ego_from_world @ transform(box[:3], box[3:7])
      inst = tb.ref("sample_annotation", ann, "instance_token", "instance")
      cat = tb.ref("instance", inst, "category_token", "category")
      w_, l_, h_ = box[7:10]
      rows.append([*m[:3, 3], l_, w_, h_, yaw_of(m[:3, :3]), layout_render.class_index(cat["name"]),
                   tb.index["instance"][inst["token"]] + 1, 1.0])
    return rows

  def _actions(self, info, times) -> np.ndarray:
    """[T,4] actions at `times` (see the module docstring), speed clipped at 0."""
    scene = info["scene"]["name"]
    acts = None
    if self.use_can_bus:
      acts = can_bus_actions(self.root, scene, times, self.steering_ratio)
    if acts is None:
      ref = info["ref_frames"]
      tb = self.tables
      poses = np.stack([tb.finite_transform("ego_pose", tb.ref("sample_data", sd, "ego_pose_token",
                                                               "ego_pose")) for sd in ref])
      stamps = np.array([sd["timestamp"] for sd in ref], np.float64) * 1e-6
      acts = pose_actions(stamps, poses, times, self.wheelbase)
    acts[:, 0] = np.maximum(acts[:, 0], 0.0)
    return acts

def view_adjacency(ks: np.ndarray, es: np.ndarray, width: int) -> np.ndarray:
  """[V,V] bool: views whose horizontal fields of view overlap, or the same view. ks [V,3,3] in
  pixels of images `width` wide; es [V,4,4] ego-from-camera, OpenCV axes."""
  yaw = [math.atan2(e[1, 2], e[0, 2]) for e in es]
  half = [math.atan(width / 2.0 / k[0, 0]) for k in ks]
  v = len(es)
  adj = np.eye(v, dtype=bool)
  for i in range(v):
    for j in range(v):
      gap = abs((yaw[i] - yaw[j] + math.pi) % (2 * math.pi) - math.pi)
      adj[i, j] |= gap < half[i] + half[j]
  return adj


def clip_boxes(frames: Sequence[Sequence[Sequence[float]]], max_boxes: int) -> np.ndarray:
  """[T,N,10] boxes with one row per track for the whole clip (as the synthetic renderer does).

  `frames`: per frame, box rows (x, y, z, l, w, h, yaw, class, track id, 1). Tracks are ordered
  by their smallest distance to the ego over the clip; the nearest `max_boxes` are kept; a row is
  all zeros (valid=0) at frames where its track is not annotated.
  """
  nearest = {}
  for rows in frames:
    for r in rows:
      d = math.hypot(r[0], r[1])
      nearest[r[8]] = min(nearest.get(r[8], math.inf), d)
  tracks = sorted(nearest, key=lambda k: (nearest[k], k))[:max_boxes]
  slot = {k: i for i, k in enumerate(tracks)}
  out = np.zeros((len(frames), max_boxes, 10), np.float32)
  for t, rows in enumerate(frames):
    for r in rows:
      if r[8] in slot:
        out[t, slot[r[8]]] = r
  return out


def vector_map(path: str) -> "nuscenes_map.VectorMap":
  """nuscenes_map.parse of a map-expansion file, parsed once per process (per file version)."""
  st = os.stat(path)
  vmap = _vector_map_cached(path, st.st_mtime_ns, st.st_size)
  if isinstance(vmap, str):
    raise ValueError(vmap)
  return vmap


@functools.lru_cache(maxsize=8)
def _vector_map_cached(path, mtime_ns, size):
  """VectorMap, or the error message of a malformed file (kept, not re-parsed per clip)."""
  del mtime_ns, size  # cache keys: a rewritten file is parsed again
  try:
    return nuscenes_map.parse(load_json(path), path)
  except ValueError as e:
    return str(e)


# --------------------------------------------------------------------------------------------
# actions


def pose_actions(stamps, poses, times, wheelbase) -> np.ndarray:
  """[T,4] actions at `times` from world-from-ego `poses` [S,4,4] at `stamps` [S] (seconds)."""
  stamps = np.asarray(stamps, np.float64)
  if len(stamps) < 2:
    return np.zeros((len(times), 4), np.float32)
  pos = poses[:, :2, 3]
  yaw = np.unwrap(np.arctan2(poses[:, 1, 0], poses[:, 0, 0]))
  vel = np.gradient(pos, stamps, axis=0)
  speed = np.sum(vel * np.stack([np.cos(yaw), np.sin(yaw)], -1), axis=-1)  # signed, forward
  yaw_rate = np.gradient(yaw, stamps)
  accel = np.gradient(speed, stamps)
  steer = np.where(np.abs(speed) > 0.5,
                   np.arctan(wheelbase * yaw_rate / np.where(np.abs(speed) > 0.5, speed, 1.0)), 0.0)
  out = [np.interp(times, stamps, x) for x in (speed, steer, accel, yaw_rate)]
  return np.stack(out, -1).astype(np.float32)


@functools.lru_cache(maxsize=64)
def _can_tables(root, scene):
  base = os.path.join(root, "can_bus", scene)
  pose_path, steer_path = base + "_pose.json", base + "_steeranglefeedback.json"
  if not (os.path.exists(pose_path) and os.path.exists(steer_path)):
    return None
  pose, steer = load_json(pose_path), load_json(steer_path)
  try:
    pt = np.array([m["utime"] for m in pose], np.float64) * 1e-6
    vel = np.array([m["vel"][0] for m in pose], np.float64)
    acc = np.array([m["accel"][0] for m in pose], np.float64)
    yaw_rate = np.array([m["rotation_rate"][2] for m in pose], np.float64)
    st = np.array([m["utime"] for m in steer], np.float64) * 1e-6
    sv = np.array([m["value"] for m in steer], np.float64)
  except (KeyError, IndexError, TypeError) as e:
    raise ValueError(f"nuScenes CAN bus files {pose_path} / {steer_path} are malformed: "
                     f"{type(e).__name__}: {e}") from e
  for path, arr in ((pose_path, np.stack([pt, vel, acc, yaw_rate])),
                    (steer_path, np.stack([st, sv]))):
    if arr.shape[-1] == 0:
      return None
    if not np.isfinite(arr).all():
      bad = int(np.argwhere(~np.isfinite(arr))[0][1])
      raise ValueError(f"nuScenes CAN bus file {path} has non-finite values in message {bad}")
  return pt, vel, acc, yaw_rate, st, sv


def can_bus_actions(root, scene, times, steering_ratio=1.0):
  """[T,4] actions from ROOT/can_bus/<scene>_{pose,steeranglefeedback}.json, or None if absent."""
  tables = _can_tables(root, scene)
  if tables is None:
    return None
  pt, vel, acc, yaw_rate, st, sv = tables
  out = [np.interp(times, pt, vel), np.interp(times, st, sv) / steering_ratio,
         np.interp(times, pt, acc), np.interp(times, pt, yaw_rate)]
  return np.stack(out, -1).astype(np.float32)


# --------------------------------------------------------------------------------------------
# splits


def split_scenes(root, version, split, config) -> list[str] | None:
  """Scene names of a split (None = every scene).

  With config.val_locations: validation = scenes logged there, train = the others (restricted to
  config.locations if set): a domain split. Otherwise scenes (of config.locations, if set) go to
  validation when a hash of their name falls below config.val_fraction.
  """
  if split not in ("train", "validation", "val", "all"):
    raise ValueError(f"unknown split {split!r}; use 'train', 'validation' or 'all'")
  if split == "all" and not config.locations:
    return None
  d = os.path.join(root, version)
  logs = {l["token"]: l for l in load_json(os.path.join(d, "log.json"))}
  out = []
  for i, scene in enumerate(load_json(os.path.join(d, "scene.json"))):
    log = logs.get(scene["log_token"])
    if log is None:
      raise KeyError(f"nuScenes: {d}/scene.json[{i}].log_token refers to log token "
                     f"{scene['log_token']!r}, which {d}/log.json does not contain")
    loc = log.get("location", "")
    if config.val_locations:
      val = loc in config.val_locations
    else:
      val = in_validation(scene["name"], config.val_fraction)
    if config.locations and loc not in config.locations and not (val and config.val_locations):
      continue
    if split == "all" or val == (split in ("validation", "val")):
      out.append(scene["name"])
  return out
