"""`evaluate --checkpoint`: a training workdir (random weights) -> run and weights restored sharded
over the mesh -> held-out synthetic clips -> generate (rollout) -> decoded videos -> metrics, JSON
summary, samples.

Nothing is trained: a small CTSDDiT and the tiny VAE with random weights are saved with the train
package's own functions (checkpoint.save, checkpoint.save_module); the metrics use small fixed
feature functions instead of I3D / Inception (as tests/evaluation/test_evaluate.py does).
"""
import json
import math
import os

import imageio
import jax
import numpy as np
import pytest
from flax import nnx

from wm_jax import defaults, evaluate
from wm_jax.diffusion import generate as generate_lib
from wm_jax.evaluation import protocols
from wm_jax.models import vae as vae_lib
from wm_jax.parallel import mesh as mesh_lib
from wm_jax.train import checkpoint as ckpt_lib
from wm_jax.train import run as run_lib


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
  c = defaults.config()
  c.mask.decode_layers = 1
  c.model.update(num_layers=2, dual_attention_layers=(), temporal_block_layers=(0,),
                 crossview_block_layers=(1,), head_dim=16)
  c.model.layout_adapter = None
  c.data.update(rig="front2", num_frames=4, image_height=64, image_width=128)
  return c


def _flat_params(tree):
  return {k: np.asarray(v) for k, v in nnx.to_flat_state(tree)}


def _random_like(abstract, seed):
  """Random numpy values for a tree of ShapeDtypeStructs (no initialisers run: CPU time)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: (rng.normal(size=a.shape) * 0.05).astype(a.dtype), abstract)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A training workdir holding one step (params != EMA) and the VAE its config names."""
  root = tmp_path_factory.mktemp("evalwire")
  vae_dir = str(root / "vae")
  graphdef, abstract = nnx.split(nnx.eval_shape(
      lambda: vae_lib.AutoencoderKL(defaults.vae(), rngs=nnx.Rngs(1))))
  ckpt_lib.save_module(nnx.merge(graphdef, _random_like(abstract, 1)), vae_dir)
  run = _model_config()
  run.train.ema_decay = 0.9
  run.checkpoint.async_save = False
  run.data.update(num_val=2, read_threads=1, layout=False)
  run.vae.checkpoint = vae_dir
  state = _random_like(run_lib.build(run, training=False).abstract, 2)
  assert state.ema is not None
  manager = ckpt_lib.make_manager(str(root / "run"), run.checkpoint)
  assert ckpt_lib.save(manager, 3, state, {"pos": 0}, run, force=True)
  manager.wait_until_finished()
  manager.close()
  run.train.ema_decay = 0.0
  manager = ckpt_lib.make_manager(str(root / "run_no_ema"), run.checkpoint)   # EMA off
  assert ckpt_lib.save(manager, 1, state.replace(ema=None), {"pos": 0}, run, force=True)
  manager.wait_until_finished()
  manager.close()
  return root, state


def test_restores_ema_or_params_exactly_and_names_bad_paths(workdir):
  root, state = workdir
  cfg = _model_config()
  _, ema_model, info = evaluate.restore_model(cfg, str(root / "run"))   # auto: the EMA copy
  assert info["params"] == "ema" and info["step"] == 3
  _, model, info = evaluate.restore_model(cfg, str(root / "run"), params="params")
  assert info["params"] == "params"
  for model, want in ((ema_model, state.ema), (model, state.params)):
    got, saved = _flat_params(nnx.state(model, nnx.Param)), _flat_params(want)
    assert sorted(got) == sorted(saved)
    for path, value in saved.items():
      np.testing.assert_array_equal(got[path], value, err_msg=str(path))
  # No config: the run's saved config builds the model; auto takes the params of a run without EMA.
  run, model, info = evaluate.restore_model(None, str(root / "run_no_ema"))
  assert info["params"] == "params" and info["step"] == 1
  assert run.config.model.num_layers == 2 and run.config.data.rig == "front2"
  np.testing.assert_array_equal(model.proj_out.kernel[...], state.params["proj_out"]["kernel"][...])
  with pytest.raises(ValueError, match=r"run_no_ema/checkpoints kept no EMA copy"):
    evaluate.restore_model(None, str(root / "run_no_ema"), params="ema")
  other = _model_config()
  other.model.head_dim = 8
  with pytest.raises(ValueError, match=r"no checkpoint in .*run/checkpoints restores into this "
                     r"config's params"):
    evaluate.restore_model(other, str(root / "run"), params="params")
  with pytest.raises(FileNotFoundError, match="no-such-run"):
    evaluate.restore_model(cfg, str(root / "no-such-run"))
  os.makedirs(root / "empty", exist_ok=True)
  with pytest.raises(FileNotFoundError, match=r"no checkpoint under .*empty/checkpoints"):
    evaluate.restore_model(None, str(root / "empty"))


def test_protocol_shapes_are_checked_against_the_model():
  with pytest.raises(ValueError, match=r"num_frames=4 \(needs 25\).*latent_height=8 \(needs 72\)"):
    evaluate.eval_config(_model_config(), protocols.get("vista_nuscenes"))
  c = evaluate.eval_config(_model_config(), protocols.get("synthetic"), vae_checkpoint="v")
  assert c.data.num_frames == 10 and c.data.rig == "front2" and c.vae.checkpoint == "v"
  saved = defaults.vae()
  saved.update(checkpoint="run/vae", shift_factor=0.5)
  c = evaluate.eval_config(_model_config(), protocols.get("synthetic"), saved_vae=saved)
  assert c.vae.checkpoint == "run/vae" and c.vae.shift_factor == 0.5   # the run's own VAE


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


def test_evaluate_samples_with_the_dit_sharded_as_the_rules_say(workdir, tmp_path, monkeypatch,
                                                              cpu_devices):
  """On 8 devices with data=2, fsdp=4, the model that reaches generate holds every parameter with
  the sharding the logical-axis rules give it (not replicated on one device)."""
  root, _ = workdir
  cfg = _model_config()
  cfg.mesh.update(data=2, fsdp=4)
  seen = []
  real = generate_lib.generate

  def spy(model, batch, config, **kwargs):
    seen.append((nnx.state(model, nnx.Param), kwargs["mesh"]))
    return real(model, batch, config, **kwargs)

  monkeypatch.setattr(generate_lib, "generate", spy)
  p = protocols.replace(protocols.get("synthetic"), num_clips=2, sample_steps=1)
  evaluate.evaluate_checkpoint(cfg, str(root / "run"), p, workdir=tmp_path, fvd_features=_feats,
                               fid_features=None, fvd_dim=3, batch_size=2, save_videos=0)
  assert seen
  params, mesh = seen[0]
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
  want = mesh_lib.state_shardings(params, mesh)
  leaves = jax.tree.leaves(params)
  specs = jax.tree.leaves(want)
  assert len(leaves) == len(specs) > 10
  sharded = 0
  for leaf, sharding in zip(leaves, specs):
    assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim), (leaf.sharding, sharding)
    sharded += any(axis is not None for axis in sharding.spec)
  assert sharded > len(leaves) // 4   # fsdp really splits the weights


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
