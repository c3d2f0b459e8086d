"""MaskGWM-long: single front camera, 25 frames of 288x512 (36x64 latents, SD3 16-channel VAE),
SD3.5-medium backbone sizes (24 layers, 24 heads x 64, dual attention in layers 0-12), pointwise
temporal blocks at OpenDWM's layers, camera + action (speed, steering) embedding, no layout.

  python -m wm_jax.main --config=configs/maskgwm_long.py --workdir=gs://BUCKET/maskgwm_long
  python tools/param_count.py --config=configs/maskgwm_long.py

Expect: 3.417e9 trainable parameters (tools/param_count.py prints the split: 2.22e9 in the joint
blocks); needs accelerators with bf16 and sharding (config.mesh), not runnable on a CPU. Mask
reconstruction with r = 0.25 keeps 24 of 32 tokens per row.
"""

import ml_collections

from wm_jax.data import grain_pipeline
from wm_jax.diffusion import config as diffusion_config
from wm_jax.evaluation import config as eval_config
from wm_jax.models import mask_reconstruction
from wm_jax.models import vae
from wm_jax.train import config as train_config

from configs import maskgwm_tiny


def model_config() -> ml_collections.ConfigDict:
  m = maskgwm_tiny.model_config()
  m.patch_size = 2
  m.in_channels = 16
  m.out_channels = 16
  m.num_layers = 24
  m.num_heads = 24
  m.head_dim = 64
  m.joint_attention_dim = 4096
  m.pooled_projection_dim = 2048
  m.pos_embed_max_size = 384
  m.sample_size = 128
  m.dual_attention_layers = tuple(range(13))
  m.temporal_block_layers = (2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23)
  m.crossview_block_layers = ()
  m.temporal_attention_type = "pointwise"
  m.camera_scalars = 13
  m.layout_adapter = None
  m.num_frames = 25
  m.num_views = 1
  m.latent_height = 36
  m.latent_width = 64
  m.text_tokens = 154  # CLIP 77 + T5 77: OpenDWM's SD3.5 pipelines concatenate them
  m.dtype = "bfloat16"
  m.param_dtype = "float32"
  m.remat_policy = "dots_saveable"
  m.scan_layers = True  # traces 13 of the 24 layers with the mask decoder, 12 without
  return m


def mask_config() -> ml_collections.ConfigDict:
  return mask_reconstruction.defaults()  # r = 0.25: 24 of 32 tokens per row, 5 decoder blocks


def sd35_run_sections(config) -> None:
  """The sections every SD3.5-size MaskGWM run shares (also used by maskgwm_mview)."""
  config.diffusion = diffusion_config.defaults()
  config.diffusion.shift = 3.0  # SD3/SD3.5 sizes
  config.vae = vae.defaults()
  config.vae.preset = "sd3"  # set config.vae.checkpoint to the SD3.5 VAE (diffusers folder)
  config.train = train_config.defaults()
  config.train.update(learning_rate=5e-5, warmup_steps=1000, schedule="constant")  # paper 7.2
  config.mesh = train_config.mesh_defaults()
  config.mesh.update(data=1, fsdp=-1)  # billions of parameters: shard them (FSDP) over all devices
  config.checkpoint = train_config.checkpoint_defaults()
  config.eval = eval_config.defaults()


def get_config(arg=None):
  del arg
  config = ml_collections.ConfigDict()
  config.model = model_config()
  config.mask = mask_config()
  sd35_run_sections(config)
  config.data = grain_pipeline.defaults()  # OpenDV-YouTube-style folder of mp4s
  config.data.update(source="video", num_frames=25, image_height=288, image_width=512, fps=10.0)
  config.eval.protocol = "long_horizon"
  return config
