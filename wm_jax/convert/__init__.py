"""wm_jax <-> PyTorch weights (OpenDWM, diffusers): PyTorch I/O only; native checkpoints are
wm_jax.train.checkpoint's.

  param_map.py       the one name-and-layout rule (NNX path joined with '.' = PyTorch key; kernel/
                     scale/embedding -> weight; kernels transposed), used in both directions
  opendwm_config.py  config.model / config.mask <-> OpenDWM's model config names (so that OpenDWM
                     computes what wm_jax does; what it cannot express is named and refused)
  checkpoints.py     state_from_flat: converted {path: array} weights -> a model's state
  vae_weights.py     diffusers AutoencoderKL weights (folder or .safetensors) -> models.vae
  to_torch.py        export to an OpenDWM state_dict (shape-checked, paper-only policy) and
                     safetensors (fp32 / bf16 / fp16)
  from_torch.py      read .safetensors (sharded by index too; on access, without torch) / .pth
                     (weights_only, the torch extra) and convert OpenDWM or diffusers SD3
                     checkpoints strictly (missing / unexpected / mis-shaped / non-finite /
                     integer-for-float keys are refused; unreadable files by path)

Command lines: tools/convert_to_pytorch.py, tools/convert_from_pytorch.py.
"""
