"""Camera rigs of the synthetic world: intrinsics, extrinsics, view adjacency.

Conventions (the same as nuScenes):
  ego frame     x forward, y left, z up; origin at the rear axle, on the ground.
  camera frame  OpenCV: x right, y down, z forward (the optical axis).
  extrinsics    ego-from-camera 4x4: p_ego = E @ p_cam.
  intrinsics    3x3 in pixels of the rendered image; pixel (u, v) has its centre at (u+0.5, v+0.5),
                so a camera-frame point p projects to (K @ p)[:2] / p[2] in that continuous frame.

Rigs are described at nuScenes' native 1600x900 and scaled to any image size with square pixels and
the native horizontal field of view: fx = fy = f_native * W / 1600, principal point at the centre.
"""

from __future__ import annotations

import dataclasses

import numpy as np

NATIVE_SIZE = (900, 1600)  # (H, W) of nuScenes camera images


@dataclasses.dataclass(frozen=True)
class CameraSpec:
  name: str            # nuScenes channel, e.g. 'CAM_FRONT'
  translation: tuple   # ego-frame position of the optical centre, metres
  yaw_deg: float       # heading of the optical axis in the ego frame, counter-clockwise from x
  focal_native: float  # focal length in pixels at NATIVE_SIZE
  pitch_deg: float = 0.0  # positive tilts the optical axis down


# Positions, headings and focal lengths close to the nuScenes calibration (scene-0061 era).
NUSCENES6 = (
    CameraSpec("CAM_FRONT", (1.70, 0.02, 1.51), 0.0, 1266.0),
    CameraSpec("CAM_FRONT_RIGHT", (1.55, -0.49, 1.50), -55.0, 1260.0),
    CameraSpec("CAM_BACK_RIGHT", (1.04, -0.48, 1.59), -110.0, 1260.0),
    CameraSpec("CAM_BACK", (0.03, 0.00, 1.58), 180.0, 809.0),
    CameraSpec("CAM_BACK_LEFT", (1.04, 0.48, 1.59), 110.0, 1260.0),
    CameraSpec("CAM_FRONT_LEFT", (1.52, 0.49, 1.51), 55.0, 1260.0),
)

# A Waymo-like ring of five roof cameras (names as Waymo's CameraName; clockwise from the front as
# waymo.CAMERA_RING): headings 0, -45, -90, 90, 45 degrees, the horizontal field of view of +-25.2
# degrees the Waymo Open Dataset paper gives its cameras (Sun et al. 2020, Table 3: focal
# 800 / tan(25.2 deg) ~ 1700 px at 1600 wide); positions approximate (roof, about 2.1 m high).
WAYMO5 = (
    CameraSpec("FRONT", (1.54, -0.02, 2.12), 0.0, 1700.0),
    CameraSpec("FRONT_RIGHT", (1.50, -0.13, 2.11), -45.0, 1700.0),
    CameraSpec("SIDE_RIGHT", (1.43, -0.15, 2.11), -90.0, 1700.0),
    CameraSpec("SIDE_LEFT", (1.43, 0.11, 2.11), 90.0, 1700.0),
    CameraSpec("FRONT_LEFT", (1.50, 0.09, 2.11), 45.0, 1700.0),
)

RIGS: dict[str, tuple[CameraSpec, ...]] = {
    "front": NUSCENES6[:1],
    "front2": NUSCENES6[:2],                              # CAM_FRONT, CAM_FRONT_RIGHT
    "front3": (NUSCENES6[5], NUSCENES6[0], NUSCENES6[1]),  # FRONT_LEFT, FRONT, FRONT_RIGHT
    "nuscenes6": NUSCENES6,
    "waymo5": WAYMO5,                                     # Waymo's five cameras (export_waymo.py)
}


@dataclasses.dataclass(frozen=True)
class Rig:
  """A rig at one image size. Arrays are float32; V = number of cameras."""
  name: str
  cameras: tuple[CameraSpec, ...]
  image_size: tuple[int, int]   # (H, W)
  intrinsics: np.ndarray        # [V,3,3] pixels
  extrinsics: np.ndarray        # [V,4,4] ego-from-camera
  view_adjacency: np.ndarray    # [V,V] bool, overlapping fields of view (incl. self)

  @property
  def num_views(self) -> int:
    return len(self.cameras)

  @property
  def channels(self) -> tuple[str, ...]:
    return tuple(c.name for c in self.cameras)


def rotation_ego_from_camera(yaw_deg: float, pitch_deg: float = 0.0) -> np.ndarray:
  """3x3 rotation whose columns are the camera's x (right), y (down), z (forward) in the ego frame."""
  yaw, pitch = np.deg2rad(yaw_deg), np.deg2rad(pitch_deg)
  forward = np.array([np.cos(yaw) * np.cos(pitch), np.sin(yaw) * np.cos(pitch), -np.sin(pitch)])
  right = np.array([np.sin(yaw), -np.cos(yaw), 0.0])
  down = np.cross(forward, right)
  return np.stack([right, down, forward], axis=1)


def horizontal_fov(camera: CameraSpec) -> float:
  """Full horizontal field of view in radians."""
  return 2.0 * np.arctan(NATIVE_SIZE[1] / 2.0 / camera.focal_native)


def _adjacency(cameras) -> np.ndarray:
  """Views whose horizontal fields of view overlap (or are the same view)."""
  v = len(cameras)
  adj = np.eye(v, dtype=bool)
  for i in range(v):
    for j in range(v):
      gap = abs((cameras[i].yaw_deg - cameras[j].yaw_deg + 180.0) % 360.0 - 180.0)
      half = np.rad2deg(horizontal_fov(cameras[i]) + horizontal_fov(cameras[j])) / 2.0
      adj[i, j] |= gap < half
  return adj


def make_rig(name: str, image_size: tuple[int, int]) -> Rig:
  """Builds rig `name` (a key of RIGS, e.g. 'front' or 'nuscenes6') for images of `image_size` = (H, W)."""
  if name not in RIGS:
    raise ValueError(f"unknown rig {name!r}; known rigs: {sorted(RIGS)}")
  h, w = (int(s) for s in image_size)
  if h <= 0 or w <= 0:
    raise ValueError(f"image_size must be positive (H, W), got {image_size}")
  cameras = RIGS[name]
  ks, es = [], []
  for cam in cameras:
    f = cam.focal_native * w / NATIVE_SIZE[1]
    ks.append([[f, 0.0, w / 2.0], [0.0, f, h / 2.0], [0.0, 0.0, 1.0]])
    e = np.eye(4)
    e[:3, :3] = rotation_ego_from_camera(cam.yaw_deg, cam.pitch_deg)
    e[:3, 3] = cam.translation
    es.append(e)
  return Rig(name, cameras, (h, w), np.asarray(ks, np.float32), np.asarray(es, np.float32),
             _adjacency(cameras))
