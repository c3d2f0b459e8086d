"""The train loop: mesh -> validate -> state (restored or fresh, sharded) -> jitted step ->
CLU metrics / checkpoints, until num_steps or SIGTERM.

    summary = train(config, workdir)

Components are chosen by the config and built by the default factories below; tests and tools may
pass their own (model_factory, loss_fn, make_iterator, prepare_batch). Every process runs the same
loop (multi-host SPMD); only process 0 writes TensorBoard.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from wm_jax.parallel import mesh as mesh_lib
from wm_jax.train import checkpoint as ckpt_lib
from wm_jax.train import config as train_config
from wm_jax.train import flops as flops_lib
from wm_jax.train import metrics as metrics_lib
from wm_jax.train import optim
from wm_jax.train import state as state_lib
from wm_jax.train import step as step_lib


# ---------------------------------------------------------------------------------------------
# Default components (other helpers' modules, imported when used)


def default_model_factory(config) -> Callable[[], Any]:
  from flax import nnx
  from wm_jax.models.ctsd_dit import CTSDDiT
  seed = int(config.train.seed)
  return lambda: CTSDDiT(config.model, config.get("mask"), rngs=nnx.Rngs(seed))


def default_loss_fn():
  from wm_jax.diffusion.losses import loss_fn
  return loss_fn


def default_make_iterator(config, split: str = "train"):
  from wm_jax.data import grain_pipeline
  per_process = int(config.train.batch_size) // jax.process_count()
  return grain_pipeline.make_iterator(config.data, batch_size=per_process, seed=int(config.train.seed),
                                      process_index=jax.process_index(),
                                      process_count=jax.process_count(), split=split)


def default_prepare_batch(config) -> Callable[[dict], dict]:
  """Batches without 'latents' get them from the VAE (frames -> scaled latents), jitted once."""
  encoder = {}

  def prepare(batch: dict) -> dict:
    if "latents" in batch or "frames" not in batch:
      return batch
    if "fn" not in encoder:
      encoder["fn"] = make_latent_encoder(config)
    batch = dict(batch)
    batch["latents"] = np.asarray(encoder["fn"](batch["frames"]))
    return batch

  return prepare


def load_vae(config):
  """The AutoencoderKL of config.vae with its parameters restored from config.vae.checkpoint."""
  from flax import nnx
  from wm_jax.models import vae as vae_lib
  path = config.vae.get("checkpoint", "") if "vae" in config else ""
  if not path:
    raise ValueError("batches have frames but no latents, and config.vae.checkpoint is empty: "
                     "set it (diffusers safetensors, or an Orbax params dir from tools/demo.sh) or "
                     "cache latents first (tools/cache_latents.py)")
  if os.path.exists(os.path.join(path, "_CHECKPOINT_METADATA")):  # Orbax params (save_module)
    # built abstractly (no random init) unless it holds state the checkpoint does not carry
    factory = lambda: vae_lib.AutoencoderKL(config.vae, rngs=nnx.Rngs(0))
    abstract = nnx.eval_shape(factory)
    _, _, rest = nnx.split(abstract, nnx.Param, ...)
    return restore_module(factory() if jax.tree.leaves(rest) else abstract, path)
  return vae_lib.from_pretrained(path, config.vae)


def restore_module(module, path: str):
  """Params of an nnx module restored from an Orbax StandardSave at `path` (saved by save_module)."""
  import orbax.checkpoint as ocp
  from flax import nnx
  graphdef, params, rest = nnx.split(module, nnx.Param, ...)
  restored = ocp.StandardCheckpointer().restore(os.path.abspath(path), params)
  return nnx.merge(graphdef, restored, rest)


def save_module(module, path: str) -> None:
  import orbax.checkpoint as ocp
  from flax import nnx
  _, params, _ = nnx.split(module, nnx.Param, ...)
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(os.path.abspath(path), params, force=True)
  ckptr.wait_until_finished()


def make_latent_encoder(config):
  from flax import nnx
  from wm_jax.models import vae as vae_lib
  graphdef, state = nnx.split(load_vae(config))

  @jax.jit
  def encode(state, frames):
    return vae_lib.encode_frames(nnx.merge(graphdef, state), frames)

  return lambda frames: encode(state, frames)


# ---------------------------------------------------------------------------------------------


class Setup(NamedTuple):
  tx: Any
  graphdef: Any
  abstract: Any          # TrainState of ShapeDtypeStructs
  param_shardings: Any
  shardings: Any         # TrainState of NamedShardings
  step_fn: Any           # step.make_train_step(...)
  factory: Callable
  loss_fn: Callable
  ema: bool


def setup(config, mesh, *, model_factory=None, loss_fn=None, donate: bool = True) -> Setup:
  """Optimizer, abstract state, shardings and the jitted step for `config` on `mesh` (no arrays
  are allocated: also used by the benchmark and ahead-of-time compilation)."""
  tx = optim.make_optimizer(config.train)
  factory = model_factory or default_model_factory(config)
  loss_fn = loss_fn or default_loss_fn()
  ema = float(config.train.get("ema_decay", 0.0)) > 0
  graphdef, abstract = state_lib.abstract(factory, tx, ema)
  param_sh = mesh_lib.state_shardings(abstract.params, mesh)
  shardings = mesh_lib.matching_shardings(abstract, abstract.params, param_sh, mesh)
  step_fn = step_lib.make_train_step(graphdef, loss_fn, tx, config, mesh, shardings, donate=donate)
  return Setup(tx, graphdef, abstract, param_sh, shardings, step_fn, factory, loss_fn, ema)


def abstract_inputs(s: Setup, config, mesh):
  """(state, batch) of ShapeDtypeStructs with their shardings: what `s.step_fn.lower` takes to
  compile the step without allocating anything (benchmarks, AOT compilation, FLOP tests)."""
  from wm_jax.train import example_batch
  state = jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                       s.abstract, s.shardings)
  return state, example_batch.abstract(config, sharding=step_lib.batch_sharding(mesh))


class _Stop:
  """SIGTERM (the TPU preemption notice) sets a flag; the loop saves and exits cleanly."""

  def __init__(self):
    self.requested = False
    self._old = None

  def __enter__(self):
    def handler(signum, frame):
      print(f"[train] signal {signum}: saving a checkpoint and stopping", flush=True)
      self.requested = True
    try:
      self._old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
      self._old = None
    return self

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


def _scalars(metrics: dict) -> dict:
  return {k: float(v) for k, v in jax.device_get(metrics).items()}


def train(config, workdir: str, *, model_factory=None, loss_fn=None, make_iterator=None,
          prepare_batch=None, sample_fn=None, log: Callable[[str], None] = print) -> dict:
  """Trains until config.train.num_steps (resuming from workdir). Returns a summary dict."""
  config = train_config.fill(config)
  tc = config.train
  os.makedirs(workdir, exist_ok=True)
  mesh = mesh_lib.make_mesh(config.mesh)
  sizes = mesh_lib.validate(config, mesh)
  log(f"[train] mesh {sizes} over {jax.device_count()} {jax.devices()[0].platform} devices, "
      f"{jax.process_count()} process(es)")

  s = setup(config, mesh, model_factory=model_factory, loss_fn=loss_fn)
  tx, factory, ema, graphdef, abstract = s.tx, s.factory, s.ema, s.graphdef, s.abstract
  param_sh, shardings, step_fn, loss_fn = s.param_shardings, s.shardings, s.step_fn, s.loss_fn
  n_params = int(sum(x.size for x in jax.tree.leaves(abstract.params)))
  log(f"[train] {n_params / 1e6:.2f}M parameters")
  for path, shape, size in mesh_lib.replicated_large_params(abstract.params, param_sh):
    log(f"[train] WARNING: {path} {shape} ({size} elements) is replicated on every device")

  manager = ckpt_lib.make_manager(workdir, config.checkpoint)
  iterator = (make_iterator or default_make_iterator)(config)
  restored = ckpt_lib.restore_latest(manager, ckpt_lib.abstract_with_shardings(abstract, shardings))
  if restored is not None:
    step0, state, data_state, _ = restored
    iterator.set_state(data_state)
    log(f"[train] resumed from step {step0} in {ckpt_lib.directory(workdir)}")
  else:
    _, state = state_lib.create(factory, tx, ema, shardings)
    step0 = 0
    log("[train] fresh start")
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))

  prepare = prepare_batch or default_prepare_batch(config)
  wants_samples = int(tc.get("sample_every", 0)) or tc.get("sample_at_end", False)
  if sample_fn is None and wants_samples and "vae" in config and config.vae.get("checkpoint"):
    from wm_jax.train import sample as sample_lib
    sample_fn = sample_lib.make_sample_fn(config, graphdef, workdir)
  writer = metrics_lib.create_writer(workdir)
  hooks = metrics_lib.progress_hooks(workdir, int(tc.num_steps), writer,
                                     every_steps=int(tc.log_every), profile_steps=int(tc.get("profile_steps", 0)))
  peak = flops_lib.peak_flops(override=float(tc.get("peak_flops", 0.0)))
  step_flops = None
  history = []
  step = last_saved = step0
  last_metrics: dict = {}
  window = None  # metrics summed on device since the last log (no per-step host sync)
  t_log, steps_since_log = time.perf_counter(), 0
  with _Stop() as stop:
    while step < int(tc.num_steps) and not stop.requested:
      batch = prepare(next(iterator))
      dev = step_lib.device_batch(batch, mesh)
      if step_flops is None:
        step_flops = flops_lib.train_flops(flops_lib.loss_forward_flops(
            graphdef, state.params, state.rest, loss_fn, dev, config))
        log(f"[train] {step_flops / 1e9:.3f} GFLOPs per step (3x forward matmuls); compiling...")
      state, metrics = step_fn(state, dev)
      window = metrics if window is None else jax.tree.map(lambda a, b: a + b, window, metrics)
      step += 1
      steps_since_log += 1
      for hook in hooks:
        hook(step)
      if step % int(tc.log_every) == 0 or step == int(tc.num_steps):
        scalars = _scalars(metrics)
        scalars["loss_mean"] = _scalars(window)["loss"] / steps_since_log
        window = None
        dt = (time.perf_counter() - t_log) / steps_since_log
        scalars["step_seconds"] = dt
        scalars["model_tflops_per_s"] = step_flops / dt / 1e12
        u = flops_lib.mfu(step_flops, dt, jax.device_count(), peak)
        if u is not None:
          scalars["mfu"] = u
        writer.write_scalars(step, scalars)
        history.append({"step": step, **scalars})
        last_metrics = scalars
        log(f"[train] step {step}/{tc.num_steps} loss {scalars['loss']:.4f} "
            f"(mean {scalars['loss_mean']:.4f}) "
            f"grad_norm {scalars['grad_norm']:.3f} lr {scalars['learning_rate']:.2e} "
            f"{dt:.2f}s/step skipped {int(scalars['skipped_steps'])}")
        t_log, steps_since_log = time.perf_counter(), 0
      if ckpt_lib.save(manager, step, state, iterator.get_state(), config,
                       metrics=_scalars(metrics) if config.checkpoint.get("best_metric") else None):
        last_saved = step
        log(f"[train] checkpoint step {step} (async)")
      if manager.reached_preemption(step):
        stop.requested = True
      if sample_fn is not None and int(tc.get("sample_every", 0)) and step % int(tc.sample_every) == 0:
        sample_fn(state, step, writer)
    if step > last_saved:
      ckpt_lib.save(manager, step, state, iterator.get_state(), config,
                    metrics=_scalars(metrics) if config.checkpoint.get("best_metric") else None, force=True)
      log(f"[train] final checkpoint step {step}")
    manager.wait_until_finished()
    stopped = stop.requested
  if sample_fn is not None and tc.get("sample_at_end", False) and not stopped:
    sample_fn(state, step, writer)
  writer.flush()
  summary = {"step": step, "start_step": step0, "stopped_by_signal": stopped, "params": n_params,
             "flops_per_step": step_flops, "last": last_metrics, "history": history}
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "train_summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
  manager.close()
  return summary
