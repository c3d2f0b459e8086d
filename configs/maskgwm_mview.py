"""MaskGWM-mview: 6 nuScenes cameras, 8 frames of 256x448 (32x56 latents), OpenDWM's CTSD-3.5
backbone: SD3.5-medium sizes, pointwise temporal blocks after layers 2,3,6,7,...,22,23, row-wise
cross-view blocks (camera adjacency mask) after layers 1,5,9,13,17,21, 11 camera scalars. Its
parameter names are exactly OpenDWM's (checkpoints convert name for name, plus the paper's Eq. 5
time modulation).

What the model sees: the reference frames of the 6 cameras, the cameras, the ego's actions
(MaskGWM's action module: speed, steering, trajectory, goal point, command from the nuScenes ego
poses and CAN bus), text, and nothing of the frames it predicts ("without the requirement of
future layouts", MaskGWM 4.3). The 'layout' flag is OpenDWM's CTSD-3.5 layout model: the layout
adapter (6 x 1536 channels), which sees the layout of every frame; world-model evaluation
protocols refuse it. 'noactions' leaves the action module out ('layout,noactions' is exactly
OpenDWM's CTSD-3.5 layout model).

  python -m wm_jax.main --config=configs/maskgwm_mview.py --workdir=gs://BUCKET/maskgwm_mview \
      --config.data.path=NUSCENES_ROOT --config.vae.checkpoint=SD35_VAE_DIR
  python tools/param_count.py --config=configs/maskgwm_mview.py

Variants (the argument after ':', comma-separated flags): '' (mask reconstruction, r = 0.25),
'nomask', 'layout' (OpenDWM's layout adapter), 'noactions' ('layout,noactions': OpenDWM's
1524-key state_dict plus the Eq. 5 parameters).
Expect: 4.139e9 trainable parameters (3.926e9 'noactions', 4.224e9 'layout,noactions';
tools/param_count.py prints the split); accelerators only.
The mask path keeps 21 of 28 tokens per row, 5 decoder blocks.
"""

from wm_jax import defaults

FLAGS = ("nomask", "layout", "noactions")


def get_config(arg=None):
  flags = defaults.variant_flags(arg, FLAGS, "maskgwm_mview")
  config = defaults.config()
  config.model.update(
      in_channels=16, out_channels=16, num_layers=24, num_heads=24, head_dim=64,
      joint_attention_dim=4096, pooled_projection_dim=2048, pos_embed_max_size=384,
      sample_size=128, dual_attention_layers=tuple(range(13)),
      temporal_block_layers=(2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23),
      crossview_block_layers=(1, 5, 9, 13, 17, 21), camera_scalars=11, num_frames=8,
      num_views=6, latent_height=32, latent_width=56,
      text_tokens=154,                 # CLIP 77 + T5 77, concatenated as OpenDWM's SD3.5 pipelines
      dtype="bfloat16", remat_policy="dots_saveable", scan_layers=True)
  config.model.layout_adapter.update(
      in_channels=6, channels=[1536] * 6, is_downblocks=[True] + [False] * 5, num_res_blocks=2,
      downscale_factor=8, use_zero_convs=True)
  defaults.set_model_inputs(config, flags)
  config.mask.enabled = "nomask" not in flags  # r = 0.25: 21 of 28 tokens per row
  config.mask.decode_layers = 5          # as OpenDWM
  config.diffusion.shift = 3.0         # SD3/SD3.5 sizes
  config.vae.preset = "sd3"            # set config.vae.checkpoint to the SD3.5 VAE (diffusers folder)
  config.train.update(learning_rate=5e-5, warmup_steps=1000, schedule="constant")
  config.mesh.update(data=1, fsdp=-1)  # billions of parameters: shard them (FSDP) over all devices
  config.data.update(source="nuscenes", num_frames=8, image_height=256, image_width=448, fps=12.0,
                     views=("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT",
                            "CAM_BACK", "CAM_BACK_LEFT"))
  config.eval.protocol = "drivewm_mview"
  return config
