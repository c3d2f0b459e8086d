"""The train loop: the run (train/run.py) -> state (restored or fresh, sharded) -> jitted step
-> CLU metrics / checkpoints / sample videos, until num_steps, SIGTERM or Ctrl-C.

    summary = train(config, workdir)

The model, loss and data are the config's (run.build); tests may pass their own model_factory,
loss_fn, make_iterator or prepare_batch. Every process runs the same loop (multi-host SPMD); only
process 0 writes TensorBoard and train_summary.json and holds the workdir lock.

What every exit keeps: SIGTERM (the TPU preemption notice) and a first Ctrl-C save the current
step and return; an exception, a second Ctrl-C or a run whose loss stays non-finite waits for the
checkpoint being written before it propagates. Steps that a restore skipped as damaged are moved
to WORKDIR/damaged_checkpoints/ so the run can write them again.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Callable

import jax
import jax.numpy as jnp

from wm_jax.parallel import mesh as mesh_lib
from wm_jax.train import checkpoint as ckpt_lib
from wm_jax.train import flops as flops_lib
from wm_jax.train import metrics as metrics_lib
from wm_jax.train import preview
from wm_jax.train import run as run_lib
from wm_jax.train import workdir_lock

SUMMARY = "train_summary.json"


class NonFiniteLoss(RuntimeError):
  """The loss or the gradients stayed NaN/Inf for train.max_nonfinite_steps steps."""


class _Stop:
  """SIGTERM and the first Ctrl-C set a flag (the loop saves and returns); a second Ctrl-C raises
  KeyboardInterrupt as usual."""

  def __init__(self):
    self.requested = False
    self._old = {}

  def __enter__(self):
    def handler(signum, frame):
      if self.requested and signum == signal.SIGINT:
        raise KeyboardInterrupt
      name = signal.Signals(signum).name
      print(f"[train] {name}: saving a checkpoint and stopping"
            + (" (Ctrl-C again to stop without it)" if signum == signal.SIGINT else ""), flush=True)
      self.requested = True
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._old[sig] = signal.signal(sig, handler)
      except ValueError:  # not the main thread
        pass
    return self

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


def _scalars(metrics: dict) -> dict:
  return {k: float(v) for k, v in jax.device_get(metrics).items()}


@jax.jit
def _nonfinite_streak(streak, metrics):
  """Consecutive steps (up to this one) whose loss or gradient norm is not finite."""
  finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
  return jnp.where(finite, 0, streak + 1)


def _flat(tree: dict, prefix: str = "") -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict) and value:
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def config_changes(saved: dict, config) -> list[str]:
  """'key: saved -> now' for every value of `config` that differs from the checkpoint's config."""
  old, new = _flat(saved), _flat(json.loads(config.to_json_best_effort()))
  return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
          if old.get(k) != new.get(k)]


def _earlier_summary(workdir: str, step0: int) -> tuple[list, list]:
  """(history, runs) of train_summary.json up to step0 (the step this run resumes from)."""
  path = os.path.join(workdir, SUMMARY)
  if not os.path.exists(path):
    return [], []
  try:
    with open(path) as f:
      old = json.load(f)
  except (OSError, ValueError) as e:
    print(f"[train] WARNING: {path} does not read ({e}); its history is not carried over",
          flush=True)
    return [], []
  history = [h for h in old.get("history", []) if h.get("step", 0) <= step0]
  return history, old.get("runs", [])


def train(config, workdir: str, *, model_factory=None, loss_fn=None, make_iterator=None,
          prepare_batch=None, sample_fn=None, log: Callable[[str], None] = print) -> dict:
  """Trains until config.train.num_steps (resuming from workdir). Returns a summary dict.

  make_iterator(config) -> iterator and prepare_batch(batch) -> batch replace the config's data
  and the VAE encoding of frames; sample_fn(model, step, writer) the sample videos."""
  with workdir_lock.hold(workdir):
    return _train(config, workdir, model_factory=model_factory, loss_fn=loss_fn,
                  make_iterator=make_iterator, prepare_batch=prepare_batch, sample_fn=sample_fn,
                  log=log)


def _train(config, workdir, *, model_factory, loss_fn, make_iterator, prepare_batch, sample_fn,
           log):
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
  try:
    return _loop(config, workdir, run, manager, make_iterator=make_iterator,
                 prepare_batch=prepare_batch, sample_fn=sample_fn, n_params=n_params, log=log)
  finally:
    manager.close()


def _loop(config, workdir, run, manager, *, make_iterator, prepare_batch, sample_fn, n_params,
          log):
  tc = config.train
  num_steps = int(tc.num_steps)
  iterator = make_iterator(config) if make_iterator else run.iterator("train")
  restored = ckpt_lib.restore_latest(manager, run.abstract_state())
  if restored is not None:
    step0, state, data_state, saved = restored
    ckpt_lib.set_aside_newer(manager, step0, workdir)
    if data_state:
      iterator.set_state(data_state)
    else:  # a converted checkpoint (tools/convert_from_pytorch.py) has no data position
      log("[train] the checkpoint has no data iterator state: the data start from the beginning")
    log(f"[train] resumed from step {step0} in {ckpt_lib.directory(workdir)}")
    changes = config_changes(saved, config)
    if changes:
      log(f"[train] WARNING: this config differs from the one saved with step {step0}, and the "
          f"run continues with it: " + "; ".join(changes))
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
  hooks = metrics_lib.progress_hooks(workdir, num_steps, writer, every_steps=int(tc.log_every),
                                     profile_steps=int(tc.profile_steps))
  peak = flops_lib.peak_flops(override=float(tc.peak_flops))
  best_metric = bool(config.checkpoint.best_metric)
  max_nonfinite = int(tc.max_nonfinite_steps)
  history, runs = _earlier_summary(workdir, step0)
  step_flops = None
  new_history = []
  step = last_saved = step0
  last_metrics: dict = {}
  metrics = None
  streak = jnp.zeros((), jnp.int32)
  window = None  # metrics summed on device since the last log (no per-step host sync)
  t_log, steps_since_log = time.perf_counter(), 0
  stopped = False

  def save(force: bool) -> bool:
    nonlocal last_saved
    if not (force or manager.should_save(step)):
      return False
    bad = int(streak)
    if bad:
      log(f"[train] not saving step {step}: the last {bad} step(s) had a non-finite loss or "
          f"gradient; the checkpoints on disk stay the newest good ones")
      return False
    if ckpt_lib.save(manager, step, state, iterator.get_state(), config, force=True,
                     metrics=_scalars(metrics) if best_metric else None):
      last_saved = step
      return True
    return False

  def check_streak():
    bad = int(streak)
    if max_nonfinite and bad >= max_nonfinite:
      good = [s for s in manager.all_steps() if s <= step - bad]
      raise NonFiniteLoss(
          f"the loss or the gradient norm was NaN/Inf for the last {bad} steps (steps "
          f"{step - bad + 1}-{step}; train.max_nonfinite_steps={max_nonfinite}): the run cannot "
          f"learn from here. Its newest checkpoint from before that is step "
          f"{max(good) if good else None} in {ckpt_lib.directory(workdir)}. Usual causes: a "
          f"learning rate too high, bad input data, or damaged weights restored.")

  try:
    with _Stop() as stop:
      while step < num_steps and not stop.requested:
        dev = run.device_batch(prepare(next(iterator)))
        if step_flops is None:
          step_flops = flops_lib.train_flops(flops_lib.loss_forward_flops(
              run.graphdef, state.params, state.rest, run.loss_fn, dev, config))
          log(f"[train] {step_flops / 1e9:.3f} GFLOPs per step (3x forward matmuls); "
              f"compiling...")
        state, metrics = run.step_fn(state, dev)
        streak = _nonfinite_streak(streak, metrics)
        window = metrics if window is None else jax.tree.map(lambda a, b: a + b, window, metrics)
        step += 1
        steps_since_log += 1
        for hook in hooks:
          hook(step)
        if step % int(tc.log_every) == 0 or step == num_steps:
          scalars = _scalars(metrics)
          scalars["loss_mean"] = _scalars(window)["loss"] / steps_since_log
          window = None
          dt = (time.perf_counter() - t_log) / steps_since_log
          scalars["step_seconds"] = dt
          scalars["model_tflops_per_s"] = step_flops / dt / 1e12
          u = flops_lib.mfu(step_flops, dt, jax.device_count(), peak)
          if u is not None:
            scalars["mfu"] = u
          bad_records = getattr(iterator, "bad_records", None)
          if bad_records is not None:
            scalars["bad_records"] = float(bad_records)
          drawn = getattr(iterator, "source_counts", None) or {}  # a data mixture's, per entry
          scalars.update({f"records/{name}": float(n) for name, n in drawn.items()})
          writer.write_scalars(step, scalars)
          new_history.append({"step": step, **scalars})
          last_metrics = scalars
          log(f"[train] step {step}/{num_steps} loss {scalars['loss']:.4f} "
              f"(mean {scalars['loss_mean']:.4f}) "
              f"grad_norm {scalars['grad_norm']:.3f} lr {scalars['learning_rate']:.2e} "
              f"{dt:.2f}s/step skipped {int(scalars['skipped_steps'])}"
              + (f" bad records {bad_records}" if bad_records else "")
              + "".join(f" records {name} {n}" for name, n in drawn.items()))
          t_log, steps_since_log = time.perf_counter(), 0
          check_streak()
        if save(force=False):
          log(f"[train] checkpoint step {step} (async)")
        if manager.reached_preemption(step):
          stop.requested = True
        if sample_fn is not None and int(tc.sample_every) and step % int(tc.sample_every) == 0:
          sample_fn(run.model(state, use_ema=run.ema), step, writer)
      check_streak()
      if step > last_saved and save(force=True):
        log(f"[train] final checkpoint step {step}")
      ckpt_lib.wait(manager)
      stopped = stop.requested
  except BaseException as error:
    log(f"[train] stopping on {type(error).__name__} at step {step}; waiting for the checkpoint "
        f"being written")
    try:
      ckpt_lib.wait(manager)
    except Exception as second:  # the original error is the one to report
      log(f"[train] the pending checkpoint did not complete either: {second}")
    writer.flush()
    _write_summary(workdir, history + new_history, runs, step0, step, False, n_params,
                   step_flops, last_metrics, error=f"{type(error).__name__}: {error}")
    raise
  if sample_fn is not None and tc.sample_at_end and not stopped:
    sample_fn(run.model(state, use_ema=run.ema), step, writer)
  writer.flush()
  return _write_summary(workdir, history + new_history, runs, step0, step, stopped, n_params,
                        step_flops, last_metrics)


def _write_summary(workdir, history, runs, step0, step, stopped, n_params, step_flops,
                   last_metrics, error=None) -> dict:
  """train_summary.json: this run's figures, the history of every run on this workdir up to
  `step`, and one entry per run (start and end step, how it ended)."""
  run = {"start_step": step0, "end_step": step, "stopped_by_signal": stopped,
         "ended": time.strftime("%Y-%m-%d %H:%M:%S")}
  if error:
    run["error"] = error[:500]
  summary = {"step": step, "start_step": step0, "stopped_by_signal": stopped, "params": n_params,
             "flops_per_step": step_flops, "last": last_metrics, "history": history,
             "runs": runs + [run]}
  if jax.process_index() == 0:
    path = os.path.join(workdir, SUMMARY)
    with open(path + ".tmp", "w") as f:
      json.dump(summary, f, indent=2)
    os.replace(path + ".tmp", path)
  return summary
