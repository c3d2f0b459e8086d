"""Data pipeline throughput: samples (clips) per second per host through the Grain pipeline.

  python tools/bench.py data --quick                          # tiny shape, few samples
  python tools/bench.py data --shapes=tiny,long,mview --sources=synthetic,nuscenes,cache

Sources: 'synthetic' renders clips on the fly (procedural world), 'nuscenes' reads a nuScenes-format
set the synthetic exporter wrote to a temporary folder (JPEG decode + resize + boxes + layout),
'cache' reads a TFDS ArrayRecord cache built from the synthetic source. Every source goes through
make_iterator (validation, shuffle, read threads, batch 1) so the number is what training sees.
Setup (exporting, caching) is not timed.
"""

import math
import os
import tempfile
import time

from wm_jax import defaults
from wm_jax.data import pipeline, tfds_builders
from wm_jax.data.synthetic import export, world
from wm_jax.data.synthetic import rig as rig_lib

SHAPES = {  # name: (views / rig, frames, height, width)
    "tiny": ("front", 8, 64, 128),
    "long": ("front", 25, 288, 512),
    "mview": ("nuscenes6", 8, 128, 256),
}
SOURCES = ("synthetic", "nuscenes", "cache")
VERSION = "v1.0-synthetic"


def add_arguments(parser):
  parser.add_argument("--shapes", default="tiny,long,mview", help=",".join(SHAPES))
  parser.add_argument("--sources", default=",".join(SOURCES), help=",".join(SOURCES))
  parser.add_argument("--samples", type=int, default=16, help="clips timed per measurement")
  parser.add_argument("--scenes", type=int, default=4, help="scenes exported / cached")
  parser.add_argument("--read_threads", type=int, default=2)
  parser.add_argument("--quick", action="store_true", help="tiny shape, 4 samples, 2 scenes")


def _config(shape, **kw):
  rig, frames, h, w = SHAPES[shape]
  c = defaults.data()
  c.update(rig=rig, num_frames=frames, image_height=h, image_width=w, fps=12.0, num_epochs=0)
  c.update(kw)
  return c


def _time(config, samples, source=None):
  it = pipeline.make_iterator(config, batch_size=1, seed=0, process_index=0, process_count=1,
                              source=source)
  next(it)  # warm-up: thread pool, first compile of the renderer
  start = time.perf_counter()
  for _ in range(samples):
    batch = next(it)
  elapsed = time.perf_counter() - start
  return samples / elapsed, batch


def _export(config, out, scenes, samples):
  """Writes `scenes` synthetic scenes of `samples` keyframes (12 Hz sweeps between) as nuScenes."""
  specs = [world.make_scene(i, domain=config.domain) for i in range(scenes)]
  export.write_nuscenes(out, specs, rig=config.rig, version=VERSION, num_samples=samples,
                        image_size=(config.image_height, config.image_width), verbose=False)
  return out


def run(args):
  shapes = ["tiny"] if args.quick else args.shapes.split(",")
  samples = 4 if args.quick else args.samples
  scenes = 2 if args.quick else args.scenes
  for shape in shapes:
    rig, frames, h, w = SHAPES[shape]
    views = 1 if rig == "front" else 6
    base = dict(shape=shape, views=views, frames=frames, height=h, width=w,
                read_threads=args.read_threads)
    for source in args.sources.split(","):
      with tempfile.TemporaryDirectory() as tmp:
        if source == "synthetic":
          config = _config(shape, source="synthetic", num_train=max(samples + 1, scenes),
                           read_threads=args.read_threads)
        elif source == "nuscenes":
          print(f"# exporting {scenes} synthetic scenes ({shape}) as nuScenes", flush=True)
          config = _config(shape, source="synthetic")
          keyframes = math.ceil((frames - 1) / 6) + 1  # enough 12 Hz frames for one clip
          _export(config, tmp, scenes, keyframes)
          channels = rig_lib.make_rig(rig, (h, w)).channels
          config = _config(shape, source="nuscenes", path=tmp, version=VERSION,
                           views=channels, keyframes_only=False, val_fraction=0.0,
                           read_threads=args.read_threads)
        elif source == "cache":
          print(f"# caching {scenes} synthetic clips ({shape}) as ArrayRecord", flush=True)
          config = _config(shape, source="synthetic", num_train=scenes)
          tfds_builders.make_builder("synthetic", config, name=shape, data_dir=tmp,
                                     splits=("train",)).download_and_prepare()
          config = _config(shape, source="tfds", tfds_name=f"wm_synthetic/{shape}", path=tmp,
                           read_threads=args.read_threads)
        else:
          raise ValueError(f"unknown source {source!r}; choose from {SOURCES}")
        rate, batch = _time(config, samples)
        mb = sum(v.nbytes for v in batch.values()) / 2**20
        yield {**base, "source": source, "samples": samples,
               "samples_per_s": round(rate, 3), "frames_per_s": round(rate * frames * views, 2),
               "mb_per_sample": round(mb, 3), "cpus": os.cpu_count()}
