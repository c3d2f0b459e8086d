"""layers.dense_dot_general: nnx.Linear's product with its gradients written for XLA:CPU's fast dot
path; the values must be those of lax.dot_general and JAX's own gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wm_jax.models import layers


@pytest.mark.parametrize("shape", [(6, 5), (2, 3, 5), (2, 2, 3, 5)])
def test_value_and_gradients_equal_lax_dot_general(shape):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  w = jnp.asarray(rng.normal(size=(5, 7)), jnp.float32)
  g = jnp.asarray(rng.normal(size=shape[:-1] + (7,)), jnp.float32)
  dn = (((x.ndim - 1,), (0,)), ((), ()))
  ref = lambda x, w: jnp.sum(jax.lax.dot_general(x, w, dn) * g)
  ours = lambda x, w: jnp.sum(layers.dense_dot_general(x, w, dn) * g)
  np.testing.assert_allclose(layers.dense_dot_general(x, w, dn), jax.lax.dot_general(x, w, dn),
                             rtol=1e-6, atol=1e-6)
  for a, b in zip(jax.grad(ref, (0, 1))(x, w), jax.grad(ours, (0, 1))(x, w)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def test_bf16_compute_keeps_the_gradient_dtypes():
  lin = layers.linear(8, 4, ("embed", "mlp"), rngs=nnx.Rngs(0),
                      prec=layers.Precision(dtype=jnp.bfloat16, param_dtype=jnp.float32,
                                            dense_grad=True))
  assert lin.dot_general is layers.dense_dot_general
  x = jnp.ones((3, 8), jnp.bfloat16)
  grads = nnx.grad(lambda m: jnp.sum(m(x).astype(jnp.float32)))(lin)
  assert grads.kernel.get_value().dtype == jnp.float32
  np.testing.assert_allclose(grads.kernel.get_value(), np.full((8, 4), 3.0), rtol=1e-2)


def test_other_contractions_go_to_lax_unchanged():
  x = jnp.arange(12.0).reshape(3, 4)
  y = jnp.arange(12.0).reshape(3, 4)
  dn = (((0,), (0,)), ((), ()))          # not the last-dim product of nnx.Linear
  np.testing.assert_array_equal(layers.dense_dot_general(x, y, dn), jax.lax.dot_general(x, y, dn))


def test_only_a_model_without_remat_uses_it():
  """A checkpoint policy cannot see into the custom gradient: with one, the plain product."""
  from wm_jax import defaults
  cfg = defaults.model()
  assert layers.Precision.from_config(cfg).dense_grad
  cfg.remat_policy = "dots_saveable"
  prec = layers.Precision.from_config(cfg)
  assert not prec.dense_grad
  lin = layers.linear(4, 4, ("embed", "mlp"), rngs=nnx.Rngs(0), prec=prec)
  assert lin.dot_general is jax.lax.dot_general
