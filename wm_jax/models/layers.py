"""Parameter-creating building blocks shared by the backbone modules.

Every parameter carries logical axis names (wm_jax.parallel.rules vocabulary) through
`nnx.with_partitioning`; the mesh mapping happens later, in wm_jax.parallel.
`dtype` is the compute dtype (None: follow the inputs), `param_dtype` the storage dtype.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from wm_jax.models.buffers import Buffer


@dataclasses.dataclass(frozen=True)
class Precision:
  """Compute and storage dtypes handed to every layer, and whether linear layers multiply through
  dense_dot_general (its custom gradient is opaque to jax.checkpoint policies, so only a model
  without rematerialisation uses it: from_config sets it for remat_policy 'none')."""
  dtype: Any = None
  param_dtype: Any = jnp.float32
  dense_grad: bool = False

  @classmethod
  def from_config(cls, config) -> "Precision":
    def as_dtype(name):
      return None if name in (None, "", "none") else jnp.dtype(name)
    return cls(as_dtype(config["dtype"]), as_dtype(config["param_dtype"]),
               dense_grad=config.get("remat_policy", "none") == "none")


class KeyStream:
  """Stands in for nnx.Rngs when building layers: `params()` returns a fresh key per call.

  Two costs of drawing every initial value from nnx.Rngs are avoided:
  - nnx.Rngs updates an RngCount variable per draw; under tracing (nnx.eval_shape / jit) each
    update inspects the tracer's sharding, whose error path walks the whole jaxpr, so building a
    1500-parameter model is quadratic (minutes for nnx.eval_shape of the full size);
  - threefry random bits expand into a large graph per parameter (slow CPU compiles of `init`).
  One key is drawn from the given nnx.Rngs; each parameter then gets an 'rbg' key (XLA's
  RngBitGenerator) holding that key's data and a Python counter. Initial values are deterministic
  for a seed on one platform (RngBitGenerator's algorithm is the backend's choice).
  """

  def __init__(self, rngs: nnx.Rngs):
    self._data = jax.random.key_data(rngs.params()).astype(jnp.uint32).reshape(-1)[:2]
    self._count = 0

  @classmethod
  def from_key(cls, key) -> "KeyStream":
    """A stream seeded by a key array (e.g. one key per layer inside nnx.vmap)."""
    stream = cls.__new__(cls)
    stream._data = jax.random.key_data(key).astype(jnp.uint32).reshape(-1)[:2]
    stream._count = 0
    return stream

  def params(self):
    self._count += 1
    data = jnp.concatenate([self._data, jnp.array([self._count, 0x5EED], jnp.uint32)])
    return jax.random.wrap_key_data(data, impl="rbg")


def _part(init, axes):
  return nnx.with_partitioning(init, tuple(axes))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dense(x, kernel, precision):
  return jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())), precision=precision)


def _dense_fwd(x, kernel, precision):
  return _dense(x, kernel, precision), (x, kernel)


def _dense_bwd(precision, residuals, g):
  x, kernel = residuals
  dx = jax.lax.dot_general(g, kernel, (((g.ndim - 1,), (1,)), ((), ())), precision=precision)
  # x^T g with the positions flattened to one axis: XLA:CPU then transposes x in the backward
  # pass. Given the leading dims of x and g as they are, it writes x transposed from within the
  # forward fusion that makes x instead: an element-by-element strided store, slower than the
  # product itself.
  x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
  dkernel = jax.lax.dot_general(x2, g2, (((0,), (0,)), ((), ())), precision=precision)
  return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


_dense.defvjp(_dense_fwd, _dense_bwd)


def dense_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None,
                      out_sharding=None):
  """lax.dot_general for nnx.Linear (x [..., K] @ kernel [K, N]) whose gradients are the same
  products written so that XLA's CPU backend keeps them on its fast dot path: the kernel's
  gradient is one 2-D product x^T g over all positions (x [P, K], g [P, N], [K, N] out).
  JAX's own transpose of dot_general computes g^T x and transposes it, which XLA:CPU folds into
  one transposed-operand dot that its XNNPACK path does not take (several times slower). The
  values and FLOPs are the same on every backend; any other contraction, a preferred element type
  or an output sharding goes to lax.dot_general unchanged. Its gradient is a custom VJP, which
  jax.checkpoint policies cannot look into (a policy that saves dots would recompute these):
  layers.linear uses it only with Precision.dense_grad."""
  last = (((lhs.ndim - 1,), (0,)), ((), ()))
  if (tuple(map(tuple, dimension_numbers[0])), tuple(map(tuple, dimension_numbers[1]))) != last \
      or rhs.ndim != 2 or preferred_element_type is not None or out_sharding is not None:
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type,
                               out_sharding=out_sharding)
  return _dense(lhs, rhs, precision)


def linear(din: int, dout: int, axes: Sequence[str | None], *, rngs: nnx.Rngs, prec: Precision,
           use_bias: bool = True, zero_init: bool = False) -> nnx.Linear:
  """nnx.Linear with logical axes (in, out) on the kernel and (out,) on the bias, computed by
  dense_dot_general when prec.dense_grad."""
  kernel_init = nnx.initializers.zeros_init() if zero_init else nnx.initializers.lecun_normal()
  return nnx.Linear(din, dout, use_bias=use_bias, dtype=prec.dtype, param_dtype=prec.param_dtype,
                    kernel_init=_part(kernel_init, axes),
                    bias_init=_part(nnx.initializers.zeros_init(), axes[1:]), rngs=rngs,
                    dot_general=dense_dot_general if prec.dense_grad else jax.lax.dot_general)


def conv(din: int, dout: int, kernel: int | Sequence[int], *, rngs: nnx.Rngs, prec: Precision,
         stride: int | Sequence[int] = 1, padding: Any = "VALID", zero_init: bool = False,
         axes: Sequence[str | None] = ("conv_in", "conv_out")) -> nnx.Conv:
  """nnx.Conv (channels last) with logical axes (None, ..., None, in, out) on the kernel.

  kernel: an int for a square 2-D window, or one size per spatial dim (e.g. (1, 3, 3) for a
  3-D conv, kernel [1, 3, 3, in, out]).
  """
  kernel_init = nnx.initializers.zeros_init() if zero_init else nnx.initializers.lecun_normal()
  window = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
  return nnx.Conv(din, dout, window, strides=stride, padding=padding,
                  dtype=prec.dtype, param_dtype=prec.param_dtype,
                  kernel_init=_part(kernel_init, (None,) * len(window) + tuple(axes)),
                  bias_init=_part(nnx.initializers.zeros_init(), axes[1:]), rngs=rngs)


def layer_norm(dim: int, *, rngs: nnx.Rngs, prec: Precision, eps: float = 1e-5,
               affine: bool = True) -> nnx.LayerNorm:
  """LayerNorm; affine=False is PyTorch's elementwise_affine=False (no parameters)."""
  return nnx.LayerNorm(dim, epsilon=eps, use_scale=affine, use_bias=affine, dtype=prec.dtype,
                       param_dtype=prec.param_dtype,
                       scale_init=_part(nnx.initializers.ones_init(), ("norm",)),
                       bias_init=_part(nnx.initializers.zeros_init(), ("norm",)), rngs=rngs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def rms_normalize(x, scale, eps: float):
  """x / rms(x) * scale over the last axis; statistics in float32, out in x and scale's dtype.

  Its gradient is written out so that the saved values are x and the per-row 1 / rms: JAX's own
  derivative of x * (rsqrt(mean(x^2) + eps) * scale) saves that factor broadcast to x's shape,
  which XLA:CPU materialises for the backward pass. Values as flax's nnx.RMSNorm computes them.
  """
  return _rms_forward(x, scale, eps)[0]


def _rms_forward(x, scale, eps):
  xf = x.astype(jnp.float32)
  inv_rms = jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
  y = xf * (inv_rms * scale.astype(jnp.float32))
  return y.astype(jnp.result_type(x, scale)), (x, inv_rms, scale)


def _rms_backward(eps, residuals, g):
  del eps
  x, inv_rms, scale = residuals
  gf = g.astype(jnp.float32)
  x_hat = x.astype(jnp.float32) * inv_rms
  g_hat = gf * scale.astype(jnp.float32)
  dx = inv_rms * (g_hat - x_hat * jnp.mean(g_hat * x_hat, axis=-1, keepdims=True))
  dscale = jnp.sum((gf * x_hat).reshape(-1, x.shape[-1]), axis=0)
  return dx.astype(x.dtype), dscale.astype(scale.dtype)


rms_normalize.defvjp(_rms_forward, _rms_backward)


class RMSNorm(nnx.Module):
  """RMSNorm over the last axis with nnx.RMSNorm's parameter (`scale`) and values, computed by
  rms_normalize (inputs and scale cast to `dtype` first, when set)."""

  def __init__(self, dim: int, *, eps: float, prec: Precision, axes: Sequence[str | None]):
    self.epsilon, self.dtype = eps, prec.dtype
    self.scale = nnx.Param(jnp.ones((dim,), prec.param_dtype), out_sharding=tuple(axes))

  def __call__(self, x):
    scale = self.scale[...]
    if self.dtype is not None:
      x, scale = x.astype(self.dtype), scale.astype(self.dtype)
    return rms_normalize(x, scale, self.epsilon)


def rms_norm(dim: int, *, rngs: nnx.Rngs, prec: Precision, eps: float = 1e-6,
             axes: Sequence[str | None] = ("head_dim",)) -> RMSNorm:
  del rngs  # the scale starts at ones
  return RMSNorm(dim, eps=eps, prec=prec, axes=axes)


def zeros_param(shape, axes, prec: Precision, value: float = 0.0) -> nnx.Param:
  return nnx.Param(jnp.full(shape, value, prec.param_dtype), out_sharding=tuple(axes))


class UnusedLinear(nnx.Module):
  """A checkpoint Linear the forward never reads (kept so conversion stays name for name).

  Its `kernel` / `bias` are Buffers: saved and converted, never trained (a Param here would get
  a structurally zero gradient and optimizer state for nothing).
  """

  def __init__(self, din: int, dout: int, axes: Sequence[str | None], *, rngs, prec: Precision):
    init = nnx.initializers.lecun_normal()
    self.kernel = Buffer(init(rngs.params(), (din, dout), prec.param_dtype),
                         out_sharding=tuple(axes))
    self.bias = Buffer(jnp.zeros((dout,), prec.param_dtype), out_sharding=tuple(axes[1:]))


class UnusedScale(nnx.Module):
  """A checkpoint norm scale the forward never reads (see UnusedLinear)."""

  def __init__(self, dim: int, axes: Sequence[str | None], *, prec: Precision):
    self.scale = Buffer(jnp.ones((dim,), prec.param_dtype), out_sharding=tuple(axes))
