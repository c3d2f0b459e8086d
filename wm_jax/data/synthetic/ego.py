"""Kinematic bicycle model of the ego vehicle.

State (x, y, yaw) is the rear-axle centre in the world frame (x, y on the ground plane, yaw
counter-clockwise from world x), which is the nuScenes ego-frame origin. Actions per frame t (see
schema.ACTION_NAMES): speed v_t (m/s), steering delta_t (road-wheel angle, rad, positive = left),
accel a_t = (v_{t+1} - v_t) / dt (the last frame repeats the previous value), yaw rate
w_t = v_t tan(delta_t) / WHEELBASE. Speed and steering are held constant over [t, t+1), so the
pose at t+1 is the exact circular-arc integration of the pose at t:

  yaw' = yaw + w dt
  x'   = x + (v / w) (sin yaw' - sin yaw)       (x + v dt cos yaw when w = 0)
  y'   = y - (v / w) (cos yaw' - cos yaw)       (y + v dt sin yaw when w = 0)
"""

from __future__ import annotations

import numpy as np

WHEELBASE = 2.588  # metres (nuScenes' Renault Zoe)
MAX_STEERING = 0.6  # rad


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
