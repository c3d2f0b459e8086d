"""The FID InceptionV3 in Flax NNX (pytorch-fid's port of TF's `pt_inception-2015-12-05`).

FID is defined with the 2015-12-05 TensorFlow Inception graph; pytorch-fid ships it as the torch
state_dict `pt_inception-2015-12-05-6726825d.pth` in torchvision's Inception3 layout (1008 classes,
no aux head) with four changes from torchvision: Mixed_5b/5c/5d (InceptionA), Mixed_6b..6e
(InceptionC) and Mixed_7b (InceptionE) average-pool their pool branch with count_include_pad=False,
and Mixed_7c (InceptionE) max-pools it (3x3, stride 1, pad 1). Those choices are `pool` below.

Module paths equal the state_dict keys ('Mixed_6e.branch7x7_2.conv' ...); leaves map by one rule
(conv/fc `weight` -> `kernel` transposed to HWIO / [in,out], bn `weight` -> `scale`,
`running_mean`/`running_var` -> `mean`/`var`; `num_batches_tracked` is ignored). A missing file, a
file torch cannot read, or a state_dict of other keys, values or shapes is refused with the file
and the entry at fault named.

Features (`fid_features`): uint8 images [N,H,W,3] -> /255 -> bilinear resize to 299x299 as
F.interpolate(align_corners=False) -> 2x-1 -> network -> global average pool: [N, 2048].
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wm_jax.evaluation import layers
from wm_jax.evaluation import resize as resize_lib

FID_SIZE = 299
NUM_CLASSES = 1008  # the TF graph's 1008-way classifier (fc is in the file; features skip it)


def _pad(p):
  p = (p, p) if isinstance(p, int) else p
  return ((p[0], p[0]), (p[1], p[1]))


class BasicConv2d(nnx.Module):
  """conv (no bias) -> BatchNorm(eps 1e-3) -> relu."""

  def __init__(self, cin, cout, kernel, stride=1, padding=0):
    kernel = (kernel, kernel) if isinstance(kernel, int) else kernel
    self.conv = layers.Conv(cin, cout, kernel, (stride, stride), _pad(padding))
    self.bn = layers.BatchNorm(cout, epsilon=1e-3)

  def __call__(self, x):
    return jax.nn.relu(self.bn(self.conv(x)))


def _avg_pool_exclude_pad(x):
  """3x3 stride 1 pad 1 average pool, dividing by the number of real (unpadded) pixels."""
  pad = ((0, 0), (1, 1), (1, 1), (0, 0))
  s = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pad)
  ones = jnp.ones((1,) + x.shape[1:3] + (1,), x.dtype)
  n = jax.lax.reduce_window(ones, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pad)
  return s / n


def _max_pool_3x3_s1(x):
  return nnx.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))


def _max_pool_3x3_s2(x):
  return nnx.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


_POOLS = {"avg": _avg_pool_exclude_pad, "max": _max_pool_3x3_s1}


class InceptionA(nnx.Module):

  def __init__(self, cin, pool_features):
    self.branch1x1 = BasicConv2d(cin, 64, 1)
    self.branch5x5_1 = BasicConv2d(cin, 48, 1)
    self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
    self.branch_pool = BasicConv2d(cin, pool_features, 1)

  def __call__(self, x):
    return jnp.concatenate([
        self.branch1x1(x),
        self.branch5x5_2(self.branch5x5_1(x)),
        self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
        self.branch_pool(_avg_pool_exclude_pad(x)),
    ], axis=-1)


class InceptionB(nnx.Module):

  def __init__(self, cin):
    self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

  def __call__(self, x):
    return jnp.concatenate([
        self.branch3x3(x),
        self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
        _max_pool_3x3_s2(x),
    ], axis=-1)


class InceptionC(nnx.Module):

  def __init__(self, cin, c7):
    self.branch1x1 = BasicConv2d(cin, 192, 1)
    self.branch7x7_1 = BasicConv2d(cin, c7, 1)
    self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
    self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
    self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
    self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
    self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
    self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
    self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
    self.branch_pool = BasicConv2d(cin, 192, 1)

  def __call__(self, x):
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    d = x
    for i in range(1, 6):
      d = getattr(self, f"branch7x7dbl_{i}")(d)
    return jnp.concatenate([self.branch1x1(x), b7, d, self.branch_pool(_avg_pool_exclude_pad(x))],
                           axis=-1)


class InceptionD(nnx.Module):

  def __init__(self, cin):
    self.branch3x3_1 = BasicConv2d(cin, 192, 1)
    self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
    self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
    self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
    self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
    self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

  def __call__(self, x):
    b7 = x
    for i in range(1, 5):
      b7 = getattr(self, f"branch7x7x3_{i}")(b7)
    return jnp.concatenate([self.branch3x3_2(self.branch3x3_1(x)), b7, _max_pool_3x3_s2(x)],
                           axis=-1)


class InceptionE(nnx.Module):

  def __init__(self, cin, pool):
    self.pool = pool
    self.branch1x1 = BasicConv2d(cin, 320, 1)
    self.branch3x3_1 = BasicConv2d(cin, 384, 1)
    self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
    self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
    self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
    self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
    self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
    self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
    self.branch_pool = BasicConv2d(cin, 192, 1)

  def __call__(self, x):
    b3 = self.branch3x3_1(x)
    d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    return jnp.concatenate([
        self.branch1x1(x),
        self.branch3x3_2a(b3), self.branch3x3_2b(b3),
        self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d),
        self.branch_pool(_POOLS[self.pool](x)),
    ], axis=-1)


class FIDInceptionV3(nnx.Module):
  """images [N,299,299,3] in [-1,1] -> pool features [N,2048] (`logits` gives the 1008 classes)."""

  def __init__(self):
    self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
    self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
    self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
    self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
    self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
    self.Mixed_5b = InceptionA(192, 32)
    self.Mixed_5c = InceptionA(256, 64)
    self.Mixed_5d = InceptionA(288, 64)
    self.Mixed_6a = InceptionB(288)
    self.Mixed_6b = InceptionC(768, 128)
    self.Mixed_6c = InceptionC(768, 160)
    self.Mixed_6d = InceptionC(768, 160)
    self.Mixed_6e = InceptionC(768, 192)
    self.Mixed_7a = InceptionD(768)
    self.Mixed_7b = InceptionE(1280, "avg")
    self.Mixed_7c = InceptionE(2048, "max")
    self.fc = layers.Dense(2048, NUM_CLASSES)

  def __call__(self, x):
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"FIDInceptionV3 expects images [N,H,W,3], got shape {x.shape}")
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
    x = _max_pool_3x3_s2(x)
    x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
    x = _max_pool_3x3_s2(x)
    for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
      x = getattr(self, f"Mixed_{name}")(x)
    return jnp.mean(x, axis=(1, 2))

  def logits(self, x):
    return self.fc(self(x))


# ---------------------------------------------------------------------------------------------
# torch state_dict <-> NNX

WEIGHT_FILE = "pytorch-fid's pt_inception-2015-12-05-6726825d.pth"
# torch leaf -> (nnx leaf, dims of the torch array, layout function torch -> nnx)
_TO_NNX = {
    "conv.weight": ("kernel", 4, lambda w: np.transpose(w, (2, 3, 1, 0))),  # OIHW -> HWIO
    "fc.weight": ("kernel", 2, lambda w: np.transpose(w, (1, 0))),
    "bn.weight": ("scale", 1, lambda w: w),
    "bn.bias": ("bias", 1, lambda w: w),
    "bn.running_mean": ("mean", 1, lambda w: w),
    "bn.running_var": ("var", 1, lambda w: w),
    "fc.bias": ("bias", 1, lambda w: w),
}
_FROM_NNX = {  # (parent kind, nnx leaf) -> (torch leaf, layout nnx -> torch)
    ("conv", "kernel"): ("weight", lambda w: np.transpose(w, (3, 2, 0, 1))),
    ("fc", "kernel"): ("weight", lambda w: np.transpose(w, (1, 0))),
    ("bn", "scale"): ("weight", lambda w: w), ("bn", "bias"): ("bias", lambda w: w),
    ("bn", "mean"): ("running_mean", lambda w: w), ("bn", "var"): ("running_var", lambda w: w),
    ("fc", "bias"): ("bias", lambda w: w),
}
IGNORED_SUFFIX = ".num_batches_tracked"


def torch_key_to_path(key):
  """'Mixed_5b.branch1x1.conv.weight' -> (('Mixed_5b', 'branch1x1', 'conv', 'kernel'), dims of
  the torch array, layout fn); None for a key that is no weight of the network's kinds."""
  if not isinstance(key, str):
    return None
  parts = key.split(".")
  tail = ".".join(parts[-2:])
  if tail not in _TO_NNX:
    return None
  leaf, dims, fn = _TO_NNX[tail]
  return tuple(parts[:-1]) + (leaf,), dims, fn


def read_state_dict(path):
  """A torch state_dict file -> {key: float32 np.ndarray}, loaded with weights_only=True. A
  missing file, one torch cannot read, or one that holds no dict of tensors raises an error
  naming the file."""
  where = f"FID Inception weight file {path}"
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{where} not found (--fid_weights: {WEIGHT_FILE})")
  try:
    import torch
  except ImportError:
    raise ImportError(f"reading {path} (a PyTorch .pth) needs torch: `pip install torch` (CPU "
                      "build is enough); wm_jax never unpickles it without torch's weights_only "
                      "loader") from None
  try:
    sd = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch.load raises many kinds on a damaged or foreign file
    raise ValueError(f"{where}: not a PyTorch weight file torch.load can read "
                     f"({type(e).__name__}: {e}); --fid_weights wants {WEIGHT_FILE}") from e
  if not isinstance(sd, dict):
    raise ValueError(f"{where}: expected a state_dict (a dict of tensors), found a "
                     f"{type(sd).__name__}")
  for key, value in sd.items():
    if not isinstance(value, torch.Tensor):
      raise ValueError(f"{where}: entry {key!r} is {type(value).__name__}, not a tensor")
  return {k: v.detach().cpu().numpy() for k, v in sd.items()}


def from_state_dict(state_dict, dtype=jnp.float32, source="FID Inception weights"):
  """Builds FIDInceptionV3 from a {torch key: array} dict; every model variable must be given.
  A key of no known kind, an array of the wrong dims or shape, a missing or an unused entry
  raises a ValueError naming `source` (where the dict comes from) and the entry."""
  weights = {}
  for key, value in state_dict.items():
    if isinstance(key, str) and key.endswith(IGNORED_SUFFIX):
      continue
    mapped = torch_key_to_path(key)
    if mapped is None:
      raise ValueError(f"{source}: entry {key!r} is no weight of pytorch-fid's FID Inception "
                       f"(keys such as 'Mixed_5b.branch1x1.conv.weight'; {WEIGHT_FILE})")
    path, dims, fn = mapped
    value = np.asarray(value)
    if value.ndim != dims:
      raise ValueError(f"{source}: entry {key!r} has shape {value.shape}; a "
                       f"{'.'.join(key.split('.')[-2:])} is {dims}-d")
    weights[path] = fn(value)
  return layers.assign(FIDInceptionV3(), weights, source, dtype)


def to_state_dict(model):
  """FIDInceptionV3 -> {torch key: np.ndarray} in pytorch-fid's layout."""
  out = {}
  for names, var in layers.flat_variables(model).items():
    names = list(names)
    kind = "fc" if names[0] == "fc" else names[-2]
    leaf, fn = _FROM_NNX[(kind, names[-1])]
    out[".".join(names[:-1] + [leaf])] = fn(np.asarray(var.get_value()))
  return out


def load_model(path, dtype=jnp.float32):
  """FIDInceptionV3 from a pytorch-fid weight file (pt_inception-2015-12-05-6726825d.pth); a
  wrong file raises an error naming it and what is wrong with it."""
  return from_state_dict(read_state_dict(path), dtype, source=f"FID Inception weight file {path}")


def preprocess(images, size=FID_SIZE):
  """uint8 images [N,H,W,3] -> float32 [N,299,299,3] in [-1,1] (pytorch-fid's resize + scaling)."""
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"expected images [N,H,W,3], got shape {images.shape}")
  x = jnp.asarray(images, jnp.float32) / 255.0
  x = resize_lib.resize_bilinear(x, (size, size), "torch")
  return 2.0 * x - 1.0


def fid_features(model, images):
  """uint8 images [N,H,W,3] -> 2048-d pool features [N,2048] float32."""
  return model(preprocess(images)).astype(jnp.float32)


def state_dict_shapes():
  """{torch key: shape} of the pytorch-fid weight file (num_batches_tracked aside)."""
  return {k: v.shape for k, v in to_state_dict(FIDInceptionV3()).items()}
