"""Analytic FLOPs (3x forward matmuls, from the jaxpr) against XLA's cost analysis of the compiled
train step, on abstract shapes only (lower + compile, nothing is executed)."""

import copy

import jax
import numpy as np
import pytest

from wm_jax import defaults
from wm_jax.parallel import mesh as mesh_lib
from wm_jax.train import example_batch, flops
from wm_jax.train import run as run_lib


def _tiny():
  """The tiny model (wm_jax.defaults) with a mask decoder of one joint block."""
  config = defaults.config()
  config.mask.decode_layers = 1
  return config


def _analytic_vs_xla(config, devices):
  """(3x forward matmul FLOPs, XLA's HLO cost analysis FLOPs) of the train step, abstract only.

  The cost analysis is of the lowered step (no XLA compile: minutes on a CPU for these models);
  on the tiny config it agrees with the compiled step's to 1%. remat is off so that XLA does not
  count the recomputed forward (analytic model FLOPs never do), and layers are unscanned (the
  analytic count multiplies through scans: tests/models/test_scan.py)."""
  config.model.remat_policy = "none"
  config.model.scan_layers = False  # XLA's cost analysis counts a scan (while) body once
  config.train.batch_size = 1
  config.mesh.data = 1
  run = run_lib.build(config, mesh=mesh_lib.make_mesh(config.mesh, devices))
  state, batch = run.abstract_inputs()
  cost = run.step_fn.lower(state, batch).cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  analytic = flops.train_flops(flops.loss_forward_flops(run.graphdef, run.abstract.params,
                                                        run.abstract.rest, run.loss_fn, batch,
                                                        config))
  return analytic, float(cost["flops"])


def test_tiny_flops_match_xla_cost_analysis(cpu_devices):
  analytic, xla = _analytic_vs_xla(_tiny(), cpu_devices[:1])
  assert abs(analytic / xla - 1) < 0.10, (analytic, xla)


@pytest.mark.slow  # ~1 min of tracing and lowering a 3.4e9-parameter step on 2 CPU cores
def test_long_flops_match_xla_cost_analysis(cpu_devices):
  from configs import maskgwm_long
  analytic, xla = _analytic_vs_xla(maskgwm_long.get_config(), cpu_devices[:1])
  assert abs(analytic / xla - 1) < 0.10, (analytic, xla)
  assert analytic > 1e14  # ~1.3e14 per sample: a real model, not an empty trace


def test_jaxpr_counter_scan_cond_and_conv():
  x = jax.ShapeDtypeStruct((4, 8), np.float32)
  w = jax.ShapeDtypeStruct((8, 16), np.float32)
  assert flops.forward_flops(lambda x, w: x @ w, x, w) == 2 * 4 * 8 * 16

  def scanned(x, w):
    def body(c, _):
      return c @ w[:, :8], None
    return jax.lax.scan(body, x, None, length=5)[0]
  assert flops.forward_flops(scanned, x, w) == 5 * 2 * 4 * 8 * 8
  cond = lambda x, w: jax.lax.cond(True, lambda: (x @ w).sum(), lambda: x.sum())
  assert flops.forward_flops(cond, x, w) == 2 * 4 * 8 * 16
  img = jax.ShapeDtypeStruct((1, 3, 10, 10), np.float32)
  k = jax.ShapeDtypeStruct((6, 3, 3, 3), np.float32)
  conv = lambda a, b: jax.lax.conv(a, b, (1, 1), "SAME")
  assert flops.forward_flops(conv, img, k) == 2 * (1 * 6 * 10 * 10) * (3 * 3 * 3)
  assert flops.mfu(1e12, 1.0, 2, 1e12) == 0.5 and flops.mfu(1e12, 1.0, 1, None) is None


def test_grad_program_flops_count_remat_recomputation():
  """loss_grad_flops counts what the gradient program executes: about 3x the forward without
  remat, plus at most one forward of recomputation with a policy; 'full' recomputes the most."""
  base = _tiny()
  base.train.batch_size = 1
  base.mesh.update(data=1, fsdp=1, tensor=1)
  executed, forward = {}, None
  for policy in ("none", "narrow_dots_saveable", "full"):
    config = copy.deepcopy(base)
    config.model.remat_policy = policy
    run = run_lib.build(config, mesh=mesh_lib.make_mesh(config.mesh, jax.devices()[:1]))
    args = (run.graphdef, run.abstract.params, run.abstract.rest, run.loss_fn,
            example_batch.abstract(config), config)
    forward = flops.loss_forward_flops(*args)
    executed[policy] = flops.loss_grad_flops(*args)
  # no remat: forward + backward (the input's gradient is not needed, so a little under 3x)
  assert 0.95 * 3 * forward < executed["none"] <= 3 * forward
  recompute_narrow = executed["narrow_dots_saveable"] - executed["none"]
  recompute_full = executed["full"] - executed["none"]
  assert 0 < recompute_narrow < recompute_full <= forward
