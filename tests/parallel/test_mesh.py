"""Mesh from config, validate() before compiling, and the replicated-large-param check."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from tests.train import toy
from wm_jax import defaults
from wm_jax.parallel import mesh as mesh_lib


def _mesh_cfg(**sizes):
  c = defaults.mesh()
  c.update(sizes)
  return c


def test_axis_sizes_fill_and_errors():
  assert mesh_lib.axis_sizes(_mesh_cfg(data=-1, fsdp=2, tensor=2), 8) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert mesh_lib.axis_sizes(_mesh_cfg(data=1, fsdp=-1, tensor=1, context=2), 8) == {
      "data": 1, "fsdp": 4, "tensor": 1, "context": 2}
  assert mesh_lib.axis_sizes(_mesh_cfg(data=-1, dcn_data=2), 8)["data"] == 8
  with pytest.raises(ValueError, match=r"needs 16 devices but only 8 are present"):
    mesh_lib.axis_sizes(_mesh_cfg(data=4, fsdp=4), 8)
  with pytest.raises(ValueError, match=r"multiple of 3 devices"):
    mesh_lib.axis_sizes(_mesh_cfg(data=-1, tensor=3), 8)
  with pytest.raises(ValueError, match=r"at most one mesh axis may be -1"):
    mesh_lib.axis_sizes(_mesh_cfg(data=-1, fsdp=-1), 8)
  with pytest.raises(ValueError, match=r"uses 4 devices but 8 are present"):
    mesh_lib.axis_sizes(_mesh_cfg(data=2, fsdp=2), 8)


def test_make_mesh_has_axis_types(cpu_devices):
  m = mesh_lib.make_mesh(_mesh_cfg(data=2, fsdp=2, tensor=1, context=2), cpu_devices)
  assert m.axis_names == ("data", "fsdp", "tensor", "context") and m.devices.shape == (2, 2, 1, 2)
  assert all(t == jax.sharding.AxisType.Auto for t in m.axis_types)
  m = mesh_lib.make_mesh(_mesh_cfg(data=-1, axis_type="explicit"), cpu_devices)
  assert all(t == jax.sharding.AxisType.Explicit for t in m.axis_types)
  with pytest.raises(ValueError, match="axis_type='manual'"):
    mesh_lib.make_mesh(_mesh_cfg(axis_type="manual"), cpu_devices)


@dataclasses.dataclass(frozen=True)
class FakeTpu:
  """Stands in for a TPU v4 chip of a multi-slice run: the attributes mesh_utils reads to group
  devices into slices (slice_index) and to lay out each slice's torus (coords, core_on_chip)."""
  id: int
  slice_index: int
  coords: tuple[int, int, int]
  process_index: int
  core_on_chip: int = 0
  platform: str = "tpu"
  device_kind: str = "TPU v4"


def _fake_slices(num_slices, chips):
  """`num_slices` slices of `chips` chips on a 2 x chips/2 torus each, one host per slice, listed
  with the slices interleaved so that only slice_index (not list order) can group them."""
  devices = [FakeTpu(id=s * chips + i, slice_index=s, coords=(i % 2, i // 2, 0), process_index=s)
             for i in range(chips) for s in range(num_slices)]
  assert [d.slice_index for d in devices[:2]] == [0, 1]
  return devices


def _slice_grid(mesh):
  return np.vectorize(lambda d: d.slice_index)(mesh.devices)


@pytest.mark.parametrize("sizes, num_slices, expected", [
    # dcn_data=2: each of the 2 'data' rows is one whole slice of 4 chips (fsdp stays on ICI).
    (dict(data=1, fsdp=4, tensor=1, dcn_data=2), 2, [[[0], [0], [0], [0]], [[1], [1], [1], [1]]]),
    # dcn_fsdp=2: 'fsdp' spans the slices in contiguous blocks of 2; 'tensor' never leaves a slice.
    (dict(data=1, fsdp=2, tensor=2, dcn_fsdp=2), 2, [[[0, 0], [0, 0], [1, 1], [1, 1]]]),
    # data=-1 is filled per slice (8 devices / dcn 2 / fsdp 2 = 2), total data = 2 * dcn_data = 4.
    (dict(data=-1, fsdp=2, tensor=1, dcn_data=2), 2, [[[0], [0]], [[0], [0]], [[1], [1]], [[1], [1]]]),
    # 4 slices of 2 chips, DCN on both axes: slice = 2 * data + fsdp.
    (dict(data=1, fsdp=1, tensor=2, dcn_data=2, dcn_fsdp=2), 4, [[[0, 0], [1, 1]], [[2, 2], [3, 3]]]),
])
def test_make_mesh_multi_slice_puts_dcn_axes_across_slices(sizes, num_slices, expected):
  devices = _fake_slices(num_slices, 8 // num_slices)
  mesh = mesh_lib.make_mesh(_mesh_cfg(axis_type="explicit", **sizes), devices)
  assert mesh.axis_names == ("data", "fsdp", "tensor")
  assert all(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types)
  assert mesh.devices.shape == np.shape(expected)
  assert sorted(d.id for d in mesh.devices.flat) == list(range(8))  # every device exactly once
  np.testing.assert_array_equal(_slice_grid(mesh), expected)


def test_make_mesh_multi_slice_errors_name_the_numbers(cpu_devices):
  two_slices = _fake_slices(2, 4)
  with pytest.raises(ValueError, match=r"dcn_data\*dcn_fsdp=2\*2=4 slices requested but the devices "
                                       r"span 2 slices \(slice_index \[0, 1\]\)"):
    mesh_lib.make_mesh(_mesh_cfg(data=1, fsdp=2, tensor=1, dcn_data=2, dcn_fsdp=2), two_slices)
  # 8 devices and 2 slices, but 5 + 3 of them instead of 4 + 4.
  uneven = [dataclasses.replace(d, slice_index=0) if d.id == 4 else d for d in two_slices]
  with pytest.raises(ValueError, match=r"dcn_data\*dcn_fsdp=2\*1=2 slices requested, each of 4 devices "
                                       r"\(per-slice mesh \{'data': 1, 'fsdp': 4, 'tensor': 1\}\), but "
                                       r"the devices per slice_index are \{0: 5, 1: 3\}"):
    mesh_lib.make_mesh(_mesh_cfg(data=1, fsdp=4, tensor=1, dcn_data=2), uneven)
  with pytest.raises(ValueError, match=r"slices requested but device .* \(platform 'cpu'\) has no slice_index"):
    mesh_lib.make_mesh(_mesh_cfg(data=1, fsdp=4, tensor=1, dcn_data=2), cpu_devices)


def _cfg(**model):
  c = toy.config(batch_size=8)
  c.model.update(model)
  return c


@pytest.mark.parametrize("change, mesh, message", [
    (dict(mesh=dict(data=4, fsdp=4)), None, r"mesh \{'data': 4, 'fsdp': 4, 'tensor': 1\} needs 16 devices but only 8"),
    (dict(model=dict(num_heads=6)), dict(data=2, fsdp=1, tensor=4), r"num_heads=6 is not divisible by the tensor axis size 4"),
    (dict(train=dict(batch_size=6)), dict(data=2, fsdp=2, tensor=2), r"batch_size=6 is not divisible by data\*fsdp=2\*2=4"),
    (dict(model=dict(latent_width=6, patch_size=4)), dict(data=8), r"latent size 4x6 is not divisible by patch_size=4"),
    (dict(mask=dict(enabled=True, ratio=0.3)), dict(data=8), r"mask.ratio=0.3 times token row width 4 = 1.2 is not an integer"),
    (dict(mask=dict(enabled=True, ratio=1.0)), dict(data=8), r"keeps K=0 tokens"),
    (dict(model=dict(latent_height=3, latent_width=3)), dict(data=1, fsdp=4, context=2), r"tokens per view 3x3=9 are not divisible by the context axis size 2"),
])
def test_validate_names_the_numbers(change, mesh, message):
  c = _cfg()
  for section, values in change.items():
    c[section].update(values)
  if mesh:
    c.mesh.update(dict(data=1, fsdp=1, tensor=1, context=0) | mesh)
  with pytest.raises(ValueError, match=message):
    mesh_lib.validate(c, num_devices=8)


def test_validate_passes_and_returns_sizes(cpu_devices):
  c = _cfg()
  c.mask.update(enabled=True, ratio=0.25)
  c.mesh.update(data=2, fsdp=2, tensor=2)
  assert mesh_lib.validate(c, mesh_lib.make_mesh(c.mesh, cpu_devices)) == {"data": 2, "fsdp": 2, "tensor": 2}


def test_replicated_large_params_lists_only_unsharded(cpu_devices):
  mesh = mesh_lib.make_mesh(_mesh_cfg(data=2, fsdp=2, tensor=2), cpu_devices)
  abstract = nnx.state(nnx.eval_shape(lambda: toy.Toy(c=4, d=32, hidden=64, rngs=nnx.Rngs(0))), nnx.Param)
  sh = mesh_lib.state_shardings(abstract, mesh)
  found = mesh_lib.replicated_large_params(abstract, sh, min_size=100)
  # 'up' (embed, mlp) and 'down' (mlp, embed) are sharded; 'inp' (None, embed) is sharded on fsdp;
  # nothing of >= 100 elements is replicated. With min_size=30 the LayerNorm/bias vectors show up.
  assert found == []
  small = {p for p, _, _ in mesh_lib.replicated_large_params(abstract, sh, min_size=32)}
  assert "['norm']['scale'].value" in small and "['up']['kernel'].value" not in small


def test_train_validates_before_compiling(tmp_path, cpu_devices):
  from wm_jax.train import loop
  c = _cfg(num_heads=3)
  c.mesh.update(data=2, fsdp=2, tensor=2)
  called = []
  with pytest.raises(ValueError, match=r"num_heads=3 is not divisible by the tensor axis size 2"):
    loop.train(c, str(tmp_path), model_factory=lambda: called.append("model"), loss_fn=toy.loss_fn,
               make_iterator=lambda cfg: called.append("data"))
  assert called == []  # failed before building the model or the data pipeline
