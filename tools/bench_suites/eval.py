"""Evaluation throughput: I3D (FVD) clips/s, FID Inception images/s, Frechet distance time.

  python tools/bench.py eval                      # all parts, small batches
  python tools/bench.py eval --parts=i3d --batch=16 --frames=16

The Inception uses random weights of the real shapes (the FID weight file is not shipped); speed
does not depend on the values. Features run sharded over all devices (frechet.ShardedExtractor).
"""

import time

import numpy as np


def add_arguments(parser):
  parser.add_argument("--parts", default="i3d,inception,frechet")
  parser.add_argument("--batch", type=int, default=8, help="clips (I3D) / images (Inception)")
  parser.add_argument("--frames", type=int, default=16, help="frames per I3D clip (>= 9)")
  parser.add_argument("--size", type=int, default=256, help="input frame side before resizing")
  parser.add_argument("--iters", type=int, default=3)
  parser.add_argument("--dim", type=int, default=2048, help="feature dim for the Frechet part")


def _time(fn, x, iters):
  t0 = time.perf_counter()
  fn(x)   # compile + first run
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(iters):
    fn(x)
  return compile_s, (time.perf_counter() - t0) / iters


def run(args):
  from wm_jax.evaluation import frechet, i3d, inception
  parts = args.parts.split(",")
  rng = np.random.default_rng(0)
  if "i3d" in parts:
    print("[bench] I3D", flush=True)
    ext = frechet.module_extractor(i3d.load_model(), i3d.fvd_features)
    x = rng.integers(0, 256, (args.batch, args.frames, args.size, args.size, 3), dtype=np.uint8)
    c, s = _time(ext, x, args.iters)
    yield {"part": "i3d_fvd_features", "batch": args.batch, "frames": args.frames,
           "input_side": args.size, "compile_s": round(c, 3), "step_s": round(s, 4),
           "clips_per_s": round(args.batch / s, 2)}
  if "inception" in parts:
    print("[bench] FID Inception (random weights)", flush=True)
    model = inception.FIDInceptionV3()
    sd = {k: rng.normal(0, 0.05, v).astype(np.float32) + (1.0 if k.endswith("running_var") else 0)
          for k, v in inception.state_dict_shapes().items()}
    model = inception.from_state_dict(sd)
    ext = frechet.module_extractor(model, inception.fid_features)
    x = rng.integers(0, 256, (args.batch, args.size, args.size, 3), dtype=np.uint8)
    c, s = _time(ext, x, args.iters)
    yield {"part": "inception_fid_features", "batch": args.batch, "input_side": args.size,
           "compile_s": round(c, 3), "step_s": round(s, 4), "images_per_s": round(args.batch / s, 2)}
  if "frechet" in parts:
    d = args.dim
    a = frechet.RunningStats.from_features(rng.normal(size=(2 * d, d)))
    b = frechet.RunningStats.from_features(rng.normal(size=(2 * d, d)) + 0.1)
    t0 = time.perf_counter()
    fd = frechet.frechet_from_stats(a, b)
    yield {"part": "frechet_distance", "dim": d, "seconds": round(time.perf_counter() - t0, 3),
           "value": round(fd, 4)}
