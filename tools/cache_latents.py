r"""Encodes a data set into a TFDS ArrayRecord cache of VAE latents (scale and shift applied).

  # synthetic clips through the tiny (random) VAE, for CPU smoke runs:
  python tools/cache_latents.py --builder=synthetic --name=tiny_latents --data_dir=/tmp/tfds \
      --data.num_train=64 --data.num_frames=8
  # nuScenes 6 cameras through the SD3.5 VAE, tiled for large frames:
  python tools/cache_latents.py --builder=nuscenes --name=mview_sd3 --data_dir=/data/tfds \
      --data.path=/data/nuscenes --vae.preset=sd3 --vae.checkpoint=/ckpt/sd35/vae \
      --vae.tile_size=512 --vae.batch_slice=6

Each record keeps its conditioning keys and holds `latents` [T,V,H/8,W/8,C] =
(z - shift_factor) * scaling_factor, z the posterior mean (or a sample with --sample, seeded per
record index). The cache is <data_dir>/wm_<builder>/<name>; read it with config.data.source='tfds',
config.data.tfds_name='wm_<builder>/<name>', config.data.path=<data_dir>. At the end the tool
prints the latents' mean and std: for a well-chosen scaling_factor the std is near 1.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
from ml_collections import config_flags  # noqa: E402
import numpy as np  # noqa: E402

from wm_jax import defaults  # noqa: E402
from wm_jax.convert import vae_weights  # noqa: E402
from wm_jax.data import tfds_builders  # noqa: E402
from wm_jax.models import vae as vae_lib  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum("builder", "synthetic", sorted(tfds_builders.BUILDERS), "data source to cache")
flags.DEFINE_string("name", "latents", "cache name: <data_dir>/wm_<builder>/<name>")
flags.DEFINE_string("data_dir", None, "TFDS data_dir to write into")
flags.DEFINE_list("splits", ["train", "validation"], "splits to write")
flags.DEFINE_integer("max_examples", 0, "records per split (0 = all)")
flags.DEFINE_bool("keep_frames", False, "keep the frames next to the latents")
flags.DEFINE_bool("sample", False, "store posterior samples instead of the posterior mean")
flags.DEFINE_integer("seed", 0, "seed of --sample")
config_flags.DEFINE_config_dict("data", defaults.data(), "config.data overrides")
config_flags.DEFINE_config_dict("vae", defaults.vae(), "config.vae overrides")


class LatentEncoder:
  """frames uint8 [T,V,H,W,3] -> scaled latents float32 numpy; keeps running statistics."""

  def __init__(self, vae_config, *, sample: bool = False, seed: int = 0):
    self.vae = vae_weights.from_config(vae_config)
    self.sample, self.key, self.calls = sample, jax.random.key(seed), 0
    self.count, self.total, self.total_sq = 0, 0.0, 0.0
    cfg = self.vae.cfg
    self.__name__ = (f"vae_{cfg['preset']}:{cfg['checkpoint'] or 'random'}:"
                     f"scale={cfg['scaling_factor']}:shift={cfg['shift_factor']}"
                     f"{':sample' if sample else ':mean'}")

  def __call__(self, frames):
    rng = jax.random.fold_in(self.key, self.calls) if self.sample else None
    self.calls += 1
    z = np.asarray(vae_lib.encode_frames(self.vae, frames, rng), np.float32)
    self.count += z.size
    self.total += float(z.sum(dtype=np.float64))
    self.total_sq += float(np.square(z, dtype=np.float64).sum())
    return z

  def stats(self) -> tuple[float, float]:
    mean = self.total / max(self.count, 1)
    return mean, max(self.total_sq / max(self.count, 1) - mean ** 2, 0.0) ** 0.5


def build(builder: str, data_config, vae_config, *, name: str, data_dir: str,
          splits=("train", "validation"), max_examples: int = 0, keep_frames: bool = False,
          sample: bool = False, seed: int = 0):
  """Writes the cache; returns (the TFDS builder, the encoder with its statistics)."""
  encoder = LatentEncoder(vae_config, sample=sample, seed=seed)
  tfds_builder = tfds_builders.make_builder(
      builder, data_config, name=name, data_dir=data_dir, splits=splits,
      max_examples=max_examples, encode_fn=encoder, latents=encoder.__name__,
      keep_frames=keep_frames)
  tfds_builder.download_and_prepare()
  return tfds_builder, encoder


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if not FLAGS.data_dir:
    raise app.UsageError("--data_dir is required")
  start = time.time()
  print(f"[cache_latents] wm_{FLAGS.builder}/{FLAGS.name}: VAE preset {FLAGS.vae.preset!r} "
        f"({FLAGS.vae.checkpoint or 'random weights'}), splits {FLAGS.splits}", flush=True)
  builder, encoder = build(FLAGS.builder, FLAGS.data, FLAGS.vae, name=FLAGS.name,
                           data_dir=FLAGS.data_dir, splits=FLAGS.splits,
                           max_examples=FLAGS.max_examples, keep_frames=FLAGS.keep_frames,
                           sample=FLAGS.sample, seed=FLAGS.seed)
  mean, std = encoder.stats()
  print(f"[cache_latents] wrote {builder.data_dir} in {time.time() - start:.1f}s; "
        f"{encoder.calls} clips, latent mean {mean:.4f} std {std:.4f}", flush=True)


if __name__ == "__main__":
  app.run(main)
