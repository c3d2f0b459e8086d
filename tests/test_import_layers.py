"""The import graph of wm_jax, read with `ast` (nothing is imported).

Every import of a wm_jax module (top-level or inside a function or class; absolute or relative;
`from wm_jax.x import y` counts as an import of the module wm_jax.x.y when that module exists)
is an edge. The graph must have
  - no cycles;
  - no edge to a higher layer: the layers are the groups of the `Layer order:` line of
    docs/design.md, lowest first, e.g. `a < b, c < d`; a group member names a subpackage
    (wm_jax/b/...) or a top-level module (wm_jax/b.py); wm_jax/__init__.py belongs to none;
  - no import of the repository's `configs` package;
  - no import of a wm_jax module below the top level of a module, unless ALLOWED_LOCAL names it.
Each test reports every problem of its kind at once.
"""

from __future__ import annotations

import ast
import collections
import dataclasses
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "wm_jax"
CONFIGS = "configs"
DESIGN = REPO / "docs" / "design.md"

# (importing module, imported module) -> why the import has to sit inside a function.
ALLOWED_LOCAL: dict[tuple[str, str], str] = {}


@dataclasses.dataclass(frozen=True)
class Import:
  src: str      # importing module, e.g. 'wm_jax.models.mmdit'
  dst: str      # imported module, e.g. 'wm_jax.models.layers' (or 'configs.x' for configs)
  where: str    # 'wm_jax/models/mmdit.py:17'
  local: bool   # inside a function or class body

  def describe(self) -> str:
    return f"{self.where}{' (function-local)' if self.local else ''}"


def module_name(path: pathlib.Path, root: pathlib.Path) -> str:
  """root/pkg/a/b.py -> 'pkg.a.b'; root/pkg/a/__init__.py -> 'pkg.a'."""
  parts = list(path.relative_to(root).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def package_modules(root: pathlib.Path, package: str) -> dict[str, pathlib.Path]:
  """Module name -> file of every .py under root/package (packages as their __init__.py)."""
  files = sorted(p for p in (root / package).rglob("*.py") if "__pycache__" not in p.parts)
  return {module_name(p, root): p for p in files}


def _known_names(modules) -> set[str]:
  """Modules and every package above them (directories without __init__.py included)."""
  names = set()
  for name in modules:
    parts = name.split(".")
    names.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
  return names


def _resolve(name: str, known: set[str]) -> str:
  """The longest prefix of a dotted name that is a known module."""
  parts = name.split(".")
  for i in range(len(parts), 0, -1):
    if ".".join(parts[:i]) in known:
      return ".".join(parts[:i])
  return name


def _imports_of(tree: ast.AST):
  """(node, local) for every Import / ImportFrom; local: inside a def, lambda or class."""
  scopes = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)

  def walk(node, local):
    for child in ast.iter_child_nodes(node):
      if isinstance(child, (ast.Import, ast.ImportFrom)):
        yield child, local
      yield from walk(child, local or isinstance(child, scopes))

  yield from walk(tree, False)


def collect_imports(root: pathlib.Path, package: str = PACKAGE,
                    configs: str = CONFIGS) -> tuple[dict[str, pathlib.Path], list[Import]]:
  """Modules of `package` and every import they make of `package` or `configs` modules."""
  modules = package_modules(root, package)
  known = _known_names(modules)
  edges = []
  for src, path in modules.items():
    is_init = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    for node, local in _imports_of(tree):
      targets = []
      if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
      else:
        if node.level:
          base = src.split(".")
          base = base[:len(base) - node.level + (1 if is_init else 0)]
          stem = ".".join(base + ([node.module] if node.module else []))
        else:
          stem = node.module or ""
        # `from x import y`: y is the module x.y when there is one, else a name in x
        targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in known else stem for a in node.names]
      where = f"{path.relative_to(root)}:{node.lineno}"
      for target in dict.fromkeys(targets):
        top = target.split(".")[0]
        if top == package:
          edges.append(Import(src, _resolve(target, known), where, local))
        elif top == configs:
          edges.append(Import(src, target, where, local))
  return modules, edges


def read_layer_order(text: str) -> list[list[str]]:
  """The groups of the one `Layer order:` line, lowest layer first."""
  lines = [line for line in text.splitlines() if line.startswith("Layer order:")]
  if len(lines) != 1:
    raise ValueError(f"expected exactly one line starting with 'Layer order:', found {len(lines)}")
  body = lines[0][len("Layer order:"):].strip()
  groups = [[name.strip() for name in group.split(", ")] for group in body.split(" < ")]
  names = [name for group in groups for name in group]
  if not all(names):
    raise ValueError(f"empty group or name in {lines[0]!r}")
  repeated = sorted(n for n, c in collections.Counter(names).items() if c > 1)
  if repeated:
    raise ValueError(f"names listed more than once in the layer order: {repeated}")
  return groups


def _internal(edges, package):
  return [e for e in edges if e.dst.split(".")[0] == package]


def cycle_problems(edges, package: str = PACKAGE) -> list[str]:
  """Every import cycle, as one shortest cycle through each edge that lies on a cycle."""
  graph = collections.defaultdict(dict)  # src -> dst -> [Import]
  for e in _internal(edges, package):
    graph[e.src].setdefault(e.dst, []).append(e)

  def shortest_path(start, goal):
    parents, queue = {start: None}, collections.deque([start])
    while queue:
      node = queue.popleft()
      if node == goal:
        path = [node]
        while parents[path[-1]] is not None:
          path.append(parents[path[-1]])
        return path[::-1]
      for nxt in sorted(graph.get(node, {})):
        if nxt not in parents:
          parents[nxt] = node
          queue.append(nxt)
    return None

  cycles = set()
  for src in sorted(graph):
    for dst in sorted(graph[src]):
      back = shortest_path(dst, src)
      if back is not None:
        ring = [src] + back[:-1]  # src -> dst -> ... -> (src)
        first = ring.index(min(ring))
        cycles.add(tuple(ring[first:] + ring[:first]))
  out = []
  for ring in sorted(cycles, key=lambda c: (len(c), c)):
    hops = [(a, ring[(i + 1) % len(ring)]) for i, a in enumerate(ring)]
    lines = [" -> ".join(ring + (ring[0],))]
    lines += [f"      {a} -> {b}: " + ", ".join(e.describe() for e in graph[a][b]) for a, b in hops]
    out.append("\n".join(lines))
  return out


def group_of(module: str, package: str = PACKAGE) -> str | None:
  """'wm_jax.models.mmdit' -> 'models'; the package itself (its __init__) -> None."""
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else None


def layer_problems(modules, edges, groups, package: str = PACKAGE) -> list[str]:
  """Modules outside every group, group names matching nothing, and imports of higher layers."""
  layer = {name: i for i, group in enumerate(groups) for name in group}
  problems = []
  present = {group_of(m, package) for m in modules} - {None}
  for module in sorted(modules):
    group = group_of(module, package)
    if group is not None and group not in layer:
      problems.append(f"{module} belongs to no group of the layer order (add '{group}' to it)")
  for name in sorted(set(layer) - present):
    problems.append(f"layer order names '{name}', which is no subpackage or module of {package}")
  for e in _internal(edges, package):
    a, b = group_of(e.src, package), group_of(e.dst, package)
    if a in layer and b in layer and layer[b] > layer[a]:
      problems.append(f"{e.src} (layer {layer[a]}: {a}) imports {e.dst} (layer {layer[b]}: {b}) "
                      f"at {e.describe()}")
  return problems


def configs_problems(edges, configs: str = CONFIGS) -> list[str]:
  return [f"{e.src} imports {e.dst} at {e.describe()}" for e in edges
          if e.dst.split(".")[0] == configs]


def local_problems(edges, package: str = PACKAGE, allowed=None) -> list[str]:
  allowed = ALLOWED_LOCAL if allowed is None else allowed
  return [f"{e.src} imports {e.dst} inside a function or class at {e.where}"
          for e in _internal(edges, package) if e.local and (e.src, e.dst) not in allowed]


def _report(title, problems):
  return f"{len(problems)} {title}:\n" + "\n".join(f"  {p}" for p in problems)


@pytest.fixture(scope="module")
def graph():
  return collect_imports(REPO)


def test_no_import_cycles(graph):
  _, edges = graph
  problems = cycle_problems(edges)
  assert not problems, _report("import cycle(s) among wm_jax modules", problems)


def test_imports_follow_the_layer_order(graph):
  modules, edges = graph
  groups = read_layer_order(DESIGN.read_text())
  problems = layer_problems(modules, edges, groups)
  order = " < ".join(", ".join(g) for g in groups)
  assert not problems, _report(f"layer-order problem(s) (docs/design.md: {order})", problems)


def test_no_imports_of_configs(graph):
  _, edges = graph
  problems = configs_problems(edges)
  assert not problems, _report("import(s) of the repository's configs package from wm_jax",
                               problems)


def test_wm_jax_imports_sit_at_module_top(graph):
  _, edges = graph
  problems = local_problems(edges)
  assert not problems, _report("function-local import(s) of wm_jax modules (move them to the "
                               "top of the module, or list them in ALLOWED_LOCAL with a reason)",
                               problems)


def test_allow_list_entries_exist(graph):
  _, edges = graph
  local = {(e.src, e.dst) for e in edges if e.local}
  assert sorted(set(ALLOWED_LOCAL) - local) == [], "ALLOWED_LOCAL names imports that are gone"


# --- the checks themselves, on a small package written to tmp_path ----------------------------

def _write(root: pathlib.Path, files: dict[str, str]):
  for rel, text in files.items():
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


CLEAN = {
    "pkg/__init__.py": "",
    "pkg/base.py": "import os\n",
    "pkg/core/__init__.py": "",
    "pkg/core/a.py": "from pkg import base\nfrom . import b\n",
    "pkg/core/b.py": "import pkg.base\nfrom .. import base as _b\n",
    "pkg/top.py": ("from pkg.core import a\nfrom pkg.core.b import thing\n"
                   "def f():\n  import numpy\n"),
}
GROUPS = [["base"], ["core"], ["top"]]


def test_checks_pass_a_clean_package(tmp_path):
  _write(tmp_path, CLEAN)
  modules, edges = collect_imports(tmp_path, "pkg", "cfg")
  assert sorted(modules) == ["pkg", "pkg.base", "pkg.core", "pkg.core.a", "pkg.core.b", "pkg.top"]
  # absolute, `from x import module`, relative (one and two dots) and `from module import name`
  assert sorted((e.src, e.dst) for e in edges) == [
      ("pkg.core.a", "pkg.base"), ("pkg.core.a", "pkg.core.b"), ("pkg.core.b", "pkg.base"),
      ("pkg.core.b", "pkg.base"), ("pkg.top", "pkg.core.a"), ("pkg.top", "pkg.core.b")]
  assert cycle_problems(edges, "pkg") == []
  assert layer_problems(modules, edges, GROUPS, "pkg") == []
  assert configs_problems(edges, "cfg") == []
  assert local_problems(edges, "pkg", allowed={}) == []


def test_checks_find_cycles_layer_violations_configs_and_local_imports(tmp_path):
  _write(tmp_path, dict(CLEAN, **{
      "pkg/base.py": "def f():\n  from pkg.core import a\n",  # local, upward, closes a cycle
      "pkg/core/b.py": "from pkg import top\nimport cfg.thing\n",  # upward, cycle, configs
      "pkg/extra/__init__.py": "",  # in no group
  }))
  modules, edges = collect_imports(tmp_path, "pkg", "cfg")
  cycles = cycle_problems(edges, "pkg")
  assert [c.splitlines()[0] for c in cycles] == [
      "pkg.base -> pkg.core.a -> pkg.base",
      "pkg.core.b -> pkg.top -> pkg.core.b",
      "pkg.core.a -> pkg.core.b -> pkg.top -> pkg.core.a"]
  assert "pkg/base.py:2 (function-local)" in cycles[0]
  layers = layer_problems(modules, edges, GROUPS + [["gone"]], "pkg")
  assert layers == [
      "pkg.extra belongs to no group of the layer order (add 'extra' to it)",
      "layer order names 'gone', which is no subpackage or module of pkg",
      "pkg.base (layer 0: base) imports pkg.core.a (layer 1: core) at pkg/base.py:2 "
      "(function-local)",
      "pkg.core.b (layer 1: core) imports pkg.top (layer 2: top) at pkg/core/b.py:1"]
  assert configs_problems(edges, "cfg") == ["pkg.core.b imports cfg.thing at pkg/core/b.py:2"]
  assert local_problems(edges, "pkg", allowed={}) == [
      "pkg.base imports pkg.core.a inside a function or class at pkg/base.py:2"]
  assert local_problems(edges, "pkg", allowed={("pkg.base", "pkg.core.a"): "test"}) == []


def test_layer_order_line_is_parsed_strictly():
  assert read_layer_order("x\nLayer order: a < b, c < d\n") == [["a"], ["b", "c"], ["d"]]
  with pytest.raises(ValueError, match="exactly one"):
    read_layer_order("no order here")
  with pytest.raises(ValueError, match="more than once"):
    read_layer_order("Layer order: a < b, a")
