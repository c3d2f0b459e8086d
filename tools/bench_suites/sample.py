"""Generation throughput of a config on the present device(s): the one `generate` path
(wm_jax/diffusion/generate.py) that sample videos, evaluation and the demo use.

  python tools/bench.py sample                                  # configs/bench.py, 1 clip
  python tools/bench.py sample --config=configs/maskgwm_tiny.py --clips=3 --steps=8 --cfg=2

One JSON line per setting: seconds per generated video (after one untimed call that compiles),
Euler steps per second and generated latent frames per second. --clips > 1 rolls out that many
clips of the config's num_frames, each conditioned on the last --ref frames. Random weights and a
random batch (train/example_batch.py): the numbers measure speed, not quality.
"""

from __future__ import annotations

import time


def add_arguments(parser):
  parser.add_argument("--config", default="configs/bench.py", help="config file (get_config)")
  parser.add_argument("--batch", type=int, default=1, help="videos per generate call")
  parser.add_argument("--clips", type=int, default=1, help="clips per video (> 1: a rollout)")
  parser.add_argument("--ref", type=int, default=1, help="context frames")
  parser.add_argument("--steps", type=int, default=4, help="Euler steps per clip")
  parser.add_argument("--cfg", type=float, default=1.0, help="guidance scale (1: no uncond pass)")
  parser.add_argument("--repeats", type=int, default=3, help="timed calls (>= 1)")


def run(args):
  import jax
  import numpy as np
  import wm_jax  # noqa: F401
  from wm_jax import defaults
  from wm_jax.diffusion import generate as generate_lib
  from wm_jax.diffusion import rollout
  from wm_jax.train import example_batch
  from wm_jax.train import run as run_lib

  if args.repeats < 1 or args.clips < 1:
    raise ValueError(f"--repeats={args.repeats} and --clips={args.clips} must be >= 1")
  config = defaults.load_file(args.config)
  config.mask.enabled = False                      # sampling never masks
  r = run_lib.build(config, training=False)
  model = r.model(r.init_state())
  frames = rollout.horizon_frames(args.clips, int(config.model.num_frames), args.ref)
  batch = example_batch.random(config, args.batch)
  clip = int(config.model.num_frames)   # per-frame conditions repeat clip by clip over the horizon
  batch = {k: (np.take(v, np.arange(frames) % clip, axis=1) if v.ndim > 1 and v.shape[1] == clip
               else v) for k, v in batch.items()}
  call = lambda i: generate_lib.generate(model, batch, config, n_ref=args.ref,
                                         rng=jax.random.key(i), steps=args.steps,
                                         cfg_scale=args.cfg, mesh=r.mesh)
  t0 = time.perf_counter()
  jax.block_until_ready(call(0))
  first_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for i in range(args.repeats):
    out = call(i + 1)
  jax.block_until_ready(out)
  dt = (time.perf_counter() - t0) / args.repeats
  generated = args.batch * (frames - args.ref)
  yield {"config": args.config, "batch": args.batch, "clips": args.clips, "frames": frames,
         "ref": args.ref, "euler_steps": args.steps, "cfg_scale": args.cfg,
         "mesh": dict(r.mesh.shape), "first_call_s": round(first_s, 2),
         "seconds_per_call": round(dt, 4), "euler_steps_per_s": round(args.clips * args.steps / dt, 2),
         "generated_frames_per_s": round(generated / dt, 2)}
