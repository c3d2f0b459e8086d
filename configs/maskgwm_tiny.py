"""MaskGWM, tiny: the whole model (all block kinds, layout adapter, camera embedding, mask
reconstruction) at toy sizes that run on one CPU core in about a second per training step.

  bash tools/demo.sh            # trains a tiny VAE into workdir_demo/vae (and this model)
  python -m wm_jax.main --config=configs/maskgwm_tiny.py --workdir=/tmp/wm_tiny \
      --config.vae.checkpoint=workdir_demo/vae
  python tools/param_count.py --config=configs/maskgwm_tiny.py

Expect: 1.72M trainable parameters (tools/param_count.py); 4 joint blocks (2 dual-attention),
pointwise temporal blocks after layers 0 and 2, row-wise cross-view blocks after layers 1 and 3;
2 views x 4 frames of 8x16x4 latents (64x128 images), 8 text tokens; the mask path keeps K = 6 of
W = 8 tokens per row and decodes the last joint block at full width. On one fixed batch the
rectified-flow loss falls more than 10x in about 55 Adam steps (lr 1e-3)
(tests/models/test_ctsd_dit.py::test_tiny_overfits_one_batch).
"""

import ml_collections

from wm_jax.data import grain_pipeline
from wm_jax.diffusion import config as diffusion_config
from wm_jax.evaluation import config as eval_config
from wm_jax.models import mask_reconstruction
from wm_jax.models import vae
from wm_jax.train import config as train_config


def model_config() -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.patch_size = 2
  m.in_channels = 4
  m.out_channels = 4
  m.num_layers = 4
  m.num_heads = 2
  m.head_dim = 32
  m.joint_attention_dim = 32
  m.pooled_projection_dim = 32
  m.pos_embed_max_size = 16
  m.sample_size = 16
  m.dual_attention_layers = (0, 1)
  m.qk_norm = "rms_norm"
  m.temporal_block_layers = (0, 2)
  m.crossview_block_layers = (1, 3)
  m.temporal_attention_type = "pointwise"
  m.crossview_attention_type = "rowwise"
  m.merge_factor = 2.0
  m.time_modulation = True
  m.camera_scalars = 11
  m.layout_adapter = ml_collections.ConfigDict(dict(
      in_channels=6, channels=[64, 64], is_downblocks=[True, False], num_res_blocks=1,
      downscale_factor=8, use_zero_convs=True))
  m.num_frames = 4
  m.num_views = 2
  m.latent_height = 8
  m.latent_width = 16
  m.text_tokens = 8
  m.dtype = "float32"
  m.param_dtype = "float32"
  m.attention_impl = "auto"
  m.remat_policy = "none"
  m.scan_layers = False  # True: runs of identical layers stacked + nnx.scan (wm_jax.models.scan)
  return m


def mask_config() -> ml_collections.ConfigDict:
  mask = mask_reconstruction.defaults()
  mask.decode_layers = 1  # of 4 joint blocks; the encoder runs 3 at width K = 6 of W = 8
  return mask


def get_config(arg=None):
  del arg
  config = ml_collections.ConfigDict()
  config.model = model_config()
  config.mask = mask_config()
  config.diffusion = diffusion_config.defaults()
  config.data = grain_pipeline.defaults()  # the synthetic world, rendered on the fly
  config.data.update(rig="front2", num_frames=4, image_height=64, image_width=128)
  config.vae = vae.defaults()  # 'tiny'; frames -> latents needs config.vae.checkpoint
  config.train = train_config.defaults()
  config.mesh = train_config.mesh_defaults()
  config.checkpoint = train_config.checkpoint_defaults()
  config.eval = eval_config.defaults()  # protocol 'synthetic'
  return config
