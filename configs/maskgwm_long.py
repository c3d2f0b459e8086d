"""MaskGWM-long: single front camera, 25 frames of 288x512 (36x64 latents, SD3 16-channel VAE),
SD3.5-medium backbone sizes (24 layers, 24 heads x 64, dual attention in layers 0-12), pointwise
temporal blocks at OpenDWM's layers, camera + action (speed, steering) embedding, no layout.

What the model sees: the reference frames, the camera and actions of every frame, text, and
nothing of the frames it predicts (no layout, boxes or future frames).

  python -m wm_jax.main --config=configs/maskgwm_long.py --workdir=gs://BUCKET/maskgwm_long \
      --config.data.path=OPENDV_MP4_DIR --config.vae.checkpoint=SD35_VAE_DIR
  python tools/param_count.py --config=configs/maskgwm_long.py

Variants (the argument after ':'): '' (mask reconstruction, r = 0.25), 'nomask'.
Expect: 3.417e9 trainable parameters (tools/param_count.py prints the split: 2.22e9 in the joint
blocks); needs accelerators with bf16 and sharding (config.mesh), not runnable on a CPU. Mask
reconstruction with r = 0.25 keeps 24 of 32 tokens per row, 5 decoder blocks.
"""

from wm_jax import defaults

FLAGS = ("nomask",)


def get_config(arg=None):
  flags = defaults.variant_flags(arg, FLAGS, "maskgwm_long")
  config = defaults.config()
  config.model.update(
      in_channels=16, out_channels=16, num_layers=24, num_heads=24, head_dim=64,
      joint_attention_dim=4096, pooled_projection_dim=2048, pos_embed_max_size=384,
      sample_size=128, dual_attention_layers=tuple(range(13)),
      temporal_block_layers=(2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23),
      crossview_block_layers=(), camera_scalars=13, num_frames=25, num_views=1,
      latent_height=36, latent_width=64,
      text_tokens=154,                 # CLIP 77 + T5 77, concatenated as OpenDWM's SD3.5 pipelines
      dtype="bfloat16", remat_policy="dots_saveable",
      scan_layers=True)                # traces 13 of the 24 layers with the mask decoder, 12 without
  config.model.layout_adapter = None
  config.mask.enabled = "nomask" not in flags  # r = 0.25: 24 of 32 tokens per row
  config.mask.decode_layers = 5          # as OpenDWM
  config.diffusion.shift = 3.0         # SD3/SD3.5 sizes
  config.vae.preset = "sd3"            # set config.vae.checkpoint to the SD3.5 VAE (diffusers folder)
  config.train.update(learning_rate=5e-5, warmup_steps=1000, schedule="constant")
  config.mesh.update(data=1, fsdp=-1)  # billions of parameters: shard them (FSDP) over all devices
  config.data.update(source="video", num_frames=25, image_height=288, image_width=512, fps=10.0)
  config.eval.protocol = "long_horizon"
  return config
