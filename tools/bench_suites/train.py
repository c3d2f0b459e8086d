"""Train-step throughput of a config on the present device(s): steps/s, tokens/s, model FLOP/s
and MFU, with and without mask reconstruction.

  python tools/bench.py train                                   # configs/bench.py, mask on and off
  python tools/bench.py train --config=configs/maskgwm_long.py --batch=1 --mask=both

One JSON line per mask setting; step_ms is the mean of the timed steps (each timed to its end),
step_ms_median and step_ms_min beside it. tokens/s counts the latent tokens of the full video (B*T*V*h*w/p^2)
whether or not some are masked out, so the masked and unmasked lines compare throughput on the same
data; flops_per_step is the analytic count (3x forward matmuls; masked-out tokens not counted) and
MFU = flops_per_step / step time / (peak per device * devices), shown where the peak is known
(wm_jax/train/flops.py PEAK_FLOPS; --peak_flops to set it, e.g. for a CPU). Where the device
reports its memory (GPU, TPU), a step that does not fit is refused after compiling, naming the
sizes, and peak_bytes_in_use is the process's peak so far (with --mask=both the masked line's
includes the unmasked run before it).
"""

from __future__ import annotations

import copy
import time


def add_arguments(parser):
  parser.add_argument("--config", default="configs/bench.py", help="config file (get_config)")
  parser.add_argument("--batch", type=int, default=0, help="global batch (0: the config's)")
  parser.add_argument("--mask", choices=["both", "on", "off"], default="both")
  parser.add_argument("--steps", type=int, default=5, help="timed steps (>= 1)")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
  parser.add_argument("--dtype", default="", help="override config.model.dtype (e.g. bfloat16)")
  parser.add_argument("--remat", default="", help="override config.model.remat_policy")
  parser.add_argument("--peak_flops", type=float, default=0.0, help="per-device peak FLOP/s for MFU")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="config override, e.g. --set train.mu_dtype=bfloat16 (repeatable)")


def load_config(path: str):
  from wm_jax import defaults
  return defaults.load_file(path)


def compiled_step(config):
  """(step() -> (state, metrics), compiled): one train step of `config` per call, compiled from
  abstract shapes, on random weights and a random batch, the state carried from call to call.
  step() does not wait for the device: the caller blocks on its outputs where it times."""
  from wm_jax.train import example_batch
  from wm_jax.train import run as run_lib
  s = run_lib.build(config)
  abstract_state, abstract_batch = s.abstract_inputs()
  compiled = s.step_fn.lower(abstract_state, abstract_batch).compile()
  holder = {"state": s.init_state()}
  batch = s.device_batch(example_batch.random(config))

  def step():
    holder["state"], metrics = compiled(holder["state"], batch)
    return holder["state"], metrics

  return step, compiled


def compiled_sample_step(config, cfg: float = 1.0):
  """(call(i) -> latents, compiled): one Euler step of the sampler (the model once, on the 2B
  batch of CFG when cfg is not 1) of `config` on random weights and a random batch, its first
  frame a reference frame, noise drawn from key i. call() does not wait for the device."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from wm_jax.diffusion import samplers
  from wm_jax.models import conditioning
  from wm_jax.train import example_batch
  from wm_jax.train import run as run_lib
  r = run_lib.build(config, training=False)
  model = r.model(r.init_state())
  batch = example_batch.random(config, int(config.train.batch_size))
  cond = conditioning.model_inputs(batch, config)
  latents = jnp.asarray(batch["latents"])
  ref = latents[:, :1]
  sigmas = jnp.asarray([1.0, 0.0], jnp.float32)
  graphdef, state = nnx.split(model)
  use_cfg = cfg != 1.0
  with jax.set_mesh(r.mesh):
    compiled = samplers._euler.lower(graphdef, state, latents, cond, ref, sigmas,
                                     jnp.float32(cfg), n_ref=1, use_cfg=use_cfg).compile()

  def call(i):   # the compiled executable itself, so a trace's op names are its HLO's
    noise = jax.random.normal(jax.random.key(i), latents.shape, latents.dtype)
    with jax.set_mesh(r.mesh):
      return compiled(state, noise, cond, ref, sigmas, jnp.float32(cfg))

  return call, compiled


def apply_overrides(config, items) -> None:
  """--set KEY=VALUE items (Python literals, else strings) onto the config, in order."""
  for item in items:
    _override(config, item)


def _override(config, item: str):
  import ast
  key, sep, text = item.partition("=")
  if not sep:
    raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. train.nan_guard=False")
  *parents, leaf = key.split(".")
  node = config
  for name in parents:
    if name not in node:
      raise ValueError(f"--set {item!r}: the config has no field {key!r}")
    node = node[name]
  if leaf not in node:
    raise ValueError(f"--set {item!r}: the config has no field {key!r}")
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    value = text
  node[leaf] = value


def run(args):
  import jax
  import numpy as np
  import wm_jax  # noqa: F401
  from wm_jax.train import example_batch, flops
  from wm_jax.train import run as run_lib

  if args.steps < 1 or args.warmup < 0:
    raise ValueError(f"--steps={args.steps} must be >= 1 and --warmup={args.warmup} >= 0")
  base = load_config(args.config)
  if args.batch:
    base.train.batch_size = args.batch
  if args.dtype:
    base.model.dtype = args.dtype
  if args.remat:
    base.model.remat_policy = args.remat
  apply_overrides(base, args.set)
  # unmasked first: it needs more memory, so a step that does not fit fails before the masked one
  settings = {"both": [False, True], "on": [True], "off": [False]}[args.mask]
  for masked in settings:
    config = copy.deepcopy(base)
    config.mask.enabled = masked
    s = run_lib.build(config)
    mesh = s.mesh
    # compile from abstract shapes first: a step that does not fit is refused before any allocation
    abstract_state, abstract_batch = s.abstract_inputs()
    step_flops = flops.train_flops(flops.loss_forward_flops(
        s.graphdef, s.abstract.params, s.abstract.rest, s.loss_fn, abstract_batch, config))
    t0 = time.perf_counter()
    compiled = s.step_fn.lower(abstract_state, abstract_batch).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    _check_fits(mem, config, masked)
    state = s.init_state()
    batch = s.device_batch(example_batch.random(config))
    for _ in range(args.warmup):
      state, metrics = compiled(state, batch)
    jax.block_until_ready(state)
    times = []
    for _ in range(args.steps):   # each step timed to its end: the median resists a noisy machine
      t0 = time.perf_counter()
      state, metrics = compiled(state, batch)
      jax.block_until_ready(state)
      times.append(time.perf_counter() - t0)
    dt = float(np.mean(times))
    m = config.model
    tokens = (config.train.batch_size * m.num_frames * m.num_views *
              (m.latent_height // m.patch_size) * (m.latent_width // m.patch_size))
    peak = flops.peak_flops(override=args.peak_flops)
    stats = jax.local_devices()[0].memory_stats() or {}
    yield {"config": args.config, "mask": masked, "mask_ratio": float(config.mask.ratio) if masked else 0.0,
           "batch": int(config.train.batch_size), "dtype": str(m.dtype),
           "remat": str(m.remat_policy), "mesh": dict(mesh.shape),
           "step_ms": round(dt * 1e3, 3), "step_ms_median": round(float(np.median(times)) * 1e3, 3),
           "step_ms_min": round(min(times) * 1e3, 3), "steps_per_s": round(1 / dt, 4),
           "tokens_per_s": round(tokens / dt, 1), "flops_per_step": step_flops,
           "model_tflops_per_s": round(step_flops / dt / 1e12, 4),
           "mfu": None if peak is None else round(flops.mfu(step_flops, dt, jax.device_count(), peak), 4),
           "compile_s": round(compile_s, 2), "loss": float(np.asarray(metrics["loss"])),
           "temp_bytes_per_device": getattr(mem, "temp_size_in_bytes", None),
           "peak_bytes_in_use": stats.get("peak_bytes_in_use"), "overrides": list(args.set)}
    del state, metrics, compiled, batch  # free the device before the next setting's state


def _check_fits(mem, config, masked) -> None:
  """Refuses to run a compiled step whose arguments + temporaries exceed one device's memory
  (where the device reports its limit, e.g. a GPU), naming the sizes, instead of failing later
  with an allocator error."""
  import jax
  limit = (jax.local_devices()[0].memory_stats() or {}).get("bytes_limit")
  if mem is None or not limit:
    return
  need = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
          + mem.temp_size_in_bytes)
  if need > limit:
    gib = lambda n: f"{n / 2**30:.1f} GiB"
    raise MemoryError(
        f"the train step of {config.model.remat_policy!r} remat, mask={masked}, needs "
        f"{gib(need)} per device (arguments {gib(mem.argument_size_in_bytes)}, temporaries "
        f"{gib(mem.temp_size_in_bytes)}) but the device has {gib(limit)}; try --remat=full, "
        f"--set train.mu_dtype=bfloat16 or more devices (config.mesh.fsdp)")
