"""The package's import graph: acyclic, no import hidden in a function, the loop builds nothing."""

import ast
import os

import hardlabel_jax

PACKAGE_DIR = os.path.dirname(hardlabel_jax.__file__)
# Producers of artefacts (layer 2) and the plan above them: the training loop imports none.
PRODUCERS = {
    "hardlabel_jax.teacher", "hardlabel_jax.relabel", "hardlabel_jax.distill",
    "hardlabel_jax.scoring", "hardlabel_jax.drift", "hardlabel_jax.plan", "hardlabel_jax.study"
}
# Modules that need an optional dependency, imported where it is used so the rest runs without.
OPTIONAL = {"hardlabel_jax.benchmarks.torch_models"}  # torch: only with the `bench` extra


def _modules() -> dict[str, str]:
  """Module name → file path of every module of the package."""
  out = {}
  for root, _, files in os.walk(PACKAGE_DIR):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(root, name)
        rel = os.path.relpath(path, os.path.dirname(PACKAGE_DIR))[:-3].replace(os.sep, ".")
        out[rel.removesuffix(".__init__")] = path
  return out


def _imported(node: ast.AST, modules: dict[str, str]) -> list[str]:
  """The package modules an import statement names (`from pkg import mod` names `pkg.mod`)."""
  if isinstance(node, ast.Import):
    return [a.name for a in node.names if a.name in modules]
  if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
    names = [f"{node.module}.{a.name}" for a in node.names]
    found = [n for n in names if n in modules]
    return found or ([node.module] if node.module in modules else [])
  return []


def _graph() -> tuple[dict[str, set[str]], list[str]]:
  """Top-level import edges between package modules, and imports made inside functions."""
  modules = _modules()
  edges, nested = {m: set() for m in modules}, []
  for module, path in modules.items():
    with open(path) as f:
      tree = ast.parse(f.read(), path)
    top = set(map(id, tree.body))
    for node in ast.walk(tree):
      targets = _imported(node, modules)
      if not targets:
        continue
      if id(node) in top:
        edges[module].update(t for t in targets if t != module)
      elif set(targets) - OPTIONAL:
        nested.append(f"{module}:{node.lineno} imports {', '.join(targets)}")
  return edges, nested


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
  """One import cycle, or None (depth-first search with colours)."""
  colour, stack = {}, []

  def visit(node):
    colour[node] = "grey"
    stack.append(node)
    for nxt in sorted(edges[node]):
      if colour.get(nxt) == "grey":
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in colour:
        found = visit(nxt)
        if found:
          return found
    stack.pop()
    colour[node] = "black"
    return None

  for node in sorted(edges):
    if node not in colour:
      found = visit(node)
      if found:
        return found
  return None


def test_graph_sees_real_edges():
  edges, _ = _graph()
  assert "hardlabel_jax.trainer" in edges["hardlabel_jax.plan"]
  assert "hardlabel_jax.teacher" in edges["hardlabel_jax.plan"]
  assert "hardlabel_jax.inference" in edges["hardlabel_jax.relabel"]


def test_cycle_finder_finds_a_cycle():
  assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert _cycle({"a": {"b"}, "b": set()}) is None


def test_package_import_graph_is_acyclic():
  edges, _ = _graph()
  assert _cycle(edges) is None, f"import cycle: {' -> '.join(_cycle(edges))}"


def test_no_package_import_inside_a_function():
  _, nested = _graph()
  assert not nested, "imports inside functions: " + "; ".join(nested)


def test_training_loop_imports_no_producer():
  edges, _ = _graph()

  def reachable(start):
    seen, todo = set(), [start]
    while todo:
      for nxt in edges[todo.pop()]:
        if nxt not in seen:
          seen.add(nxt)
          todo.append(nxt)
    return seen

  assert not reachable("hardlabel_jax.trainer") & PRODUCERS
  assert not reachable("hardlabel_jax.inference") & PRODUCERS
