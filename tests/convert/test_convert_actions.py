"""Conversion of a model with MaskGWM's action module: OpenDWM has none, so the export refuses its
parameters by name unless told to drop them while their output projections are zero, and an
import from OpenDWM leaves them at their init."""

import numpy as np
import pytest
from flax import nnx

from tests.convert.conftest import random_model
from wm_jax import defaults
from wm_jax.convert import from_torch, param_map, to_torch
from wm_jax.models.ctsd_dit import CTSDDiT

OUTPUT = "temporal_transformer_blocks.{}.action_attn.to_out.0.{}"


def _config(actions=True):
  c = defaults.config()
  c.model.update(num_layers=2, dual_attention_layers=(), temporal_block_layers=(0, 1),
                 crossview_block_layers=(), num_heads=2, head_dim=8, joint_attention_dim=8,
                 pooled_projection_dim=8, text_tokens=4, latent_height=4, latent_width=8,
                 num_frames=3, camera_scalars=0, time_modulation=False)
  c.model.layout_adapter = None
  c.mask.enabled = False
  if actions:
    c.model.action_module = defaults.action_module()
    c.model.action_module.update(trajectory_points=2, fourier_features=4)
  return c


def _factory(cfg):
  return lambda: CTSDDiT(cfg.model, cfg.mask, rngs=nnx.Rngs(0))


def _flat(model):
  return {p: np.asarray(v) for p, v in
          param_map.flat_state(param_map.checkpoint_state(model)).items()}


def _zero_outputs(model):
  for block in model.temporal_transformer_blocks:
    lin = block.action_attn.to_out[0]
    lin.kernel.set_value(np.zeros_like(lin.kernel.get_value()))
    lin.bias.set_value(np.zeros_like(lin.bias.get_value()))


@pytest.fixture(scope="module")
def trained():
  """A model with the action module, every parameter random (a trained one)."""
  cfg = _config()
  return cfg, random_model(_factory(cfg), seed=1)


def test_export_refuses_a_trained_action_module_by_name(trained):
  cfg, model = trained
  flat = _flat(model)
  for drop in (False, True):
    with pytest.raises(param_map.ConversionError,
                       match=r"action module .*to_out\.0\.bias.*non-zero") as info:
      to_torch.export_state_dict(flat, cfg.model, cfg.mask, drop_zero_action_params=drop)
    assert OUTPUT.format(0, "weight") in str(info.value)
  with pytest.raises(ValueError, match="action_module"):
    to_torch.opendwm_model_config(cfg.model, cfg.mask)


def test_export_drops_a_zero_action_module_only_when_told(trained):
  cfg, model = trained
  model = nnx.clone(model)
  _zero_outputs(model)
  flat = _flat(model)
  with pytest.raises(param_map.ConversionError, match="--drop_zero_action_params"):
    to_torch.export_state_dict(flat, cfg.model, cfg.mask)
  sd = to_torch.export_state_dict(flat, cfg.model, cfg.mask, drop_zero_action_params=True)
  assert not param_map.action_keys(sd)
  # exactly OpenDWM's keys: those of the model without the module, with the same values
  plain = param_map.torch_shapes(nnx.eval_shape(_factory(_config(False))))
  assert {k: tuple(v.shape) for k, v in sd.items()} == plain
  full = param_map.to_torch_state_dict(model)
  for key, value in sd.items():
    np.testing.assert_array_equal(value, full[key], err_msg=key)
  opendwm = to_torch.opendwm_model_config(cfg.model, cfg.mask, dropped_action_params=True)
  assert opendwm["temporal_block_layers"] == [0, 1]


def test_import_from_opendwm_leaves_the_action_module_at_its_init():
  cfg = _config()
  opendwm = random_model(_factory(_config(False)), seed=2)
  sd = param_map.to_torch_state_dict(opendwm)
  state = from_torch.convert_state_dict(sd, nnx.eval_shape(_factory(cfg)), init=_factory(cfg))
  got = {param_map.torch_key(p): np.asarray(v) for p, v in param_map.flat_state(state).items()}
  init = {param_map.torch_key(p): v for p, v in _flat(_factory(cfg)()).items()}
  action = param_map.action_keys(got)
  assert OUTPUT.format(1, "weight") in action and "action_embedding.linear_1.weight" in action
  for key in action:
    np.testing.assert_array_equal(got[key], init[key], err_msg=key)
  assert not got[OUTPUT.format(1, "weight")].any()
  leaves = {param_map.torch_key(p): str(p[-1]) for p in param_map.flat_state(state)}
  for key, value in sd.items():  # the rest is the checkpoint's
    np.testing.assert_array_equal(got[key], param_map.from_torch_layout(leaves[key], value),
                                  err_msg=key)
