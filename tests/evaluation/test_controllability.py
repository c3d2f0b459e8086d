"""Controllability measures on videos with known motion (translating / zooming textures)."""
import numpy as np
import pytest

from tests.evaluation import videos
from wm_jax.evaluation import controllability as ctl


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


def test_sweep_batch_sets_one_action():
  batch = {"actions": np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4),
           "frames": np.zeros((2, 3, 1, 4, 4, 3), np.uint8)}
  out = ctl.sweep_batch(batch, "steering", [-0.1, 0.0, 0.1])
  assert out["actions"].shape == (6, 3, 4) and out["frames"].shape == (6, 3, 1, 4, 4, 3)
  np.testing.assert_allclose(out["actions"][:, 0, 1], [-0.1, 0, 0.1, -0.1, 0, 0.1], atol=1e-7)
  np.testing.assert_array_equal(out["actions"][3:, :, 0], np.repeat(batch["actions"][1:, :, 0], 3, 0))
  with pytest.raises(ValueError, match="action 'yaw'"):
    ctl.sweep_batch(batch, "yaw", [0.0])
