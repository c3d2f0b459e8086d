r"""Builds a TFDS ArrayRecord cache of clips (frames or VAE latents) from any data source.

  # 256 synthetic training clips + 32 validation clips, 1 view, 8 frames of 64x128:
  python tools/make_dataset.py --builder=synthetic --name=tiny --data_dir=/tmp/tfds \
      --data.num_train=256 --data.num_val=32 --data.num_frames=8
  # nuScenes 6-camera clips (12 Hz sweeps resampled to 6 Hz), first 100 per split:
  python tools/make_dataset.py --builder=nuscenes --name=mview --data_dir=/tmp/tfds \
      --data.path=/data/nuscenes --data.version=v1.0-mini --data.fps=6 --max_examples=100 \
      --data.views='("CAM_FRONT_LEFT","CAM_FRONT","CAM_FRONT_RIGHT","CAM_BACK_RIGHT","CAM_BACK","CAM_BACK_LEFT")'
  # video folder, latents of a diffusers VAE instead of frames:
  python tools/make_dataset.py --builder=video --name=opendv_sd --data_dir=/tmp/tfds \
      --data.path=/data/opendv --data.num_frames=25 --data.image_height=288 \
      --data.image_width=512 --latents --vae_preset=sd --vae_checkpoint=/ckpt/sd-vae

Read it back with config.data.source='tfds', config.data.tfds_name='wm_<builder>/<name>',
config.data.path=<data_dir> (wm_jax/data/sources.py), or
wm_jax.data.tfds_cache.data_source(...).
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from flax import nnx  # noqa: E402
import jax  # noqa: E402
from ml_collections import config_flags  # noqa: E402
import numpy as np  # noqa: E402

from wm_jax import defaults  # noqa: E402
from wm_jax.convert import vae_weights  # noqa: E402
from wm_jax.data import tfds_builders  # noqa: E402
from wm_jax.models import vae as vae_lib  # noqa: E402

_BUILDER = flags.DEFINE_enum("builder", "synthetic", sorted(tfds_builders.BUILDERS),
                             "which source to cache")
_NAME = flags.DEFINE_string("name", "default", "builder config name: the cache is "
                            "<data_dir>/wm_<builder>/<name>")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir to write into", required=True)
_SPLITS = flags.DEFINE_list("splits", ["train", "validation"], "splits to write")
_MAX_EXAMPLES = flags.DEFINE_integer("max_examples", 0, "records per split (0 = all)")
_LATENTS = flags.DEFINE_bool("latents", False, "store VAE latents instead of frames")
_KEEP_FRAMES = flags.DEFINE_bool("keep_frames", False, "with --latents, keep the frames too")
_VAE_PRESET = flags.DEFINE_string("vae_preset", "tiny", "config.vae.preset for --latents")
_VAE_CHECKPOINT = flags.DEFINE_string("vae_checkpoint", "", "diffusers VAE weights for --latents "
                                      "('' = random weights: smoke tests only)")
_DATA = config_flags.DEFINE_config_dict("data", defaults.data(),
                                        "config.data overrides, e.g. --data.num_frames=8")


def _vae_encoder():
  config = defaults.vae()
  config.preset = _VAE_PRESET.value
  if _VAE_CHECKPOINT.value:
    config.checkpoint = _VAE_CHECKPOINT.value
    model = vae_weights.from_pretrained(_VAE_CHECKPOINT.value, config)
  else:
    logging.warning("no --vae_checkpoint: latents come from a randomly initialised VAE")
    model = vae_lib.AutoencoderKL(config, rngs=nnx.Rngs(0))
  print(f"VAE preset {config.preset!r} on {jax.devices()[0].device_kind}", flush=True)

  def encode(frames):
    return np.asarray(vae_lib.encode_frames(model, frames), np.float32)
  encode.__name__ = f"vae_{config.preset}" + (f":{_VAE_CHECKPOINT.value}" if _VAE_CHECKPOINT.value
                                              else ":random")
  return encode


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  encode_fn = _vae_encoder() if _LATENTS.value else None
  start = time.time()
  print(f"building wm_{_BUILDER.value}/{_NAME.value} ({', '.join(_SPLITS.value)}) in "
        f"{_DATA_DIR.value}", flush=True)
  builder = tfds_builders.make_builder(
      _BUILDER.value, _DATA.value, name=_NAME.value, data_dir=_DATA_DIR.value,
      splits=tuple(_SPLITS.value), max_examples=_MAX_EXAMPLES.value, encode_fn=encode_fn,
      keep_frames=_KEEP_FRAMES.value)
  builder.download_and_prepare()
  for split in _SPLITS.value:
    print(f"  {split}: {builder.info.splits[split].num_examples} records", flush=True)
  print(f"wrote {builder.data_dir} in {time.time() - start:.1f} s; read it with "
        f"--config.data.source=tfds --config.data.tfds_name=wm_{_BUILDER.value}/{_NAME.value} "
        f"--config.data.path={_DATA_DIR.value}", flush=True)


if __name__ == "__main__":
  app.run(main)
