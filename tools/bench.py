"""Benchmarks, printed as JSON lines (one object per measurement).

  python tools/bench.py SUITE [suite flags]     e.g. `python tools/bench.py attention --shapes=long`
  python tools/bench.py --list

Each suite is a module tools/bench_suites/SUITE.py with `add_arguments(parser)` (optional) and
`run(args)` yielding dicts. Every line carries the suite, the device and the date, so ratios are
only ever quoted between lines of one run. Timings never go into tests.
"""

import argparse
import datetime
import importlib
import json
import pathlib
import sys

SUITES_DIR = pathlib.Path(__file__).resolve().parent / "bench_suites"
sys.path.insert(0, str(SUITES_DIR.parent.parent))


def _suites():
  return sorted(p.stem for p in SUITES_DIR.glob("*.py") if not p.stem.startswith("_"))


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  if not argv or argv[0] in ("--list", "-h", "--help"):
    print(__doc__)
    print("suites:", ", ".join(_suites()))
    return 0
  name, rest = argv[0], argv[1:]
  if name not in _suites():
    print(f"unknown suite {name!r}; available: {', '.join(_suites())}", file=sys.stderr)
    return 2
  module = importlib.import_module(f"tools.bench_suites.{name}")
  parser = argparse.ArgumentParser(prog=f"bench.py {name}", description=module.__doc__)
  if hasattr(module, "add_arguments"):
    module.add_arguments(parser)
  args = parser.parse_args(rest)
  import jax  # after argument parsing, so --help is fast
  device = jax.devices()[0]
  stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  for row in module.run(args):
    row = {"suite": name, "device": device.device_kind, "platform": device.platform,
           "n_devices": jax.device_count(), "date": stamp, **row}
    print(json.dumps(row), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
