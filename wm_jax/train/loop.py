"""The train loop: the run (train/run.py) -> state (restored or fresh, sharded) -> jitted step
-> CLU metrics / checkpoints / sample videos, until num_steps or SIGTERM.

    summary = train(config, workdir)

The model, loss and data are the config's (run.build); tests may pass their own model_factory,
loss_fn, make_iterator or prepare_batch. Every process runs the same loop (multi-host SPMD); only
process 0 writes TensorBoard and train_summary.json.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Callable

import jax

from wm_jax.parallel import mesh as mesh_lib
from wm_jax.train import checkpoint as ckpt_lib
from wm_jax.train import flops as flops_lib
from wm_jax.train import metrics as metrics_lib
from wm_jax.train import preview
from wm_jax.train import run as run_lib


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
  """Trains until config.train.num_steps (resuming from workdir). Returns a summary dict.

  make_iterator(config) -> iterator and prepare_batch(batch) -> batch replace the config's data
  and the VAE encoding of frames; sample_fn(model, step, writer) the sample videos."""
  tc = config.train
  os.makedirs(workdir, exist_ok=True)
  run = run_lib.build(config, model_factory_fn=model_factory, loss_fn=loss_fn)
  mesh = run.mesh
  log(f"[train] mesh {dict(mesh.shape)} over {jax.device_count()} {jax.devices()[0].platform} "
      f"devices, {jax.process_count()} process(es)")
  n_params = int(sum(x.size for x in jax.tree.leaves(run.abstract.params)))
  log(f"[train] {n_params / 1e6:.2f}M parameters")
  for path, shape, size in mesh_lib.replicated_large_params(run.abstract.params,
                                                            run.shardings.params):
    log(f"[train] WARNING: {path} {shape} ({size} elements) is replicated on every device")

  manager = ckpt_lib.make_manager(workdir, config.checkpoint)
  iterator = make_iterator(config) if make_iterator else run.iterator("train")
  restored = ckpt_lib.restore_latest(manager, run.abstract_state())
  if restored is not None:
    step0, state, data_state, _ = restored
    if data_state:
      iterator.set_state(data_state)
    else:  # a converted checkpoint (tools/convert_from_pytorch.py) has no data position
      log("[train] the checkpoint has no data iterator state: the data start from the beginning")
    log(f"[train] resumed from step {step0} in {ckpt_lib.directory(workdir)}")
  else:
    state = run.init_state()
    step0 = 0
    log("[train] fresh start")
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))

  prepare = prepare_batch or run_lib.latents_preparer(config)
  wants_samples = int(tc.sample_every) or tc.sample_at_end
  if sample_fn is None and wants_samples and config.vae.checkpoint:
    sample_fn = preview.make_sample_fn(run, workdir)
  writer = metrics_lib.create_writer(workdir)
  hooks = metrics_lib.progress_hooks(workdir, int(tc.num_steps), writer,
                                     every_steps=int(tc.log_every),
                                     profile_steps=int(tc.profile_steps))
  peak = flops_lib.peak_flops(override=float(tc.peak_flops))
  best_metric = bool(config.checkpoint.best_metric)
  step_flops = None
  history = []
  step = last_saved = step0
  last_metrics: dict = {}
  window = None  # metrics summed on device since the last log (no per-step host sync)
  t_log, steps_since_log = time.perf_counter(), 0
  with _Stop() as stop:
    while step < int(tc.num_steps) and not stop.requested:
      dev = run.device_batch(prepare(next(iterator)))
      if step_flops is None:
        step_flops = flops_lib.train_flops(flops_lib.loss_forward_flops(
            run.graphdef, state.params, state.rest, run.loss_fn, dev, config))
        log(f"[train] {step_flops / 1e9:.3f} GFLOPs per step (3x forward matmuls); compiling...")
      state, metrics = run.step_fn(state, dev)
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
                       metrics=_scalars(metrics) if best_metric else None):
        last_saved = step
        log(f"[train] checkpoint step {step} (async)")
      if manager.reached_preemption(step):
        stop.requested = True
      if sample_fn is not None and int(tc.sample_every) and step % int(tc.sample_every) == 0:
        sample_fn(run.model(state, use_ema=run.ema), step, writer)
    if step > last_saved:
      ckpt_lib.save(manager, step, state, iterator.get_state(), config,
                    metrics=_scalars(metrics) if best_metric else None, force=True)
      log(f"[train] final checkpoint step {step}")
    manager.wait_until_finished()
    stopped = stop.requested
  if sample_fn is not None and tc.sample_at_end and not stopped:
    sample_fn(run.model(state, use_ema=run.ema), step, writer)
  writer.flush()
  summary = {"step": step, "start_step": step0, "stopped_by_signal": stopped, "params": n_params,
             "flops_per_step": step_flops, "last": last_metrics, "history": history}
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "train_summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
  manager.close()
  return summary
