import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from wm_jax.parallel import mesh as mesh_lib
from wm_jax.parallel import rules, shard

NAMES = ("data", "fsdp", "tensor")


def test_logical_to_spec_drops_missing_axes_and_uses_each_once():
  assert rules.logical_to_spec(("activation_batch", "activation_length", "activation_embed"),
                               NAMES) == P(("data", "fsdp"), None, None)
  assert rules.logical_to_spec(("embed", "mlp"), NAMES) == P("fsdp", "tensor")
  assert rules.logical_to_spec(("activation_batch", "activation_length"),
                               NAMES + ("context",)) == P(("data", "fsdp"), "context")
  assert rules.logical_to_spec(("activation_batch", "activation_kv_length", "activation_heads",
                                None), NAMES + ("context",)) == P(("data", "fsdp"), None, "tensor",
                                                                  None)


def test_activation_names_have_their_own_rules():
  """An activation's model width is never sharded, even where the batch does not take 'fsdp'
  first (a parameter's is: 'embed' -> fsdp); each activation name alone resolves by its rule."""
  assert rules.logical_to_spec(("activation_embed",), NAMES) == P(None)
  assert rules.logical_to_spec((None, "activation_embed"), NAMES) == P(None, None)
  assert rules.logical_to_spec(("embed",), NAMES) == P("fsdp")
  alone = {name: rules.logical_to_spec((name,), NAMES + ("context",))
           for name in rules.LOGICAL_AXIS_RULES if rules.is_activation(name)}
  assert alone == {
      "activation_batch": P(("data", "fsdp")), "activation_length": P("context"),
      "activation_kv_length": P(None), "activation_embed": P(None),
      "activation_heads": P("tensor"), "activation_mlp": P("tensor")}


def test_unknown_logical_axis():
  with pytest.raises(ValueError, match="logical axis 'bogus' has no rule"):
    rules.logical_to_spec(("bogus",), ("data",))


def test_constrain_identity_without_mesh_and_shards_with_one(cpu_devices):
  x = np.arange(16.0).reshape(8, 2)
  assert shard.constrain(x, ("activation_batch", "activation_embed")) is x
  for kind in (jax.sharding.AxisType.Explicit, jax.sharding.AxisType.Auto):
    mesh = jax.make_mesh((4, 2, 1), NAMES, axis_types=(kind,) * 3)
    with jax.set_mesh(mesh):
      y = jax.jit(lambda a: shard.constrain(a * 2, ("activation_batch", None)))(x)
      z = jax.jit(lambda a: shard.constrain(a * 2, (None, "activation_embed")))(x)
    assert y.sharding.spec[0] == ("data", "fsdp"), kind
    assert all(a is None for a in y.sharding.spec[1:]), kind
    assert all(a is None for a in z.sharding.spec), (kind, z.sharding.spec)
    np.testing.assert_array_equal(y, x * 2)
  with pytest.raises(ValueError, match="2 logical axes"):
    shard.constrain(np.zeros(3), ("activation_batch", "activation_embed"))


def test_constrain_refuses_parameter_names_and_parameters_refuse_activation_names(cpu_devices):
  with pytest.raises(ValueError, match=r"activation names .*\['embed'\]"):
    shard.constrain(np.zeros((8, 2)), ("activation_batch", "embed"))

  class Bad(nnx.Module):
    def __init__(self):
      self.w = nnx.Param(np.zeros((4, 8), np.float32), out_sharding=("embed", "activation_mlp"))

  mesh = jax.make_mesh((1, 4, 2), NAMES, devices=cpu_devices)
  with pytest.raises(ValueError, match=r"activation names \['activation_mlp'\]"):
    mesh_lib.state_shardings(nnx.state(Bad()), mesh)


@pytest.mark.parametrize("draw, flat, ulp", [(jax.random.normal, shard.flat_normal, 1),
                                             (jax.random.uniform, shard.flat_uniform, 0)])
def test_flat_draws_equal_the_shaped_draw(draw, flat, ulp):
  key = jax.random.key(7)
  shape = (2, 3, 1, 4, 5)
  # The same bits; the normal's inverse error function may round 1 ulp apart (jax 0.12 on CPU).
  np.testing.assert_array_max_ulp(np.asarray(flat(key, shape)), np.asarray(draw(key, shape)),
                                  maxulp=ulp)
  assert flat(key, shape).shape == shape and flat(key, shape).dtype == np.float32
