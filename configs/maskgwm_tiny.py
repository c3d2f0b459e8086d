"""MaskGWM, tiny: the whole world model (all block kinds, camera embedding, mask reconstruction)
at toy sizes that run on one CPU core in about a second per training step.

What the model sees: the reference (context) frames, the camera and the ego's actions (speed,
steering, trajectory, goal point, command: MaskGWM's action module) of every frame, text (zeros
here) and nothing of the frames it predicts: no future layout, boxes or frames. The 'layout'
flag adds OpenDWM's layout adapter, which DOES see the layout of every frame (a layout-to-video
model, not a world model; world-model evaluation protocols refuse it); 'noactions' leaves the
action module out (the model OpenDWM's layout can hold: export needs it or
--drop_zero_action_params).

  python -m wm_jax.main --config=configs/maskgwm_tiny.py --workdir=/tmp/wm_tiny
  python -m wm_jax.main --config=configs/maskgwm_tiny.py:nomask --workdir=/tmp/wm_tiny_nomask
  python tools/param_count.py --config=configs/maskgwm_tiny.py

Variants (the argument after ':', comma-separated flags): '' (mask reconstruction on), 'nomask',
'layout' (the layout adapter, and the data render the layout image), 'noactions'.
Expect: 1.65M trainable parameters (1.60M 'noactions', 1.77M 'layout'; tools/param_count.py); 4 joint
blocks (2 dual-attention),
pointwise temporal blocks after layers 0 and 2, row-wise cross-view blocks after layers 1 and 3;
2 views x 4 frames of 8x16x4 latents (64x128 images of the synthetic world's 'front2' rig),
8 text tokens; the mask path keeps K = 6 of W = 8 tokens per row and decodes the last joint block
at full width. With no vae.checkpoint, main.py first trains a tiny VAE into WORKDIR/vae
(config.train.vae_steps, about a minute on 2 CPU cores) and says so. On one fixed batch the
rectified-flow loss falls more than 10x in about 55 Adam steps at lr 1e-3
(tests/models/test_ctsd_dit.py::test_tiny_overfits_one_batch).
"""

from wm_jax import defaults

FLAGS = ("nomask", "layout", "noactions")


def get_config(arg=None):
  flags = defaults.variant_flags(arg, FLAGS, "maskgwm_tiny")
  config = defaults.config()           # model and mask: the tiny sizes; the mask module sits
                                       # before the last of the 4 joint blocks (decode_layers 1)
  config.mask.enabled = "nomask" not in flags
  config.data.update(rig="front2", num_frames=4, image_height=64, image_width=128)
  defaults.set_model_inputs(config, flags)
  return config
