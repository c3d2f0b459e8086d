"""layers.RMSNorm: nnx.RMSNorm's values, gradients, parameter and dtype behaviour, with its own
gradient (layers.rms_normalize)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wm_jax.models import layers


def _pair(dtype, dim=64, eps=1e-6):
  prec = layers.Precision(dtype=dtype)
  ours = layers.rms_norm(dim, rngs=nnx.Rngs(0), prec=prec, eps=eps)
  theirs = nnx.RMSNorm(dim, epsilon=eps, dtype=dtype, rngs=nnx.Rngs(0))
  scale = jax.random.normal(jax.random.key(1), (dim,)) + 1.0
  ours.scale[...] = scale
  theirs.scale[...] = scale
  return ours, theirs


@pytest.mark.parametrize("dtype", [None, jnp.bfloat16])
def test_values_and_gradients_are_flax_rmsnorms(dtype):
  ours, theirs = _pair(dtype)
  x = jax.random.normal(jax.random.key(2), (3, 5, 4, 64)) * 3.0 + 0.5
  g = jax.random.normal(jax.random.key(3), x.shape)
  y, want = ours(x), theirs(x)
  assert y.dtype == want.dtype == (dtype or jnp.float32)
  tol = 1e-6 if dtype is None else 1e-2
  np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(want, np.float32), rtol=tol,
                             atol=tol)

  def grads(norm):
    graphdef, params = nnx.split(norm)
    loss = lambda x, p: jnp.sum(nnx.merge(graphdef, p)(x).astype(jnp.float32) * g)
    dx, dp = jax.grad(loss, argnums=(0, 1))(x, params)
    return dx, dp["scale"][...]

  for got, ref in zip(grads(ours), grads(theirs)):
    assert got.dtype == ref.dtype
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(ref, np.float32),
                               rtol=10 * tol, atol=10 * tol)


def test_parameter_and_eps():
  ours, _ = _pair(None, dim=8, eps=1e-5)
  state = nnx.state(ours, nnx.Param)
  assert list(state.keys()) == ["scale"] and state["scale"][...].shape == (8,)
  assert ours.scale.get_metadata()["out_sharding"] == ("head_dim",)
  x = jnp.full((2, 8), 1e-4)  # eps dominates the mean square: rms = sqrt(1e-8 + 1e-5)
  np.testing.assert_allclose(ours(x), x / np.sqrt(1e-8 + 1e-5) * ours.scale[...], rtol=1e-5)
