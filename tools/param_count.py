"""Prints a config's CTSDDiT parameter count by module group (no memory: nnx.eval_shape).

  python tools/param_count.py --config=configs/maskgwm_mview.py
  python tools/param_count.py --config=configs/maskgwm_tiny.py --no-mask

Groups are the top-level attributes of the model (joint blocks, temporal blocks, cross-view blocks,
layout adapter, mask module, ...). Trainable parameters (nnx.Param) and checkpoint-only buffers
(pos_embed table, never-read weights) are counted separately.
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flax import nnx  # noqa: E402

from wm_jax import defaults  # noqa: E402
from wm_jax.models import scan  # noqa: E402
from wm_jax.models.buffers import Buffer  # noqa: E402
from wm_jax.models.ctsd_dit import CTSDDiT  # noqa: E402


def count(config, with_mask: bool = True) -> dict[str, dict[str, int]]:
  """{group: {'params': n, 'buffers': n}} for the model of `config`."""
  mask = config.mask.copy_and_resolve_references()
  mask.enabled = mask.enabled and with_mask
  abstract = nnx.eval_shape(lambda: CTSDDiT(config.model, mask, rngs=nnx.Rngs(0)))
  out: dict[str, dict[str, int]] = collections.defaultdict(lambda: {"params": 0, "buffers": 0})
  flat = [(tuple(path), var) for path, var in
          nnx.to_flat_state(nnx.state(abstract, nnx.Any(nnx.Param, Buffer)))]
  # a scanned run counts under the canonical groups of its layers (transformer_blocks, ...)
  stacked = scan.canonical_paths({path: var.get_value() for path, var in flat})
  for path, var in flat:
    kind = "params" if isinstance(var, nnx.Param) else "buffers"
    group = str(stacked[path][0][0]) if path in stacked else str(path[0])
    out[group][kind] += math.prod(var.get_value().shape)
  return dict(out)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True, help="path of a configs/*.py file[:arg]")
  parser.add_argument("--config_arg", default=None, help="argument for get_config")
  parser.add_argument("--no-mask", action="store_true", help="count without the mask module")
  args = parser.parse_args(argv)
  print(f"[param_count] building {args.config} abstractly (nnx.eval_shape)", flush=True)
  spec = args.config if args.config_arg is None else f"{args.config.partition(':')[0]}:{args.config_arg}"
  config = defaults.load_file(spec)
  groups = count(config, with_mask=not args.no_mask)
  width = max(len(g) for g in groups)
  print(f"{'group':<{width}}  {'params':>15}  {'buffers':>13}")
  for name, n in sorted(groups.items(), key=lambda kv: -kv[1]["params"]):
    print(f"{name:<{width}}  {n['params']:>15,}  {n['buffers']:>13,}")
  total = sum(n["params"] for n in groups.values())
  buffers = sum(n["buffers"] for n in groups.values())
  print(f"{'total':<{width}}  {total:>15,}  {buffers:>13,}")
  print(f"[param_count] {total / 1e9:.3f}B trainable parameters")


if __name__ == "__main__":
  main()
