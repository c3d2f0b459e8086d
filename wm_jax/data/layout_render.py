"""The layout condition image: 3-D boxes and map lines projected into each camera.

layout[..., 0:3]  box edges, RGB colour by class (the 12 box edges plus the two front-face
                  diagonals, OpenDWM's "3dbox" image; the cross marks the front of the box)
layout[..., 3:6]  map lines, one channel per map class:
                    3 (R) ped_crossing   outlines of zebra crossings
                    4 (G) lane_divider   lane dividers and the line between directions
                    5 (B) road_edge      boundary of the drivable area (kerb lines)
Lines are drawn 1 px wide (``line_width``) with value 255 on black, after clipping each 3-D
segment to the near plane z = 0.05 m of the camera (OpenCV camera frame: x right, y down,
z forward). Later lines overwrite earlier ones where they cross.

Inputs are in the EGO frame of the timestep (x forward, y left, z up), like the `boxes` key of
the batch contract: box rows are (x, y, z, l, w, h, yaw, class, track_id, valid) with (x, y, z)
the box centre, l along the box's heading, yaw about z from ego x. Cameras are given by
intrinsics [V,3,3] (pixels of the output image) and extrinsics [V,4,4] (ego-from-camera). The
same function serves the synthetic world and real nuScenes annotations (convert global boxes to
the ego frame first, and map category names with `class_index`).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

# nuScenes detection classes; box rows store the index as a float.
CLASS_NAMES = ("car", "truck", "bus", "trailer", "construction_vehicle", "pedestrian",
               "motorcycle", "bicycle", "traffic_cone", "barrier")
# Box edge colours (OpenDWM's 3dbox colour table keyed by our classes).
CLASS_COLORS = {
    "car": (0, 0, 255), "truck": (255, 255, 0), "bus": (128, 0, 255), "trailer": (255, 255, 255),
    "construction_vehicle": (128, 128, 255), "pedestrian": (255, 0, 0),
    "motorcycle": (0, 255, 128), "bicycle": (128, 255, 0), "traffic_cone": (255, 128, 0),
    "barrier": (128, 128, 128),
}
MAP_LINE_CLASSES = ("ped_crossing", "lane_divider", "road_edge")  # layout channels 3, 4, 5

# nuScenes category name (prefix match, longest first) -> detection class (nuScenes devkit's
# detection mapping). Categories not listed (animals, debris, ...) have no class.
NUSCENES_CATEGORY_TO_CLASS = {
    "vehicle.car": "car", "vehicle.truck": "truck", "vehicle.bus": "bus",
    "vehicle.trailer": "trailer", "vehicle.construction": "construction_vehicle",
    "vehicle.emergency.ambulance": "car", "vehicle.emergency.police": "car",
    "human.pedestrian.adult": "pedestrian", "human.pedestrian.child": "pedestrian",
    "human.pedestrian.construction_worker": "pedestrian",
    "human.pedestrian.police_officer": "pedestrian", "vehicle.motorcycle": "motorcycle",
    "vehicle.bicycle": "bicycle", "movable_object.trafficcone": "traffic_cone",
    "movable_object.barrier": "barrier",
}
# The nuScenes category the exporter writes for each class.
CLASS_TO_NUSCENES_CATEGORY = {
    "car": "vehicle.car", "truck": "vehicle.truck", "bus": "vehicle.bus.rigid",
    "trailer": "vehicle.trailer", "construction_vehicle": "vehicle.construction",
    "pedestrian": "human.pedestrian.adult", "motorcycle": "vehicle.motorcycle",
    "bicycle": "vehicle.bicycle", "traffic_cone": "movable_object.trafficcone",
    "barrier": "movable_object.barrier",
}
NEAR_Z = 0.05

# Box corners in units of (l, w, h), box frame x forward, y left, z up; corner order + edges.
_CORNERS = np.array([[sx, sy, sz] for sx in (0.5, -0.5) for sy in (0.5, -0.5)
                     for sz in (0.5, -0.5)])
_EDGES = ((0, 1), (2, 3), (4, 5), (6, 7), (0, 2), (1, 3), (4, 6), (5, 7), (0, 4), (1, 5), (2, 6),
          (3, 7), (0, 3), (1, 2))  # last two: diagonals of the front face (x = +l/2)


def class_index(category: str) -> int:
  """Detection class index of a nuScenes category name, or -1 when it has none."""
  for prefix in sorted(NUSCENES_CATEGORY_TO_CLASS, key=len, reverse=True):
    if category == prefix or category.startswith(prefix + "."):
      return CLASS_NAMES.index(NUSCENES_CATEGORY_TO_CLASS[prefix])
  return -1


def box_corners(boxes: np.ndarray) -> np.ndarray:
  """Corners [N,8,3] of boxes [N,>=7] (x, y, z, l, w, h, yaw) in the boxes' frame."""
  boxes = np.asarray(boxes, np.float64)
  local = _CORNERS[None] * boxes[:, None, 3:6]
  c, s = np.cos(boxes[:, 6])[:, None], np.sin(boxes[:, 6])[:, None]
  x = c * local[..., 0] - s * local[..., 1]
  y = s * local[..., 0] + c * local[..., 1]
  return np.stack([x, y, local[..., 2]], -1) + boxes[:, None, :3]


def project_segments(a: np.ndarray, b: np.ndarray, intrinsics: np.ndarray,
                     cam_from_ego: np.ndarray):
  """Clips 3-D segments (ego frame, [S,3] each) to z > NEAR_Z and projects them to pixels.

  Returns (pa [S,2], pb [S,2], ok [S] bool); segments entirely behind the near plane are not ok.
  """
  def to_cam(p):
    return p @ cam_from_ego[:3, :3].T + cam_from_ego[:3, 3]
  ca, cb = to_cam(a), to_cam(b)
  za, zb = ca[:, 2:3], cb[:, 2:3]
  ok = (za[:, 0] > NEAR_Z) | (zb[:, 0] > NEAR_Z)
  with np.errstate(divide="ignore", invalid="ignore"):
    r = np.where(np.abs(za - zb) > 1e-12, (NEAR_Z - zb) / (za - zb), 0.0)
  clip_b = zb < NEAR_Z
  clip_a = za < NEAR_Z
  cb = np.where(clip_b, ca * r + cb * (1 - r), cb)
  ca = np.where(clip_a, ca * r + cb * (1 - r), ca)
  def proj(c):
    z = np.maximum(c[:, 2:3], NEAR_Z)
    return (c / z) @ np.asarray(intrinsics, np.float64).T
  return proj(ca)[:, :2], proj(cb)[:, :2], ok


def _draw(draw, pa, pb, ok, colors, width, size):
  """Draws the ok segments that may touch the image (h, w) = size; others are skipped."""
  h, w = size
  xs = np.stack([pa[:, 0], pb[:, 0]], 1)
  ys = np.stack([pa[:, 1], pb[:, 1]], 1)
  ok = ok & ~(xs.max(1) < -width) & ~(xs.min(1) > w + width) & ~(ys.max(1) < -width) & \
      ~(ys.min(1) > h + width)
  # Very long projected segments (end points near the near plane) are clamped for PIL.
  limit = 4.0 * max(h, w)
  seg = np.clip(np.concatenate([pa, pb], 1)[ok], -limit, limit).tolist()
  cols = [tuple(c) for c in np.asarray(colors)[ok].astype(int).tolist()]
  for xy, col in zip(seg, cols):
    draw.line(xy, fill=col, width=width)


def render_layout(boxes, map_lines, intrinsics, extrinsics, image_size, *, line_width: int = 1,
                  max_distance: float = 80.0) -> np.ndarray:
  """Layout image uint8 [V,H,W,6] for one timestep.

  Args:
    boxes: [N,10] ego-frame boxes (rows with valid <= 0.5 or class < 0 are skipped), or None.
    map_lines: sequence of (map class index into MAP_LINE_CLASSES, points [M,3] ego frame), or
      None. Lines are polylines; consecutive points are joined.
    intrinsics: [V,3,3]; extrinsics: [V,4,4] ego-from-camera; image_size: (H, W).
    max_distance: boxes and map-line points farther than this (metres, in x-y) are not drawn.
  """
  h, w = (int(s) for s in image_size)
  intrinsics = np.asarray(intrinsics, np.float64)
  extrinsics = np.asarray(extrinsics, np.float64)
  if intrinsics.ndim != 3 or intrinsics.shape[1:] != (3, 3):
    raise ValueError(f"intrinsics must be [V,3,3], got {intrinsics.shape}")
  if extrinsics.shape != (len(intrinsics), 4, 4):
    raise ValueError(f"extrinsics must be [V,4,4] with V={len(intrinsics)}, got {extrinsics.shape}")
  seg_a, seg_b, seg_col = [], [], []
  if boxes is not None and len(boxes):
    boxes = np.asarray(boxes, np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 10:
      raise ValueError(f"boxes must be [N,10], got {boxes.shape}")
    keep = (boxes[:, 9] > 0.5) & (boxes[:, 7] >= 0) & \
        (np.hypot(boxes[:, 0], boxes[:, 1]) < max_distance)
    boxes = boxes[keep]
    if len(boxes):
      cls = boxes[:, 7].astype(int)
      if cls.max() >= len(CLASS_NAMES):
        raise ValueError(f"box class index {cls.max()} out of range for {len(CLASS_NAMES)} classes")
      corners = box_corners(boxes)
      edges = np.asarray(_EDGES)
      seg_a.append(corners[:, edges[:, 0]].reshape(-1, 3))
      seg_b.append(corners[:, edges[:, 1]].reshape(-1, 3))
      colors = np.asarray([CLASS_COLORS[CLASS_NAMES[c]] for c in cls])
      seg_col.append(np.repeat(colors, len(edges), axis=0))
  box_segments = (np.concatenate(seg_a) if seg_a else np.zeros((0, 3)),
                  np.concatenate(seg_b) if seg_b else np.zeros((0, 3)),
                  np.concatenate(seg_col) if seg_col else np.zeros((0, 3)))
  map_a, map_b, map_col = [], [], []
  for cls, pts in (map_lines or ()):
    pts = np.asarray(pts, np.float64)
    if not 0 <= int(cls) < len(MAP_LINE_CLASSES):
      raise ValueError(f"map line class {cls} out of range for {MAP_LINE_CLASSES}")
    if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) < 2:
      raise ValueError(f"map line points must be [M>=2,3], got {pts.shape}")
    near = np.hypot(pts[:, 0], pts[:, 1]) < max_distance
    near = near[:-1] | near[1:]
    if not near.any():
      continue
    map_a.append(pts[:-1][near])
    map_b.append(pts[1:][near])
    col = np.zeros(3)
    col[int(cls)] = 255
    map_col.append(np.repeat(col[None], int(near.sum()), axis=0))
  map_segments = (np.concatenate(map_a) if map_a else np.zeros((0, 3)),
                  np.concatenate(map_b) if map_b else np.zeros((0, 3)),
                  np.concatenate(map_col) if map_col else np.zeros((0, 3)))
  out = np.zeros((len(intrinsics), h, w, 6), np.uint8)
  for v in range(len(intrinsics)):
    cam_from_ego = np.linalg.inv(extrinsics[v])
    for channels, (a, b, col) in ((slice(0, 3), box_segments), (slice(3, 6), map_segments)):
      if not len(a):
        continue
      image = Image.new("RGB", (w, h))
      pa, pb, ok = project_segments(a, b, intrinsics[v], cam_from_ego)
      _draw(ImageDraw.Draw(image), pa, pb, ok, col, line_width, (h, w))
      out[v, :, :, channels] = np.asarray(image)
  return out
