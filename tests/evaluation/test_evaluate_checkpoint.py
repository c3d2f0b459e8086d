"""`evaluate --checkpoint`: a train-layout checkpoint (random weights) -> model + VAE restored ->
held-out synthetic clips -> rollout sampling -> decoded videos -> metrics, JSON summary, samples.

Nothing is trained: a small CTSDDiT and the tiny VAE with random weights are saved with the train
helper's own functions (train.checkpoint.save, train.loop.save_module); the metrics use small
fixed feature functions instead of I3D / Inception (as tests/evaluation/test_evaluate.py does).
"""
import json
import math
import os

import imageio
import jax
import numpy as np
import pytest
from flax import nnx

from configs import maskgwm_tiny
from wm_jax import evaluate
from wm_jax.data import grain_pipeline
from wm_jax.evaluation import protocols
from wm_jax.models import vae as vae_lib
from wm_jax.train import checkpoint as ckpt_lib
from wm_jax.train import config as train_config
from wm_jax.train import loop, optim
from wm_jax.train import state as state_lib


def _feats(v):   # [N,T,H,W,3] -> [N,3]
  v = np.asarray(v, np.float64)
  return np.stack([v.mean((1, 2, 3, 4)), v.std((1, 2, 3, 4)),
                   np.abs(np.diff(v, axis=1)).mean((1, 2, 3, 4))], -1)


def _img_feats(im):   # [N,H,W,3] -> [N,3]
  im = np.asarray(im, np.float64)
  return np.stack([im.mean((1, 2, 3)), im.std((1, 2, 3)), im[..., 1].mean((1, 2))], -1)


def _model_config():
  """maskgwm_tiny at the synthetic protocol's shapes (2 views x 4 frames, 8x16 latents), thinner:
  one temporal and one cross-view block, no layout adapter (compile time)."""
  c = maskgwm_tiny.get_config()
  m = c.model
  m.num_layers, m.dual_attention_layers = 2, []
  m.temporal_block_layers, m.crossview_block_layers = [0], [1]
  m.head_dim = 16
  m.layout_adapter = None
  return c


def _flat_params(tree):
  return {k: np.asarray(v) for k, v in nnx.to_flat_state(tree)}


def _random_like(abstract, seed):
  """Random numpy values for a tree of ShapeDtypeStructs (no initialisers run: CPU time)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: (rng.normal(size=a.shape) * 0.05).astype(a.dtype), abstract)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A training workdir holding one step (params != EMA) and the VAE it names; the run's config
  carries the data and vae sections, the evaluation config only the model."""
  root = tmp_path_factory.mktemp("evalwire")
  vae_dir = str(root / "vae")
  graphdef, abstract = nnx.split(nnx.eval_shape(
      lambda: vae_lib.AutoencoderKL(vae_lib.defaults(), rngs=nnx.Rngs(1))))
  loop.save_module(nnx.merge(graphdef, _random_like(abstract, 1)), vae_dir)
  run = train_config.fill(_model_config())
  run.train.ema_decay = 0.9
  run.checkpoint.async_save = False
  run.data = grain_pipeline.defaults()
  run.data.update(rig="front2", num_val=2, read_threads=1, layout=False)
  run.vae = vae_lib.defaults()
  run.vae.checkpoint = vae_dir
  _, abstract = state_lib.abstract(loop.default_model_factory(run),
                                   optim.make_optimizer(run.train), ema=True)
  state = _random_like(abstract, 2)
  assert state.ema is not None
  manager = ckpt_lib.make_manager(str(root / "run"), run.checkpoint)
  assert ckpt_lib.save(manager, 3, state, {"pos": 0}, run, force=True)
  manager.wait_until_finished()
  manager.close()
  manager = ckpt_lib.make_manager(str(root / "run_no_ema"), run.checkpoint)   # EMA off
  assert ckpt_lib.save(manager, 1, state.replace(ema=None), {"pos": 0}, run, force=True)
  manager.wait_until_finished()
  manager.close()
  return root, state


def test_restores_ema_or_params_exactly_and_names_bad_paths(workdir):
  root, state = workdir
  cfg = _model_config()
  ema_model, info = evaluate.restore_model(cfg, str(root / "run"))   # the workdir: newest step
  assert info["params"] == "ema" and info["step"] == 3 and info["layout"] == "train"
  assert info["saved_config"]["vae"]["checkpoint"] == str(root / "vae")
  model, info = evaluate.restore_model(cfg, str(root / "run" / "checkpoints"), params="params")
  assert info["params"] == "params"
  for model, want in ((ema_model, state.ema), (model, state.params)):
    got, saved = _flat_params(nnx.state(model, nnx.Param)), _flat_params(want)
    assert sorted(got) == sorted(saved)
    for path, value in saved.items():
      np.testing.assert_array_equal(got[path], value, err_msg=str(path))
  # No --config: the run's saved config builds the model; auto falls back to the params.
  model, info = evaluate.restore_model(None, str(root / "run_no_ema" / "checkpoints" / "1"))
  assert info["params"] == "params" and info["step"] == 1
  assert info["config"].model.num_layers == 2 and info["config"].data.rig == "front2"
  np.testing.assert_array_equal(model.proj_out.kernel[...], state.params["proj_out"]["kernel"][...])
  with pytest.raises(ValueError, match="no 'ema'|no \\['ema'\\]"):
    evaluate.restore_model(cfg, str(root / "run_no_ema"), params="ema")
  other = _model_config()
  other.model.head_dim = 8
  with pytest.raises(ValueError, match="checkpoint .*run/checkpoints/3 does not fit the model"):
    evaluate.restore_model(other, str(root / "run"))
  with pytest.raises(FileNotFoundError, match="no-such-run"):
    evaluate.restore_model(cfg, str(root / "no-such-run"))
  os.makedirs(root / "empty", exist_ok=True)
  with pytest.raises(ValueError, match=str(root / "empty") + " is neither a wm_jax train checkpoint"):
    evaluate.restore_model(cfg, str(root / "empty"))


def test_protocol_shapes_are_checked_against_the_model():
  with pytest.raises(ValueError, match=r"num_frames=4 \(needs 25\).*latent_height=8 \(needs 72\)"):
    evaluate.eval_config(_model_config(), protocols.get("vista_nuscenes"))
  c = evaluate.eval_config(_model_config(), protocols.get("synthetic"), vae_checkpoint="v")
  assert c.data.num_frames == 10 and c.data.rig == "front2" and c.vae.checkpoint == "v"


def test_evaluate_checkpoint_end_to_end(workdir, tmp_path):
  root, _ = workdir
  p = protocols.replace(protocols.get("synthetic"), num_clips=2)
  r = evaluate.evaluate_checkpoint(_model_config(), str(root / "run"), p, workdir=tmp_path,
                                   fvd_features=_feats, fid_features=_img_feats, fvd_dim=3,
                                   fid_dim=3, batch_size=2, save_videos=1, video_format="gif")
  summary = json.loads((tmp_path / f"eval_{p.name}.json").read_text())
  s = summary["protocol"]
  assert s["num_clips"] == 2 and s["sample_steps"] == 8 and s["rollout_steps"] == 3
  assert s["reference_frames"] == 1 and s["metric_frames"] == 9 and s["cfg_scale"] == 1.0
  assert summary["num_videos"] == 4 and summary["frames_per_video"] == 9   # 2 clips x 2 views
  assert summary["checkpoint"]["params"] == "ema" and summary["step"] == 3
  for key in ("fvd", "fid", "kid"):
    assert math.isfinite(summary[key]) and summary[key] == pytest.approx(r[key])
  assert summary["fvd"] > 0   # random weights: far from the ground truth
  samples = sorted(os.listdir(tmp_path / "samples" / p.name))
  assert samples == ["sample_00000.gif"]
  frames = np.stack(imageio.mimread(tmp_path / "samples" / p.name / samples[0]))
  assert frames.shape[0] == 10 and frames.shape[2] >= 2 * 128 and frames.shape[1] >= 2 * 64


@pytest.mark.slow
def test_cli_samples_a_checkpoint_with_real_i3d(workdir, tmp_path):
  import subprocess
  import sys
  root, _ = workdir
  cfg = tmp_path / "cfg.py"
  cfg.write_text("from tests.evaluation.test_evaluate_checkpoint import _model_config\n"
                 "def get_config(arg=None):\n  return _model_config()\n")
  cmd = [sys.executable, "-m", "wm_jax.evaluate", f"--config={cfg}",
         f"--checkpoint={root / 'run'}", "--protocol=synthetic", "--num_clips=2",
         f"--workdir={tmp_path / 'out'}", "--save_videos=1", "--batch_size=2"]
  subprocess.run(cmd, check=True, env={**os.environ, "JAX_PLATFORMS": "cpu",
                                       "PYTHONPATH": os.getcwd()})
  summary = json.loads((tmp_path / "out" / "eval_synthetic+num_clips=2.json").read_text())
  assert math.isfinite(summary["fvd"]) and summary["num_videos"] == 4
  assert summary["checkpoint"]["step"] == 3 and summary["checkpoint"]["params"] == "ema"


def test_protocol_overrides_are_typed_and_checked():
  p = protocols.get("synthetic")
  got = evaluate.protocol_overrides(p, ["num_views=1", "fps=12", "image_size=32x64",
                                        "use_actions=false", "fvd_frames=9"])
  assert got == {"num_views": 1, "fps": 12.0, "image_size": (32, 64), "use_actions": False,
                 "fvd_frames": 9}
  assert isinstance(got["fps"], float)
  with pytest.raises(ValueError, match="num_view=1.*FIELD=VALUE"):
    evaluate.protocol_overrides(p, ["num_view=1"])
  with pytest.raises(ValueError, match="cannot read 'two'"):
    evaluate.protocol_overrides(p, ["num_views=two"])
