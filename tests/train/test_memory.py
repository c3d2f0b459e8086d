"""Backend-independent memory accounting: state bytes and the residuals the backward keeps."""

import copy

import jax
import jax.numpy as jnp

from wm_jax import defaults
from wm_jax.models.ctsd_dit import REMAT_POLICIES
from wm_jax.parallel import mesh as mesh_lib
from wm_jax.train import example_batch, memory
from wm_jax.train import run as run_lib


def test_residuals_of_a_small_function():
  p = jax.ShapeDtypeStruct((4, 3), jnp.float32)
  x = jax.ShapeDtypeStruct((2, 4), jnp.float32)
  f = lambda p, x: jnp.sum(jnp.sin(x @ p))
  # the VJP w.r.t. p keeps x (an input, 2*4*4 bytes) and cos(x @ p) (2*3*4 bytes)
  assert memory.saved_residual_bytes(f, p, x) == (56, 32)
  # under remat it keeps only its inputs and recomputes the rest
  saved, inputs = memory.saved_residual_bytes(jax.checkpoint(f), p, x)
  assert saved == inputs
  assert memory.tree_bytes({"a": p, "b": [x, jnp.zeros(3, jnp.bfloat16)]}) == 48 + 32 + 6


def _activation_bytes(config, masked):
  config = copy.deepcopy(config)
  config.mask.enabled = masked
  mesh = mesh_lib.make_mesh(config.mesh, jax.devices()[:1])
  run = run_lib.build(config, mesh=mesh)
  with jax.set_mesh(mesh):
    saved, inputs = memory.loss_residual_bytes(run.graphdef, run.abstract.params,
                                               run.abstract.rest, run.loss_fn,
                                               example_batch.abstract(config), config)
  return saved - inputs


def test_remat_full_covers_the_mask_module():
  """With remat 'full' the masked step keeps about what the unmasked one keeps (block inputs):
  the mask module's full-width side blocks are recomputed too, not saved (they were: 3.4x)."""
  config = defaults.config()  # the tiny model, with a mask decoder of one joint block
  config.mask.decode_layers = 1
  config.train.batch_size = 1
  config.mesh.update(data=1, fsdp=1, tensor=1)
  config.model.remat_policy = "full"
  full_masked, full_plain = _activation_bytes(config, True), _activation_bytes(config, False)
  assert full_masked <= 1.25 * full_plain, (full_masked, full_plain)
  config.model.remat_policy = "none"
  assert _activation_bytes(config, True) > 4 * full_masked  # no remat keeps far more


def test_narrow_dots_policy_recomputes_the_mlp_up_projection():
  tokens, d = 8, 16
  w_up = jax.ShapeDtypeStruct((d, 4 * d), jnp.float32)
  w_down = jax.ShapeDtypeStruct((4 * d, d), jnp.float32)
  x = jax.ShapeDtypeStruct((tokens, d), jnp.float32)

  def mlp(w, x):
    return jnp.sum(jnp.tanh(jax.nn.gelu(x @ w[0]) @ w[1]))  # tanh: the backward needs the output

  def kept(policy):  # activations kept, params and x excluded
    saved, inputs = memory.saved_residual_bytes(jax.checkpoint(mlp, policy=policy), (w_up, w_down), x)
    return saved - inputs

  narrow = kept(REMAT_POLICIES["narrow_dots_saveable"])
  dots = kept(REMAT_POLICIES["dots_with_no_batch_dims_saveable"])
  assert dots == tokens * 4 * d * 4 + tokens * d * 4  # the up- and the down-projection outputs
  assert narrow == tokens * d * 4  # only the down-projection's: the wide one is recomputed
  assert kept(REMAT_POLICIES["full"]) == 0

