"""The fixed benchmark configuration (issue 7): the point of comparison between wm_jax and other
implementations on one device.

  python tools/bench.py train --config=configs/bench.py

8 joint layers, 4 heads x 64, dual attention in layers 0-3, batch 1, 4 frames, 2 views, latents
16x32 with 16 channels, patch 2 (8x16 tokens per view), text 16 tokens x 128, pooled 64, row-wise
cross-view blocks after layers 1 and 5, point-wise temporal blocks after layers 2, 3, 6, 7, mask
ratio 0.25 with 2 decode layers, fp32, AdamW. No layout adapter.
Expect: a JSON line per mask setting with steps/s, tokens/s and MFU (MFU only where the chip's peak
is known; on a CPU the line has model TFLOP/s instead).
"""

import ml_collections

import wm_jax.diffusion.config
import wm_jax.train.config


def model_config() -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.patch_size = 2
  m.in_channels = 16
  m.out_channels = 16
  m.num_layers = 8
  m.num_heads = 4
  m.head_dim = 64
  m.joint_attention_dim = 128
  m.pooled_projection_dim = 64
  m.pos_embed_max_size = 32
  m.sample_size = 32
  m.dual_attention_layers = (0, 1, 2, 3)
  m.qk_norm = "rms_norm"
  m.temporal_block_layers = (2, 3, 6, 7)
  m.crossview_block_layers = (1, 5)
  m.temporal_attention_type = "pointwise"
  m.crossview_attention_type = "rowwise"
  m.merge_factor = 2.0
  m.time_modulation = True
  m.camera_scalars = 11
  m.layout_adapter = None
  m.num_frames = 4
  m.num_views = 2
  m.latent_height = 16
  m.latent_width = 32
  m.text_tokens = 16
  m.dtype = "float32"
  m.param_dtype = "float32"
  m.attention_impl = "auto"
  m.remat_policy = "none"
  return m


def get_config(arg=None):
  del arg
  config = ml_collections.ConfigDict()
  config.model = model_config()
  config.mask = ml_collections.ConfigDict(dict(enabled=True, ratio=0.25, p_time=0.5,
                                                decode_layers=2, side_blocks=1))
  config.diffusion = wm_jax.diffusion.config.defaults()
  config.train = wm_jax.train.config.defaults()
  config.train.batch_size = 1
  config.train.learning_rate = 1e-4
  config.mesh = wm_jax.train.config.mesh_defaults()
  config.checkpoint = wm_jax.train.config.checkpoint_defaults()
  return config
