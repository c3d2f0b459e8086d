"""The jitted train step on several meshes equals the 1-device step; NaN guard; schedule."""

import jax
import numpy as np
import pytest
from flax import nnx

from tests.train import toy
from wm_jax.parallel import mesh as mesh_lib, shard
from wm_jax.train import optim, state as state_lib, step as step_lib


def _run(mesh_shape, devices, steps=2, **train):
  cfg = toy.config(**train)
  cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = mesh_shape
  mesh = mesh_lib.make_mesh(cfg.mesh, devices)
  mesh_lib.validate(cfg, mesh)
  tx = optim.make_optimizer(cfg.train)
  factory = lambda: toy.Toy(rngs=nnx.Rngs(0))
  graphdef, abstract = state_lib.abstract(factory, tx, ema=cfg.train.ema_decay > 0)
  param_sh = mesh_lib.state_shardings(abstract.params, mesh)
  full_sh = mesh_lib.matching_shardings(abstract, abstract.params, param_sh, mesh)
  graphdef, st = state_lib.create(factory, tx, ema=cfg.train.ema_decay > 0, shardings=full_sh)
  fn = step_lib.make_train_step(graphdef, toy.loss_fn, tx, cfg, mesh, full_sh)
  losses = []
  for i in range(steps):
    st, m = fn(st, shard.device_batch(toy.batch(i), mesh))
    losses.append(float(m["loss"]))
  return losses, st, param_sh


def test_step_matches_one_device(cpu_devices):
  """fp32: loss, params, opt state and EMA after 2 steps agree to rtol 1e-5 / atol 1e-6 (the
  reductions are split differently across devices, so equal up to rounding only)."""
  ref_losses, ref, _ = _run((1, 1, 1), cpu_devices[:1], ema_decay=0.9)
  for shape in [(8, 1, 1), (2, 4, 1), (2, 2, 2)]:
    losses, st, param_sh = _run(shape, cpu_devices, ema_decay=0.9)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-6, err_msg=str(shape))
    for a, b in zip(jax.tree.leaves(st), jax.tree.leaves(ref)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6, err_msg=str(shape))
    assert int(st.step) == 2 and int(st.skipped) == 0
    # the annotated weights really are sharded as the rules say
    up = param_sh["up"]["kernel"].get_value().spec
    assert tuple(up) == ("fsdp", "tensor")
    leaf = st.params["up"]["kernel"].get_value()
    assert leaf.sharding.spec == up
    assert leaf.addressable_shards[0].data.shape == (32 // shape[1], 64 // shape[2])


def _no_ema_step(model_class, devices):
  """(config, mesh, graphdef, state, step fn without donation) for a toy model, no EMA."""
  cfg = toy.config(warmup_steps=0)
  mesh = mesh_lib.make_mesh(cfg.mesh, devices)
  tx = optim.make_optimizer(cfg.train)
  factory = lambda: model_class(rngs=nnx.Rngs(0))
  graphdef, abstract = state_lib.abstract(factory, tx, ema=False)
  sh = mesh_lib.matching_shardings(abstract, abstract.params,
                                   mesh_lib.state_shardings(abstract.params, mesh), mesh)
  graphdef, st = state_lib.create(factory, tx, ema=False, shardings=sh)
  fn = step_lib.make_train_step(graphdef, toy.loss_fn, tx, cfg, mesh, sh, donate=False)
  return cfg, mesh, graphdef, st, fn


def test_nan_guard_skips_update_and_counts(cpu_devices):
  cfg, mesh, graphdef, st, fn = _no_ema_step(toy.Toy, cpu_devices)
  before = jax.tree.map(np.asarray, st.params)
  bad = toy.batch(0)
  bad["latents"][0, 0, 0, 0, 0, 0] = np.nan
  st2, m = fn(st, shard.device_batch(bad, mesh))
  assert int(st2.skipped) == 1 and int(st2.step) == 1 and float(m["update_ok"]) == 0.0
  for a, b in zip(jax.tree.leaves(st2.params), jax.tree.leaves(before)):
    np.testing.assert_array_equal(np.asarray(a), b)
  st3, m = fn(st2, shard.device_batch(toy.batch(1), mesh))
  assert int(st3.skipped) == 1 and float(m["update_ok"]) == 1.0
  assert not np.array_equal(np.asarray(st3.params["up"]["kernel"].get_value()), before["up"]["kernel"].get_value())


@pytest.mark.parametrize("policy", ["full", "narrow_dots_saveable"])
def test_step_runs_nnx_scan_and_remat_inside_the_model(cpu_devices, policy):
  """A model applying nnx.scan + nnx.remat (as CTSDDiT with scan_layers / remat_policy, here with
  two of its named policies) and holding a Buffer trains in the jitted step; its loss equals the
  eager loss of the same model."""
  from wm_jax.models.ctsd_dit import REMAT_POLICIES
  make = lambda rngs: toy.ScannedToy(rngs=rngs, policy=REMAT_POLICIES[policy])
  cfg, mesh, graphdef, st, fn = _no_ema_step(make, cpu_devices[:1])
  model = nnx.merge(graphdef, st.params, st.rest, copy=True)
  assert model.layers.up.kernel.get_value().shape == (3, 32, 64)
  batch = toy.batch(0)
  st2, m = fn(st, shard.device_batch(batch, mesh))
  rng = jax.random.fold_in(jax.random.key(int(cfg.train.seed) + 1), 0)
  want, _ = toy.loss_fn(model, batch, rng, cfg)
  np.testing.assert_allclose(float(m["loss"]), float(want), rtol=1e-5)
  assert int(st2.skipped) == 0 and float(m["update_ok"]) == 1.0


def test_schedule_warmup_then_cosine_or_constant():
  cfg = toy.config(learning_rate=1.0, warmup_steps=10, num_steps=110, end_lr_factor=0.1)
  s = optim.make_schedule(cfg.train)
  assert float(s(0)) == 0.0 and abs(float(s(5)) - 0.5) < 1e-6 and abs(float(s(10)) - 1.0) < 1e-6
  assert abs(float(s(110)) - 0.1) < 1e-6 and 0.1 < float(s(60)) < 1.0
  cfg.train.schedule = "constant"
  assert float(optim.make_schedule(cfg.train)(100)) == 1.0
  cfg.train.schedule = "linear"
  with pytest.raises(ValueError, match="'linear'"):
    optim.make_schedule(cfg.train)


def test_bf16_first_moment_halves_mu_and_still_trains():
  cfg = toy.config(mu_dtype="bfloat16")
  tx = optim.make_optimizer(cfg.train)
  graphdef, st = state_lib.create(lambda: toy.Toy(rngs=nnx.Rngs(0)), tx, ema=False)
  adam = [s for s in jax.tree.leaves(st.opt_state, is_leaf=lambda x: hasattr(x, "mu"))
          if hasattr(s, "mu")]
  assert adam, "no Adam state found"
  mu, nu = jax.tree.leaves(adam[0].mu), jax.tree.leaves(adam[0].nu)
  assert all(a.dtype == np.dtype("bfloat16") for a in mu)
  assert all(a.dtype == np.float32 for a in nu)
  bf16_losses, _, _ = _run((1, 1, 1), jax.devices()[:1], steps=4, mu_dtype="bfloat16")
  fp32_losses, _, _ = _run((1, 1, 1), jax.devices()[:1], steps=4)
  assert bf16_losses != fp32_losses  # the bf16 moment rounds, so the updates differ a little
  np.testing.assert_allclose(bf16_losses, fp32_losses, rtol=2e-2)
  cfg.train.mu_dtype = "float16"
  with pytest.raises(ValueError, match="'float16'"):
    optim.make_optimizer(cfg.train)
