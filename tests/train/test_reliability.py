"""What a run keeps when things go wrong: a damaged newest step is set aside and rewritten, every
exit waits for the pending save, overwritten bytes are caught by the fingerprints, a run that
cannot learn stops, the workdir has one writer, values that cannot work are refused, a full disk
is named, and train_summary.json keeps the history of every run on a workdir."""

import errno
import glob
import json
import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.train import toy
from tests.train.test_resume import _env, _run_until
from wm_jax import defaults
from wm_jax.train import checkpoint as ckpt_lib
from wm_jax.train import loop
from wm_jax.train import run as run_lib
from wm_jax.train import workdir_lock

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(num_steps=6, every=3, **train):
  c = toy.config(batch_size=8, num_steps=num_steps, log_every=1, warmup_steps=1, **train)
  c.checkpoint.update(every_steps=every, keep=5)
  return c


def _train(c, workdir, logs=None, **kw):
  return loop.train(c, str(workdir), model_factory=toy.make_model(c), loss_fn=toy.make_loss(c),
                    make_iterator=toy.make_iterator,
                    log=(logs.append if logs is not None else print), **kw)


def _params(workdir, step):
  tree = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))
  return jax.tree_util.tree_flatten_with_path(tree["params"])[0]


def _biggest_data_file(workdir, step):
  """The largest array data file a restore reads (the merged OCDBT store; the per-process
  ocdbt.process_*/ folders are what it was merged from, and are not read)."""
  files = glob.glob(os.path.join(workdir, "checkpoints", str(step), "state", "d", "*"))
  return max(files, key=os.path.getsize)


def _steps(workdir):
  return sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())


def test_damaged_newest_step_is_set_aside_and_the_rerun_reaches_the_end(tmp_path):
  straight, broken = str(tmp_path / "straight"), str(tmp_path / "broken")
  _train(_config(), straight)
  _train(_config(), broken)
  with open(_biggest_data_file(broken, 6), "r+b") as f:
    f.truncate(os.path.getsize(f.name) // 2)
  logs = []
  summary = _train(_config(), broken, logs)
  text = "\n".join(logs)
  assert summary["start_step"] == 3 and summary["step"] == 6, text
  assert os.path.isdir(os.path.join(broken, "damaged_checkpoints", "6"))  # kept, not deleted
  assert _steps(broken) == [1, 3, 6]
  for (path, a), (_, b) in zip(_params(straight, 6), _params(broken, 6)):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


def test_overwritten_bytes_are_caught_and_the_older_step_restores(tmp_path):
  c = _config()
  _train(c, tmp_path)
  path = _biggest_data_file(str(tmp_path), 6)
  with open(path, "r+b") as f:  # bit rot: same size, 64 bytes changed in the middle
    f.seek(os.path.getsize(path) // 2)
    f.write(bytes(range(7, 71)))
  run = run_lib.build(c, model_factory_fn=toy.make_model(c), loss_fn=toy.make_loss(c))
  manager = ckpt_lib.make_manager(str(tmp_path), c.checkpoint)
  step, *_ = ckpt_lib.restore_latest(manager, run.abstract_state())
  manager.close()
  assert step == 3
  step, _, _ = run.restore_weights(str(tmp_path), params="params")  # what evaluate / convert use
  assert step == 3


def test_restore_for_evaluate_and_convert_falls_back_past_a_damaged_step(tmp_path):
  c = toy.config()
  c.model.update(num_layers=1, num_heads=2, head_dim=16, temporal_block_layers=(),
                 crossview_block_layers=(), dual_attention_layers=())
  c.model.layout_adapter = None
  run = run_lib.build(c, donate=False, training=False)
  state = run.init_state()
  manager = ckpt_lib.make_manager(str(tmp_path), c.checkpoint)
  for step in (1, 2):
    ckpt_lib.save(manager, step, state, {}, c, force=True)
    ckpt_lib.wait(manager)
  manager.close()
  os.remove(_biggest_data_file(str(tmp_path), 2))
  _, model, info = run_lib.restore(str(tmp_path), params="params")
  assert info["step"] == 1


def test_an_exception_in_the_loop_waits_for_the_checkpoint_being_written(tmp_path):
  c = _config(num_steps=20)

  def failing_iterator(config):
    it = toy.make_iterator(config)

    class Failing:
      n = 0

      def __next__(self):
        self.n += 1
        if self.n == 7:  # right after the async save of step 6 started
          raise OSError("image 123.jpg: no such file")
        return next(it)

      def get_state(self):
        return it.get_state()

      def set_state(self, s):
        it.set_state(s)

    return Failing()

  with pytest.raises(OSError, match="123.jpg"):
    loop.train(c, str(tmp_path), model_factory=toy.make_model(c), loss_fn=toy.make_loss(c),
               make_iterator=failing_iterator)
  names = os.listdir(tmp_path / "checkpoints")
  assert "6" in names and not [n for n in names if "tmp" in n], names
  assert not os.path.exists(tmp_path / "lock")  # released on the error path
  summary = json.load(open(tmp_path / "train_summary.json"))
  assert "123.jpg" in summary["runs"][-1]["error"]


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
  c = _config(num_steps=30, every=2, max_nonfinite_steps=4)
  calls = []

  def poison_after_5(batch):
    calls.append(1)
    if len(calls) > 5:
      batch = {**batch, "latents": batch["latents"] * np.nan}
    return batch

  with pytest.raises(loop.NonFiniteLoss, match=r"last 4 steps \(steps 6-9"):
    _train(c, tmp_path, prepare_batch=poison_after_5)
  assert _steps(str(tmp_path)) == [1, 2, 4]  # nothing saved once the loss went NaN
  for _, value in _params(str(tmp_path), 4):
    assert np.all(np.isfinite(value))


def test_stale_lock_is_taken_over_and_a_live_one_refuses(tmp_path):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  lock = tmp_path / "lock"
  lock.write_text(json.dumps({"host": os.uname().nodename, "pid": dead.pid, "started": "then"}))
  with workdir_lock.hold(str(tmp_path)):
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    with workdir_lock.hold(str(tmp_path)):  # re-entrant in one process
      pass
    assert lock.exists()
  assert not lock.exists()
  lock.write_text(json.dumps({"host": "node-7", "pid": 1, "started": "then"}))
  with pytest.raises(workdir_lock.WorkdirLocked, match=r"pid 1 on host node-7.*delete"):
    workdir_lock.acquire(str(tmp_path))


def test_second_run_on_a_workdir_refuses_and_ctrl_c_saves(tmp_path):
  workdir = str(tmp_path / "run")
  proc = subprocess.Popen([sys.executable, "-m", "tests.train.toy_main", f"--workdir={workdir}"],
                          cwd=ROOT, env=_env(str(tmp_path / "jax_cache")), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  first = []
  for line in proc.stdout:
    first.append(line)
    if line.startswith("[train] step 2/"):
      break
  try:
    with pytest.raises(workdir_lock.WorkdirLocked, match=f"in use by pid {proc.pid} on this host"):
      _train(_config(), workdir)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
  finally:
    proc.kill()
  out = "".join(first) + out
  assert proc.returncode == 0, out
  assert "SIGINT: saving a checkpoint and stopping" in out, out
  last = _steps(workdir)[-1]
  assert f"[train] step {last}/" in out and not os.path.exists(os.path.join(workdir, "lock"))


def test_resume_warns_about_changed_settings_and_the_summary_keeps_every_run(tmp_path):
  _train(_config(num_steps=3), tmp_path)
  c = _config(num_steps=5)
  c.train.learning_rate = 2e-4
  c.train.seed = 1
  logs = []
  summary = _train(c, tmp_path, logs)
  warning = [line for line in logs if "differs from the one saved with step 3" in line]
  assert warning and "train.learning_rate: 0.0001 -> 0.0002" in warning[0], logs
  assert "train.seed: 0 -> 1" in warning[0] and "train.num_steps: 3 -> 5" in warning[0]
  saved = json.load(open(tmp_path / "train_summary.json"))
  assert [h["step"] for h in saved["history"]] == [1, 2, 3, 4, 5] == \
      [h["step"] for h in summary["history"]]
  assert [(r["start_step"], r["end_step"]) for r in saved["runs"]] == [(0, 3), (3, 5)]


@pytest.mark.parametrize("key,value", [("checkpoint.every_steps", 0), ("train.log_every", 0),
                                       ("train.learning_rate", -1e-4), ("train.ema_decay", 1.0),
                                       ("checkpoint.best_mode", "lowest")])
def test_values_that_cannot_work_are_refused_before_building(key, value):
  c = toy.config()
  section, field = key.split(".")
  c[section][field] = value
  with pytest.raises(ValueError, match=rf"{key}={value!r} \(must be"):
    run_lib.build(c, model_factory_fn=toy.make_model(c), loss_fn=toy.loss_fn)
  defaults.check(toy.config())  # the defaults themselves pass


def test_full_disk_is_refused_before_writing_and_named(tmp_path, monkeypatch):
  c = _config()
  manager = ckpt_lib.make_manager(str(tmp_path), c.checkpoint)
  state = {"w": np.zeros((1 << 20,), np.float32)}
  monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1 << 40, 1 << 40, 1 << 20))
  with pytest.raises(OSError, match=r"not enough disk space for checkpoint step 3 in .*needs about "
                                    r"20 MiB, 1 MiB are free") as e:
    ckpt_lib.save(manager, 3, state, {}, c)
  assert e.value.errno == errno.ENOSPC
  assert manager.all_steps() == [] and os.listdir(tmp_path / "checkpoints") == []
  monkeypatch.undo()

  def orbax_like_failure(*a, **k):
    try:
      raise OSError(errno.ENOSPC, "No space left on device")
    except OSError as inner:
      raise RuntimeError("tensorstore write failed") from inner

  monkeypatch.setattr(manager, "save", orbax_like_failure)
  with pytest.raises(OSError, match=r"no space left on the device of .*checkpoint step 3"):
    ckpt_lib.save(manager, 3, state, {}, c)
  manager.close()


def test_saving_an_existing_step_is_an_error_not_a_silent_skip(tmp_path):
  c = _config()
  manager = ckpt_lib.make_manager(str(tmp_path), c.checkpoint)
  ckpt_lib.save(manager, 3, {"w": np.zeros(4, np.float32)}, {}, c)
  ckpt_lib.wait(manager)
  with pytest.raises(ValueError, match="step 3 already exists"):
    ckpt_lib.save(manager, 3, {"w": np.ones(4, np.float32)}, {}, c, force=True)
  manager.close()
