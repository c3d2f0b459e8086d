"""wm_jax.models: the CTSD backbone and its blocks, channels last.

  layers.py               linear / conv / norms with logical axis names, Precision, KeyStream
  buffers.py              non-trained checkpointed arrays (Buffer)
  embeddings.py           patch, timestep, text and camera embeddings
  attention.py            Attention (self, joint, with qk-norm) and FeedForward
  mmdit.py                the SD3 / SD3.5 joint block and the output norm
  video_blocks.py         temporal and row-wise cross-view blocks, AlphaBlender
  layout_adapter.py       the layout image adapter (residuals per joint block)
  masking.py              row-wise masks with static shapes, gathers and their inverse
  mask_reconstruction.py  MaskGWM's mask module (mask tokens, side blocks)
  action_module.py        MaskGWM's action conditioning (Fourier action embedding, the temporal
                          blocks' action cross-attention)
  conditioning.py         Conditioning and model_inputs(batch, config)
  scan.py                 runs of identical layers, stacked and scanned
  ctsd_dit.py             CTSDDiT: the whole backbone
  vae.py                  AutoencoderKL (SD / SD3 / tiny)
"""
