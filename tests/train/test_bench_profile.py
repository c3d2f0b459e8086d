"""The profile bench: compiled HLO ops classified by kind, and a trace summed into kinds, top ops
and thread use (no timing is asserted: only how the numbers are put together)."""

import jax
import jax.numpy as jnp
import numpy as np

from tools.bench_suites import profile


def test_compiled_ops_are_classified_by_what_they_compute():
  def f(a, b):
    s = a @ b                                     # matmul
    p = jax.nn.softmax(s, axis=-1)                # reductions + elementwise
    return p.T.copy(), jnp.tanh(a) * 2            # a transpose (layout), pointwise
  x = jnp.ones((64, 32), jnp.float32)
  y = jnp.ones((32, 48), jnp.float32)
  kinds = profile.op_kinds(jax.jit(f).lower(x, y).compile().as_text())
  by_kind = {}
  for name, (kind, contains, result, _) in kinds.items():
    by_kind.setdefault(kind, []).append((name, contains, result))
  assert any("dot" in c.split(",") for _, c, _ in by_kind["matmul"]), kinds
  assert all("dot" not in c.split(",") and "convolution" not in c.split(",")
             for k in ("reduction", "layout", "elementwise") for _, c, _ in by_kind.get(k, []))
  assert by_kind.get("reduction") and all("reduce" in c for _, c, _ in by_kind["reduction"])
  assert any(r.startswith("f32[64,48]") or r.startswith("f32[48,64]")
             for _, _, r in by_kind["matmul"] + by_kind.get("reduction", []))


def test_classify_table():
  assert profile.classify("fusion", {"dot", "add", "multiply"}) == "matmul"
  assert profile.classify("fusion", {"reduce", "exponential", "divide"}) == "reduction"
  assert profile.classify("fusion", {"transpose", "copy", "bitcast"}) == "layout"
  assert profile.classify("copy", {"copy"}) == "layout"
  assert profile.classify("fusion", {"add", "tanh", "select"}) == "elementwise"
  assert profile.classify("while", {"while"}) == "control"
  assert profile.classify("custom-call", {"custom-call"}) == "other"


def test_trace_is_summed_per_step_by_kind_without_counting_loops_twice():
  kinds = {"fusion.1": ("matmul", "dot,add", "f32[8,8]", "forward"),
           "copy.2": ("layout", "copy", "f32[8,8]", "backward"),
           "while.3": ("control", "while", "(f32[8,8])", "rest")}
  ms = 1_000_000
  events = [("tf_XLAEigen/1", "fusion.1", 0, 6 * ms), ("tf_XLAEigen/2", "copy.2", 0, 2 * ms),
            ("tf_XLAEigen/1", "fusion.1", 0, 2 * ms),
            ("tf_XLAEigen/1", "while.3", 0, 8 * ms),          # spans its body's ops
            ("tf_XLAPjRtCpuClient/1", "ThunkExecutor::Execute", 0, 9 * ms),
            ("tf_XLAEigen/2", "mystery.9", 0, 2 * ms)]
  rows = list(profile.summarize(events, kinds, steps=2, wall_s=0.010, top=2))
  kind_rows = {r["kind"]: r for r in rows if "kind" in r and "op" not in r}
  phase_rows = {r["phase"]: r for r in rows if "phase" in r and "op" not in r}
  assert phase_rows["forward"]["by_kind"] == {"matmul": 4.0}
  assert phase_rows["backward"]["ms_per_step"] == 1.0
  assert phase_rows["rest"]["by_kind"] == {"other": 1.0}        # not in the HLO: rest, other
  assert kind_rows["matmul"]["ms_per_step"] == 4.0 and kind_rows["layout"]["ms_per_step"] == 1.0
  assert kind_rows["other"]["ms_per_step"] == 1.0 and "control" not in kind_rows
  np.testing.assert_allclose(sum(r["share"] for r in kind_rows.values()), 1.0, atol=1e-3)
  ops = [r for r in rows if "op" in r]
  assert [r["op"] for r in ops] == ["fusion.1", "while.3"]          # --top 2, by time
  assert ops[0]["calls_per_step"] == 1.0 and ops[0]["result"] == "f32[8,8]"
  (summary,) = [r for r in rows if r.get("summary")]
  assert summary["wall_ms_per_step"] == 5.0 and summary["busy_ms_per_step"] == 6.0
  assert summary["threads"] == 2 and summary["parallelism"] == 1.2


def test_phases_follow_jax_autodiff_op_names():
  def loss(w, x):
    return jnp.sum(jnp.tanh(x @ w) ** 2)
  w = jnp.ones((32, 16), jnp.float32)
  x = jnp.ones((8, 32), jnp.float32)
  step = jax.jit(lambda w, x: w - 0.1 * jax.grad(loss)(w, x))
  kinds = profile.op_kinds(step.lower(w, x).compile().as_text())
  phases = {phase for _, _, _, phase in kinds.values()}
  assert {"forward", "backward"} <= phases, kinds
  assert profile.phase_of("jit(step)/transpose(jvp(bqhd,bkhd->bhqk))/dot_general") == "backward"
  assert profile.phase_of("jit(step)/jvp()/tanh") == "forward"
  assert profile.phase_of("jit(step)/sub") == "rest"
