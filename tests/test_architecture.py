"""The package's import graph: module-level imports between dfbench's modules form no cycle, so the layers
(cli → runner/suite → tasks, backbones → features, cache, capture) can be read from the import blocks."""

import ast
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
