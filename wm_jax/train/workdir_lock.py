"""One writer per workdir: WORKDIR/lock holds the owner's host, pid and start time.

    with workdir_lock.hold(workdir):
      ...train...

A second run on the same workdir refuses at once, naming the holder. A lock left by a process that
no longer exists on this host (SIGKILL, a crash) is stale: it is replaced, with a message. A lock
held from another host cannot be checked from here; the error says how to remove it. Re-entrant
within one process (main.py holds it around the VAE and the train loop, which takes it too).
Only process 0 of a multi-host run takes it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time

import jax

NAME = "lock"


class WorkdirLocked(RuntimeError):
  """Another live run holds the workdir."""


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by another user
    return True
  return True


def _read(path: str) -> dict | None:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _try_create(path: str, owner: dict) -> bool:
  try:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  except FileExistsError:
    return False
  with os.fdopen(fd, "w") as f:
    json.dump(owner, f)
  return True


def acquire(workdir: str) -> bool:
  """Takes the lock of `workdir`; returns False when this process holds it already."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(os.path.abspath(workdir), NAME)
  host = socket.gethostname()
  owner = {"host": host, "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
  for _ in range(3):
    if _try_create(path, owner):
      return True
    held = _read(path)
    if held is None:  # being written by its creator right now, or unreadable
      time.sleep(0.2)
      held = _read(path)
      if held is None:
        raise WorkdirLocked(f"{path} exists but is not a readable lock; if no run uses {workdir}, "
                            f"delete it")
    if held.get("host") == host and held.get("pid") == os.getpid():
      return False
    if held.get("host") == host and not _alive(int(held.get("pid", -1))):
      print(f"[lock] {path}: the run that held it (pid {held.get('pid')}, started "
            f"{held.get('started')}) no longer exists; taking it over", flush=True)
      with contextlib.suppress(FileNotFoundError):
        os.remove(path)
      continue
    where = "this host" if held.get("host") == host else f"host {held.get('host')}"
    raise WorkdirLocked(
        f"{workdir} is in use by pid {held.get('pid')} on {where} (started {held.get('started')}); "
        f"two runs on one workdir overwrite each other's checkpoints. Stop that run, or use "
        f"another --workdir" + ("" if held.get("host") == host else
                                f"; if that run is dead, delete {path}"))
  raise WorkdirLocked(f"could not take {path}: it keeps changing hands")


def release(workdir: str) -> None:
  path = os.path.join(os.path.abspath(workdir), NAME)
  held = _read(path)
  if held and held.get("pid") == os.getpid() and held.get("host") == socket.gethostname():
    os.remove(path)


@contextlib.contextmanager
def hold(workdir: str):
  """The lock of `workdir` for the duration of the block (process 0 only)."""
  took = jax.process_index() == 0 and acquire(workdir)
  try:
    yield
  finally:
    if took:
      release(workdir)
