import numpy as np
import pytest
import jax
from flax import nnx

from wm_jax.convert import param_map
from wm_jax.models.buffers import Buffer


class Toy(nnx.Module):
  def __init__(self, rngs):
    self.blocks = nnx.List([nnx.Linear(3, 5, rngs=rngs) for _ in range(2)])
    self.conv = nnx.Conv(4, 6, (2, 3), rngs=rngs)
    self.conv3d = nnx.Conv(4, 6, (1, 3, 3), rngs=rngs)
    self.norm = nnx.LayerNorm(5, rngs=rngs)
    self.table = Buffer(np.arange(6.0, dtype=np.float32).reshape(1, 2, 3))
    self.mix_factor = nnx.Param(np.array([2.0], np.float32))


def test_names_and_layouts():
  sd = param_map.to_torch_state_dict(Toy(nnx.Rngs(0)))
  shapes = {k: v.shape for k, v in sd.items()}
  assert shapes == {
      "blocks.0.weight": (5, 3), "blocks.0.bias": (5,), "blocks.1.weight": (5, 3),
      "blocks.1.bias": (5,), "conv.weight": (6, 4, 2, 3), "conv.bias": (6,),
      "conv3d.weight": (6, 4, 1, 3, 3), "conv3d.bias": (6,), "norm.weight": (5,),
      "norm.bias": (5,), "table": (1, 2, 3), "mix_factor": (1,)}
  assert shapes == param_map.torch_shapes(nnx.eval_shape(lambda: Toy(nnx.Rngs(0))))


def test_linear_and_conv_layouts_match_torch_semantics():
  torch = pytest.importorskip("torch")
  m = Toy(nnx.Rngs(1))
  sd = param_map.to_torch_state_dict(m)
  x = np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32)
  lin = torch.nn.Linear(3, 5)
  lin.load_state_dict({"weight": torch.tensor(sd["blocks.0.weight"]),
                       "bias": torch.tensor(sd["blocks.0.bias"])})
  np.testing.assert_allclose(lin(torch.from_numpy(x)).detach().numpy(), m.blocks[0](x), atol=1e-6)
  img = np.random.default_rng(1).normal(size=(1, 7, 8, 4)).astype(np.float32)
  conv = torch.nn.Conv2d(4, 6, (2, 3), padding="same")
  conv.load_state_dict({"weight": torch.tensor(sd["conv.weight"]),
                        "bias": torch.tensor(sd["conv.bias"])})
  out = conv(torch.from_numpy(img).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).detach().numpy()
  np.testing.assert_allclose(out, m.conv(img), atol=1e-5)


def test_round_trip_is_bit_exact():
  m = Toy(nnx.Rngs(2))
  sd = param_map.to_torch_state_dict(m)
  state = param_map.from_torch_state_dict(sd, nnx.eval_shape(lambda: Toy(nnx.Rngs(0))))
  fresh = Toy(nnx.Rngs(3))
  nnx.update(fresh, state)
  for a, b in zip(jax.tree.leaves(nnx.state(m)), jax.tree.leaves(nnx.state(fresh))):
    np.testing.assert_array_equal(a, b)


def test_mismatches_are_listed_together():
  sd = param_map.to_torch_state_dict(Toy(nnx.Rngs(0)))
  del sd["norm.weight"]
  sd["extra.weight"] = np.zeros(2)
  sd["conv.bias"] = np.zeros(7)
  with pytest.raises(param_map.ConversionError) as err:
    param_map.from_torch_state_dict(sd, nnx.eval_shape(lambda: Toy(nnx.Rngs(0))))
  msg = str(err.value)
  assert "1 missing key(s):\n    norm.weight" in msg
  assert "1 unexpected key(s):\n    extra.weight" in msg
  assert "conv.bias: checkpoint (7,)" in msg and "model wants (6,)" in msg
  with pytest.raises(param_map.ConversionError, match="conv.bias"):
    param_map.from_torch_state_dict(sd, nnx.eval_shape(lambda: Toy(nnx.Rngs(0))),
                                    ignore=["norm.weight", "extra.weight"])
  # Ignored keys keep the target's values; everything else still loads.
  sd["conv.bias"] = np.full(6, 3.0, np.float32)
  state = param_map.from_torch_state_dict(sd, Toy(nnx.Rngs(0)), ignore=["norm.weight", "extra.weight"])
  np.testing.assert_array_equal(state["conv"]["bias"].get_value(), np.full(6, 3.0))
  np.testing.assert_array_equal(state["norm"]["scale"].get_value(), np.ones(5))
