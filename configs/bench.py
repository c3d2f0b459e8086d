"""The fixed benchmark configuration: the point of comparison between wm_jax and other
implementations on one device.

  python tools/bench.py train --config=configs/bench.py

8 joint layers, 4 heads x 64, dual attention in layers 0-3, batch 1, 4 frames, 2 views, latents
16x32 with 16 channels, patch 2 (8x16 tokens per view), text 16 tokens x 128, pooled 64, row-wise
cross-view blocks after layers 1 and 5, point-wise temporal blocks after layers 2, 3, 6, 7, mask
ratio 0.25 with 2 decode layers, fp32, AdamW. No layout adapter.
Expect: a JSON line per mask setting with steps/s, tokens/s and MFU (MFU only where the chip's peak
is known; on a CPU the line has model TFLOP/s instead).
"""

from wm_jax import defaults


def get_config(arg=None):
  del arg
  config = defaults.config()
  config.model.update(
      in_channels=16, out_channels=16, num_layers=8, num_heads=4, head_dim=64,
      joint_attention_dim=128, pooled_projection_dim=64, pos_embed_max_size=32, sample_size=32,
      dual_attention_layers=(0, 1, 2, 3), temporal_block_layers=(2, 3, 6, 7),
      crossview_block_layers=(1, 5), num_frames=4, num_views=2, latent_height=16,
      latent_width=32, text_tokens=16)
  config.model.layout_adapter = None
  config.mask.update(enabled=True, ratio=0.25, p_time=0.5, decode_layers=2, side_blocks=1)
  config.train.update(batch_size=1, learning_rate=1e-4)
  return config
