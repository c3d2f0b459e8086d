"""Controllability measures on videos with known motion (translating / zooming textures), the
commanded batches of a sweep, and the controllability protocol end to end with stand-in
generators: one that moves the image as the actions say (reads ~1) and action-free ones (read 0)."""
import json
import os

import imageio.v2 as imageio
import numpy as np
import pytest
import scipy.ndimage

from tests.evaluation import videos
from wm_jax import evaluate
from wm_jax.data import actions as actions_lib
from wm_jax.evaluation import controllability as ctl
from wm_jax.evaluation import protocols


@pytest.mark.parametrize("dx,dy", [(3.0, 0.0), (-2.5, 1.0), (0.4, -0.7)])
def test_phase_correlation_recovers_known_shift(dx, dy):
  v = videos.translating(0, 2, 48, dx=dx, dy=dy)
  # translating() samples texture at x + dx t, so content moves by -dx on screen.
  got = ctl.phase_correlation(v[0], v[1])
  np.testing.assert_allclose(got, [-dy, -dx], atol=0.2)


def test_steering_sweep_monotonic_and_sign():
  steers = np.linspace(-0.3, 0.3, 5)
  # "Generated" videos: scene shift proportional to steering (+ a left yaw moves the scene right).
  vids = np.stack([np.stack([videos.translating(n, 4, 40, dx=-8 * s) for s in steers])
                   for n in range(3)])
  r = ctl.sweep(vids, steers, "horizontal_shift", expected_sign=1.0, threshold=0.5)
  assert r["spearman"] > 0.95 and r["spearman_scene_median"] == pytest.approx(1.0)
  assert r["sign_correct"] == 1.0 and r["detected_scenes"] == 3
  np.testing.assert_allclose(np.array(r["motion"])[0], 8 * steers, atol=0.2)
  flipped = ctl.sweep(vids, steers, expected_sign=-1.0, threshold=0.5)
  assert flipped["sign_correct"] == 0.0


def test_uncontrolled_videos_score_low():
  steers = np.linspace(-0.3, 0.3, 5)
  rng = np.random.default_rng(0)
  vids = np.stack([np.stack([videos.translating(n * 5 + i, 3, 40, dx=rng.uniform(-2, 2))
                             for i in range(5)]) for n in range(4)])
  r = ctl.sweep(vids, steers)
  assert abs(r["spearman"]) < 0.6
  static = np.repeat(vids[:, :, :1], 3, axis=2)   # no motion at all: nothing detected
  assert ctl.sweep(static, steers, threshold=0.5)["detected_scenes"] == 0


def test_speed_sweep_expansion():
  speeds = np.array([0.0, 0.01, 0.02, 0.04])
  vids = np.stack([np.stack([videos.translating(n, 3, 64, zoom=z) for z in speeds])
                   for n in range(2)])
  r = ctl.sweep(vids, speeds, "expansion_rate", threshold=0.005)
  assert r["spearman"] > 0.95 and r["sign_correct"] == 1.0
  rates = np.array(r["motion"])
  assert abs(rates[0, 0]) < 0.004 and rates[0, -1] == pytest.approx(0.04, rel=0.35)


def test_bad_inputs():
  with pytest.raises(ValueError, match="S=3"):
    ctl.sweep(np.zeros((1, 2, 3, 8, 8, 3)), [0, 1, 2])
  with pytest.raises(ValueError, match="measure 'nope'"):
    ctl.sweep(np.zeros((1, 2, 3, 8, 8, 3)), [0, 1], measure="nope")


def test_on_the_synthetic_world_renderer():
  """Ground truth from the built-in world: rendered clips with commanded steering/speed."""
  from wm_jax.data.synthetic import render, world

  def clip(scene, speed, steer):
    acts = np.stack([np.full(5, speed), np.full(5, steer)], 1)
    r = render.render_clip(scene, "front", num_frames=5, fps=10.0, image_size=(64, 128),
                           actions=acts, layout=False)
    return r["frames"][:, 0]

  scenes = [world.make_scene(s) for s in (0, 1)]
  steers = np.linspace(-0.2, 0.2, 5)          # rad, positive = left
  vids = np.stack([np.stack([clip(sc, 8.0, s) for s in steers]) for sc in scenes])
  r = ctl.sweep(vids, steers, "horizontal_shift", expected_sign=1.0, threshold=1.0)
  assert r["spearman"] > 0.9 and r["sign_correct"] == 1.0 and r["detected_scenes"] == 2, r
  speeds = np.array([2.0, 5.0, 10.0, 20.0])   # m/s
  vids = np.stack([np.stack([clip(sc, v, 0.0) for v in speeds]) for sc in scenes])
  r = ctl.sweep(vids, speeds, "expansion_rate", threshold=0.01)
  assert r["spearman"] > 0.9 and r["sign_correct"] == 1.0, r


def _scenes(n, frames=4, size=48, front=1, speed=10.0):
  """A schema batch of n static scenes (a texture per scene and view), 2 views of which view
  `front` looks forward (extrinsics' camera z axis along ego x) and the other to the right."""
  tex = np.stack([np.stack([videos.texture(10 * b + v, size) for v in range(2)])
                  for b in range(n)])                                    # [n, V, H, W, 3]
  frames = np.repeat(tex[:, None], frames, axis=1).astype(np.uint8)     # [n, T, V, H, W, 3]
  ext = np.tile(np.eye(4, dtype=np.float32), (n, frames.shape[1], 2, 1, 1))
  ext[:, :, :, :3, :3] = [[0, 0, 1], [-1, 0, 0], [0, -1, 0]]           # OpenCV axes, facing +x
  side = 1 - front
  ext[:, :, side, :3, :3] = [[-1, 0, 0], [0, 0, -1], [0, -1, 0]]       # facing -y (right)
  k = np.array([[size, 0, size / 2], [0, size, size / 2], [0, 0, 1]], np.float32)
  acts = np.zeros((n, frames.shape[1], 4), np.float32)
  acts[..., 0] = speed
  acts[..., 1] = 0.02 * np.arange(n)[:, None]                           # recorded steering
  return {"frames": frames, "actions": acts, "fps": np.full(n, 10.0, np.float32),
          "intrinsics": np.tile(k, (n, frames.shape[1], 2, 1, 1)), "extrinsics": ext,
          "ego_pose": np.tile(np.eye(4, dtype=np.float32), (n, frames.shape[1], 1, 1))}


def _warp(img, dx, scale):
  """img with its content moved right by dx pixels and magnified by `scale` about the center
  (wrapping at the borders)."""
  h, w = img.shape[:2]
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
  cy, cx = (h - 1) / 2, (w - 1) / 2
  coords = [(yy - cy) / scale + cy, (xx - cx) / scale + cx - dx]
  out = [scipy.ndimage.map_coordinates(img[..., c].astype(np.float64), coords, order=1,
                                       mode="grid-wrap") for c in range(3)]
  return np.clip(np.rint(np.stack(out, -1)), 0, 255).astype(np.uint8)


PX_PER_RAD = 20.0     # the steered stand-in's image shift per frame and rad of steering
ZOOM_PER_MPS = 0.003  # its magnification per frame and m/s of speed


def _steered_sample(n_ref=1, front=1):
  """A stand-in generator that follows the actions: from the last reference frame, each predicted
  frame moves the forward view right by PX_PER_RAD * steering (left steering: scene moves right)
  and magnifies it by 1 + ZOOM_PER_MPS * speed; the side view moves the other way."""
  calls = []

  def sample(batch, i):
    calls.append((i, batch))
    frames = np.array(batch["frames"])
    acts = np.asarray(batch["actions"], np.float64)
    for b in range(len(frames)):
      dx, scale = 0.0, 1.0
      for t in range(n_ref, frames.shape[1]):
        dx += PX_PER_RAD * acts[b, t, 1]
        scale *= 1 + ZOOM_PER_MPS * acts[b, t, 0]
        for v in range(frames.shape[2]):
          frames[b, t, v] = _warp(frames[b, n_ref - 1, v], dx if v == front else -dx, scale)
    return frames

  return sample, calls


def _action_free_sample(fixed_noise=True, n_ref=1):
  """A stand-in generator that ignores the actions: each predicted frame moves by a random shift
  drawn from the batch index i (the protocol's fixed noise) or from a fresh stream per call."""
  fresh = np.random.default_rng(123)

  def sample(batch, i):
    rng = np.random.default_rng(i) if fixed_noise else fresh
    frames = np.array(batch["frames"])
    for b in range(len(frames)):
      dx = 0.0
      for t in range(n_ref, frames.shape[1]):
        dx += rng.uniform(-3, 3)
        for v in range(frames.shape[2]):
          frames[b, t, v] = _warp(frames[b, n_ref - 1, v], dx, 1.0)
    return frames

  return sample


def _protocol(**changes):
  return protocols.replace(protocols.get("controllability"), **changes)


def test_commanded_batch_keeps_the_reference_frames_and_follows_the_bicycle_model():
  batch = _scenes(2, frames=4)
  out = ctl.command_batch(batch, "steering", 0.25, n_ref=2, num_points=3)
  np.testing.assert_array_equal(out["actions"][:, :2], batch["actions"][:, :2])   # recorded
  np.testing.assert_allclose(out["actions"][:, 2:, 1], 0.25)                       # commanded
  np.testing.assert_allclose(out["actions"][:, 2:, 0], 10.0)                       # speed kept
  np.testing.assert_array_equal(out["frames"], batch["frames"])
  np.testing.assert_array_equal(out["ego_pose"], batch["ego_pose"])
  assert batch["actions"][0, 2, 1] == 0.0   # the input batch is not changed
  # Every key is what the bicycle model gives for the commanded controls (3 look-ahead frames
  # past the clip, holding the command), with the front camera view 0.
  b = 1
  speed = np.full(7, 10.0)
  steer = np.array([0.02, 0.02, 0.25, 0.25, 0.25, 0.25, 0.25])
  rec = actions_lib.controls_to_record_actions(
      speed, steer, 10.0, num_points=3, front_intrinsics=batch["intrinsics"][b, :, 0],
      front_extrinsics=batch["extrinsics"][b, :, 0], image_size=(48, 48))
  np.testing.assert_allclose(out["actions"][b, 2:], rec["actions"][2:], rtol=1e-6)
  assert out["actions"][b, 2, 3] > 0.9   # yaw rate v tan(delta) / L of the command
  for key in ("trajectory", "goal_point", "command"):
    np.testing.assert_allclose(out[key][b], rec[key], rtol=1e-6, err_msg=key)
  assert out["trajectory"].shape == (2, 4, 3, 2) and out["command"].dtype == np.int32
  right = ctl.command_batch(batch, "steering", -0.25, n_ref=2, num_points=3)
  straight = ctl.command_batch(batch, "steering", 0.0, n_ref=2, num_points=3)
  assert list(out["command"][b, 2:]) == [actions_lib.LEFT] * 2
  assert list(right["command"][b, 2:]) == [actions_lib.RIGHT] * 2
  assert list(straight["command"][b]) == [actions_lib.STRAIGHT] * 4
  # The last reference frame's trajectory looks ahead into the commanded turn.
  ends = [x["trajectory"][b, 1, -1, 1] for x in (right, straight, out)]
  assert ends[0] < -0.1 and abs(ends[1]) < 0.05 and ends[2] > 0.1, ends
  fast = ctl.command_batch(batch, "speed", 20.0, n_ref=1, num_points=3)
  np.testing.assert_allclose(fast["actions"][:, 1:, 0], 20.0)
  np.testing.assert_allclose(fast["actions"][:, 1:, 1], batch["actions"][:, 1:, 1])
  np.testing.assert_allclose(fast["actions"][:, 0], batch["actions"][:, 0])
  with pytest.raises(ValueError, match="action 'yaw'"):
    ctl.command_batch(batch, "yaw", 0.0, n_ref=1, num_points=3)
  with pytest.raises(ValueError, match="commanded steering 1.6 rad"):
    ctl.command_batch(batch, "steering", 1.6, n_ref=1, num_points=3)
  with pytest.raises(ValueError, match="commanded speed -1.0 m/s"):
    ctl.command_batch(batch, "speed", -1.0, n_ref=1, num_points=3)
  with pytest.raises(ValueError, match="n_ref=4 reference frames of 4"):
    ctl.command_batch(batch, "speed", 1.0, n_ref=4, num_points=3)
  with pytest.raises(ValueError, match=r"needs batch\['intrinsics'\]"):
    ctl.command_batch({k: v for k, v in batch.items() if k != "intrinsics"}, "speed", 1.0,
                      n_ref=1, num_points=3)


def test_front_view_is_the_forward_camera():
  assert ctl.front_view(_scenes(1, front=1)) == 1 and ctl.front_view(_scenes(1, front=0)) == 0


def test_summarize_constant_motion_reads_zero():
  r = ctl.summarize([-1.0, 0.0, 1.0], [[2.0, 2.0, 2.0], [0.5, 0.5, 0.5]], threshold=0.1)
  assert r["spearman"] == 0.0 and r["spearman_scene_median"] == 0.0
  assert r["detected_scenes"] == 0 and np.isnan(r["sign_correct"]) and r["sign_correct_all"] == 0
  assert [s["spearman"] for s in r["per_scene"]] == [0.0, 0.0]
  with pytest.raises(ValueError, match="two distinct action values"):
    ctl.summarize([1.0, 1.0], [[0.0, 1.0]])
  with pytest.raises(ValueError, match="not finite"):
    ctl.summarize([0.0, 1.0], [[0.0, np.nan]])


def test_protocol_reads_one_on_a_generator_that_follows_the_actions(tmp_path):
  steers = (-0.3, -0.15, 0.0, 0.15, 0.3)
  p = _protocol(num_clips=8, steering_values=steers, speed_values=(2.0, 6.0, 10.0),
                strip_scenes=2)
  sample, calls = _steered_sample()
  batches = [_scenes(5), {k: v[:3] for k, v in _scenes(5).items()}]   # 8 scenes in 2 batches
  r = evaluate.evaluate_controllability(p, sample, batches, workdir=tmp_path, num_points=3)
  st = r["steering"]
  assert st["spearman"] > 0.95 and st["spearman_scene_median"] == pytest.approx(1.0)
  assert st["sign_correct"] == 1.0 and st["sign_correct_all"] == 1.0
  assert st["detected_scenes"] == st["num_scenes"] == r["num_scenes"] == 8
  # The forward view (view 1 here) is measured: PX_PER_RAD * steering pixels per frame.
  np.testing.assert_allclose(np.array(st["motion"]), np.tile(PX_PER_RAD * np.array(steers), (8, 1)),
                             atol=0.5)
  sp = r["speed"]
  # 3 values pooled over 8 scenes: ties in the command cap the pooled Spearman near 0.94.
  assert sp["spearman"] > 0.9 and sp["spearman_scene_median"] == 1.0 and sp["sign_correct"] == 1.0
  np.testing.assert_allclose(np.array(sp["motion"])[0], ZOOM_PER_MPS * np.array([2.0, 6.0, 10.0]),
                             rtol=0.35)
  # Each batch is generated once per commanded value, with its own index (the noise key).
  assert [i for i, _ in calls] == [0] * 8 + [1] * 8
  summary = json.loads((tmp_path / f"eval_{p.name}.json").read_text())
  for key in ("steering_spearman", "steering_sign_correct", "steering_sign_correct_all",
              "steering_detected_scenes", "speed_spearman"):
    assert summary[key] == pytest.approx(r[key])
  assert summary["steering"]["per_scene"][0]["slope"] == pytest.approx(PX_PER_RAD, rel=0.05)
  assert summary["protocol"]["steering_values"] == list(steers)
  out = tmp_path / "controllability" / p.name
  assert sorted(os.listdir(out)) == ["speed_motion.png", "steering_motion.png",
                                     "strip_speed_scene000.png", "strip_speed_scene001.png",
                                     "strip_steering_scene000.png", "strip_steering_scene001.png"]
  assert sorted(summary["files"]) == sorted(str(out / f) for f in os.listdir(out))
  strip = imageio.imread(out / "strip_steering_scene000.png")
  assert strip.shape == (5 * 50 - 2, 96 + 4 * 50 - 2, 3)   # 5 commands x (last reference + 3)
  # Row s, column j: the forward view of the frame generated for steering s, as generated.
  frames = sample(ctl.command_batch(batches[0], "steering", steers[4], n_ref=1, num_points=3), 0)
  np.testing.assert_array_equal(strip[4 * 50:4 * 50 + 48, 96 + 50:96 + 50 + 48], frames[0, 1, 1])
  plot = imageio.imread(out / "steering_motion.png")
  assert plot.ndim == 3 and plot.shape[0] > 100 and plot.std() > 0
  from tensorboard.backend.event_processing import event_accumulator
  events = event_accumulator.EventAccumulator(str(tmp_path / "eval"), size_guidance={"tensors": 0})
  events.Reload()
  tags = set(events.Tags()["tensors"])
  for tag in ("steering_spearman", "speed_sign_correct", "steering_motion", "speed_motion",
              "strip_steering_scene001"):
    assert f"{p.name}/{tag}" in tags, (tag, tags)


def test_protocol_reads_zero_on_an_action_free_generator(tmp_path):
  p = _protocol(num_clips=8, strip_scenes=0)
  r = evaluate.evaluate_controllability(p, _action_free_sample(), [_scenes(8)], workdir=tmp_path,
                                        num_points=3)
  st = r["steering"]
  motion = np.array(st["motion"])
  assert np.ptp(motion[:, 0]) > 1.0   # the scenes move, each the same whatever the command
  assert np.all(motion == motion[:, :1])
  assert st["spearman"] == 0.0 and st["spearman_scene_median"] == 0.0
  assert st["detected_scenes"] == 0 and st["sign_correct_all"] == 0.0
  # Without fixed noise an action-free generator's motion is random: no correlation, the sign
  # right about half the time.
  r = evaluate.evaluate_controllability(p, _action_free_sample(fixed_noise=False), [_scenes(8)],
                                        workdir=tmp_path, num_points=3)
  assert abs(r["steering_spearman"]) < 0.35 and 0.2 <= r["steering_sign_correct_all"] <= 0.8


def test_controllability_protocol_settings():
  p = protocols.get("controllability")
  assert p.kind == "controllability" and p.num_clips >= 8 and not p.future_layout
  assert len(p.steering_values) == 5 and min(p.steering_values) < 0 < max(p.steering_values)
  with pytest.raises(ValueError, match="sweeps nothing"):
    _protocol(steering_values=())
  with pytest.raises(ValueError, match=r"speed_values \(3.0, 3.0\) needs two distinct"):
    _protocol(speed_values=(3.0, 3.0))
  with pytest.raises(ValueError, match="kind 'fvd'"):
    _protocol(kind="fvd")
  with pytest.raises(ValueError, match="kind 'fidelity', not 'controllability'"):
    evaluate.evaluate_controllability(protocols.get("synthetic"), None, [], workdir="x",
                                      num_points=3)
