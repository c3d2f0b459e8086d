"""Compile the train step ahead of time for a TPU topology (no TPU needed, libtpu is) and report
what the compiled program needs, so a config/mesh/batch that does not fit is found before a pod
is booked: memory per device against the chip's HBM (`fits_hbm`: XLA refuses some programs
larger than the HBM, not all), XLA's FLOPs, the collectives (kind, count, bytes), the Pallas
kernels, the compile time and the host's peak memory (`host_peak_rss_bytes`: a full-size
compile takes 15-24 GB of host RAM), as one JSON line (the last line of the output).

  python tools/aot_compile.py --config=configs/maskgwm_long.py --topology=v5p:2x2x1 \\
      --mesh=data=1,fsdp=4,tensor=1 --batch=4
  python tools/aot_compile.py --config=configs/maskgwm_tiny.py --topology=cpu   # present devices

--topology: a TPU topology name ('v5e:2x2', 'v5p:2x2x1', 'v6e:4x4', or any name
jax.experimental.topologies accepts), or 'cpu' to compile for the devices present. Needs libtpu
(pip install -e '.[tpu]') for TPU names; without it this says so and exits.
--set key=value overrides any config entry (e.g. --set model.attention_impl=splash
--set model.remat_policy=full). Counts of collectives and kernels are of HLO instructions: one
inside the scanned layer body counts once (wm_jax.parallel.aot).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MEMORY_FIELDS = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
                 "temp_size_in_bytes", "generated_code_size_in_bytes")


def topology_devices(name: str):
  """Devices of a named topology (abstract TPU devices from libtpu), or the present CPU devices."""
  import jax
  from wm_jax.parallel import aot
  if name == "cpu":
    return jax.devices()
  try:
    return aot.topology_devices(name)
  except (RuntimeError, ValueError) as e:
    raise SystemExit(f"[aot] {e}. --topology=cpu compiles for the devices present.") from e


def apply_overrides(config, mesh: str = "", batch: int = 0, mask: str = "config", sets=()):
  """config with --mesh, --batch, --mask and --set applied; ValueError naming an unknown key."""
  from tools.bench_suites import train as train_suite
  for item in filter(None, mesh.split(",")):
    key, _, value = item.partition("=")
    if key not in config.mesh:
      raise ValueError(f"--mesh names unknown axis {key!r}; known: {sorted(config.mesh)}")
    config.mesh[key] = int(value)
  if batch:
    config.train.batch_size = batch
  if mask != "config":
    config.mask.enabled = mask == "on"
  train_suite.apply_overrides(config, sets)
  return config


def compile_train_step(config, devices, log=print):
  """(compiled train step, report dict) for `config` on a mesh of `devices` (config.mesh)."""
  import jax
  import wm_jax  # noqa: F401
  from wm_jax import defaults
  from wm_jax.parallel import aot
  from wm_jax.parallel import mesh as mesh_lib
  from wm_jax.train import flops
  from wm_jax.train import run as run_lib

  log(f"[aot] {len(devices)} devices of {devices[0].device_kind}")
  mesh = mesh_lib.make_mesh(config.mesh, devices)
  s = run_lib.build(config, mesh=mesh)
  for path, shape, size in mesh_lib.replicated_large_params(s.abstract.params, s.shardings.params):
    log(f"[aot] WARNING: {path} {shape} ({size} elements) is replicated on every device")
  state, batch = s.abstract_inputs()
  log(f"[aot] host memory available {_available_host_bytes() / 1e9:.1f} GB (a full-size "
      "maskgwm_mview compile can take more than 24 GB; host_peak_rss_bytes reports the peak)")
  log("[aot] lowering the train step...")
  t = time.time()
  lowered = s.step_fn.lower(state, batch)
  lower_s = time.time() - t
  log(f"[aot] lowered in {lower_s:.1f} s; compiling...")
  t = time.time()
  compiled = lowered.compile()
  compile_s = time.time() - t
  log(f"[aot] compiled in {compile_s:.1f} s (XLA refuses some programs larger than the chip's "
      "HBM, not all: see fits_hbm)")
  mem = compiled.memory_analysis()
  memory = {f: getattr(mem, f, None) for f in MEMORY_FIELDS}
  # donated state aliases its outputs: live bytes ~ arguments + outputs - aliased + temporaries
  memory["total_estimate_bytes"] = sum(memory[f] or 0 for f in MEMORY_FIELDS[:2]) \
      - (memory["alias_size_in_bytes"] or 0) + (memory["temp_size_in_bytes"] or 0)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else (cost or {})
  text = compiled.as_text()
  params = sum(int(x.size) for x in jax.tree.leaves(s.abstract.params))
  # The model's FLOPs from its jaxpr, with attention in XLA (a Pallas kernel is opaque to it).
  reference = config.copy_and_resolve_references()
  reference.model.attention_impl = "xla"
  reference.mesh = defaults.mesh()
  reference.mesh.update(data=1, fsdp=1, tensor=1)
  r = run_lib.build(reference, mesh=mesh_lib.make_mesh(reference.mesh, jax.devices()[:1]))
  model_flops = flops.train_flops(flops.loss_forward_flops(
      r.graphdef, r.abstract.params, r.abstract.rest, r.loss_fn, batch, reference))
  hbm = aot.hbm_bytes(devices[0].device_kind)
  report = {
      "mesh": dict(mesh.shape), "devices": len(devices), "device_kind": devices[0].device_kind,
      "batch": int(config.train.batch_size), "remat_policy": config.model.remat_policy,
      "attention_impl": config.model.attention_impl, "mask": bool(config.mask.enabled),
      "hbm_per_device_bytes": hbm,
      "fits_hbm": None if hbm is None else memory["total_estimate_bytes"] <= hbm,
      "params": params, "model_flops_per_step": model_flops,
      "xla_flops_per_device": cost.get("flops"), "memory_per_device": memory,
      "collectives": aot.collectives(text), "pallas_kernels": aot.pallas_kernels(text),
      "lower_s": round(lower_s, 1), "compile_s": round(compile_s, 1),
      # ru_maxrss is in KiB on Linux
      "host_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
  return compiled, report


def _available_host_bytes() -> int:
  return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", required=True)
  p.add_argument("--topology", required=True)
  p.add_argument("--mesh", default="", help="comma list axis=size overriding config.mesh")
  p.add_argument("--batch", type=int, default=0, help="global batch (0: the config's)")
  p.add_argument("--mask", choices=["on", "off", "config"], default="config")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="override a config entry, e.g. model.attention_impl=splash (repeatable)")
  args = p.parse_args(argv)
  devices = topology_devices(args.topology)  # first: without libtpu there is nothing to do

  from tools.bench_suites.train import load_config
  config = load_config(args.config)
  try:
    apply_overrides(config, args.mesh, args.batch, args.mask, args.set)
  except ValueError as e:
    raise SystemExit(f"[aot] {e}") from e
  import importlib.metadata
  import jax
  _, report = compile_train_step(config, devices, log=lambda m: print(m, flush=True))
  versions = {"jax": jax.__version__}
  if args.topology != "cpu":
    versions["libtpu"] = importlib.metadata.version("libtpu")
  print(json.dumps({"config": args.config, "topology": args.topology,
                    "date": time.strftime("%Y-%m-%d"), **versions, **report}), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
