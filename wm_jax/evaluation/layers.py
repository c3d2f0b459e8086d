"""Minimal inference layers for the metric networks (I3D, FID Inception).

These networks only ever run with loaded weights, so their variables start as zeros (numpy, no
random init, cheap to build: nnx.Conv's initialisers cost ~20 ms per layer on CPU) and a loader
fills every one of them; `assign` refuses any variable left unfilled. Convs run at HIGHEST precision
so metric features do not depend on the backend's default float32 matmul passes (bf16 on TPU).
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class Conv(nnx.Module):
  """N-d convolution, channels last. kernel [*window, cin, cout]; padding 'SAME' or pairs."""

  def __init__(self, cin, cout, window, strides=None, padding="SAME", use_bias=False):
    window = tuple(window)
    self.strides = tuple(strides) if strides is not None else (1,) * len(window)
    self.padding = padding if isinstance(padding, str) else tuple(tuple(p) for p in padding)
    self.kernel = nnx.Param(np.zeros(window + (cin, cout), np.float32))
    self.bias = nnx.Param(np.zeros((cout,), np.float32)) if use_bias else None

  def __call__(self, x):
    n = x.ndim - 2
    spatial = "DHW"[-n:] if n <= 3 else None
    dn = ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")
    y = jax.lax.conv_general_dilated(x, self.kernel[...].astype(x.dtype), self.strides, self.padding,
                                     dimension_numbers=dn, precision=jax.lax.Precision.HIGHEST)
    if self.bias is not None:
      y = y + self.bias[...].astype(x.dtype)
    return y


class BatchNorm(nnx.Module):
  """Inference batch norm with running statistics: (x - mean) / sqrt(var + eps) * scale + bias."""

  def __init__(self, features, epsilon, use_scale=True):
    self.epsilon = epsilon
    self.scale = nnx.Param(np.ones((features,), np.float32)) if use_scale else None
    self.bias = nnx.Param(np.zeros((features,), np.float32))
    self.mean = nnx.BatchStat(np.zeros((features,), np.float32))
    self.var = nnx.BatchStat(np.ones((features,), np.float32))

  def __call__(self, x):
    y = (x - self.mean[...]) * jax.lax.rsqrt(self.var[...] + self.epsilon)
    if self.scale is not None:
      y = y * self.scale[...]
    return y + self.bias[...]


class Dense(nnx.Module):

  def __init__(self, cin, cout):
    self.kernel = nnx.Param(np.zeros((cin, cout), np.float32))
    self.bias = nnx.Param(np.zeros((cout,), np.float32))

  def __call__(self, x):
    return jnp.dot(x, self.kernel[...], precision=jax.lax.Precision.HIGHEST) + self.bias[...]


def flat_variables(model):
  """{('a', 'b', 'kernel'): Variable} over every variable of `model`."""
  return {tuple(str(k) for k in path): var
          for path, var in nnx.to_flat_state(nnx.state(model))}


def assign(model, weights, source, dtype=jnp.float32):
  """Sets every variable of `model` from weights {path tuple: array}; a missing, unused or
  mis-shaped entry raises a ValueError naming it after `source` (where the weights come from,
  e.g. 'I3D weight file PATH'), so no variable keeps its zero init."""
  flat = flat_variables(model)
  missing = sorted(".".join(k) for k in set(flat) - set(weights))
  unused = sorted(".".join(k) for k in set(weights) - set(flat))
  if missing or unused:
    raise ValueError(f"{source}: weights do not match the model: missing {missing[:8]} "
                     f"({len(missing)}), unused {unused[:8]} ({len(unused)})")
  for key, value in weights.items():
    var = flat[key]
    value = np.asarray(value)
    if value.shape != var[...].shape:
      raise ValueError(f"{source}: weight {'.'.join(key)} has shape {value.shape}, the model "
                       f"expects {var[...].shape}")
    var.set_value(jnp.asarray(value, dtype))
  return model
