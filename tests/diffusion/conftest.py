"""Stand-ins for the diffusion tests: a tiny model with CTSDDiT's call signature whose output is a
known function of its inputs, the config sections the diffusion code reads, and a stand-in for
models.conditioning.model_inputs."""

import jax.numpy as jnp
import ml_collections
import pytest
from flax import nnx

from wm_jax.diffusion import config as diffusion_config
from wm_jax.models import mask_reconstruction


class FieldModel(nnx.Module):
  """Returns field(latents, timesteps, inputs): the velocity, or (velocity, features) when
  inputs['return_features']."""

  def __init__(self, field):
    self.field = field

  def __call__(self, latents, timesteps, context=None, pooled=None, camera=None, layout=None,
               view_adjacency=None, disable_temporal=None, disable_crossview=None, row_mask=None,
               noise=None, return_features=False):
    inputs = dict(context=context, pooled=pooled, camera=camera, layout=layout, row_mask=row_mask,
                  noise=noise, return_features=return_features)
    return self.field(latents, timesteps, inputs)


def _make_config(**diffusion):
  config = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict(dict(patch_size=2))
  config.mask = mask_reconstruction.defaults()
  config.diffusion = diffusion_config.defaults()
  config.diffusion.update(diffusion)
  return config


def _simple_inputs(batch, config):
  return dict(context=jnp.asarray(batch["text_embeddings"], jnp.float32),
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
