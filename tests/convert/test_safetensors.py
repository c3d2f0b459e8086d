"""Reading safetensors checkpoints without torch: bf16 / fp16 exact, sharded folders by their index,
tensor by tensor (read on access), and a PyTorch pickle refused with the extra to install."""
import json
import sys
import tracemalloc

import ml_dtypes
import numpy as np
import pytest

from wm_jax.convert import from_torch, to_torch, vae_weights


def _tensors(seed=0):
  rng = np.random.default_rng(seed)
  return {"a.weight": rng.normal(size=(3, 5)).astype(np.float32),
          "b.bias": rng.normal(size=(7,)).astype(np.float32),
          "c.index": np.arange(4, dtype=np.int64)}


def _write_sharded(folder, tensors, shards, dtype="bfloat16", name="diffusion_pytorch_model"):
  """tensors split over the shard files `shards` [[key, ...], ...] with the index diffusers
  writes (NAME.safetensors.index.json)."""
  weight_map = {}
  for i, keys in enumerate(shards):
    file = f"{name}-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    to_torch.write_safetensors({k: tensors[k] for k in keys}, str(folder / file), dtype=dtype)
    weight_map.update({k: file for k in keys})
  index = folder / f"{name}.safetensors.index.json"
  index.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
  return index


@pytest.mark.parametrize("dtype,numpy_dtype", [("bf16", ml_dtypes.bfloat16),
                                               ("fp16", np.float16)])
def test_half_precision_reads_exactly_without_torch(tmp_path, monkeypatch, dtype, numpy_dtype):
  monkeypatch.setitem(sys.modules, "torch", None)   # `import torch` raises ImportError
  tensors = _tensors()
  to_torch.write_safetensors(tensors, str(tmp_path / "m.safetensors"), dtype=dtype)
  for reader in (from_torch.read_torch_checkpoint, vae_weights.read_safetensors):
    sd = reader(str(tmp_path / "m.safetensors"))
    assert sorted(sd) == sorted(tensors)
    for key, value in tensors.items():
      want = value.astype(numpy_dtype).astype(np.float32) if value.dtype == np.float32 else value
      assert sd[key].dtype == want.dtype, key
      np.testing.assert_array_equal(sd[key], want, err_msg=key)
  half = tensors["a.weight"].astype(numpy_dtype)
  assert not np.array_equal(half.astype(np.float32), tensors["a.weight"])  # the rounding is seen


def test_sharded_folder_is_read_by_its_index(tmp_path):
  tensors = _tensors()
  index = _write_sharded(tmp_path, tensors, [["a.weight"], ["b.bias", "c.index"]])
  (tmp_path / "config.json").write_text("{}")          # a diffusers folder holds its config too
  for path in (tmp_path, index):
    sd = from_torch.read_torch_checkpoint(str(path))
    assert sorted(sd) == sorted(tensors)
    np.testing.assert_array_equal(
        sd["a.weight"], tensors["a.weight"].astype(ml_dtypes.bfloat16).astype(np.float32))
    np.testing.assert_array_equal(sd["c.index"], tensors["c.index"])
  # a file beside the shards that the index does not name is not read
  to_torch.write_safetensors({"stray.weight": np.ones(2, np.float32)},
                             str(tmp_path / "other.safetensors"))
  assert "stray.weight" not in from_torch.read_torch_checkpoint(str(tmp_path))


def test_sharded_index_disagreeing_with_its_shards_is_refused_by_name(tmp_path):
  tensors = _tensors()
  index = _write_sharded(tmp_path, tensors, [["a.weight"], ["b.bias", "c.index"]])
  spec = json.loads(index.read_text())
  spec["weight_map"]["b.bias"] = spec["weight_map"]["a.weight"]       # says shard 1, is in 2
  index.write_text(json.dumps(spec))
  with pytest.raises(ValueError, match=r"'b.bias' \(index: .*00001-of-00002.safetensors, "
                                       r"shards: .*00002-of-00002.safetensors\)"):
    from_torch.read_torch_checkpoint(str(index))
  spec["weight_map"]["d.weight"] = "absent-shard.safetensors"
  index.write_text(json.dumps(spec))
  with pytest.raises(FileNotFoundError, match="absent-shard.safetensors"):
    from_torch.read_torch_checkpoint(str(tmp_path))
  index.write_text("{not json")
  with pytest.raises(from_torch.CheckpointFileError, match=str(index)):
    from_torch.read_torch_checkpoint(str(index))


def test_tensors_are_read_one_at_a_time(tmp_path):
  """Listing, renaming and membership read no tensor; taking the values one by one holds about one
  in memory, not the file (which read-everything-at-once loading would)."""
  n, size = 16, 1 << 20                                  # 16 tensors of 4 MB as float32
  tensors = {f"layer{i}.weight": np.full((size,), i, np.float32) for i in range(n)}
  path = str(tmp_path / "big.safetensors")
  to_torch.write_safetensors(tensors, path, dtype="bf16")
  del tensors
  tracemalloc.start()
  try:
    sd = from_torch.strip_prefix(from_torch.read_torch_checkpoint(path), "layer")
    assert len(sd) == n and "0.weight" in sd and "layer0.weight" not in sd
    assert tracemalloc.get_traced_memory()[1] < size        # nothing read yet
    total = sum(float(sd[key][0]) for key in sd)            # each value read, used, dropped
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert total == sum(range(n))
  assert peak < 4 * 4 * size, f"peak {peak / 2**20:.0f} MiB for a {n * 2 * size / 2**20:.0f} MiB file"


def test_renaming_two_keys_onto_one_is_refused(tmp_path):
  sd = {"transformer.a.weight": np.ones(2), "a.weight": np.zeros(2)}
  with pytest.raises(ValueError, match=r"'transformer.a.weight' and 'a.weight' both become "
                                       r"'a.weight'"):
    from_torch.strip_prefix(sd, "transformer.")


def test_pytorch_pickle_without_torch_names_the_extra(tmp_path, monkeypatch):
  (tmp_path / "m.pth").write_bytes(b"\x80\x02}q\x00.")    # any .pth: torch is what is missing
  monkeypatch.setitem(sys.modules, "torch", None)
  with pytest.raises(ImportError, match=r"m\.pth.*needs torch: pip install -e '\.\[torch\]'"):
    from_torch.read_torch_checkpoint(str(tmp_path / "m.pth"))


def test_diffusers_vae_folder_sharded_in_bf16_loads_without_torch(tmp_path, monkeypatch):
  """A diffusers AutoencoderKL folder (config.json + sharded bf16 weights with their index) loads
  through vae_weights.from_pretrained with torch unimportable, every weight the bf16 rounding of
  the one written."""
  from flax import nnx
  from wm_jax import defaults
  from wm_jax.convert import param_map
  from wm_jax.models.vae import AutoencoderKL
  monkeypatch.setitem(sys.modules, "torch", None)
  cfg = defaults.vae()
  cfg.update(preset="sd", block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
             latent_channels=4)
  sd = param_map.to_torch_state_dict(AutoencoderKL(cfg, rngs=nnx.Rngs(3)))
  keys = sorted(sd)
  _write_sharded(tmp_path, sd, [keys[:len(keys) // 2], keys[len(keys) // 2:]])
  (tmp_path / "config.json").write_text(json.dumps({
      "_class_name": "AutoencoderKL", "block_out_channels": [8, 16], "layers_per_block": 1,
      "norm_num_groups": 4, "latent_channels": 4,
      "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2}))
  loaded = param_map.to_torch_state_dict(vae_weights.from_pretrained(str(tmp_path)))
  assert sorted(loaded) == keys
  for key in keys:
    np.testing.assert_array_equal(
        loaded[key], sd[key].astype(ml_dtypes.bfloat16).astype(np.float32), err_msg=key)
