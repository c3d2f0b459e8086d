"""Ahead-of-time compilation for a TPU topology without a TPU (libtpu provides the compiler), and
what the compiled program says: memory per device, FLOPs, collectives, Pallas kernels.

  devices = aot.topology_devices("v5e:2x2")       # 4 abstract 'TPU v5 lite' devices
  mesh = jax.sharding.Mesh(np.array(devices).reshape(2, 2), ("fsdp", "tensor"))
  compiled = jax.jit(f).lower(*shapes_with_shardings).compile()
  aot.collectives(compiled.as_text())             # {'all-gather': {'count':, 'bytes':}, ...}
  aot.pallas_kernels(compiled.as_text())          # {'splash_mha_fwd': 2, 'wm_flash_fwd': 1, ...}

Counts are of instructions in the compiled HLO: an op inside a loop (scanned layers) counts once,
however often the loop runs.
"""

from __future__ import annotations

import importlib.util
import os
import re

import numpy as np

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4,
               "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
# '%name = <result shape> opcode(' in HLO text
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s+([a-z][\w\-]*)\(", re.M)
_ARRAY = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")


# HBM a program may allocate per chip, by jax device_kind (v5e, v6e: what libtpu reports
# available in its out-of-memory errors; v5p: the 95 GiB of 96 the Cloud TPU documentation lists
# as allocatable; v4: the listed capacity). XLA's ahead-of-time compile refuses some programs
# larger than this, not all, so callers compare (hbm_bytes).
HBM_BYTES = {"TPU v4": 32 * 2**30, "TPU v5 lite": int(15.75 * 2**30), "TPU v5": 95 * 2**30,
             "TPU v6 lite": int(31.25 * 2**30)}


def hbm_bytes(device_kind: str) -> int | None:
  """Allocatable HBM per chip for a device_kind, or None when unknown."""
  return HBM_BYTES.get(device_kind)


def has_libtpu() -> bool:
  return importlib.util.find_spec("libtpu") is not None


def topology_devices(name: str):
  """The abstract devices of a TPU topology name ('v5e:2x2', 'v5p:2x2x1', 'v6e:4x4', ...).

  RuntimeError naming the fix without libtpu; ValueError naming the topology when libtpu does
  not know it."""
  if not has_libtpu():
    raise RuntimeError(f"compiling for TPU topology {name!r} needs libtpu: pip install -e "
                       "'.[tpu]' (or pip install 'jax[tpu]==<the installed jax version>')")
  # No TPU chips are opened: let several processes (pytest workers) load libtpu at once.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  try:
    return topologies.get_topology_desc(topology_name=name, platform="tpu").devices
  except Exception as e:  # noqa: BLE001 (libtpu raises plain RuntimeErrors)
    raise ValueError(f"libtpu could not describe TPU topology {name!r} ({type(e).__name__}: "
                     f"{e}); names look like 'v5e:2x2', 'v5p:2x2x1' or 'v6e:4x4'") from e


def _result_bytes(shape_text: str) -> int:
  """Bytes of an HLO result shape; of the largest array for a tuple (async starts carry
  operand and result)."""
  sizes = [DTYPE_BYTES.get(dtype, 4) * int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
           for dtype, dims in _ARRAY.findall(shape_text)]
  if not sizes:
    return 0
  return max(sizes) if shape_text.lstrip().startswith("(") else sum(sizes)


def instructions(hlo_text: str):
  """(name, result shape text, opcode) of every instruction of an HLO module's text."""
  return _INSTRUCTION.findall(hlo_text)


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
  """{kind: {'count', 'bytes'}} of the collectives in compiled HLO text (an async pair, start and
  done, counts once: its start)."""
  out: dict[str, dict[str, int]] = {}
  for _, shape, opcode in instructions(hlo_text):
    kind = opcode[:-len("-start")] if opcode.endswith("-start") else opcode
    if kind not in COLLECTIVES:
      continue
    entry = out.setdefault(kind, {"count": 0, "bytes": 0})
    entry["count"] += 1
    entry["bytes"] += _result_bytes(shape)
  return out


def pallas_kernels(hlo_text: str) -> dict[str, int]:
  """{kernel name: count} of the Mosaic (TPU Pallas) custom calls in HLO text: JAX's splash
  kernels are named 'splash_mha_*', wm_jax's own 'wm_flash_*'."""
  out: dict[str, int] = {}
  for line in hlo_text.splitlines():
    if 'custom_call_target="tpu_custom_call"' not in line:
      continue
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    name = re.sub(r"(\.\d+)+$", "", match.group(1))
    out[name] = out.get(name, 0) + 1
  return out
