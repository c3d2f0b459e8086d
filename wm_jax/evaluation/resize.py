"""Bilinear resizes matching the reference metric code, as separable matrix products.

Two conventions, because FID and FVD were defined with different libraries:
  'torch': PyTorch F.interpolate(mode='bilinear', align_corners=False), no antialias — half-pixel
           centers, src = (i + 0.5) * in/out - 0.5, clamped below at 0 (pytorch-fid's resize).
  'tf1':   TensorFlow 1 tf.image.resize_bilinear(align_corners=False) — src = i * in/out, no
           half-pixel offset (the original FVD code's resize).
Neither antialiases when downsampling, as in the reference code. The weights are built in NumPy once
per shape and applied with two einsums (MXU-friendly on TPU).
"""

import functools

import jax.numpy as jnp
import numpy as np

MODES = ("torch", "tf1")


@functools.lru_cache(maxsize=64)
def interp_matrix(n_in: int, n_out: int, mode: str) -> np.ndarray:
  """[n_out, n_in] float32 matrix whose rows hold the two bilinear weights of each output pixel."""
  if mode not in MODES:
    raise ValueError(f"resize mode {mode!r} not in {MODES}")
  scale = n_in / n_out
  i = np.arange(n_out, dtype=np.float64)
  if mode == "torch":
    src = np.maximum((i + 0.5) * scale - 0.5, 0.0)
  else:
    src = i * scale
  lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
  hi = np.minimum(lo + 1, n_in - 1)
  frac = src - lo
  m = np.zeros((n_out, n_in), np.float64)
  np.add.at(m, (np.arange(n_out), lo), 1.0 - frac)
  np.add.at(m, (np.arange(n_out), hi), frac)
  return m.astype(np.float32)


def resize_bilinear(x, size, mode):
  """x [..., H, W, C] -> [..., size[0], size[1], C] (float32)."""
  h, w = x.shape[-3], x.shape[-2]
  oh, ow = size
  x = jnp.asarray(x, jnp.float32)
  if (h, w) == (oh, ow):
    return x
  mh = jnp.asarray(interp_matrix(h, oh, mode))
  mw = jnp.asarray(interp_matrix(w, ow, mode))
  x = jnp.einsum("oh,...hwc->...owc", mh, x, precision="highest")
  return jnp.einsum("pw,...owc->...opc", mw, x, precision="highest")
