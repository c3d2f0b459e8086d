"""Analytic FLOPs (3x forward matmuls, from the jaxpr) against XLA's cost analysis of the compiled
train step, on abstract shapes only (lower + compile, nothing is executed)."""

import jax
import numpy as np
import pytest
from flax import nnx

from tests.train import toy
from wm_jax.parallel import mesh as mesh_lib
from wm_jax.train import flops, optim, state as state_lib, step as step_lib


def _compiled_vs_analytic(cfg, factory, loss_fn, batch, devices):
  mesh = mesh_lib.make_mesh(cfg.mesh, devices)
  tx = optim.make_optimizer(cfg.train)
  graphdef, abstract = state_lib.abstract(factory, tx, ema=False)
  sh = mesh_lib.matching_shardings(abstract, abstract.params,
                                   mesh_lib.state_shardings(abstract.params, mesh), mesh)
  fn = step_lib.make_train_step(graphdef, loss_fn, tx, cfg, mesh, sh)
  abs_state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, sh)
  cost = fn.lower(abs_state, batch).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  analytic = flops.train_flops(flops.loss_forward_flops(graphdef, abstract.params, abstract.rest,
                                                        loss_fn, batch, cfg))
  return analytic, float(cost["flops"])


def test_toy_flops_match_cost_analysis(cpu_devices):
  cfg = toy.config(batch_size=2)
  cfg.mesh.data = 1
  batch = {"latents": jax.ShapeDtypeStruct((2, 2, 1, 8, 8, 16), np.float32)}
  analytic, xla = _compiled_vs_analytic(
      cfg, lambda: toy.Toy(c=16, d=128, hidden=512, rngs=nnx.Rngs(0)), toy.loss_fn, batch, cpu_devices[:1])
  assert abs(analytic / xla - 1) < 0.10, (analytic, xla)


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
