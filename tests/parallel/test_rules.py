import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from wm_jax.parallel import rules, shard


def test_logical_to_spec_drops_missing_axes_and_uses_each_once():
  names = ("data", "fsdp", "tensor")
  assert rules.logical_to_spec(("batch", "tokens", "embed"), names) == P(("data", "fsdp"), None, None)
  assert rules.logical_to_spec(("embed", "mlp"), names) == P("fsdp", "tensor")
  assert rules.logical_to_spec(("batch", "tokens"), names + ("context",)) == P(("data", "fsdp"), "context")


def test_unknown_logical_axis():
  with pytest.raises(ValueError, match="logical axis 'bogus' has no rule"):
    rules.logical_to_spec(("bogus",), ("data",))


def test_constrain_identity_without_mesh_and_shards_with_one(cpu_devices):
  x = np.arange(16.0).reshape(8, 2)
  assert shard.constrain(x, ("batch", "embed")) is x
  for kind in (jax.sharding.AxisType.Explicit, jax.sharding.AxisType.Auto):
    mesh = jax.make_mesh((4, 2, 1), ("data", "fsdp", "tensor"), axis_types=(kind,) * 3)
    with jax.set_mesh(mesh):
      y = jax.jit(lambda a: shard.constrain(a * 2, ("batch", None)))(x)
    assert y.sharding.spec[0] == ("data", "fsdp") and all(a is None for a in y.sharding.spec[1:]), kind
    np.testing.assert_array_equal(y, x * 2)
  with pytest.raises(ValueError, match="2 logical axes"):
    shard.constrain(np.zeros(3), ("batch", "embed"))
