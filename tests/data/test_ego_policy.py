"""The synthetic ego's driving plans (world.make_plan, autopilot) and its clips' future keys."""

import collections

import numpy as np
import pytest

from wm_jax.data import actions, schema
from wm_jax.data.synthetic import render, rig as rig_lib, world

SIZE = (16, 32)  # one tiny image size for the renders of this file
FPS, K = 12.0, 6
SEEDS = range(64)


def _scene(seed):
  return world.make_scene(seed, ("boston", "singapore")[seed % 2], length=200.0)


@pytest.fixture(scope="module")
def scenes():
  return {seed: _scene(seed) for seed in SEEDS}


def _future(scene, frames, fps=FPS, k=K):
  speed, steering = world.autopilot(scene, frames + k, fps)
  poses = actions.integrate_poses(scene.ego_start, speed, steering, 1.0 / fps)
  front = rig_lib.make_rig("front", SIZE)
  out = actions.future_actions(poses, num_points=k, front_intrinsics=front.intrinsics[0],
                               front_extrinsics=front.extrinsics[0], image_size=SIZE)
  return speed, steering, poses, out


def _first(scenes, manoeuvre):
  return next(s for s in scenes.values() if s.ego_plan.manoeuvre == manoeuvre)


def _route_s0(plan):
  return plan.route_s[np.argmin(np.sum((plan.route - plan.state0[:2]) ** 2, axis=1))]


def test_manoeuvres_come_in_the_documented_shares_and_are_deterministic(scenes):
  counts = collections.Counter(s.ego_plan.manoeuvre for s in scenes.values())
  assert sorted(counts) == sorted(world.MANOEUVRES)  # every manoeuvre occurs, turns never fall back
  n = len(SEEDS)
  for name, p in zip(world.MANOEUVRES, world.MANOEUVRE_WEIGHTS):
    sd = np.sqrt(n * p * (1 - p))
    assert abs(counts[name] - n * p) <= 3 * sd, (name, counts[name], n * p)
  assert sum(world.MANOEUVRE_WEIGHTS) == pytest.approx(1.0)
  for seed in (5, 13):  # the same seed gives the same plan, start and controls
    a, b = scenes[seed], _scene(seed)
    assert a.ego_plan.manoeuvre == b.ego_plan.manoeuvre
    np.testing.assert_array_equal(a.ego_start, b.ego_start)
    for x, y in zip(world.autopilot(a, 10, FPS), world.autopilot(b, 10, FPS)):
      np.testing.assert_array_equal(x, y)
  # Causal: a longer clip starts with the shorter one's controls.
  short, long = world.autopilot(scenes[13], 5, FPS), world.autopilot(scenes[13], 12, FPS)
  np.testing.assert_array_equal(short[1], long[1][:5])


def test_steering_varies_and_the_ego_stays_on_the_road(scenes):
  sustained = []
  for scene in scenes.values():
    speed, steering, poses, _ = _future(scene, 60 - K)  # 5 s
    margin = world.road_margin(scene, poses[:, :2, 3])
    assert margin.min() > 0, (scene.seed, scene.ego_plan.manoeuvre, margin.min())
    assert np.abs(steering).max() <= 0.6 and speed.min() >= 0
    runs = np.convolve(np.abs(steering[:8]) > 0.05, np.ones(4), "valid")  # an 8-frame clip
    sustained.append(bool((runs == 4).any()))
  # A quarter of the clips steer more than 0.05 rad for 4 frames (1/3 s) or longer.
  assert np.mean(sustained) >= 0.18, np.mean(sustained)


def test_turns_and_stops_give_their_commands(scenes):
  for name, command, sign in (("turn_left", actions.LEFT, 1), ("turn_right", actions.RIGHT, -1)):
    scene = next(s for s in scenes.values() if s.ego_plan.manoeuvre == name and
                 _route_s0(s.ego_plan) < s.ego_plan.turn[0])  # still before the bend at frame 0
    speed, steering, poses, out = _future(scene, 72)  # 6 s: through the bend onto the side road
    turning = out["command"] == command
    assert turning.sum() >= 6, (name, out["command"])
    assert not (out["command"] == (actions.RIGHT if sign > 0 else actions.LEFT)).any()
    assert np.all(sign * out["trajectory"][turning, -1, 1] > 0)
    assert np.all(sign * steering[:72][turning] > 0)
    # It ends on the side road: its heading is the side road's, a quarter turn from the main one.
    plan = scene.ego_plan
    main = plan.route_heading[np.searchsorted(plan.route_s, plan.turn[0]) - 2]  # before the bend
    assert sign * (plan.route_heading[-1] - main) == pytest.approx(np.pi / 2, abs=1e-6)
    yaw = np.arctan2(poses[-1, 1, 0], poses[-1, 0, 0])
    assert abs((yaw - plan.route_heading[-1] + np.pi) % (2 * np.pi) - np.pi) < 0.05
    assert speed.min() < 7.0  # slowed down for the bend
  scene = next(s for s in scenes.values() if s.ego_plan.manoeuvre == "stop" and
               world.autopilot(s, 1, FPS)[0][0] == 0.0)  # standing at frame 0
  speed, _, _, out = _future(scene, 12)
  standing = np.array([speed[t:t + K + 1].max() == 0 for t in range(12)])
  assert standing.any() and np.all(out["command"][standing] == actions.STOP)
  np.testing.assert_allclose(out["trajectory"][standing], 0.0, atol=1e-6)
  np.testing.assert_allclose(out["goal_point"][standing, 1], actions.GOAL_RANGE[1])


def test_rendered_clip_keys_agree_with_its_poses(scenes):
  scene = _first(scenes, "turn_left")
  t = 3
  rec = render.render_clip(scene, "front", num_frames=t, fps=FPS, image_size=SIZE,
                           trajectory_points=K, layout=False)
  sizes = schema.validate(rec, source="synthetic", index=0)
  assert sizes["K"] == K and rec["command"].dtype == np.int32
  _, _, poses, out = _future(scene, t)
  np.testing.assert_allclose(rec["ego_pose"], poses[:t], atol=1e-4)
  for key in ("trajectory", "goal_point", "command"):
    np.testing.assert_allclose(rec[key], out[key], atol=1e-5, err_msg=key)
  # Recomputed from the poses alone: trajectory point k of frame t is pose t+1+k in frame t.
  for i in range(t):
    local = np.linalg.inv(poses[i]) @ np.append(poses[i + K, :3, 3], 1.0)
    np.testing.assert_allclose(rec["trajectory"][i, -1], local[:2], atol=1e-4)
  np.testing.assert_array_equal(rec["command"], actions.trajectory_commands(rec["trajectory"]))
  np.testing.assert_allclose(rec["goal_point"], actions.project_goal(
      rec["trajectory"][:, -1], rec["intrinsics"][0, 0], rec["extrinsics"][0, 0], SIZE), atol=1e-6)


def test_given_actions_drive_the_clip_and_its_future(scenes):
  scene = scenes[0]
  t, k = 3, 4
  acts = np.stack([np.full(t, 6.0), np.full(t, 0.3)], -1)  # T rows: held for the K future frames
  rec = render.render_clip(scene, "front", num_frames=t, fps=FPS, image_size=SIZE, actions=acts,
                           trajectory_points=k, layout=False)
  want = actions.controls_to_record_actions(
      np.full(t + k, 6.0), np.full(t + k, 0.3), FPS, num_points=k,
      front_intrinsics=rec["intrinsics"][0, 0], front_extrinsics=rec["extrinsics"][0, 0],
      image_size=SIZE, start_pose=scene.ego_start)
  for key, value in want.items():
    np.testing.assert_allclose(rec[key], value, atol=1e-4, err_msg=key)
  assert np.all(rec["command"] == actions.LEFT) and np.all(rec["trajectory"][:, -1, 1] > 0)
  # T+K rows: the future follows the given rows (here: braking to a stop after the clip).
  full = np.stack([np.r_[np.full(t, 6.0), np.zeros(k)], np.zeros(t + k)], -1)
  rec = render.render_clip(scene, "front", num_frames=t, fps=FPS, image_size=SIZE, actions=full,
                           trajectory_points=k, layout=False)
  np.testing.assert_allclose(rec["trajectory"][-1, :, 0], 0.5, atol=1e-4)  # one 0.5 m step
  np.testing.assert_allclose(rec["actions"][-1], [6.0, 0.0, -6.0 * FPS, 0.0], atol=1e-3)
  with pytest.raises(ValueError, match=r"actions must be \[T=3 or T\+K=7, 2 or 4\]"):
    render.render_clip(scene, "front", num_frames=t, image_size=SIZE, actions=np.zeros((5, 2)),
                       trajectory_points=k)


def test_a_named_manoeuvre_changes_only_the_plan(scenes):
  drawn = scenes[3]
  for name in ("lane_keep", "turn_right"):
    forced = world.make_scene(3, "singapore", length=200.0, manoeuvre=name)
    assert forced.ego_plan.manoeuvre == name
    np.testing.assert_array_equal(forced.static, drawn.static)
    assert [r.s[-1] for r in forced.roads] == [r.s[-1] for r in drawn.roads]
  keep = world.make_scene(3, "singapore", length=200.0, manoeuvre="lane_keep")
  ss = keep.ego_s0 + np.linspace(-2.0, 2.0, 401)
  lane, heading = keep.roads[0].offset_points(ss, np.full(len(ss), keep.ego_lane_u))
  gap = np.hypot(*(lane - keep.ego_start[:2]).T)
  assert gap.min() < 0.02  # on its lane's centre line
  assert abs(keep.ego_start[2] - heading[np.argmin(gap)]) < 1e-3  # along the road
  with pytest.raises(ValueError, match="unknown manoeuvre 'drift'"):
    world.make_scene(3, manoeuvre="drift")


def test_a_steering_takeover_holds_a_drawn_value_from_a_drawn_frame(scenes):
  scene, frames = scenes[3], 6
  speed, steering = world.autopilot(scene, frames + K, FPS)
  switches, values = set(), []
  for seed in range(40):
    v, s = world.takeover(speed, steering, seed, num_frames=frames, max_steering=0.3)
    np.testing.assert_array_equal(v, speed)
    changed = np.flatnonzero(s != steering)
    j = int(changed[0])
    assert 1 <= j <= frames - 1
    np.testing.assert_array_equal(s[:j], steering[:j])   # the plan's steering up to the takeover
    assert np.all(s[j:] == s[j]) and abs(s[j]) <= 0.3     # then one value, to the last look-ahead
    switches.add(j)
    values.append(s[j])
    again = world.takeover(speed, steering, seed, num_frames=frames, max_steering=0.3)[1]
    np.testing.assert_array_equal(again, s)              # deterministic per seed
  assert switches == set(range(1, frames))
  assert min(values) < -0.15 and max(values) > 0.15
  with pytest.raises(ValueError, match="num_frames >= 2"):
    world.takeover(speed, steering, 0, num_frames=1, max_steering=0.3)
  with pytest.raises(ValueError, match="max_steering 0.9"):
    world.takeover(speed, steering, 0, num_frames=frames, max_steering=0.9)
