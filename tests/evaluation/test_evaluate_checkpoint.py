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


def test_future_layout_is_refused_by_name_before_anything_loads(workdir, tmp_path):
  root, _ = workdir
  layout = _model_config()
  layout.model.layout_adapter = defaults.model().layout_adapter   # OpenDWM's layout adapter
  layout.data.layout = True
  for name in ("synthetic", "controllability", "vista_nuscenes", "long_horizon"):
    with pytest.raises(ValueError, match=rf"protocol '{name}' forbids future layout; the model "
                       r"has a layout adapter \(model.layout_adapter\) and would see the layout of "
                       r"the frames it predicts"):
      evaluate.eval_config(layout, protocols.get(name))
  p = protocols.replace(protocols.get("synthetic"), num_clips=2)
  with pytest.raises(ValueError, match=r"protocol 'synthetic\+num_clips=2' forbids future layout"):
    evaluate.evaluate_checkpoint(layout, str(root / "run"), p, workdir=tmp_path,
                                 fvd_features=_feats, fid_features=None, fvd_dim=3)
  # Without the adapter the same protocols pass, and the data render no layout to leak.
  plain = _model_config()
  plain.data.layout = True
  c = evaluate.eval_config(plain, protocols.get("synthetic"))
  assert c.data.layout is False and c.model.layout_adapter is None
  # A protocol that allows future layout (OpenDWM's layout-to-video setting) takes the adapter.
  assert protocols.get("opendwm_nuscenes").future_layout
  protocols.check_model(protocols.get("opendwm_nuscenes"), layout.model)
  allowed = protocols.replace(protocols.get("synthetic"), future_layout=True)
  c = evaluate.eval_config(layout, allowed)
  assert c.data.layout is True
  actions = _model_config()
  actions.model.camera_scalars = 13
  with pytest.raises(ValueError, match=r"protocol 'vista_nuscenes' evaluates without actions, but "
                     r"the model embeds actions \(model.camera_scalars=13\)"):
    protocols.check_model(protocols.get("vista_nuscenes"), actions.model)


def test_controllability_of_an_action_free_model_reads_zero(workdir, tmp_path, monkeypatch):
  """The real path: restore, held-out scenes, one generate per commanded steering with the same
  noise, VAE decode, measure. The checkpoint's model has no action input (camera only), so every
  scene's videos are the same whatever the command: Spearman 0, no scene responds. generate sees
  only what the protocol allows, with the command on the predicted frames."""
  root, _ = workdir
  seen = []
  real = generate_lib.generate

  def spy(model, batch, config, **kwargs):
    seen.append((dict(batch), kwargs["rng"]))
    return real(model, batch, config, **kwargs)

  monkeypatch.setattr(generate_lib, "generate", spy)
  steers = (-0.3, 0.3)
  p = protocols.replace(protocols.get("controllability"), num_clips=2, sample_steps=1,
                        steering_values=steers, strip_scenes=1)
  r = evaluate.controllability_checkpoint(_model_config(), str(root / "run"), p,
                                          workdir=tmp_path, batch_size=2)
  assert len(seen) == 2
  for (batch, rng), steer in zip(seen, steers):
    assert set(batch) <= p.model_inputs and "latents" in batch and "actions" in batch
    assert not {"layout", "boxes", "ego_pose", "frames", "depth"} & set(batch)
    np.testing.assert_allclose(batch["actions"][:, 1:, 1], steer)
    np.testing.assert_array_equal(batch["actions"][:, 0], seen[0][0]["actions"][:, 0])
    assert batch["trajectory"].shape == (2, 4, 6, 2)   # data.trajectory_points look-ahead
    np.testing.assert_array_equal(jax.random.key_data(rng), jax.random.key_data(seen[0][1]))
  st = r["steering"]
  assert st["num_scenes"] == r["num_scenes"] == 2
  motion = np.array(st["motion"])
  assert np.all(motion == motion[:, :1]), motion   # fixed noise, no action input: same videos
  assert st["spearman"] == 0.0 and st["detected_scenes"] == 0 and st["sign_correct_all"] == 0.0
  summary = json.loads((tmp_path / f"eval_{p.name}.json").read_text())
  assert summary["checkpoint"]["step"] == 3 and summary["step"] == 3
  assert summary["steering_spearman"] == 0.0 and summary["kind"] == "controllability"
  strip = tmp_path / "controllability" / p.name / "strip_steering_scene000.png"
  assert str(strip) in summary["files"] and os.path.isfile(strip)


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
  c = protocols.get("controllability")
  got = evaluate.protocol_overrides(c, ["speed_values=2,5,10", "steering_values=-0.2,0.2",
                                        "future_layout=true"])
  assert got == {"speed_values": (2.0, 5.0, 10.0), "steering_values": (-0.2, 0.2),
                 "future_layout": True}
  assert protocols.replace(c, **got).name == ("controllability+future_layout=True,speed_values="
                                              "2_5_10,steering_values=-0.2_0.2")
  assert evaluate.protocol_overrides(c, ["speed_values="]) == {"speed_values": ()}
  with pytest.raises(ValueError, match="cannot read 'fast'"):
    evaluate.protocol_overrides(c, ["speed_values=fast"])
