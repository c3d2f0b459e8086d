"""The evaluation report: CLU/TensorBoard + JSON summary with settings, side-by-side videos, CLI."""
import json
import os
import subprocess
import sys

import imageio
import numpy as np
import pytest

from tests.evaluation import videos
from wm_jax import evaluate
from wm_jax.evaluation import protocols, report
from wm_jax.evaluation import videos as videos_lib


def _feats(v):
  v = np.asarray(v, np.float64)
  return np.stack([v.mean((1, 2, 3, 4)), v.std((1, 2, 3, 4)), v[..., 0].mean((1, 2, 3)),
                   np.abs(np.diff(v, axis=1)).mean((1, 2, 3, 4))], -1)


def _img_feats(im):
  im = np.asarray(im, np.float64)
  return np.stack([im.mean((1, 2, 3)), im.std((1, 2, 3)), im[..., 1].mean((1, 2))], -1)


def _clips(n, seed=0):
  return np.stack([videos.translating(seed + s, 10, 24, dx=s % 3) for s in range(n)])[:, :, None]


def test_evaluate_videos_writes_metrics_settings_and_samples(tmp_path):
  p = protocols.replace(protocols.get("synthetic"), kid_subsets=3, kid_subset_size=10)
  ref = np.concatenate([_clips(6), _clips(6, seed=50)], axis=2)   # 2 views, 10 frames
  gen = np.clip(ref.astype(int) + 20, 0, 255).astype(np.uint8)
  batches = [(gen[:4], ref[:4]), (gen[4:], ref[4:])]
  r = evaluate.evaluate_videos(p, batches, workdir=tmp_path, fvd_features=_feats,
                               fid_features=_img_feats, fvd_dim=4, fid_dim=3, save_videos=3)
  assert r["fvd"] > 0 and r["fid"] > 0 and r["saved_videos"] == 3
  assert r["num_videos"] == 12   # each view is a video
  summary = json.loads((tmp_path / f"eval_{p.name}.json").read_text())
  assert summary["fvd"] == pytest.approx(r["fvd"])
  assert summary["protocol"]["kid_subset_size"] == 10
  assert summary["protocol"]["reference_frames"] == 1 and summary["protocol"]["metric_frames"] == 9
  events = [f for f in os.listdir(tmp_path / "eval") if f.startswith("events.out.tfevents")]
  assert events, "no TensorBoard event file"
  samples = sorted(os.listdir(tmp_path / "samples" / p.name))
  assert len(samples) == 3
  frames = np.stack(imageio.mimread(tmp_path / "samples" / p.name / samples[0]))
  assert frames.shape[0] == 10 and frames.shape[2] >= 2 * 24   # generated | ground truth
  assert frames.shape[1] >= 2 * 24                               # one row per view


def test_side_by_side_layout():
  g = np.zeros((2, 2, 4, 5, 3), np.uint8)
  r = np.full((2, 2, 4, 5, 3), 200, np.uint8)
  out = videos_lib.side_by_side(g, r, gap=1)
  assert out.shape == (2, 9, 11, 3)
  assert np.all(out[:, :4, :5] == 0) and np.all(out[:, :4, 6:] == 200)
  assert np.all(out[:, 5:, 6:] == 200) and np.all(out[:, 4] == 255)   # gap row
  with pytest.raises(ValueError, match="one shape"):
    videos_lib.side_by_side(g, r[:1])


def test_gif_and_curve_writing(tmp_path):
  frames = np.arange(3, dtype=np.uint8)[:, None, None, None] * np.full((3, 8, 8, 3), 60, np.uint8)
  (path,) = videos_lib.save_video(tmp_path / "a.gif", frames, fps=5, formats=("gif",))
  assert len(imageio.mimread(path)) == 3
  res = {"protocol": protocols.get("long_horizon").settings(), "fvd_curve": [1.0, 2.0, 4.0],
         "num_videos": 3}
  out = report.write_metrics(tmp_path, res, name="lh")
  assert json.loads(out.read_text())["fvd_curve"] == [1.0, 2.0, 4.0]


@pytest.mark.slow
def test_cli_on_npz_with_real_i3d(tmp_path):
  ref = np.concatenate([_clips(3), _clips(3, seed=50)], axis=2)   # the synthetic protocol's 2 views
  gen = np.clip(ref.astype(int) + np.random.default_rng(0).normal(0, 20, ref.shape), 0, 255)
  np.savez(tmp_path / "ref.npz", frames=ref)
  np.savez(tmp_path / "gen.npz", frames=gen.astype(np.uint8))
  cmd = [sys.executable, "-m", "wm_jax.evaluate", "--protocol=synthetic", f"--workdir={tmp_path}",
         f"--generated={tmp_path}/gen.npz", f"--reference={tmp_path}/ref.npz", "--save_videos=1"]
  subprocess.run(cmd, check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  summary = json.loads((tmp_path / "eval_synthetic.json").read_text())
  assert summary["fvd"] > 0 and summary["num_videos"] == 6
  assert "fid/kid (no --fid_weights)" in summary["skipped"]
