"""data/actions.py: the bicycle model, future trajectories, goal points and commands."""

import numpy as np
import pytest

from wm_jax.data import actions, schema
from wm_jax.data.synthetic import ego, rig as rig_lib

SIZE = (32, 64)
RIG = rig_lib.make_rig("front", SIZE)
K_FRONT, E_FRONT = RIG.intrinsics[0], RIG.extrinsics[0]
FPS = 10.0


def _record(speed, steering, k=4, start_pose=None):
  return actions.controls_to_record_actions(speed, steering, FPS, num_points=k,
                                            front_intrinsics=K_FRONT, front_extrinsics=E_FRONT,
                                            image_size=SIZE, start_pose=start_pose)


def _yaw(m):
  return np.arctan2(m[..., 1, 0], m[..., 0, 0])


def test_controls_integrate_like_the_ego_model():
  t = np.arange(14)
  speed = 5.0 + 0.3 * t
  steering = 0.2 * np.sin(t / 3.0)
  start = (12.0, -3.0, 0.7)
  rec = _record(speed, steering, k=4, start_pose=start)
  states = ego.integrate(start, speed, steering, 1.0 / FPS)
  assert rec["ego_pose"].shape == (10, 4, 4) and rec["ego_pose"].dtype == np.float32
  np.testing.assert_allclose(rec["ego_pose"][:, 0, 3], states[:10, 0], atol=1e-4)
  np.testing.assert_allclose(rec["ego_pose"][:, 1, 3], states[:10, 1], atol=1e-4)
  np.testing.assert_allclose(_yaw(rec["ego_pose"]), states[:10, 2], atol=1e-5)
  full = ego.make_actions(speed, steering, 1.0 / FPS)
  np.testing.assert_array_equal(rec["actions"], full[:10])
  assert rec["actions"][9, 2] == pytest.approx(0.3 * FPS)  # accel of frame T-1: change to frame T
  # The same from a 4x4 start pose (its height kept), and the trajectory does not depend on it.
  other = _record(speed, steering, k=4, start_pose=ego.pose_matrix(*start, z=1.5))
  np.testing.assert_allclose(other["ego_pose"][:, :2], rec["ego_pose"][:, :2], atol=1e-5)
  assert np.all(other["ego_pose"][:, 2, 3] == 1.5)
  origin = _record(speed, steering, k=4)
  np.testing.assert_allclose(origin["trajectory"], rec["trajectory"], atol=1e-4)
  np.testing.assert_allclose(origin["ego_pose"][0], np.eye(4), atol=1e-7)


def test_trajectory_is_the_future_in_the_ego_frame_of_each_frame():
  speed = np.full(12, 8.0)
  steering = np.linspace(-0.3, 0.3, 12)
  k = 5
  start = (3.0, 4.0, -2.0)
  rec = _record(speed, steering, k=k, start_pose=start)
  poses = ego.integrate(start, speed, steering, 1.0 / FPS)
  traj = rec["trajectory"]
  assert traj.shape == (7, k, 2) and traj.dtype == np.float32
  for t in range(7):
    x, y, yaw = poses[t]
    for j in range(k):
      d = poses[t + 1 + j, :2] - (x, y)
      want = (np.cos(yaw) * d[0] + np.sin(yaw) * d[1], -np.sin(yaw) * d[0] + np.cos(yaw) * d[1])
      np.testing.assert_allclose(traj[t, j], want, atol=1e-4)
  # A left-hand arc: points to the left (y > 0) and command left; a right arc: right.
  left = _record(np.full(10, 8.0), np.full(10, 0.35), k=k)
  assert np.all(left["trajectory"][:, -1, 1] > 0) and np.all(left["command"] == actions.LEFT)
  right = _record(np.full(10, 8.0), np.full(10, -0.35), k=k)
  assert np.all(right["trajectory"][:, -1, 1] < 0) and np.all(right["command"] == actions.RIGHT)
  straight = _record(np.full(10, 8.0), np.zeros(10), k=k)
  np.testing.assert_allclose(straight["trajectory"][0, :, 0], 0.8 * np.arange(1, k + 1), atol=1e-5)
  assert np.all(straight["command"] == actions.STRAIGHT)
  stop = _record(np.zeros(10), np.full(10, 0.3), k=k)
  assert np.all(stop["command"] == actions.STOP)
  assert schema.COMMANDS[actions.STOP] == "stop" and schema.COMMANDS[actions.LEFT] == "left"


def test_commands_follow_the_documented_thresholds():
  def traj(x, y):
    return np.array([[x / 2, y / 2], [x, y]])
  b = actions.TURN_BEARING
  cases = [
      (traj(0.3, 0.3), actions.STOP),  # under STOP_DISTANCE, whatever the direction
      (traj(10.0, 10.0 * np.tan(b * 1.1)), actions.LEFT),
      (traj(10.0, 10.0 * np.tan(b * 0.9)), actions.STRAIGHT),  # bearing below the threshold
      (traj(10.0, -10.0 * np.tan(b * 1.1)), actions.RIGHT),
      (traj(0.6, 0.09), actions.STRAIGHT),  # steep bearing, under TURN_OFFSET to the side
      (traj(-3.0, 1.0), actions.LEFT),  # reversing to the left
  ]
  got = actions.trajectory_commands(np.stack([c for c, _ in cases]))
  assert got.dtype == np.int32 and got.tolist() == [w for _, w in cases]


def test_goal_point_projects_the_last_point_into_the_front_camera():
  k = 6
  rec = _record(np.full(16, 12.0), np.full(16, 0.05), k=k)
  h, w = SIZE
  for t in range(len(rec["goal_point"])):
    x, y = rec["trajectory"][t, -1].astype(np.float64)
    cam = np.linalg.inv(E_FRONT.astype(np.float64)) @ np.array([x, y, 0.0, 1.0])
    assert cam[2] > actions.GOAL_MIN_DEPTH
    uvw = K_FRONT.astype(np.float64) @ cam[:3]
    want = np.clip([uvw[0] / uvw[2] / w, uvw[1] / uvw[2] / h], *actions.GOAL_RANGE)
    np.testing.assert_allclose(rec["goal_point"][t], want, atol=1e-5)
  # 7.2 m ahead, a little to the left: inside the image, left of the centre, below the horizon.
  u, v = rec["goal_point"][0]
  assert 0 < u < 0.5 and 0.5 < v < 1
  # Standing still: the goal is the ego itself, behind the camera -> bottom edge of the range.
  stop = _record(np.zeros(10), np.zeros(10), k=k)
  np.testing.assert_allclose(stop["goal_point"][:, 1], actions.GOAL_RANGE[1])
  assert np.all(np.abs(stop["goal_point"][:, 0] - 0.5) < 0.1)
  # A sharp slow left turn ends beside the camera: off the image to the left, clipped.
  turn = actions.project_goal(np.array([1.0, 6.0]), K_FRONT, E_FRONT, SIZE)
  assert turn[0] == actions.GOAL_RANGE[0]


def test_future_actions_accepts_per_frame_cameras_and_refuses_bad_input():
  speed, steering = np.full(9, 6.0), np.full(9, 0.1)
  poses = actions.integrate_poses((0, 0, 0), speed, steering, 1 / FPS)
  one = actions.future_actions(poses, num_points=3, front_intrinsics=K_FRONT,
                               front_extrinsics=E_FRONT, image_size=SIZE)
  per_frame = actions.future_actions(poses, num_points=3,
                                     front_intrinsics=np.broadcast_to(K_FRONT, (6, 3, 3)),
                                     front_extrinsics=np.broadcast_to(E_FRONT, (6, 4, 4)),
                                     image_size=SIZE)
  for key in ("trajectory", "goal_point", "command"):
    np.testing.assert_array_equal(one[key], per_frame[key])
  assert one["command"].dtype == np.int32 and one["trajectory"].shape == (6, 3, 2)
  kw = dict(front_intrinsics=K_FRONT, front_extrinsics=E_FRONT, image_size=SIZE)
  with pytest.raises(ValueError, match=r"ego_poses must be \[T\+K,4,4\] .*K=num_points=9"):
    actions.future_actions(poses, num_points=9, **kw)
  bad = poses.copy()
  bad[4, 0, 3] = np.nan
  with pytest.raises(ValueError, match="frame 4"):
    actions.future_actions(bad, num_points=3, **kw)
  with pytest.raises(ValueError, match="front_intrinsics must be"):
    actions.future_actions(poses, num_points=3, front_intrinsics=np.eye(4),
                           front_extrinsics=E_FRONT, image_size=SIZE)
  with pytest.raises(ValueError, match="num_points must be >= 1"):
    actions.future_actions(poses, num_points=0, **kw)
  with pytest.raises(ValueError, match="speed must be >= 0"):
    _record(np.array([1.0, -1.0, 1.0, 1.0, 1.0]), np.zeros(5), k=2)
  with pytest.raises(ValueError, match=r"T >= 1 and K=num_points=4"):
    _record(np.ones(4), np.zeros(4), k=4)
