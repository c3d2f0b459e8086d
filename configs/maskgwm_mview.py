"""MaskGWM-mview: 6 nuScenes cameras, 8 frames of 256x448 (32x56 latents), the OpenDWM CTSD-3.5
layout model: SD3.5-medium sizes, pointwise temporal blocks after layers 2,3,6,7,...,22,23,
row-wise cross-view blocks (camera adjacency mask) after layers 1,5,9,13,17,21, 11 camera scalars,
layout adapter (6 x 1536 channels). Its parameter names are exactly OpenDWM's (checkpoints
convert name for name, plus the paper's Eq. 5 time modulation).

  python -m wm_jax.main --config=configs/maskgwm_mview.py --workdir=gs://BUCKET/maskgwm_mview
  python tools/param_count.py --config=configs/maskgwm_mview.py

Expect: 4.224e9 trainable parameters (tools/param_count.py prints the split); accelerators only.
"""

import ml_collections

from wm_jax.data import grain_pipeline
from wm_jax.models import mask_reconstruction

from configs import maskgwm_long


def model_config() -> ml_collections.ConfigDict:
  m = maskgwm_long.model_config()
  m.crossview_block_layers = (1, 5, 9, 13, 17, 21)
  m.camera_scalars = 11
  m.layout_adapter = ml_collections.ConfigDict(dict(
      in_channels=6, channels=[1536] * 6, is_downblocks=[True] + [False] * 5, num_res_blocks=2,
      downscale_factor=8, use_zero_convs=True))
  m.num_frames = 8
  m.num_views = 6
  m.latent_height = 32
  m.latent_width = 56
  return m


def mask_config() -> ml_collections.ConfigDict:
  return mask_reconstruction.defaults()  # r = 0.25: 21 of 28 tokens per row, 5 decoder blocks


def get_config(arg=None):
  del arg
  config = ml_collections.ConfigDict()
  config.model = model_config()
  config.mask = mask_config()
  maskgwm_long.sd35_run_sections(config)
  config.data = grain_pipeline.defaults()  # real nuScenes v1.0 tables (set config.data.path)
  config.data.update(source="nuscenes", num_frames=8, image_height=256, image_width=448, fps=12.0,
                     views=("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT",
                            "CAM_BACK", "CAM_BACK_LEFT"))
  config.eval.protocol = "drivewm_mview"
  return config
