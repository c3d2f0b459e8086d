"""FID InceptionV3: torch weight-file round trip, pytorch-fid layout and pooling choices, features."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wm_jax.evaluation import inception

torch = pytest.importorskip("torch")
F = torch.nn.functional


@pytest.fixture(scope="module")
def weight_file(tmp_path_factory):
  """A file in pt_inception-2015-12-05's format: same keys and shapes, random values."""
  rng = np.random.default_rng(0)
  sd = {}
  for key, shape in inception.state_dict_shapes().items():
    if key.endswith("running_var"):
      v = rng.uniform(0.5, 1.5, shape)
    elif key.endswith("conv.weight"):
      v = rng.normal(0, np.sqrt(2.0 / np.prod(shape[1:])), shape)
    else:
      v = rng.normal(0, 0.1, shape)
    sd[key] = torch.tensor(v, dtype=torch.float32)
    if key.endswith("running_var"):
      sd[key.replace("running_var", "num_batches_tracked")] = torch.tensor(0)
  path = tmp_path_factory.mktemp("w") / "pt_inception-random.pth"
  torch.save(sd, path)
  return path, {k: v.numpy() for k, v in sd.items() if not k.endswith("num_batches_tracked")}


@pytest.fixture(scope="module")
def loaded(weight_file):
  return inception.load_model(str(weight_file[0]))


def test_layout_matches_pytorch_fid():
  shapes = inception.state_dict_shapes()
  # Known entries of torchvision's Inception3 / pytorch-fid's FID weights.
  assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
  assert shapes["Mixed_5b.branch_pool.conv.weight"] == (32, 192, 1, 1)
  assert shapes["Mixed_6e.branch7x7_2.conv.weight"] == (192, 192, 1, 7)
  assert shapes["Mixed_7c.branch3x3dbl_3b.conv.weight"] == (384, 384, 3, 1)
  assert shapes["Mixed_7c.branch_pool.bn.running_var"] == (192,)
  assert shapes["fc.weight"] == (1008, 2048)
  assert sum(k.endswith("conv.weight") for k in shapes) == 94   # InceptionV3's 94 conv layers
  assert not any("AuxLogits" in k for k in shapes)


def test_weight_file_round_trip(weight_file, loaded):
  path, sd = weight_file
  back = inception.to_state_dict(loaded)
  assert set(back) == set(sd)
  for k in sd:
    np.testing.assert_array_equal(back[k], sd[k], err_msg=k)
  # A file missing an entry or with a foreign entry is refused by name.
  with pytest.raises(ValueError, match=r"missing \[.Mixed_6a.branch3x3.bn.bias.\]"):
    inception.from_state_dict({k: v for k, v in sd.items() if k != "Mixed_6a.branch3x3.bn.bias"})
  with pytest.raises(ValueError, match=r"unused \[.AuxLogits.fc.kernel.\]"):
    inception.from_state_dict({**sd, "AuxLogits.fc.weight": np.zeros((1000, 768))})


def test_missing_or_unreadable_weight_file_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"FID Inception weight file .*no-such\.pth not found "
                     r"\(--fid_weights: pytorch-fid's pt_inception-2015-12-05"):
    inception.load_model(str(tmp_path / "no-such.pth"))
  (tmp_path / "text.pth").write_text("not weights\n")
  with pytest.raises(ValueError, match=r"FID Inception weight file .*text\.pth: not a PyTorch "
                     r"weight file torch\.load can read"):
    inception.load_model(str(tmp_path / "text.pth"))


@pytest.mark.parametrize("content, found", [
    ([1, 2], r"expected a state_dict \(a dict of tensors\), found a list"),
    ({"Conv2d_1a_3x3.conv.weight": 3}, r"entry 'Conv2d_1a_3x3.conv.weight' is int, not a tensor"),
    ({"layer1.0.weight": torch.zeros(2)}, r"entry 'layer1.0.weight' is no weight of pytorch-fid's "
     r"FID Inception \(keys such as 'Mixed_5b.branch1x1.conv.weight'; pytorch-fid's "
     r"pt_inception-2015-12-05"),
    ({"Conv2d_1a_3x3.conv.weight": torch.zeros(3)},
     r"entry 'Conv2d_1a_3x3.conv.weight' has shape \(3,\); a conv.weight is 4-d"),
])
def test_weight_file_of_the_wrong_structure_is_named(tmp_path, content, found):
  path = tmp_path / "wrong.pth"
  torch.save(content, path)
  with pytest.raises(ValueError, match=r"FID Inception weight file .*wrong\.pth: " + found):
    inception.load_model(str(path))


def test_weight_file_missing_an_entry_is_named(weight_file, tmp_path):
  _, sd = weight_file
  path = tmp_path / "partial.pth"
  torch.save({k: torch.tensor(v) for k, v in sd.items() if k != "Mixed_6a.branch3x3.bn.bias"},
             path)
  with pytest.raises(ValueError, match=r"FID Inception weight file .*partial\.pth: weights do not "
                     r"match the model: missing \['Mixed_6a.branch3x3.bn.bias'\]"):
    inception.load_model(str(path))


def _torch_basic(x, sd, name, stride=1, padding=0):
  w = lambda leaf: torch.tensor(sd[f"{name}.{leaf}"])
  y = F.conv2d(x, w("conv.weight"), stride=stride, padding=padding)
  y = F.batch_norm(y, w("bn.running_mean"), w("bn.running_var"), w("bn.weight"), w("bn.bias"),
                   training=False, eps=1e-3)
  return F.relu(y)


def test_blocks_match_torch_functional(weight_file, loaded):
  """Layouts, BN eps, padding and pytorch-fid's pool choices against torch ops."""
  _, sd = weight_file
  model = loaded
  rng = np.random.default_rng(1)
  x = rng.normal(size=(1, 9, 9, 3)).astype(np.float32)
  got = model.Conv2d_1a_3x3(jnp.asarray(x))
  ref = _torch_basic(torch.tensor(x).permute(0, 3, 1, 2), sd, "Conv2d_1a_3x3", stride=2)
  np.testing.assert_allclose(np.asarray(got), ref.permute(0, 2, 3, 1).numpy(), rtol=1e-4, atol=1e-4)
  # Pool branches: avg excludes padding (InceptionA/C/E_1), Mixed_7c max-pools.
  z = rng.normal(size=(2, 5, 6, 4)).astype(np.float32)
  zt = torch.tensor(z).permute(0, 3, 1, 2)
  ref_avg = F.avg_pool2d(zt, 3, stride=1, padding=1, count_include_pad=False)
  ref_max = F.max_pool2d(zt, 3, stride=1, padding=1)
  np.testing.assert_allclose(np.asarray(inception._avg_pool_exclude_pad(jnp.asarray(z))),
                             ref_avg.permute(0, 2, 3, 1).numpy(), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.asarray(inception._max_pool_3x3_s1(jnp.asarray(z))),
                             ref_max.permute(0, 2, 3, 1).numpy())
  assert model.Mixed_7b.pool == "avg" and model.Mixed_7c.pool == "max"


def test_resize_matches_torch_interpolate():
  x = np.random.default_rng(2).uniform(0, 255, (2, 37, 50, 3)).astype(np.float32)
  for size in [(299, 299), (20, 17)]:   # up and down
    ref = F.interpolate(torch.tensor(x).permute(0, 3, 1, 2), size=size, mode="bilinear",
                        align_corners=False).permute(0, 2, 3, 1).numpy()
    got = np.asarray(inception.resize_lib.resize_bilinear(x, size, "torch"))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-3)


def test_fid_pipeline_shapes():
  """The whole network wires up (every block's channels and strides) at the FID resolution."""
  model = inception.FIDInceptionV3()
  images = jax.ShapeDtypeStruct((2, 64, 80, 3), jnp.uint8)
  out = jax.eval_shape(lambda im: inception.fid_features(model, im), images)
  assert out.shape == (2, 2048) and out.dtype == jnp.float32
  logits = jax.eval_shape(model.logits, jax.ShapeDtypeStruct((1, 299, 299, 3), jnp.float32))
  assert logits.shape == (1, 1008)


@pytest.mark.slow
def test_fid_features_shape_and_finite(weight_file):
  _, sd = weight_file
  model = inception.from_state_dict(sd)
  images = np.random.default_rng(3).integers(0, 256, (1, 64, 80, 3), dtype=np.uint8)
  feats = jax.jit(lambda im: inception.fid_features(model, im))(images)
  assert feats.shape == (1, 2048) and np.all(np.isfinite(np.asarray(feats)))
  assert float(jnp.std(feats)) > 0
