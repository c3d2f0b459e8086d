"""Model FLOPs for MFU.

Training FLOPs = 3 x forward matmul FLOPs (forward, and two matmuls per matmul in the backward
pass). The forward count is exact for the program the model runs: it walks the jaxpr of the loss
function (on abstract shapes: nothing is executed) and adds 2*M*N*K for every dot_general and
2 * output size * kernel fan-in for every convolution, multiplying through scans and taking the
largest branch of a cond. With row-wise mask reconstruction the encoder runs at width K, so
masked-out tokens are never counted; attention computed by an opaque kernel (pallas_call) is counted
from its XLA reference shapes via `attention_flops` by the caller when needed.
"""

from __future__ import annotations

import math

import jax
from flax import nnx

# Dense peak FLOP/s per chip, by jax device_kind prefix (bf16 for accelerators).
PEAK_FLOPS = {
    "NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12,
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v5": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12,
}


def peak_flops(device=None, override: float = 0.0) -> float | None:
  """Peak FLOP/s of one device (None when unknown, e.g. a CPU)."""
  if override:
    return float(override)
  device = jax.devices()[0] if device is None else device
  kind = device.device_kind
  for prefix in sorted(PEAK_FLOPS, key=len, reverse=True):
    if kind.startswith(prefix):
      return PEAK_FLOPS[prefix]
  return None


def _subjaxprs(value):
  if isinstance(value, jax.extend.core.ClosedJaxpr):
    yield value.jaxpr
  elif isinstance(value, jax.extend.core.Jaxpr):
    yield value
  elif isinstance(value, (tuple, list)):
    for v in value:
      yield from _subjaxprs(v)


def jaxpr_matmul_flops(jaxpr) -> float:
  """Sum of matmul and convolution FLOPs in a (Closed)Jaxpr, including nested jaxprs."""
  if isinstance(jaxpr, jax.extend.core.ClosedJaxpr):
    jaxpr = jaxpr.jaxpr
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (lc, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      contract = math.prod(lhs[i] for i in lc)
      total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * contract
    elif name == "conv_general_dilated":
      rhs = eqn.invars[1].aval.shape
      dn = eqn.params["dimension_numbers"]
      out_feat = rhs[dn.rhs_spec[0]]
      fan_in = math.prod(rhs) / out_feat
      total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * fan_in
    elif name == "cond":
      total += max(jaxpr_matmul_flops(b) for b in eqn.params["branches"])
    else:
      factor = float(eqn.params.get("length", 1)) if name == "scan" else 1.0
      for value in eqn.params.values():
        for sub in _subjaxprs(value):
          total += factor * jaxpr_matmul_flops(sub)
  return total


def forward_flops(fn, *args, **kwargs) -> float:
  """Matmul FLOPs of one call of fn(*args) (args may be ShapeDtypeStructs)."""
  return jaxpr_matmul_flops(jax.make_jaxpr(fn)(*args, **kwargs))


def train_flops(forward: float) -> float:
  return 3.0 * forward


def loss_of_params(graphdef, loss_fn, config):
  """(params, rest, batch) -> scalar loss of loss_fn(model, batch, rng, config, train=True), the
  model merged inside the trace (with fresh Variables, as the train step does)."""

  def loss(params, rest, batch):
    model = nnx.merge(graphdef, params, rest, copy=True)
    return loss_fn(model, batch, jax.random.key(0), config, train=True)[0]
  return loss


def abstract(tree):
  """ShapeDtypeStructs (without shardings) of a tree of arrays."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def loss_forward_flops(graphdef, params, rest, loss_fn, batch, config) -> float:
  """Forward matmul FLOPs of loss_fn(model, batch, rng, config, train=True) on abstract inputs."""
  loss = loss_of_params(graphdef, loss_fn, config)
  return forward_flops(loss, abstract(params), abstract(rest), abstract(batch))


def loss_grad_flops(graphdef, params, rest, loss_fn, batch, config) -> float:
  """Matmul FLOPs the gradient program executes: forward, the remat policy's recomputation and
  backward. Over train_flops(loss_forward_flops(...)) it is the cost of remat (1.0 without)."""
  loss = loss_of_params(graphdef, loss_fn, config)
  return forward_flops(jax.grad(loss), abstract(params), abstract(rest), abstract(batch))


def mfu(flops_per_step: float, step_seconds: float, num_devices: int, peak: float | None) -> float | None:
  if not peak or step_seconds <= 0:
    return None
  return flops_per_step / step_seconds / (peak * num_devices)
