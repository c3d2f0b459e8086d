"""Parameter-creating building blocks shared by the backbone modules.

Every parameter carries logical axis names (wm_jax.parallel.rules vocabulary) through
`nnx.with_partitioning`; the mesh mapping happens later, in wm_jax.parallel.
`dtype` is the compute dtype (None: follow the inputs), `param_dtype` the storage dtype.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx


@dataclasses.dataclass(frozen=True)
class Precision:
  """Compute and storage dtypes handed to every layer."""
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @classmethod
  def from_config(cls, config) -> "Precision":
    def as_dtype(name):
      return None if name in (None, "", "none") else jnp.dtype(name)
    return cls(as_dtype(config.get("dtype", None)), as_dtype(config.get("param_dtype", "float32")))


class KeyStream:
  """Stands in for nnx.Rngs when building layers: `params()` folds a Python counter into one key.

  nnx.Rngs updates an RngCount variable on every draw; under tracing (nnx.eval_shape / jit) each
  update inspects the tracer's sharding, whose error path walks the whole jaxpr, so building a
  1500-parameter model that way is quadratic (minutes). This stream draws one key from the given
  nnx.Rngs and derives the rest without variable updates. Only for layers that draw `params`.
  """

  def __init__(self, rngs: nnx.Rngs):
    self._key = rngs.params()
    self._count = 0

  def params(self):
    self._count += 1
    return jax.random.fold_in(self._key, self._count)


def _part(init, axes):
  return nnx.with_partitioning(init, tuple(axes))


def linear(din: int, dout: int, axes: Sequence[str | None], *, rngs: nnx.Rngs, prec: Precision,
           use_bias: bool = True, zero_init: bool = False) -> nnx.Linear:
  """nnx.Linear with logical axes (in, out) on the kernel and (out,) on the bias."""
  kernel_init = nnx.initializers.zeros_init() if zero_init else nnx.initializers.lecun_normal()
  return nnx.Linear(din, dout, use_bias=use_bias, dtype=prec.dtype, param_dtype=prec.param_dtype,
                    kernel_init=_part(kernel_init, axes),
                    bias_init=_part(nnx.initializers.zeros_init(), axes[1:]), rngs=rngs)


def conv(din: int, dout: int, kernel: int, *, rngs: nnx.Rngs, prec: Precision, stride: int = 1,
         padding: Any = "VALID", zero_init: bool = False,
         axes: Sequence[str | None] = ("conv_in", "conv_out")) -> nnx.Conv:
  """2-D nnx.Conv (channels last) with logical axes (None, None, in, out) on the kernel."""
  kernel_init = nnx.initializers.zeros_init() if zero_init else nnx.initializers.lecun_normal()
  return nnx.Conv(din, dout, (kernel, kernel), strides=stride, padding=padding,
                  dtype=prec.dtype, param_dtype=prec.param_dtype,
                  kernel_init=_part(kernel_init, (None, None, *axes)),
                  bias_init=_part(nnx.initializers.zeros_init(), axes[1:]), rngs=rngs)


def layer_norm(dim: int, *, rngs: nnx.Rngs, prec: Precision, eps: float = 1e-5,
               affine: bool = True) -> nnx.LayerNorm:
  """LayerNorm; affine=False is PyTorch's elementwise_affine=False (no parameters)."""
  return nnx.LayerNorm(dim, epsilon=eps, use_scale=affine, use_bias=affine, dtype=prec.dtype,
                       param_dtype=prec.param_dtype,
                       scale_init=_part(nnx.initializers.ones_init(), ("norm",)),
                       bias_init=_part(nnx.initializers.zeros_init(), ("norm",)), rngs=rngs)


def rms_norm(dim: int, *, rngs: nnx.Rngs, prec: Precision, eps: float = 1e-6,
             axes: Sequence[str | None] = ("head_dim",)) -> nnx.RMSNorm:
  return nnx.RMSNorm(dim, epsilon=eps, dtype=prec.dtype, param_dtype=prec.param_dtype,
                     scale_init=_part(nnx.initializers.ones_init(), axes), rngs=rngs)


def zeros_param(shape, axes, prec: Precision, value: float = 0.0) -> nnx.Param:
  return nnx.Param(jnp.full(shape, value, prec.param_dtype), out_sharding=tuple(axes))
