"""config.eval defaults. In a configs/*.py get_config: `config.eval = wm_jax.evaluation.config.defaults()`."""

import ml_collections


def defaults() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.protocol = "synthetic"     # a name in wm_jax.evaluation.protocols.PROTOCOLS
  c.num_clips = None           # override the protocol's clip count (the report shows the change)
  c.fid_weights = ""           # path to pytorch-fid's pt_inception-2015-12-05-6726825d.pth
  c.batch_size = 8             # clips per feature batch (split over all devices)
  c.save_videos = 4            # clips saved side by side with ground truth
  c.video_format = "mp4"       # 'mp4' or 'gif'
  return c
