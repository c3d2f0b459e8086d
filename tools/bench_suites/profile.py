"""Where the time of a compiled step goes, by op kind: a jax.profiler trace of the train step or of
the Euler sampler's model call, its XLA ops classified from the compiled HLO.

  python tools/bench.py profile                                 # configs/bench.py train step, unmasked
  python tools/bench.py profile --what=sample --cfg=2           # one Euler step (2B batch with CFG)
  python tools/bench.py profile --mask=on --top=30 --trace_dir=/tmp/prof   # keep the trace (TensorBoard)

Lines: one per op kind ({"kind", "ms_per_step", "share", "ops"}), one per phase ({"phase":
forward | backward | rest, "ms_per_step", "share", "by_kind"}; phase_of), then the --top ops by
time ({"op", "kind", "phase", "ms_per_step", "calls_per_step", "contains", "result"}), then a
summary: wall time per step, the time XLA's threads spent in ops (busy_ms_per_step, which
exceeds the wall time when ops run in parallel), their ratio (parallelism: ops running at once on
average, at most the core count), the threads that ran ops and the machine's cores. Kinds:

  matmul      a dot or convolution, alone or in the fusion that holds it (with its fused epilogue)
  reduction   a fusion or op with a reduce and no dot (norm statistics, softmax sums, loss means)
  layout      copies, transposes and other data movement with no arithmetic (gather, concatenate,
              dynamic-update-slice, pad, ...), fused or not
  elementwise fusions of pointwise arithmetic (activations, adds, the optimizer update, ...)
  control     while / conditional / call bookkeeping (their bodies' ops are counted as themselves)
  other       everything else (custom calls, rng, ...)

Random weights and a random batch (train/example_batch.py); on a CPU the numbers are those of
XLA's CPU backend. Timings are for looking at, never for tests.
"""

from __future__ import annotations

import collections
import glob
import os
import re
import tempfile
import time

KINDS = ("matmul", "reduction", "layout", "elementwise", "control", "other")
MATMUL_OPS = {"dot", "convolution"}
LAYOUT_OPS = {"copy", "transpose", "bitcast", "reshape", "broadcast", "slice", "dynamic-slice",
              "dynamic-update-slice", "concatenate", "gather", "scatter", "pad", "reverse",
              "parameter", "constant", "tuple", "get-tuple-element", "iota", "bitcast-convert",
              "copy-start", "copy-done"}
CONTROL_OPS = {"while", "conditional", "call"}
OTHER_OPS = {"custom-call", "rng", "rng-bit-generator", "rng-get-and-update-state", "sort",
             "all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute"}


def add_arguments(parser):
  parser.add_argument("--config", default="configs/bench.py", help="config file (get_config)")
  parser.add_argument("--what", choices=["train", "sample"], default="train",
                      help="train: one train step; sample: the Euler sampler's model call")
  parser.add_argument("--mask", choices=["on", "off"], default="off",
                      help="train with mask reconstruction (sampling never masks)")
  parser.add_argument("--batch", type=int, default=0, help="global batch (0: the config's)")
  parser.add_argument("--cfg", type=float, default=1.0,
                      help="--what=sample: guidance scale (not 1: the 2B batch of CFG)")
  parser.add_argument("--steps", type=int, default=3, help="traced steps (>= 1)")
  parser.add_argument("--warmup", type=int, default=2, help="untraced steps after compiling")
  parser.add_argument("--top", type=int, default=15, help="ops listed by time")
  parser.add_argument("--trace_dir", default="",
                      help="keep the trace here (tensorboard --logdir); default: a temporary one")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="config override, e.g. --set train.nan_guard=False (repeatable)")


# -- the compiled HLO: what each op is ----------------------------------------------------------

_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}", re.M | re.S)
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.*?)\s([a-z][\w\-]*)\(", re.M)
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_OP_NAME = re.compile(r'metadata=\{op_name="([^"]*)"')
PHASES = ("forward", "backward", "rest")


def phase_of(op_name: str) -> str:
  """'backward' for an op JAX's autodiff transposed (op_name 'transpose(jvp(...))'), 'forward'
  for one it differentiated ('jvp(...)'), else 'rest' (the optimizer update, the loss's own
  bookkeeping, or a program without gradients such as the sampler)."""
  if "transpose(jvp(" in op_name:
    return "backward"
  return "forward" if "jvp(" in op_name else "rest"


def op_kinds(hlo_text: str) -> dict[str, tuple[str, str, str, str]]:
  """{instruction name: (kind, the ops it contains, its result type, phase)} for every instruction
  of a compiled module's text (compiled.as_text()); a fusion is classified by the ops of the
  computation it calls, the phase from the JAX op it came from (phase_of)."""
  bodies = {m.group(1): m.group(2) for m in _COMPUTATION.finditer(hlo_text)}

  def opcodes(body, depth=0):
    ops = set()
    for line in body.splitlines():
      m = _INSTRUCTION.match(line)
      if not m:
        continue
      ops.add(m.group(3))
      if m.group(3) == "fusion" and depth < 4:
        for callee in _CALLS.findall(line):
          ops |= opcodes(bodies.get(callee, ""), depth + 1)
    return ops

  out = {}
  for body in bodies.values():
    for line in body.splitlines():
      m = _INSTRUCTION.match(line)
      if not m:
        continue
      name, result, opcode = m.groups()
      ops = {opcode}
      if opcode == "fusion":
        ops = set()
        for callee in _CALLS.findall(line):
          ops |= opcodes(bodies.get(callee, ""))
      source = _OP_NAME.search(line)
      out[name] = (classify(opcode, ops), ",".join(sorted(ops - {"parameter", "constant"})),
                   re.sub(r"\{[^}]*\}", "", result),   # the type without its layout
                   phase_of(source.group(1) if source else ""))
  return out


def classify(opcode: str, ops: set[str]) -> str:
  """The kind (KINDS) of an instruction of `opcode` whose (fused) body holds `ops`."""
  if ops & MATMUL_OPS:
    return "matmul"
  if opcode in CONTROL_OPS:
    return "control"
  if ops & OTHER_OPS:
    return "other"
  if "reduce" in ops or "reduce-window" in ops:
    return "reduction"
  if ops <= LAYOUT_OPS:
    return "layout"
  return "elementwise"


# -- the trace -----------------------------------------------------------------------------------

def xla_events(trace_dir: str):
  """(thread name, op name, start_ns, duration_ns) of the ops on XLA's threads in the trace."""
  import jax
  files = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
  if not files:
    raise FileNotFoundError(f"no .xplane.pb trace under {trace_dir}")
  data = jax.profiler.ProfileData.from_file(max(files, key=os.path.getmtime))
  for plane in data.planes:
    for line in plane.lines:
      if not line.name.startswith("tf_XLA") and not plane.name.startswith("/device:"):
        continue
      for event in line.events:
        if event.duration_ns > 0 and not event.name.startswith("ThreadpoolListener"):
          yield line.name, event.name, event.start_ns, event.duration_ns


def summarize(events, kinds: dict[str, tuple[str, str, str, str]], steps: int, wall_s: float,
              top: int):
  """The rows this suite prints (see the module docstring) from xla_events and op_kinds."""
  by_op, calls = collections.Counter(), collections.Counter()
  busy_by_thread = collections.Counter()
  for thread, name, _, duration in events:
    op = name.split(":")[0]
    if op.startswith("ThunkExecutor"):    # an executor's own span: its ops are listed on their own
      continue
    by_op[op] += duration / 1e6 / steps
    calls[op] += 1
    busy_by_thread[thread] += duration / 1e9
  by_kind, ops_in_kind = collections.Counter(), collections.Counter()
  by_phase = collections.Counter()
  for op, ms in by_op.items():
    kind, _, _, phase = kinds.get(op, ("other", "", "", "rest"))
    if kind == "control":
      continue                       # a while loop's span holds its body's ops: not counted twice
    by_kind[kind] += ms
    ops_in_kind[kind] += 1
    by_phase[phase, kind] += ms
  busy = sum(by_kind.values())
  for kind in KINDS:
    if by_kind[kind]:
      yield {"kind": kind, "ms_per_step": round(by_kind[kind], 3),
             "share": round(by_kind[kind] / busy, 4), "ops": ops_in_kind[kind]}
  for phase in PHASES:
    total = sum(ms for (p, _), ms in by_phase.items() if p == phase)
    if total:
      yield {"phase": phase, "ms_per_step": round(total, 3), "share": round(total / busy, 4),
             "by_kind": {k: round(by_phase[phase, k], 3) for k in KINDS if by_phase[phase, k]}}
  for op, ms in by_op.most_common(top):
    kind, contains, result, phase = kinds.get(op, ("other", "not in the HLO", "", "rest"))
    yield {"op": op, "kind": kind, "phase": phase, "ms_per_step": round(ms, 3),
           "calls_per_step": round(calls[op] / steps, 2), "contains": contains, "result": result}
  wall_ms = wall_s * 1e3 / steps
  yield {"summary": True, "wall_ms_per_step": round(wall_ms, 3),
         "busy_ms_per_step": round(busy, 3), "parallelism": round(busy / max(wall_ms, 1e-9), 3),
         "threads": sum(1 for seconds in busy_by_thread.values() if seconds > 0),
         "cores": os.cpu_count()}


# -- what is profiled ----------------------------------------------------------------------------

def _train_call(config, args):
  """(call(i) -> (state, metrics), compiled) for one train step of `config`."""
  from tools.bench_suites import train as train_suite
  step, compiled = train_suite.compiled_step(config)
  return (lambda i: step()), compiled


def _sample_call(config, args):
  """(call(i) -> latents, compiled): one Euler step (train.compiled_sample_step)."""
  from tools.bench_suites import train as train_suite
  return train_suite.compiled_sample_step(config, args.cfg)


def run(args):
  import jax
  import wm_jax  # noqa: F401
  from wm_jax import defaults
  from tools.bench_suites import train as train_suite

  if args.steps < 1 or args.warmup < 0:
    raise ValueError(f"--steps={args.steps} must be >= 1 and --warmup={args.warmup} >= 0")
  config = defaults.load_file(args.config)
  if args.batch:
    config.train.batch_size = args.batch
  config.mask.enabled = args.what == "train" and args.mask == "on"
  train_suite.apply_overrides(config, args.set)
  call, compiled = (_train_call if args.what == "train" else _sample_call)(config, args)
  kinds = op_kinds(compiled.as_text())
  for i in range(args.warmup):
    jax.block_until_ready(call(i))
  trace_dir = args.trace_dir or tempfile.mkdtemp(prefix="wm_jax_profile_")
  jax.profiler.start_trace(trace_dir)
  t0 = time.perf_counter()
  for i in range(args.steps):
    out = call(args.warmup + i)
  jax.block_until_ready(out)
  wall_s = time.perf_counter() - t0
  jax.profiler.stop_trace()
  head = {"config": args.config, "what": args.what, "mask": config.mask.enabled,
          "batch": int(config.train.batch_size), "cfg": args.cfg, "steps": args.steps,
          "trace_dir": trace_dir, "overrides": list(args.set)}
  for row in summarize(xla_events(trace_dir), kinds, args.steps, wall_s, args.top):
    yield {**head, **row}
