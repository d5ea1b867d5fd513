"""The package's shape (docs/architecture.md): no import circle, no upward import, no module over
400 lines. Imports are read from the source, those inside functions included."""

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fdrl_jax")
MAX_LINES = 400

# The floors of docs/architecture.md: a module imports from its own floor or below.
FLOORS = {
    0: ["registry", "conv", "divergences", "losses", "flows", "monoflow", "images", "torch_files",
        "torch_objects", "scores", "optim", "configs"],
    1: ["parallel", "files", "config_checks", "workdir", "metrics_log", "bundled", "preprocessing",
        "readers", "tfds_sources", "datasets", "models", "generators", "priors", "prior_fit",
        "inception", "inception_weights", "robust_resnet", "reference_weights", "reference_config",
        "tfds_build", "stops"],
    2: ["classifier", "sampler", "conditional", "sampling", "fdrl", "gan"],
    3: ["features", "feature_stats", "metric_table", "evaluate"],
    4: ["methods"],
    5: ["checkpoints", "train_hooks", "run_lib"],
    6: ["loading", "figures", "figure_arrays", "modes", "import_reference", "convert_inception"],
    7: ["main", "__init__"],
}
FLOOR = {module: floor for floor, modules in FLOORS.items() for module in modules}


def _modules() -> list[str]:
  return sorted(name[:-3] for name in os.listdir(PACKAGE) if name.endswith(".py"))


def _imports(module: str) -> set[str]:
  """The fdrl_jax modules ``module`` imports, anywhere in its source."""
  tree = ast.parse(open(os.path.join(PACKAGE, f"{module}.py")).read())
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module:
      if node.module == "fdrl_jax":
        found.update(alias.name for alias in node.names)
      elif node.module.startswith("fdrl_jax."):
        found.add(node.module.split(".")[1])
    elif isinstance(node, ast.Import):
      found.update(alias.name.split(".")[1] for alias in node.names
                   if alias.name.startswith("fdrl_jax."))
  return found - {module}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import circle of ``graph``, or None."""
  state: dict[str, int] = {}  # 1: on the current path, 2: done
  path: list[str] = []

  def visit(node: str) -> list[str] | None:
    state[node] = 1
    path.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 1:
        return path[path.index(nxt):] + [nxt]
      if nxt not in state and (found := visit(nxt)):
        return found
    state[node] = 2
    path.pop()
    return None

  for node in sorted(graph):
    if node not in state and (found := visit(node)):
      return found
  return None


def test_every_module_has_a_floor():
  missing = [m for m in _modules() if m not in FLOOR]
  assert not missing, f"add {missing} to FLOORS here and to docs/architecture.md"


def test_no_import_circle():
  graph = {m: _imports(m) for m in _modules()}
  cycle = _cycle(graph)
  assert cycle is None, " -> ".join(cycle)


def test_no_upward_import():
  # __init__ imports the pure floor eagerly and the rest (fdrl_jax.load) on first use.
  upward = [f"{m} (floor {FLOOR[m]}) imports {i} (floor {FLOOR[i]})"
            for m in _modules() if m != "__init__" for i in sorted(_imports(m))
            if i in FLOOR and FLOOR[i] > FLOOR[m]]
  assert not upward, "; ".join(upward)


def test_no_module_over_400_lines():
  long = {m: n for m in _modules()
          if (n := len(open(os.path.join(PACKAGE, f"{m}.py")).read().splitlines())) > MAX_LINES}
  assert not long, f"split these along a seam: {long}"


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"a2"}, "a2": set(), "b": {"b"}}, ["b", "b"]),
])
def test_the_circle_finder_finds_circles(graph, expected):
  assert _cycle(graph) == expected


def test_every_module_has_an_api_page_in_the_site():
  root = os.path.dirname(PACKAGE)
  nav = open(os.path.join(root, "mkdocs.yml")).read()
  missing = [m for m in _modules() if m != "__init__"
             and (not os.path.exists(os.path.join(root, "docs", "api", f"{m}.md"))
                  or f"api/{m}.md" not in nav)]
  assert not missing, f"add docs/api/<module>.md (::: fdrl_jax.<module>) and a nav line: {missing}"


def test_test_files_share_helpers_not_each_other():
  """What several test files use lives in tests/helpers.py (or a helper module such as
  torch_format), never in another test file."""
  tests = os.path.dirname(os.path.abspath(__file__))
  borrowed = {}
  for name in sorted(os.listdir(tests)):
    if name.startswith("test_") and name.endswith(".py"):
      with open(os.path.join(tests, name)) as f:
        tree = ast.parse(f.read())
      for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):  # from tests.test_x import y, from tests import test_x
          modules = [node.module or "", *(a.name for a in node.names)]
        elif isinstance(node, ast.Import):
          modules = [a.name for a in node.names]
        else:
          continue
        if any(m.split(".")[-1].startswith("test_") for m in modules):
          borrowed.setdefault(name, []).append(ast.unparse(node))
  assert not borrowed, f"move these into tests/helpers.py: {borrowed}"
