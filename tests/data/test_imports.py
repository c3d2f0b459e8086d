"""wm_jax.data's import structure: wm_jax imports at the top of modules, no import cycle."""

import ast
import os
import subprocess
import sys

import wm_jax.data

DATA = os.path.dirname(wm_jax.data.__file__)
ROOT = os.path.dirname(os.path.dirname(DATA))


def _modules():
  """{dotted module name: path} of every module under wm_jax/data."""
  out = {}
  for dirpath, _, names in os.walk(DATA):
    for n in names:
      if n.endswith(".py"):
        rel = os.path.relpath(os.path.join(dirpath, n), ROOT)[:-3].split(os.sep)
        out[".".join(rel[:-1] if rel[-1] == "__init__" else rel)] = os.path.join(dirpath, n)
  return out


def _imported(node, modules):
  """wm_jax modules an import statement loads (`from pkg import mod` loads pkg.mod too)."""
  if isinstance(node, ast.Import):
    return [a.name for a in node.names if a.name.split(".")[0] == "wm_jax"]
  if node.module is None or node.module.split(".")[0] != "wm_jax":
    return []
  subs = [f"{node.module}.{a.name}" for a in node.names]
  return [node.module] + [s for s in subs if s in modules]


def _graph():
  modules = _modules()
  edges, nested = {}, []
  for name, path in modules.items():
    tree = ast.parse(open(path).read(), path)
    top = set(map(id, tree.body))
    edges[name] = set()
    for node in ast.walk(tree):
      if isinstance(node, (ast.Import, ast.ImportFrom)) and _imported(node, modules):
        if id(node) not in top:
          nested.append(f"{name}:{node.lineno}")
        edges[name] |= {m for m in _imported(node, modules) if m in modules and m != name}
  return edges, nested


def test_wm_jax_imports_are_at_module_top():
  _, nested = _graph()
  assert not nested, f"function-local imports of wm_jax modules: {nested}"


def test_no_import_cycle():
  edges, _ = _graph()
  assert {"wm_jax.data.records", "wm_jax.data.sources"} <= edges["wm_jax.data.pipeline"]
  state = {}

  def visit(m, path):
    state[m] = "open"
    for n in sorted(edges[m]):
      if state.get(n) == "open":
        raise AssertionError("import cycle: " + " -> ".join(path[path.index(n):] + [n]))
      if n not in state:
        visit(n, path + [n])
    state[m] = "done"

  for m in sorted(edges):
    if m not in state:
      visit(m, [m])


def test_pipeline_loads_tensorflow_datasets_only_for_the_tfds_source():
  code = ("import sys; import wm_jax.data.pipeline, wm_jax.data.sources; "
          "print('tensorflow_datasets' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip() == "False"
