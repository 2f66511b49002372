"""The package's import graph: module-level imports between dfbench's modules form no cycle, so the layers
(cli → runner/suite → tasks, backbones → features, cache, capture) can be read from the import blocks."""

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dfbench"


def module_graph() -> dict[str, set[str]]:
    """Module → the dfbench modules it imports at module level (``if TYPE_CHECKING:`` blocks left out)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            else:
                continue
            graph[name] |= {target for target in targets if target in modules and target != name}
    return graph


def test_module_level_imports_form_no_cycle():
    graph, state, cycles = module_graph(), {}, []

    def visit(name, path):
        state[name] = "open"
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert len(graph) > 80 and not cycles, cycles


def test_the_graph_sees_real_imports():
    """A check on the checker: known module-level imports are in the graph."""
    graph = module_graph()
    assert "dfbench.results" in graph["dfbench.gate"] and "dfbench.runner" in graph["dfbench.suite"]
    assert "dfbench.perf.common" in graph["dfbench.perf.recipes"]


MAX_LINES = 400


def test_no_module_is_over_400_lines():
    """One concept per module: a module that outgrows 400 lines mixes jobs and is split."""
    sizes = {str(path.relative_to(PACKAGE.parent)): len(path.read_text().splitlines())
             for path in PACKAGE.rglob("*.py")}
    assert len(sizes) > 80
    assert {path: lines for path, lines in sizes.items() if lines > MAX_LINES} == {}


def test_the_runner_cli_and_results_name_no_task_or_protocol():
    """Tasks are plugins: the generic layers know them through the task contract (dfbench/tasks/base.py) and
    their help comes from the tasks' metadata, so no string in their code names a built-in task or protocol
    (docstrings aside, and the program's example session, ``DESCRIPTION`` in dfbench/cli/__init__.py)."""
    names = ("spair", "ade20k", "cityscapes", "horse21", "nyuv2", "dift-nn", "patch-nn", "gdf-conv", "gdf-uper",
             "cleandift-linear", "probe3d-dpt", "gdf-resplit")
    pattern = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, names)) + r")(?![\w-])")
    generic = ["runner.py", "resolve.py", "results.py", "gate.py", "suite.py", "migrations.py", "sweep.py",
               *(f"cli/{path.name}" for path in (PACKAGE / "cli").glob("*.py"))]
    found = []
    for module in generic:
        tree = ast.parse((PACKAGE / module).read_text())
        skipped = {id(node) for node in docstrings(tree)}
        skipped |= {id(node.value) for node in tree.body if isinstance(node, ast.Assign)
                    and any(isinstance(target, ast.Name) and target.id == "DESCRIPTION" for target in node.targets)}
        found += [(module, node.lineno, match) for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skipped
                  for match in pattern.findall(node.value)]
    assert len(generic) > 15 and found == []


def test_the_name_check_finds_names():
    """A check on the checker: the built-in registry lines name every task."""
    tree = ast.parse((PACKAGE / "builtins.py").read_text())
    strings = " ".join(node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
                       and isinstance(node.value, str) and id(node) not in {id(d) for d in docstrings(tree)})
    assert {"spair", "ade20k", "cityscapes", "horse21", "nyuv2"} <= set(re.findall(r"[\w-]+", strings))


def docstrings(tree: ast.Module) -> list[ast.Constant]:
    """Every docstring node of ``tree`` (module, classes, functions)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                found.append(first.value)
    return found
