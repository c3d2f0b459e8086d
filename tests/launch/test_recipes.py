"""The launch recipes run against fake `gcloud` / `xpk` / `docker` commands that record their
arguments: the commands a real cloud would receive, checked without one."""

import json
import os
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def fake_cli(tmp_path):
  """PATH with fake gcloud, xpk and docker; each appends its argv (one JSON list a line)."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  log = tmp_path / "calls.txt"
  for name in ("gcloud", "xpk", "docker"):
    script = bin_dir / name
    script.write_text(f"#!{sys.executable}\nimport json, sys\n"
                      f"open({str(log)!r}, 'a').write(json.dumps([{name!r}] + sys.argv[1:]) + '\\n')\n")
    script.chmod(0o755)
  env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

  def run(recipe, *args, **variables):
    log.write_text("")
    proc = subprocess.run(["bash", os.path.join(ROOT, "launch", recipe), *args], cwd=ROOT,
                          env={**env, **variables}, capture_output=True, text=True, timeout=60)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    return proc, calls
  return run


TPU = dict(TPU_NAME="wm-v5e", ZONE="us-west4-a", BUCKET="gs://bkt")


def _flag(argv, name):
  return next(a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}="))


def test_tpu_vm_train_runs_main_on_every_worker(fake_cli):
  proc, calls = fake_cli("tpu_vm.sh", "train", "--config.train.num_steps=5", **TPU)
  assert proc.returncode == 0, proc.stderr
  (call,) = calls
  assert call[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"] and call[5] == "wm-v5e"
  assert _flag(call, "worker") == "all" and _flag(call, "zone") == "us-west4-a"
  remote = shlex.split(_flag(call, "command"))
  assert remote[:2] == ["cd", "wm_jax"]
  main = remote[remote.index("-m"):]
  assert main == ["-m", "wm_jax.main", "--config=configs/maskgwm_long.py",
                  "--workdir=gs://bkt/maskgwm_long", "--distributed",
                  "--config.train.num_steps=5"]


def test_tpu_vm_create_and_missing_settings(fake_cli):
  proc, calls = fake_cli("tpu_vm.sh", "create", **TPU, ACCELERATOR="v5litepod-64")
  assert proc.returncode == 0, proc.stderr
  assert _flag(calls[0], "accelerator-type") == "v5litepod-64" and "--spot" in calls[0]
  proc, calls = fake_cli("tpu_vm.sh", "train", ZONE="z", BUCKET="gs://b")
  assert proc.returncode != 0 and "TPU_NAME" in proc.stderr and calls == []
  proc, calls = fake_cli("tpu_vm.sh", "launch", **TPU)
  assert proc.returncode == 2 and "unknown action launch" in proc.stdout and calls == []


def test_xpk_multi_slice_run_sets_dcn_data(fake_cli):
  proc, calls = fake_cli("xpk.sh", "run", "--config.train.batch_size=64", CLUSTER="c",
                         PROJECT="p", ZONE="z", BUCKET="gs://bkt", IMAGE="gcr.io/p/wm:1",
                         TPU_TYPE="v5p-128", NUM_SLICES="2", WORKLOAD="wl")
  assert proc.returncode == 0, proc.stderr
  (call,) = calls
  assert call[:3] == ["xpk", "workload", "create"]
  assert _flag(call, "num-slices") == "2" and _flag(call, "tpu-type") == "v5p-128"
  assert _flag(call, "docker-image") == "gcr.io/p/wm:1" and _flag(call, "workload") == "wl"
  assert shlex.split(_flag(call, "command")) == [
      "python", "-m", "wm_jax.main", "--config=configs/maskgwm_long.py", "--workdir=gs://bkt/wl",
      "--distributed", "--config.mesh.dcn_data=2", "--config.train.batch_size=64"]
