"""The package's shape, read from the source (docs/architecture.md): the layer rule, no import
circles, nothing importing ``longtail/__init__.py`` back, and the order of the sub-packages of
``longtail.data`` and ``longtail.engine``.

The import graph is built with ``ast`` from every module under ``src/longtail``, function-level
imports included (a lazy import is still a dependency); imports under ``if TYPE_CHECKING:`` are
left out, since they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
LIBRARY = ("longtail.losses", "longtail.regularizers", "longtail.data", "longtail.models", "longtail.metrics",
           "longtail._checks", "longtail._version")
TOOL = ("longtail.engine", "longtail.cli", "longtail.report")
# Each sub-package may import only the ones before it (and itself); docs/architecture.md says why.
ORDER = {
    "longtail.data": ("seeds", "splits", "transforms", "datasets", "sampling", "loading"),
    "longtail.engine": ("errors", "methods", "config", "runtime", "rundir", "training", "evaluation", "compare"),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in SRC.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(name: str, path: Path, modules: dict) -> set[str]:
    """Modules of the source tree that ``name`` imports (``from a import b``: ``a.b`` if that is a module)."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found = set()

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for inner in child.orelse:
                    visit_node(inner)
                continue
            visit_node(child)

    def visit_node(node):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            for alias in node.names:
                candidate = f"{source}.{alias.name}"
                found.add(candidate if candidate in modules else source)
        visit(node)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return {target for target in found if target in modules and target != name}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _under(module: str, packages) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_the_graph_sees_the_package(graph):
    """Guard against a vacuous pass: the walk finds the modules and their known imports."""
    assert len(graph) > 60
    assert "longtail.engine.training.trainer" in graph
    assert "longtail.engine.methods" in graph["longtail.engine.training.trainer"]
    assert "longtail.data.seeds" in graph["longtail.data.sampling.samplers"]


def test_library_never_imports_the_engine_cli_or_report(graph):
    offending = sorted(f"{module} -> {target}" for module, targets in graph.items() if _under(module, LIBRARY)
                       for target in targets if _under(target, TOOL))
    assert not offending, "layer 1 imports layer 2:\n" + "\n".join(offending)


def test_nothing_imports_the_package_root_back(graph):
    offending = sorted(module for module, targets in graph.items() if "longtail" in targets
                       and module != "longtail.__main__")
    assert not offending, f"these modules import longtail/__init__.py: {offending}"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, result = {}, {}, [], set(), []
    counter = [0]

    def connect(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return result


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles(graph):
    # A package's __init__ re-exporting its own modules is not a circle: the edges from the modules
    # to their own package (implicit in Python) are not in the graph, and the __init__ files import
    # only downwards.
    cycles = _cycles(graph)
    assert not cycles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize("parent", sorted(ORDER))
def test_sub_packages_import_only_earlier_ones(graph, parent):
    order = ORDER[parent]
    present = {p.name if p.is_dir() else p.stem for p in (SRC / parent.replace(".", "/")).iterdir()
               if p.name != "__init__.py" and p.name != "__pycache__" and (p.is_dir() or p.suffix == ".py")}
    present.discard("builtin")  # data/datasets/builtin/ holds the embedded dataset's file, no code
    assert present <= set(order), f"{parent}: sub-packages / modules not in the documented order: {present - set(order)}"

    def rank(module):
        rest = module[len(parent) + 1:].split(".")[0]
        return order.index(rest) if rest in order else None

    offending = []
    for module, targets in graph.items():
        if not module.startswith(parent + "."):
            continue
        for target in targets:
            if target.startswith(parent + ".") and rank(target) is not None and rank(target) > rank(module):
                offending.append(f"{module} -> {target}")
    assert not offending, f"{parent}: imports of a later sub-package:\n" + "\n".join(sorted(offending))
