"""Compile the train step ahead of time for a TPU topology (no TPU needed, libtpu is) and report
memory per device, so a config/mesh/batch that does not fit is found before a pod is booked.

  python tools/aot_compile.py --config=configs/maskgwm_long.py --topology=v5e:4x4 \
      --mesh=data=1,fsdp=16,tensor=1 --batch=16
  python tools/aot_compile.py --config=configs/maskgwm_tiny.py --topology=cpu   # present devices

--topology: a TPU topology name ('v4:2x2x2', 'v5e:2x2', 'v5p:2x2x1', 'v6e:4x4', or any name
jax.experimental.topologies accepts), or 'cpu' to compile for the devices present. Needs libtpu
(pip install 'jax[tpu]') for TPU names; without it this explains and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

def topology_devices(name: str):
  """Devices of a named topology (abstract TPU devices from libtpu), or the present CPU devices."""
  import jax
  if name == "cpu":
    return jax.devices()
  try:
    import libtpu  # noqa: F401
  except ImportError as e:
    raise SystemExit(f"[aot] --topology={name!r} needs libtpu (pip install 'jax[tpu]'); it is not "
                     f"installed here ({e}). Use --topology=cpu to compile for the present devices.") from e
  from jax.experimental import topologies
  try:
    topo = topologies.get_topology_desc(topology_name=name, platform="tpu")
  except Exception as e:  # noqa: BLE001 (libtpu raises plain RuntimeErrors)
    raise SystemExit(f"[aot] libtpu does not know topology {name!r} ({type(e).__name__}: {e}); "
                     f"names look like 'v5e:2x2' or 'v4:2x2x2'") from e
  return topo.devices


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", required=True)
  p.add_argument("--topology", required=True)
  p.add_argument("--mesh", default="", help="comma list axis=size overriding config.mesh")
  p.add_argument("--batch", type=int, default=0, help="global batch (0: the config's)")
  p.add_argument("--mask", choices=["on", "off", "config"], default="config")
  args = p.parse_args(argv)
  devices = topology_devices(args.topology)  # first: without libtpu there is nothing to do

  from tools.bench_suites.train import load_config
  config = load_config(args.config)
  for item in filter(None, args.mesh.split(",")):
    key, _, value = item.partition("=")
    if key not in config.mesh:
      raise SystemExit(f"[aot] --mesh names unknown axis {key!r}; known: {sorted(config.mesh)}")
    config.mesh[key] = type(config.mesh[key])(value) if not isinstance(config.mesh[key], str) else value
  if args.batch:
    config.train.batch_size = args.batch
  if args.mask != "config":
    config.mask.enabled = args.mask == "on"

  import jax
  import wm_jax  # noqa: F401
  from wm_jax.parallel import mesh as mesh_lib
  from wm_jax.train import flops
  from wm_jax.train import run as run_lib

  print(f"[aot] {len(devices)} devices of {devices[0].device_kind}", flush=True)
  mesh = mesh_lib.make_mesh(config.mesh, devices)
  s = run_lib.build(config, mesh=mesh)
  replicated = mesh_lib.replicated_large_params(s.abstract.params, s.shardings.params)
  for path, shape, size in replicated:
    print(f"[aot] WARNING: {path} {shape} ({size} elements) is replicated on every device", flush=True)
  state, batch = s.abstract_inputs()
  print("[aot] lowering and compiling the train step...", flush=True)
  compiled = s.step_fn.lower(state, batch).compile()
  mem = compiled.memory_analysis()
  fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
            "temp_size_in_bytes", "generated_code_size_in_bytes")
  report = {f: getattr(mem, f, None) for f in fields}
  # donated state aliases its outputs: live bytes ~ arguments + outputs - aliased + temporaries
  report["total_estimate_bytes"] = sum(report[f] or 0 for f in fields[:2]) \
      - (report["alias_size_in_bytes"] or 0) + (report["temp_size_in_bytes"] or 0)
  params = sum(int(x.size) for x in jax.tree.leaves(s.abstract.params))
  fl = flops.train_flops(flops.loss_forward_flops(s.graphdef, s.abstract.params, s.abstract.rest,
                                                  s.loss_fn, batch, config))
  print(json.dumps({"config": args.config, "topology": args.topology, "mesh": dict(mesh.shape),
                    "batch": int(config.train.batch_size), "params": params, "flops_per_step": fl,
                    "memory_per_device": report}, indent=1), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
