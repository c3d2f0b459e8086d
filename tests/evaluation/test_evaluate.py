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


def _npz(path, **arrays):
  np.savez(path, **arrays)
  return str(path)


def _full_range(clips):
  """The clips with one pixel 0 and one 255, so their float form spans [0, 1] exactly."""
  clips = clips.copy()
  clips.flat[0], clips.flat[1] = 0, 255
  return clips


def test_npz_frames_not_uint8_are_refused_with_file_dtype_and_range(tmp_path):
  ref = _full_range(_clips(2))
  ref_path = _npz(tmp_path / "ref.npz", frames=ref)
  unit = _npz(tmp_path / "gen.npz", frames=ref.astype(np.float32) / 255.0)
  with pytest.raises(ValueError, match=r"gen\.npz frames: float32 frames with values in \[0, 1\]; "
                     r"expected uint8 frames in \[0, 255\].*--float_frames"):
    evaluate.npz_batches(unit, ref_path, 2)
  wide = _npz(tmp_path / "wide.npz", frames=ref.astype(np.int64) + 1)
  with pytest.raises(ValueError, match=r"wide\.npz frames: int64 frames with values in \[1, 256\]"):
    evaluate.npz_batches(ref_path, wide, 2)


def test_float_frames_are_converted_only_as_declared(tmp_path):
  ref = _clips(3)
  ref_path = _npz(tmp_path / "ref.npz", frames=ref)
  x = np.random.default_rng(0).uniform(0, 1, ref.shape).astype(np.float32)
  for mode, frames, want in (("unit", x, lambda v: v * 255), ("signed", 2 * x - 1,
                             lambda v: (v + 1) * 127.5), ("byte", 255 * x, lambda v: v)):
    path = _npz(tmp_path / f"{mode}.npz", frames=frames)
    gen = np.concatenate([g for g, _ in evaluate.npz_batches(path, ref_path, 2, float_frames=mode)])
    assert gen.dtype == np.uint8
    np.testing.assert_array_equal(gen, np.round(want(frames.astype(np.float64))).astype(np.uint8),
                                  err_msg=mode)
    assert np.abs(gen.astype(int) - np.round(x * 255.0)).max() <= 1   # one picture, three ranges
  # Declared [0, 1] but holding [0, 255]: refused, not clipped.
  with pytest.raises(ValueError, match=r"byte\.npz frames: float32 frames with values in "
                     r"\[[0-9.e-]+, 25[0-9.]+\] are outside the declared 'unit' range \[0, 1\]"):
    evaluate.npz_batches(str(tmp_path / "byte.npz"), ref_path, 2, float_frames="unit")
  bad = x.copy()
  bad[0, 0, 0, 0, 0, 0] = np.nan
  with pytest.raises(ValueError, match=r"nan\.npz frames: float32 frames hold non-finite values"):
    evaluate.npz_batches(_npz(tmp_path / "nan.npz", frames=bad), ref_path, 2, float_frames="unit")
  with pytest.raises(ValueError, match=r"float_frames 'percent': choose from \['unit', 'signed', "
                     r"'byte'\]"):
    evaluate.npz_batches(ref_path, ref_path, 2, float_frames="percent")


def test_unit_float_frames_of_the_reference_score_zero(tmp_path):
  # The same clips as float [0, 1]: once converted on purpose they are the reference exactly.
  p = protocols.replace(protocols.get("synthetic"), kid_subsets=2, kid_subset_size=4)
  ref = _full_range(np.concatenate([_clips(4), _clips(4, seed=50)], axis=2))
  gen_path = _npz(tmp_path / "gen.npz", frames=ref.astype(np.float32) / 255.0)
  batches = list(evaluate.npz_batches(gen_path, _npz(tmp_path / "ref.npz", frames=ref), 4,
                                      float_frames="unit"))
  for gen, want in batches:
    np.testing.assert_array_equal(gen, want)
  r = evaluate.evaluate_videos(p, batches, workdir=tmp_path, fvd_features=_feats,
                               fid_features=_img_feats, fvd_dim=4, fid_dim=3, save_videos=0)
  assert 0.0 <= r["fvd"] < 1e-9 and 0.0 <= r["fid"] < 1e-9


def test_evaluate_videos_refuses_float_videos(tmp_path):
  """Every path into the metrics (npz, checkpoint sampling, a caller's batches) must hand over
  uint8: float frames would be scored as if they were 0..255."""
  p = protocols.get("synthetic")
  ref = _full_range(np.concatenate([_clips(2), _clips(2, seed=50)], axis=2))
  with pytest.raises(ValueError, match=r"generated videos: float32 frames with values in \[0, 1\]"):
    evaluate.evaluate_videos(p, [(ref.astype(np.float32) / 255, ref)], workdir=tmp_path,
                             fvd_features=_feats, fid_features=None, fvd_dim=4, save_videos=0)
  with pytest.raises(ValueError, match=r"reference videos: float64 frames"):
    evaluate.evaluate_videos(p, [(ref, ref / 1.0)], workdir=tmp_path, fvd_features=_feats,
                             fid_features=None, fvd_dim=4, save_videos=0)
  with pytest.raises(ValueError, match=r"side_by_side wants uint8 clips, got float32 and uint8"):
    videos_lib.side_by_side(ref[0].astype(np.float32), ref[0])


def test_npz_files_that_are_wrong_are_named(tmp_path):
  ref_path = _npz(tmp_path / "ref.npz", frames=_clips(2))
  wrong_key = _npz(tmp_path / "gen.npz", video=_clips(2), actions=np.zeros(3))
  with pytest.raises(ValueError, match=r"gen\.npz has no 'frames' array \(it holds \['actions', "
                     r"'video'\]\); evaluate reads 'frames' uint8 \[N,T,V,H,W,3\]"):
    evaluate.npz_batches(wrong_key, ref_path, 2)
  (tmp_path / "notes.npz").write_text("frames: none\n")
  with pytest.raises(ValueError, match=r"notes\.npz is not a valid \.npz file"):
    evaluate.npz_batches(ref_path, str(tmp_path / "notes.npz"), 2)
  np.save(tmp_path / "plain.npy", _clips(2))
  with pytest.raises(ValueError, match=r"plain\.npy is a \.npy array, not a \.npz archive"):
    evaluate.npz_batches(str(tmp_path / "plain.npy"), ref_path, 2)
  with pytest.raises(FileNotFoundError, match=r"missing\.npz: no such file"):
    evaluate.npz_batches(str(tmp_path / "missing.npz"), ref_path, 2)
  flat = _npz(tmp_path / "flat.npz", frames=_clips(2)[:, :, 0])
  with pytest.raises(ValueError, match=r"flat\.npz frames have shape \(2, 10, 24, 24, 3\); "
                     r"expected \[N,T,V,H,W,3\]"):
    evaluate.npz_batches(flat, ref_path, 2)
  with pytest.raises(ValueError, match=r"frames \(2, 10, 1, 24, 24, 3\) != .*frames \(3, 10, 1"):
    evaluate.npz_batches(ref_path, _npz(tmp_path / "ref3.npz", frames=_clips(3)), 2)


def test_cli_refuses_float_npz_before_loading_any_network(tmp_path):
  ref = _full_range(np.concatenate([_clips(2), _clips(2, seed=50)], axis=2))
  np.savez(tmp_path / "ref.npz", frames=ref)
  np.savez(tmp_path / "gen.npz", frames=ref.astype(np.float32) / 255.0)
  cmd = [sys.executable, "-m", "wm_jax.evaluate", "--protocol=synthetic", f"--workdir={tmp_path}",
         f"--generated={tmp_path}/gen.npz", f"--reference={tmp_path}/ref.npz"]
  out = subprocess.run(cmd, capture_output=True, text=True,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.returncode != 0
  assert "gen.npz frames: float32 frames with values in [0, 1]" in out.stderr
  assert "--float_frames=unit" in out.stderr
  assert "loading I3D" not in out.stdout   # the inputs are checked first
