"""Exact resume through the train loop in subprocesses (tests/train/toy_main.py): SIGKILL at a random step, resume, SIGTERM
(final save, exit 0), resume to the end == one straight run, bit for bit, with the same data order.
Also: an interrupted or damaged checkpoint write is skipped in favour of the last complete one."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_STEPS = 8


def _env(cache_dir):
  # One persistent compilation cache for the runs of a test: only the first run compiles.
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
             XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_COMPILATION_CACHE_DIR=cache_dir, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _start(workdir):
  cache = os.path.join(os.path.dirname(workdir), "jax_cache")
  return subprocess.Popen([sys.executable, "-m", "tests.train.toy_main",
                           f"--workdir={workdir}"], cwd=ROOT, env=_env(cache), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _run_until(proc, step, sig):
  """Reads output until '[train] step {step}/' then sends `sig`; returns (rc, output)."""
  out = []
  for line in proc.stdout:
    out.append(line)
    if line.startswith(f"[train] step {step}/"):
      proc.send_signal(sig)
      break
  rest, _ = proc.communicate(timeout=120)
  return proc.returncode, "".join(out) + rest


def _params(workdir, step):
  tree = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))
  return {k: np.asarray(v) for k, v in _flat(tree["params"])}


def _flat(tree, prefix=""):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _flat(v, f"{prefix}/{k}")
  else:
    yield prefix, tree


def _history(workdir):
  with open(os.path.join(workdir, "train_summary.json")) as f:
    return {h["step"]: (h["loss"], h["first_index"]) for h in json.load(f)["history"]}


def test_kill_resume_sigterm_is_exact(tmp_path):
  straight, broken = str(tmp_path / "straight"), str(tmp_path / "broken")
  proc = _start(straight)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, out
  # with a save every step, the save of step k-2 is complete once step k is logged (Orbax finishes
  # one async save before it starts the next), so a kill at k >= 3 always leaves one to resume from
  kill_at = random.Random().randint(3, 5)
  rc, out = _run_until(_start(broken), kill_at, signal.SIGKILL)
  assert rc == -signal.SIGKILL, f"kill at step {kill_at}: rc {rc}\n{out}"
  term_at = kill_at + 1
  rc, out = _run_until(_start(broken), term_at, signal.SIGTERM)
  assert rc == 0, f"SIGTERM at step {term_at} (after kill at {kill_at}) must exit 0:\n{out}"
  assert "[train] resumed from step" in out, out
  steps = sorted(int(s) for s in os.listdir(os.path.join(broken, "checkpoints")) if s.isdigit())
  assert steps[-1] >= term_at and steps[-1] < NUM_STEPS, (steps, out)
  # a write interrupted after the SIGTERM save: Orbax's tmp dir with junk must be ignored
  junk = os.path.join(broken, "checkpoints", f"{steps[-1] + 1}.orbax-checkpoint-tmp-123")
  os.makedirs(os.path.join(junk, "state"))
  proc = _start(broken)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, out
  assert f"[train] resumed from step {steps[-1]}" in out, out
  a, b = _params(straight, NUM_STEPS), _params(broken, NUM_STEPS)
  assert a.keys() == b.keys() and a
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=f"{key} (kill at {kill_at})")
  ha, hb = _history(straight), _history(broken)
  assert hb and all(ha[s] == hb[s] for s in hb), (kill_at, ha, hb)  # same data order and losses


def test_damaged_latest_step_is_skipped(tmp_path):
  from wm_jax.train import checkpoint as ckpt
  from tests.train import toy
  import jax
  c = toy.config()
  c.checkpoint.every_steps = 1
  c.checkpoint.async_save = False
  mgr = ckpt.make_manager(str(tmp_path), c.checkpoint)
  states = {s: {"w": np.full((4,), float(s), np.float32)} for s in (1, 2, 3)}
  for s, st in states.items():
    ckpt.save(mgr, s, st, {"pos": s}, c)
  mgr.wait_until_finished()
  mgr.close()
  # step 3: damaged (array data gone); step 4: interrupted (still a tmp dir)
  state_dir = tmp_path / "checkpoints" / "3" / "state"
  for name in os.listdir(state_dir):
    p = state_dir / name
    shutil.rmtree(p) if p.is_dir() else os.remove(p)
  os.makedirs(tmp_path / "checkpoints" / "4.orbax-checkpoint-tmp-99" / "state")
  mgr = ckpt.make_manager(str(tmp_path), c.checkpoint)
  abstract = {"w": jax.ShapeDtypeStruct((4,), np.float32,
                                        sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))}
  step, state, data, config = ckpt.restore_latest(mgr, abstract)
  assert step == 2 and data == {"pos": 2} and config["train"]["batch_size"] == c.train.batch_size
  np.testing.assert_array_equal(state["w"], states[2]["w"])


def test_keeps_last_n_plus_best(tmp_path):
  from wm_jax.train import checkpoint as ckpt
  from tests.train import toy
  c = toy.config()
  c.checkpoint.update(every_steps=1, keep=1, best_metric="loss", best_mode="min", keep_best=1,
                      async_save=False)
  mgr = ckpt.make_manager(str(tmp_path), c.checkpoint)
  for step, loss in zip((1, 2, 3, 4), (3.0, 1.0, 2.0, 4.0)):
    ckpt.save(mgr, step, {"w": np.zeros(2, np.float32)}, {}, c, metrics={"loss": loss})
  mgr.wait_until_finished()
  assert sorted(mgr.all_steps()) == [2, 4]  # the best (loss 1.0) and the last
  mgr.close()


def test_checkpoints_of_another_model_are_not_overwritten(tmp_path):
  from wm_jax.train import checkpoint as ckpt
  from tests.train import toy
  import jax
  c = toy.config()
  c.checkpoint.update(every_steps=1, async_save=False)
  mgr = ckpt.make_manager(str(tmp_path), c.checkpoint)
  ckpt.save(mgr, 1, {"w": np.zeros((4,), np.float32)}, {}, c)
  mgr.close()
  mgr = ckpt.make_manager(str(tmp_path), c.checkpoint)
  other = {"v": jax.ShapeDtypeStruct((3,), np.float32,
                                     sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))}
  with pytest.raises(ValueError, match="refusing to start fresh"):
    ckpt.restore_latest(mgr, other)
