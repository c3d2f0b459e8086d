"""JAX <-> PyTorch checkpoint conversion: OpenDWM key/shape set at full size, bit-exact round
trips through the training workdirs and safetensors files the tools write, and refusals that name
the keys."""
import copy
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from configs import maskgwm_long, maskgwm_tiny
from tests.convert.conftest import random_model
from wm_jax import defaults
from wm_jax.convert import from_torch, opendwm_config, param_map, to_torch
from wm_jax.models.ctsd_dit import CTSDDiT
from wm_jax.train import checkpoint as ckpt_lib
from wm_jax.train import run as run_lib

DATA = os.path.join(os.path.dirname(__file__), "..", "data_files")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _reference_shapes():
  out = {}
  with open(os.path.join(DATA, "opendwm_ctsd35_layout_mask_params.tsv")) as f:
    for line in f:
      key, shape, _ = line.rstrip("\n").split("\t")
      out[key] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
  return out


def test_ctsd35_conversion_has_exactly_the_opendwm_key_and_shape_set():
  """OpenDWM's CTSD-3.5 config -> wm_jax config -> abstract model (no memory) -> the converter's
  export path -> exactly the 1524 keys and shapes of OpenDWM's state_dict; the config comes back
  in OpenDWM's names with the reference values."""
  with open(os.path.join(DATA, "opendwm_ctsd35_layout_model_config.json")) as f:
    ref = json.load(f)
  ref_mask = dict(ref, mask_module={"decode_layer": 5, "interpolater_layer": 1, "mask_ratio": 0.25,
                                    "mae_mask_probs": {"constant": 0.5}})
  model_cfg, mask_cfg = opendwm_config.from_opendwm(ref_mask, maskgwm_long.get_config().model,
                                                    defaults.mask())
  abstract = to_torch.abstract_model(model_cfg, mask_cfg)
  flat = param_map.flat_state(param_map.checkpoint_state(abstract))
  sd = to_torch.export_state_dict(flat, model_cfg, mask_cfg, abstract=abstract)
  want = _reference_shapes()
  assert len(want) == 1524
  assert param_map.compare_shapes({k: v.shape for k, v in sd.items()}, want) == ""
  back = opendwm_config.to_opendwm(model_cfg, mask_cfg)
  for key, value in ref.items():
    assert back[key] == value, key
  assert back["mask_module"]["decode_layer"] == 5 and back["mask_module"]["interpolater_layer"] == 1


@pytest.fixture(scope="module")
def tiny():
  cfg = maskgwm_tiny.get_config()
  cfg.train.batch_size = 8   # one row per virtual device
  model = random_model(lambda: CTSDDiT(cfg.model, cfg.mask, rngs=nnx.Rngs(0)), seed=1)
  return cfg, model


def _zero_paper_params(model):
  for block in model.temporal_transformer_blocks:
    lin = block.time_modulation.linear
    lin.kernel.set_value(np.zeros_like(lin.kernel.get_value()))
    lin.bias.set_value(np.zeros_like(lin.bias.get_value()))


def _flat(model):
  """{PyTorch key: Flax-layout array} (keys by the one rule, so paths of any spelling compare)."""
  return _by_key(param_map.flat_state(param_map.checkpoint_state(model)))


def _by_key(flat):
  return {param_map.torch_key(p): np.asarray(v) for p, v in flat.items()}


def _write_run(workdir, cfg, model, step=3):
  """A training workdir holding `model`'s weights at `step` (fresh optimizer state)."""
  run = run_lib.build(cfg, donate=False)
  _, params, rest = nnx.split(model, nnx.Param, ...)
  state = run.init_state().replace(params=params, rest=rest)
  manager = ckpt_lib.make_manager(str(workdir), cfg.checkpoint)
  assert ckpt_lib.save(manager, step, state, {}, cfg, force=True)
  manager.wait_until_finished()
  manager.close()


def _restored(workdir):
  _, model, _ = run_lib.restore(str(workdir), params="params")
  return _flat(model)


def test_round_trip_jax_pytorch_jax_is_bit_exact(tiny, tmp_path):
  cfg, model = tiny
  model = copy.deepcopy(model)
  _zero_paper_params(model)
  _write_run(tmp_path / "jax", cfg, model)
  run, restored, _ = run_lib.restore(str(tmp_path / "jax"), params="params")
  assert run.config.model.num_layers == cfg.model.num_layers
  flat = param_map.flat_state(param_map.checkpoint_state(restored))
  flat = {k: np.asarray(v) for k, v in flat.items()}
  sd = to_torch.export_state_dict(flat, cfg.model, cfg.mask, drop_zero_paper_params=True)
  assert not to_torch.paper_only_keys(sd)
  to_torch.write_safetensors(sd, str(tmp_path / "m.safetensors"))
  loaded = from_torch.read_torch_checkpoint(str(tmp_path / "m.safetensors"))
  abstract = nnx.eval_shape(lambda: CTSDDiT(cfg.model, cfg.mask, rngs=nnx.Rngs(0)))
  back = _by_key(param_map.flat_state(from_torch.convert_state_dict(loaded, abstract)))
  orig = _flat(model)
  assert sorted(back) == sorted(orig)
  for path, value in orig.items():
    assert back[path].dtype == value.dtype
    np.testing.assert_array_equal(back[path], value, err_msg=str(path))
  # Buffers (mask module attention extras, the pos_embed table) travel too.
  assert "mask_module.sideblocks.0.attn.add_k_proj.weight" in back
  assert "pos_embed.pos_embed" in back


def test_missing_extra_and_misshaped_keys_are_refused_by_name(tiny):
  cfg, model = tiny
  abstract = nnx.eval_shape(lambda: CTSDDiT(cfg.model, cfg.mask, rngs=nnx.Rngs(0)))
  good = param_map.to_torch_state_dict(model)
  for k in to_torch.paper_only_keys(good):
    del good[k]
  sd = dict(good)
  del sd["transformer_blocks.1.attn.to_q.bias"]
  sd["transformer_blocks.9.attn.to_q.weight"] = np.zeros((64, 64), np.float32)
  sd["proj_out.weight"] = np.zeros((5, 64), np.float32)
  with pytest.raises(param_map.ConversionError) as err:
    from_torch.convert_state_dict(sd, abstract)
  msg = str(err.value)
  assert "1 missing key(s):\n    transformer_blocks.1.attn.to_q.bias" in msg
  assert "1 unexpected key(s):\n    transformer_blocks.9.attn.to_q.weight" in msg
  assert "proj_out.weight: checkpoint (5, 64)" in msg
  # --ignore: named keys are skipped (they keep the init), the rest still must match.
  sd["proj_out.weight"] = good["proj_out.weight"]
  with pytest.raises(ValueError, match="pass init="):
    from_torch.convert_state_dict(sd, abstract, ignore=["transformer_blocks.1.attn.to_q.bias",
                                                        "transformer_blocks.9.attn.to_q.weight"])
  state = from_torch.convert_state_dict(
      sd, abstract, ignore=["transformer_blocks.1.attn.to_q.bias",
                            "transformer_blocks.9.attn.to_q.weight"], init=lambda: model)
  np.testing.assert_array_equal(
      state["transformer_blocks"][1]["attn"]["to_q"]["bias"].get_value(),
      model.transformer_blocks[1].attn.to_q.bias.get_value())
  # Export checks the config against the checkpoint's shapes the same way.
  flat = param_map.flat_state(param_map.checkpoint_state(model))
  flat[("proj_out", "bias")] = np.zeros(3, np.float32)
  with pytest.raises(param_map.ConversionError, match=r"proj_out.bias: checkpoint \(3,\)"):
    to_torch.export_state_dict(flat, cfg.model, cfg.mask, drop_zero_paper_params=True)


def test_paper_only_parameters_have_no_opendwm_equivalent(tiny):
  cfg, model = tiny
  flat = param_map.flat_state(param_map.checkpoint_state(model))  # random = trained weights
  with pytest.raises(param_map.ConversionError, match="non-zero"):
    to_torch.export_state_dict(flat, cfg.model, cfg.mask, drop_zero_paper_params=True)
  zeroed = copy.deepcopy(model)
  _zero_paper_params(zeroed)
  flat = param_map.flat_state(param_map.checkpoint_state(zeroed))
  with pytest.raises(param_map.ConversionError, match="drop_zero_paper_params"):
    to_torch.export_state_dict(flat, cfg.model, cfg.mask)
  sd = to_torch.export_state_dict(flat, cfg.model, cfg.mask, drop_zero_paper_params=True)
  assert "temporal_transformer_blocks.0.time_modulation.linear.weight" not in sd
  with pytest.raises(ValueError, match="time_modulation"):
    to_torch.opendwm_model_config(cfg.model, cfg.mask)


def test_command_line_tools_round_trip(tiny, tmp_path):
  """tools/convert_to_pytorch.py and tools/convert_from_pytorch.py as users run them (bf16 out,
  .json config in OpenDWM names, back to a training workdir that restores into the model)."""
  cfg, model = tiny
  model = copy.deepcopy(model)
  _zero_paper_params(model)
  _write_run(tmp_path / "jax", cfg, model)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = tmp_path / "pt" / "model.safetensors"
  os.makedirs(out.parent)
  run = lambda *args: subprocess.run([sys.executable, *args], cwd=ROOT, env=env,
                                     capture_output=True, text=True)
  r = run("tools/convert_to_pytorch.py", f"--checkpoint={tmp_path / 'jax'}", f"--out={out}",
          "--dtype=bf16", "--drop_zero_paper_params")
  assert r.returncode == 0, r.stderr[-2000:]
  with open(out.with_suffix(".json")) as f:
    opendwm = json.load(f)
  assert opendwm["num_attention_heads"] == cfg.model.num_heads
  assert opendwm["temporal_block_layers"] == list(cfg.model.temporal_block_layers)
  r = run("tools/convert_from_pytorch.py", f"--checkpoint={out}", f"--out={tmp_path / 'back'}",
          f"--opendwm_config={out.with_suffix('.json')}", "--config=configs/maskgwm_tiny.py",
          "--time_modulation")
  assert r.returncode == 0, r.stderr[-2000:]
  orig, back = _flat(model), _restored(tmp_path / "back")
  for path, value in orig.items():  # bf16 in the file: equal up to bf16 rounding
    np.testing.assert_allclose(back[path], value, rtol=1e-2, atol=1e-6, err_msg=str(path))
  bf16 = lambda x: np.asarray(jax.numpy.asarray(x, jax.numpy.bfloat16).astype(np.float32))
  np.testing.assert_array_equal(back["proj_out.weight"], bf16(orig["proj_out.weight"]))


def test_pth_is_read_with_weights_only(tmp_path):
  torch = pytest.importorskip("torch")
  torch.save({"state_dict": {"a.weight": torch.ones(2, 3, dtype=torch.bfloat16)}}, tmp_path / "m.pth")
  sd = from_torch.read_torch_checkpoint(str(tmp_path / "m.pth"))
  assert sd["a.weight"].dtype == np.float32 and sd["a.weight"].shape == (2, 3)
  torch.save({"net": torch.nn.Linear(2, 2)}, tmp_path / "pickled.pth")  # a module: not weights
  with pytest.raises(Exception):
    from_torch.read_torch_checkpoint(str(tmp_path / "pickled.pth"))


def test_sharded_safetensors_directory_is_read_whole(tmp_path):
  from safetensors.numpy import save_file
  save_file({"a.weight": np.ones((2, 3), np.float32)}, str(tmp_path / "m-00001-of-00002.safetensors"))
  save_file({"b.bias": np.zeros(4, np.float32)}, str(tmp_path / "m-00002-of-00002.safetensors"))
  sd = from_torch.read_torch_checkpoint(str(tmp_path))
  assert sorted(sd) == ["a.weight", "b.bias"] and sd["a.weight"].shape == (2, 3)
  save_file({"b.bias": np.zeros(4, np.float32)}, str(tmp_path / "m-extra.safetensors"))
  with pytest.raises(ValueError, match="b.bias"):
    from_torch.read_torch_checkpoint(str(tmp_path))
