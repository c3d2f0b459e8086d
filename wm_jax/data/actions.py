"""The ego's motion as the data carry it: the bicycle model, future trajectories, goal points and
driving commands (the keys `actions`, `trajectory`, `goal_point`, `command` of data/schema.py).

    out = future_actions(ego_poses, num_points=6, front_intrinsics=k, front_extrinsics=e,
                         image_size=(64, 128))       # ego_poses [T+K,4,4] -> frames 0..T-1
    rec = controls_to_record_actions(speed, steering, fps=12.0, num_points=6, front_intrinsics=k,
                                     front_extrinsics=e, image_size=(64, 128))   # speed [T+K]

Conventions (nuScenes, as everywhere in wm_jax.data): world and ego frames x forward, y left, z up;
the ego origin is the rear-axle centre on the ground; ego_pose is world-from-ego; extrinsics are
ego-from-camera with OpenCV camera axes (x right, y down, z forward); intrinsics are in pixels of an
image of `image_size` = (H, W), pixel (u, v) having its centre at (u + 0.5, v + 0.5).

Bicycle model. A planar state (x, y, yaw) is the rear-axle centre in the world (yaw counter-
clockwise from world x). Actions per frame t (schema.ACTION_NAMES): speed v_t (m/s, >= 0),
steering delta_t (road-wheel angle, rad, positive = left, |delta| < pi/2), accel
a_t = (v_{t+1} - v_t) / dt (the last frame repeats the previous value), yaw rate
w_t = v_t tan(delta_t) / WHEELBASE. Speed and steering are held over [t, t+1), so the pose at t+1 is
the exact circular-arc integration of the pose at t:

  yaw' = yaw + w dt
  x'   = x + (v / w) (sin yaw' - sin yaw)       (x + v dt cos yaw when w = 0)
  y'   = y - (v / w) (cos yaw' - cos yaw)       (y + v dt sin yaw when w = 0)

Future keys of frame t, with K = num_points (config.data.trajectory_points), from the poses of
frames t+1 .. t+K (so a clip of T frames needs T+K poses):

  trajectory[t, k]  (x, y) in metres of the ego origin at frame t+1+k, in the ego frame of frame t
                    (the height of the future pose in that frame is dropped).
  goal_point[t]     trajectory[t, K-1] as a ground point (z = 0 in the ego frame of t) projected
                    into the front camera (view 0): (u / W, v / H), so the image spans [0, 1] x
                    [0, 1]. A point less than GOAL_MIN_DEPTH in front of the camera (behind it, or
                    beside it: a stop, a sharp turn) is projected as if at depth GOAL_MIN_DEPTH, so
                    it lands off the image on the side where it lies and below the image; both
                    coordinates are then clipped to GOAL_RANGE = [-1, 2] (one image size beyond
                    each edge).
  command[t]        index into schema.COMMANDS of trajectory[t], from its end point (x, y) =
                    trajectory[t, K-1] and bearing b = atan2(y, x) (half the heading change along
                    a circular arc):
                      3 stop      hypot(x, y) < STOP_DISTANCE
                      1 left      b > TURN_BEARING and y > TURN_OFFSET
                      2 right     b < -TURN_BEARING and y < -TURN_OFFSET
                      0 straight  otherwise
                    The thresholds are in metres and radians of the trajectory, so their meaning
                    in time follows the horizon K / fps (12 fps, K = 6: stop = under 1 m/s).
"""

from __future__ import annotations

import numpy as np

from wm_jax.data import schema

WHEELBASE = 2.588  # metres (nuScenes' Renault Zoe)
STOP_DISTANCE = 0.5  # metres travelled over the K future frames below which the command is stop
TURN_BEARING = 0.1  # rad: bearing of the trajectory's end point beyond which it turns
TURN_OFFSET = 0.1  # metres: lateral offset of the end point a turn also needs
GOAL_MIN_DEPTH = 0.5  # metres: nearest depth in front of the camera a goal point is projected at
GOAL_RANGE = (-1.0, 2.0)  # goal_point coordinates are clipped to this range (image: [0, 1])

STRAIGHT, LEFT, RIGHT, STOP = (schema.COMMANDS.index(c) for c in ("straight", "left", "right",
                                                                   "stop"))


# --------------------------------------------------------------------------------------------
# bicycle model


def advance(state, speed, steering, dt, wheelbase=WHEELBASE):
  """Pose (x, y, yaw) after `dt` seconds at constant speed and steering (exact arc). float64."""
  x, y, yaw = (float(s) for s in state)
  w = speed * np.tan(steering) / wheelbase
  yaw2 = yaw + w * dt
  if abs(w * dt) < 1e-9:
    return np.array([x + speed * dt * np.cos(yaw), y + speed * dt * np.sin(yaw), yaw2])
  r = speed / w
  return np.array([x + r * (np.sin(yaw2) - np.sin(yaw)), y - r * (np.cos(yaw2) - np.cos(yaw)), yaw2])


def integrate(start, speed, steering, dt, wheelbase=WHEELBASE):
  """Poses [T,3] at frames 0..T-1 from `start` (x, y, yaw) and per-frame speed/steering [T]."""
  speed = np.asarray(speed, np.float64)
  steering = np.asarray(steering, np.float64)
  poses = [np.asarray(start, np.float64)]
  for t in range(len(speed) - 1):
    poses.append(advance(poses[-1], speed[t], steering[t], dt, wheelbase))
  return np.stack(poses)


def make_actions(speed, steering, dt, wheelbase=WHEELBASE):
  """Actions [T,4] (speed, steering, accel, yaw_rate) float32 from speed and steering [T]."""
  speed = np.asarray(speed, np.float64)
  steering = np.asarray(steering, np.float64)
  if speed.shape != steering.shape or speed.ndim != 1 or len(speed) == 0:
    raise ValueError(f"speed and steering must be equal-length 1-d arrays, got {speed.shape} and "
                     f"{steering.shape}")
  if not (np.all(np.isfinite(speed)) and np.all(np.isfinite(steering))):
    raise ValueError("speed and steering must be finite")
  if np.any(np.abs(steering) >= np.pi / 2):
    raise ValueError(f"steering must lie in (-pi/2, pi/2) rad, got max |steering| "
                     f"{np.abs(steering).max()}")
  if np.any(speed < 0):
    raise ValueError(f"speed must be >= 0 m/s, got {speed.min()} at frame {int(np.argmin(speed))}")
  accel = np.zeros_like(speed)
  if len(speed) > 1:
    accel[:-1] = np.diff(speed) / dt
    accel[-1] = accel[-2]
  yaw_rate = speed * np.tan(steering) / wheelbase
  return np.stack([speed, steering, accel, yaw_rate], -1).astype(np.float32)


def pose_matrix(x, y, yaw, z=0.0):
  """4x4 world-from-ego for a planar pose."""
  c, s = np.cos(yaw), np.sin(yaw)
  m = np.eye(4)
  m[:2, :2] = [[c, -s], [s, c]]
  m[:3, 3] = [x, y, z]
  return m


def integrate_poses(start, speed, steering, dt, wheelbase=WHEELBASE) -> np.ndarray:
  """World-from-ego [T,4,4] float64 of integrate(start, speed, steering, dt) on the ground."""
  return np.stack([pose_matrix(*s) for s in integrate(start, speed, steering, dt, wheelbase)])


# --------------------------------------------------------------------------------------------
# future keys


def relative_trajectory(ego_poses, num_points: int) -> np.ndarray:
  """trajectory [T,K,2] float64 of frames 0..T-1 from world-from-ego poses [T+K,4,4]."""
  poses = np.asarray(ego_poses, np.float64)
  k = int(num_points)
  num = len(poses) - k
  frames = np.arange(num)[:, None] + 1 + np.arange(k)[None]  # [T,K] frame of each point
  rel = poses[frames, :3, 3] - poses[:num, None, :3, 3]  # world offsets [T,K,3]
  local = np.einsum("tji,tkj->tki", poses[:num, :3, :3], rel)  # R_t^T @ offset
  return local[..., :2]


def project_goal(points, intrinsics, extrinsics, image_size) -> np.ndarray:
  """Ground points [...,2] (ego frame, z = 0) -> normalised image coordinates [...,2] float64.

  intrinsics [...,3,3] / extrinsics [...,4,4] (ego-from-camera) broadcast against the points'
  leading dims. See the module docstring for points near or behind the camera and the clipping.
  """
  points = np.asarray(points, np.float64)
  k = np.asarray(intrinsics, np.float64)
  e = np.asarray(extrinsics, np.float64)
  h, w = (float(s) for s in image_size)
  ego = np.concatenate([points, np.zeros(points.shape[:-1] + (1,))], -1)
  r, t = e[..., :3, :3], e[..., :3, 3]
  cam = np.einsum("...ji,...j->...i", r, ego - t)  # R^T (p - t): camera frame
  z = np.maximum(cam[..., 2], GOAL_MIN_DEPTH)
  uv = np.einsum("...ij,...j->...i", k[..., :2, :], np.stack([cam[..., 0] / z, cam[..., 1] / z,
                                                              np.ones_like(z)], -1))
  return np.clip(uv / np.array([w, h]), *GOAL_RANGE)


def trajectory_commands(trajectory) -> np.ndarray:
  """command [...] int32 (schema.COMMANDS) of trajectories [...,K,2], by the module's thresholds."""
  end = np.asarray(trajectory, np.float64)[..., -1, :]
  x, y = end[..., 0], end[..., 1]
  bearing = np.arctan2(y, x)
  command = np.full(x.shape, STRAIGHT, np.int32)
  command[(bearing > TURN_BEARING) & (y > TURN_OFFSET)] = LEFT
  command[(bearing < -TURN_BEARING) & (y < -TURN_OFFSET)] = RIGHT
  command[np.hypot(x, y) < STOP_DISTANCE] = STOP
  return command


def _camera(value, shape, name, num):
  arr = np.asarray(value, np.float64)
  if arr.shape != shape and arr.shape != (num,) + shape:
    raise ValueError(f"{name} must be {list(shape)} or [T={num}, {', '.join(map(str, shape))}], "
                     f"got {list(arr.shape)}")
  if not np.isfinite(arr).all():
    raise ValueError(f"{name} must be finite")
  return arr


def future_actions(ego_poses, *, num_points: int, front_intrinsics, front_extrinsics,
                   image_size) -> dict[str, np.ndarray]:
  """{'trajectory' [T,K,2] float32, 'goal_point' [T,2] float32, 'command' [T] int32}.

  Args:
    ego_poses: [T+K,4,4] world-from-ego of frames 0..T+K-1 at the clip's frame rate.
    num_points: K >= 1.
    front_intrinsics: [3,3] or [T,3,3] pixels of the front camera (view 0).
    front_extrinsics: [4,4] or [T,4,4] ego-from-camera of the front camera.
    image_size: (H, W) of the images the intrinsics are for.
  """
  k = int(num_points)
  if k < 1:
    raise ValueError(f"num_points must be >= 1, got {num_points}")
  poses = np.asarray(ego_poses, np.float64)
  if poses.ndim != 3 or poses.shape[1:] != (4, 4) or len(poses) <= k:
    raise ValueError(f"ego_poses must be [T+K,4,4] with T >= 1 and K=num_points={k}, got "
                     f"{list(poses.shape)}")
  if not np.isfinite(poses).all():
    frame = int(np.argwhere(~np.isfinite(poses))[0][0])
    raise ValueError(f"ego_poses must be finite; frame {frame} is not")
  num = len(poses) - k
  intrinsics = _camera(front_intrinsics, (3, 3), "front_intrinsics", num)
  extrinsics = _camera(front_extrinsics, (4, 4), "front_extrinsics", num)
  h, w = (int(s) for s in image_size)
  if h <= 0 or w <= 0:
    raise ValueError(f"image_size must be positive (H, W), got {image_size}")
  trajectory = relative_trajectory(poses, k)
  if intrinsics.ndim == 3:
    intrinsics = intrinsics[:num]
  if extrinsics.ndim == 3:
    extrinsics = extrinsics[:num]
  return {
      "trajectory": trajectory.astype(np.float32),
      "goal_point": project_goal(trajectory[:, -1], intrinsics, extrinsics, (h, w)).astype(
          np.float32),
      "command": trajectory_commands(trajectory),
  }


def _start_state(start_pose):
  """(x, y, yaw) and z of a start pose: None (the origin), (x, y, yaw) or a [4,4] world-from-ego."""
  if start_pose is None:
    return np.zeros(3), 0.0
  p = np.asarray(start_pose, np.float64)
  if p.shape == (3,):
    return p, 0.0
  if p.shape == (4, 4):
    return np.array([p[0, 3], p[1, 3], np.arctan2(p[1, 0], p[0, 0])]), float(p[2, 3])
  raise ValueError(f"start_pose must be None, (x, y, yaw) or a 4x4 world-from-ego, got shape "
                   f"{list(p.shape)}")


def controls_to_record_actions(speed, steering, fps: float, *, num_points: int, front_intrinsics,
                               front_extrinsics, image_size,
                               start_pose=None) -> dict[str, np.ndarray]:
  """Record keys of T frames from per-frame speed and steering [T+K] by the bicycle model.

  Returns {'actions' [T,4], 'trajectory' [T,K,2], 'goal_point' [T,2], 'command' [T] int32,
  'ego_pose' [T,4,4]} (float32 unless noted): the poses integrate speed and steering from
  `start_pose` (None: the world origin facing +x; (x, y, yaw); or a 4x4 world-from-ego, whose
  position, heading and height are kept) exactly as `integrate` does, and accel of frame T-1 is the
  change to frame T. Camera arguments as in `future_actions`.
  """
  k = int(num_points)
  speed = np.asarray(speed, np.float64)
  steering = np.asarray(steering, np.float64)
  if not fps > 0:
    raise ValueError(f"fps must be positive, got {fps}")
  if speed.ndim != 1 or len(speed) <= k:
    raise ValueError(f"speed and steering must be [T+K] with T >= 1 and K=num_points={k}, got "
                     f"{list(speed.shape)}")
  dt = 1.0 / float(fps)
  actions = make_actions(speed, steering, dt)
  state, z = _start_state(start_pose)
  poses = integrate_poses(state, speed, steering, dt)
  poses[:, 2, 3] = z
  out = future_actions(poses, num_points=k, front_intrinsics=front_intrinsics,
                       front_extrinsics=front_extrinsics, image_size=image_size)
  num = len(speed) - k
  return {"actions": actions[:num], **out, "ego_pose": poses[:num].astype(np.float32)}
