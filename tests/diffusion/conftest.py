"""Stand-ins for the diffusion tests: a tiny model with CTSDDiT's call signature whose output is a
known function of its inputs, the config sections the diffusion code reads, and a stand-in for
models.conditioning.model_inputs."""

import jax.numpy as jnp
import pytest
from flax import nnx

from wm_jax import defaults
from wm_jax.models.conditioning import Conditioning


class FieldModel(nnx.Module):
  """Returns field(latents, timesteps, inputs): the velocity, or (velocity, features) when
  inputs['return_features']. inputs: the conditioning's context, pooled, camera, layout and the
  call's row_mask, noise, return_features."""

  def __init__(self, field):
    self.field = field

  def __call__(self, latents, timesteps, cond: Conditioning, *, row_mask=None, noise=None,
               return_features=False):
    assert isinstance(cond, Conditioning), type(cond)
    inputs = dict(context=cond.context, pooled=cond.pooled, camera=cond.camera,
                  layout=cond.layout, row_mask=row_mask, noise=noise,
                  return_features=return_features)
    return self.field(latents, timesteps, inputs)


def _make_config(**diffusion):
  config = defaults.config()
  config.diffusion.update(diffusion)
  return config


def _simple_inputs(batch, config):
  return Conditioning(context=jnp.asarray(batch["text_embeddings"], jnp.float32),
                      pooled=jnp.asarray(batch["pooled_text"], jnp.float32))


@pytest.fixture
def field_model():
  return FieldModel


@pytest.fixture
def make_config():
  return _make_config


@pytest.fixture
def simple_inputs():
  return _simple_inputs
