"""JAX <-> PyTorch checkpoint conversion: OpenDWM key/shape set at full size, bit-exact round
trips through the training workdirs and safetensors files the tools write, and refusals that name
the keys."""
import copy
import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from configs import maskgwm_long, maskgwm_tiny
from tests.convert.conftest import random_model
from wm_jax import defaults
from wm_jax.convert import from_torch, opendwm_config, param_map, to_torch, vae_weights
from wm_jax.models.ctsd_dit import CTSDDiT
from wm_jax.train import checkpoint as ckpt_lib
from wm_jax.train import run as run_lib

DATA = os.path.join(os.path.dirname(__file__), "..", "data_files")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# OpenDWM's MaskController entry for MaskGWM (its constructor arguments, in its names).
OPENDWM_MASK = {
    "_class_name": "dwm.models.mask_layers.MaskController", "num_heads": 24,
    "attention_head_dim": 64, "mlp_ratio": 4.0, "decode_layer": 5, "interpolater_layer": 1,
    "mask_ratio": 0.25, "mae_mask_type": "row_t_rc", "mae_mask_probs": {"constant": 0.5},
    "forward_mix_interpolater": True,
    "use_origin_mask_token": {"type": "trans", "target": ["learnable", "noise"]},
    "decoder_pos_embed_recipe": "3d_sincos"}


def _opendwm_ctsd35():
  with open(os.path.join(DATA, "opendwm_ctsd35_layout_model_config.json")) as f:
    return json.load(f)


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
  ref = _opendwm_ctsd35()
  ref_mask = dict(ref, mask_module=OPENDWM_MASK)
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
  assert back["mask_module"] == OPENDWM_MASK


@pytest.fixture(scope="module")
def tiny():
  cfg = maskgwm_tiny.get_config("noactions")
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
  sd = to_torch.export_state_dict(flat, cfg.model, cfg.mask, drop_zero_paper_params=True,
                                  allow_mask_module_mismatch=True)
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
  sd = to_torch.export_state_dict(flat, cfg.model, cfg.mask, drop_zero_paper_params=True,
                                  allow_mask_module_mismatch=True)
  assert "temporal_transformer_blocks.0.time_modulation.linear.weight" not in sd
  with pytest.raises(ValueError, match="time_modulation"):
    to_torch.opendwm_model_config(cfg.model, cfg.mask)


# Runs `python SCRIPT ARGS...` with torch unimportable, as in the base install.
WITHOUT_TORCH = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = sys.argv[1:]; "
                 "runpy.run_path(sys.argv[0], run_name='__main__')")


def test_command_line_tools_round_trip_bit_exact_in_bf16_without_torch(tiny, tmp_path):
  """tools/convert_to_pytorch.py and tools/convert_from_pytorch.py as users of the base install
  run them (torch unimportable): bf16 out, .json config in OpenDWM names, back to a training
  workdir that restores into the model with every value the bf16 rounding of the original."""
  cfg, model = tiny
  model = copy.deepcopy(model)
  _zero_paper_params(model)
  _write_run(tmp_path / "jax", cfg, model)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = tmp_path / "pt" / "model.safetensors"
  os.makedirs(out.parent)
  run = lambda *args: subprocess.run([sys.executable, "-c", WITHOUT_TORCH, *args], cwd=ROOT,
                                     env=env, capture_output=True, text=True)
  r = run("tools/convert_to_pytorch.py", f"--checkpoint={tmp_path / 'jax'}", f"--out={out}",
          "--dtype=bf16", "--drop_zero_paper_params")
  assert r.returncode == 2 and "mask_module.noise_proj.weight" in r.stderr, r.stderr[-2000:]
  r = run("tools/convert_to_pytorch.py", f"--checkpoint={tmp_path / 'jax'}", f"--out={out}",
          "--dtype=bf16", "--drop_zero_paper_params", "--allow_mask_module_mismatch")
  assert r.returncode == 0, r.stderr[-2000:]
  assert "mask_module.noise_proj.weight" in r.stdout + r.stderr
  with open(out.with_suffix(".json")) as f:
    opendwm = json.load(f)
  assert opendwm["num_attention_heads"] == cfg.model.num_heads
  assert opendwm["temporal_block_layers"] == list(cfg.model.temporal_block_layers)
  r = run("tools/convert_from_pytorch.py", f"--checkpoint={out}", f"--out={tmp_path / 'back'}",
          f"--opendwm_config={out.with_suffix('.json')}", "--config=configs/maskgwm_tiny.py:noactions",
          "--time_modulation")
  assert r.returncode == 0, r.stderr[-2000:]
  orig, back = _flat(model), _restored(tmp_path / "back")
  assert sorted(back) == sorted(orig)
  bf16 = lambda x: np.asarray(jax.numpy.asarray(x, jax.numpy.bfloat16).astype(np.float32))
  for path, value in orig.items():
    assert back[path].dtype == value.dtype, path
    np.testing.assert_array_equal(back[path], bf16(value) if value.dtype == np.float32 else value,
                                  err_msg=str(path))


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


def test_camera_without_crossview_blocks_exports_a_config_that_keeps_it():
  """OpenDWM adds the camera embedding to the temporal blocks only with enable_crossview=True
  (and disable_view_emb_on_temporal_module=False); wm_jax always adds it. maskgwm_long (camera +
  actions, no cross-view blocks) exports enable_crossview=True with no cross-view layers, says
  so, and reads back as the same model."""
  model = maskgwm_long.get_config().model
  out = opendwm_config.to_opendwm(model)
  assert out["enable_crossview"] is True and out["crossview_block_layers"] == []
  assert out["disable_view_emb_on_temporal_module"] is False
  assert out["projection_class_embeddings_input_dim"] == 13 * 256
  notes = opendwm_config.export_notes(model)
  assert len(notes) == 1 and "enable_crossview=True" in notes[0] and "camera" in notes[0]
  back, _ = opendwm_config.from_opendwm(out, maskgwm_tiny.get_config("noactions").model)
  assert back.camera_scalars == 13 and list(back.crossview_block_layers) == []
  assert list(back.temporal_block_layers) == list(model.temporal_block_layers)
  assert back.crossview_attention_type in ("rowwise",)
  no_camera = copy.deepcopy(model)
  no_camera.camera_scalars = 0
  assert opendwm_config.to_opendwm(no_camera)["enable_crossview"] is False
  assert opendwm_config.export_notes(no_camera) == []


@pytest.mark.parametrize("where,key,value,match", [
    ("model", "merge_strategy", "fixed", "merge_strategy='fixed'"),
    ("model", "merge_strategy", "learned", "merge_strategy='learned'"),
    ("model", "disable_view_emb_on_temporal_module", True,
     "disable_view_emb_on_temporal_module=True"),
    ("model", "enable_crossview", False, "enable_crossview=False"),
    ("model", "temporal_attention_typo", "full", "temporal_attention_typo"),
    ("mask", "use_origin_mask_token", {"type": "trans", "target": ["noise", "learnable"]},
     r"use_origin_mask_token=.*'noise', 'learnable'"),
    ("mask", "use_origin_mask_token", "noise", "use_origin_mask_token='noise'"),
    ("mask", "mae_mask_type", "rand_t", "mae_mask_type='rand_t'"),
    ("mask", "mae_mask_type", None, "mae_mask_type='constant'"),  # OpenDWM's default
    ("mask", "forward_mix_interpolater", None, "forward_mix_interpolater=False"),
    ("mask", "mae_mask_probs", {"constant": 0.5, "align_scale": 2}, "align_scale"),
    ("mask", "mask_token_type", "temporal", "mask_token_type='temporal'"),
    ("mask", "num_heads", 12, "num_heads=12"),
    ("mask", "mlp_ratio", 2.0, "mlp_ratio=2.0"),
    ("mask", "decoder_pos_embed_recipe", None, "decoder_pos_embed_recipe=None"),
    ("mask", "_class_name", "dwm.models.Other", "dwm.models.Other"),
])
def test_import_refuses_opendwm_options_wm_jax_does_not_implement(where, key, value, match):
  """Every OpenDWM option that changes what the model computes and that wm_jax does not
  implement is refused by name (None = the key left out, i.e. OpenDWM's default)."""
  d = dict(_opendwm_ctsd35(), mask_module=copy.deepcopy(OPENDWM_MASK))
  target = d if where == "model" else d["mask_module"]
  if value is None:
    del target[key]
  else:
    target[key] = value
  with pytest.raises(ValueError, match=match):
    opendwm_config.from_opendwm(d, maskgwm_long.get_config().model, defaults.mask())
  # The unchanged config imports (OpenDWM's own option values).
  opendwm_config.from_opendwm(dict(_opendwm_ctsd35(), mask_module=OPENDWM_MASK),
                              maskgwm_long.get_config().model, defaults.mask())


def test_mask_module_opendwm_cannot_load_is_refused_by_name():
  """OpenDWM's MaskController builds noise_proj as Conv3d(16, D, ...) whatever the latent
  channels: a 4-channel model's mask module cannot load there (a size mismatch, even with
  strict=False). Export refuses it, naming the parameter and both shapes, unless allowed."""
  cfg = maskgwm_tiny.get_config("noactions")
  cfg.model.time_modulation = False
  abstract = to_torch.abstract_model(cfg.model, cfg.mask)
  flat = param_map.flat_state(param_map.checkpoint_state(abstract))
  with pytest.raises(param_map.ConversionError) as err:
    to_torch.export_state_dict(flat, cfg.model, cfg.mask, abstract=abstract)
  msg = str(err.value)
  assert "mask_module.noise_proj.weight" in msg and "(64, 4, 1, 3, 3)" in msg
  assert "(64, 16, 1, 3, 3)" in msg and "allow_mask_module_mismatch" in msg
  sd = to_torch.export_state_dict(flat, cfg.model, cfg.mask, abstract=abstract,
                                  allow_mask_module_mismatch=True)
  assert sd["mask_module.noise_proj.weight"].shape == (64, 4, 1, 3, 3)
  differences = opendwm_config.mask_differences(cfg.model, cfg.mask)
  assert len(differences) == 1 and "mask_module.noise_proj.weight" in differences[0]
  cfg.mask.pos_table = "backbone"  # OpenDWM's MaskPatchEmbed always uses the 3-D sin-cos table
  differences = opendwm_config.mask_differences(cfg.model, cfg.mask)
  assert any("pos_table='backbone'" in d for d in differences)
  cfg.mask.enabled = False  # no mask module, nothing to differ
  assert opendwm_config.mask_differences(cfg.model, cfg.mask) == []


def test_non_finite_and_integer_weights_are_refused_by_name(tiny):
  """NaN/Inf weights and integer arrays where the model has floats are refused on import and on
  export, each named; nothing is cast from int to float silently."""
  cfg, model = tiny
  abstract = nnx.eval_shape(lambda: CTSDDiT(cfg.model, cfg.mask, rngs=nnx.Rngs(0)))
  good = param_map.to_torch_state_dict(model)
  sd = dict(good)
  sd["proj_out.bias"] = good["proj_out.bias"].copy()
  sd["proj_out.bias"][1] = np.nan
  sd["norm_out.linear.bias"] = good["norm_out.linear.bias"].copy()
  sd["norm_out.linear.bias"][:2] = np.inf
  sd["pos_embed.proj.bias"] = np.arange(good["pos_embed.proj.bias"].size, dtype=np.int64)
  with pytest.raises(param_map.ConversionError) as err:
    from_torch.convert_state_dict(sd, abstract)
  msg = str(err.value)
  n_out = good["proj_out.bias"].size
  assert f"proj_out.bias: 1 of {n_out} values are NaN or Inf" in msg
  assert "norm_out.linear.bias: 2 of" in msg
  assert "pos_embed.proj.bias: checkpoint int64, model wants float32" in msg
  zeroed = copy.deepcopy(model)
  _zero_paper_params(zeroed)
  flat = {k: np.asarray(v) for k, v in
          param_map.flat_state(param_map.checkpoint_state(zeroed)).items()}
  flat[("proj_out", "bias")] = np.full_like(flat[("proj_out", "bias")], np.inf)
  flat[("proj_out", "kernel")] = flat[("proj_out", "kernel")].astype(np.int64)
  with pytest.raises(param_map.ConversionError) as err:
    to_torch.export_state_dict(flat, cfg.model, cfg.mask, drop_zero_paper_params=True,
                               allow_mask_module_mismatch=True)
  msg = str(err.value)
  assert f"proj_out.bias: {n_out} of {n_out} values are NaN or Inf" in msg
  assert "proj_out.weight: checkpoint int64, model wants float32" in msg


def test_fp16_export_refuses_values_it_cannot_represent(tmp_path):
  sd = {"a.weight": np.array([1.0, 7e4], np.float32), "b.bias": np.zeros(2, np.float32)}
  with pytest.raises(param_map.ConversionError, match=r"a.weight: 1 of 2 values"):
    to_torch.write_safetensors(sd, str(tmp_path / "m.safetensors"), dtype="fp16")
  assert not os.path.exists(tmp_path / "m.safetensors")
  to_torch.write_safetensors(sd, str(tmp_path / "m.safetensors"), dtype="bf16")


def test_unreadable_checkpoint_files_are_named(tmp_path):
  """A truncated or foreign file gives an error naming the file and what is wrong with it."""
  from safetensors.numpy import save_file
  good = tmp_path / "good.safetensors"
  save_file({"a.weight": np.ones((64, 64), np.float32)}, str(good))
  data = good.read_bytes()
  (tmp_path / "cut.safetensors").write_bytes(data[:len(data) // 2])
  (tmp_path / "text.safetensors").write_bytes(b"this is not a safetensors file")
  for reader in (from_torch.read_torch_checkpoint, vae_weights.read_safetensors):
    assert reader(str(good))["a.weight"].shape == (64, 64)
    for name in ("cut.safetensors", "text.safetensors"):
      path = str(tmp_path / name)
      with pytest.raises(from_torch.CheckpointFileError,
                         match=re.escape(path) + ".*truncated or not a safetensors file"):
        reader(path)
  torch = pytest.importorskip("torch")
  torch.save({"a.weight": torch.ones(64, 64)}, tmp_path / "m.pth")
  data = (tmp_path / "m.pth").read_bytes()
  (tmp_path / "cut.pth").write_bytes(data[:len(data) // 2])
  with pytest.raises(from_torch.CheckpointFileError, match=re.escape(str(tmp_path / "cut.pth"))):
    from_torch.read_torch_checkpoint(str(tmp_path / "cut.pth"))
