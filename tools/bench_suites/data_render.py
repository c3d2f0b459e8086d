"""Synthetic renderer throughput: camera frames per second (one frame = one image of one view).

  python tools/bench.py data_render                      # all cases
  python tools/bench.py data_render --cases=front_128x256 --frames=48

Cases: front / nuscenes6 rigs at 128x256, and the clip shapes of configs/maskgwm_{tiny,long,mview}
(tiny: T=4, V=2, 64x128; long: T=25, V=1, 288x512; mview: T=8, V=6, 256x448). Each case renders
clips of a fixed scene after one warm-up clip (compile), and reports
  render_fps  images per second of frames + depth (the ray caster and the host-side scene update)
  record_fps  images per second of full records (adds the layout image, drawn with PIL)
  clips_per_s full records per second at the clip shape.
  cpu_ms_per_image  process CPU time (all threads) per rendered image without layout: a measure
              of work that does not depend on how busy the machine is; 1000 / cpu_ms_per_image
              x cores is the throughput an idle machine can reach at best.
  load_avg    the 1-minute load average at the end of the case (a busy machine lowers the fps).
"""

import os
import resource
import time

# One XLA CPU device per core, so render_clip(devices=...) runs frames on all cores (round-robin
# over the CPU devices). Must happen before jax is first imported, just below.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={os.cpu_count()}").strip()

import jax  # noqa: E402

from wm_jax.data.synthetic import render, world  # noqa: E402

CASES = {
    # name: (rig, frames per clip, (H, W))
    "front_128x256": ("front", 12, (128, 256)),
    "nuscenes6_128x256": ("nuscenes6", 12, (128, 256)),
    "tiny": ("front2", 4, (64, 128)),
    "long": ("front", 25, (288, 512)),
    "mview": ("nuscenes6", 8, (256, 448)),
}


def add_arguments(parser):
  parser.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of "
                      + ", ".join(CASES))
  parser.add_argument("--frames", type=int, default=0,
                      help="frames per timed clip (default: the case's clip length, at least 24)")
  parser.add_argument("--repeats", type=int, default=3, help="timed clips; the best is reported")
  parser.add_argument("--domain", default="boston")


def _cpu_seconds():
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def _best_time(fn, repeats):
  """Best wall time and the CPU time of that same repeat."""
  best, best_cpu = float("inf"), 0.0
  for _ in range(repeats):
    t0, c0 = time.perf_counter(), _cpu_seconds()
    fn()
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    if wall < best:
      best, best_cpu = wall, cpu
  return best, best_cpu


def run(args):
  devices = jax.local_devices(backend="cpu")
  scene = world.make_scene(0, args.domain)
  for name in args.cases.split(","):
    if name not in CASES:
      raise ValueError(f"unknown case {name!r}; known: {sorted(CASES)}")
    rig, clip_frames, size = CASES[name]
    frames = args.frames or max(clip_frames, 24)
    print(f"[data_render] {name}: rig={rig} {frames} frames at {size[0]}x{size[1]} "
          f"(warm-up compiles)", flush=True)
    render.render_clip(scene, rig, num_frames=len(devices), image_size=size, devices=devices)
    views = len(render.rig_lib.RIGS[rig])
    t_render, cpu_render = _best_time(lambda: render.render_clip(scene, rig, num_frames=frames, image_size=size,
                                                     layout=False, devices=devices), args.repeats)
    t_record, _ = _best_time(lambda: render.render_clip(scene, rig, num_frames=frames,
                                                        image_size=size, devices=devices),
                             args.repeats)
    yield {"case": name, "rig": rig, "views": views, "height": size[0], "width": size[1],
           "frames": frames, "render_fps": round(frames * views / t_render, 1),
           "record_fps": round(frames * views / t_record, 1),
           "clip_frames": clip_frames,
           "clips_per_s": round(frames / clip_frames / t_record, 2),
           "cpu_ms_per_image": round(1000 * cpu_render / (frames * views), 2),
           "cores": os.cpu_count(), "load_avg": round(os.getloadavg()[0], 2)}
