"""The package layout: no import cycles between modules, and sub-packages that import only the
layers below them, so that the package reads in the order a run takes.

The import graph is read with `ast` from the source, not by importing it. Every import counts: at
the top of a module, inside a function (the lazy imports that keep `transfer --help` free of
torch) and under `if TYPE_CHECKING:`; a lazy import that closes a cycle is still a cycle, one
refactoring away from an ImportError.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "transfer_cli"

# lowest first; a module may import its own layer and the ones before it
LAYERS = ("transfer_cli", "core", "dist", "config", "runs", "data", "models", "weights", "eval", "train", "report",
          "export", "track", "recipes", "sweep", "cli")
# imports that go up a layer on purpose, each with its reason
UPWARD = {
    ("transfer_cli.core.console", "transfer_cli.dist.distributed"):
        "a Console on a rank other than 0 stays silent; imported when a Console is made",
    ("transfer_cli.train.trainer", "transfer_cli.recipes.parts"): "type annotation only (TYPE_CHECKING)",
    ("transfer_cli.report.content", "transfer_cli.recipes.parts"): "type annotations only (TYPE_CHECKING)",
}


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = PACKAGE) -> dict[str, dict[str, int]]:
    """module -> {imported module of the package: line of the first such import}."""
    files = {module_name(path, root): path for path in sorted(root.rglob("*.py"))}
    graph: dict[str, dict[str, int]] = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        edges = graph.setdefault(name, {})
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the importing module's package
                    package = name.split(".") if is_package else name.split(".")[:-1]
                    package = package[:len(package) - node.level + 1]
                    base = ".".join(package + ([base] if base else []))
                # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base for alias in node.names]
            for target in targets:
                if target in files and target != name:
                    edges.setdefault(target, node.lineno)
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle through each strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph.get(node, {}):
            if succ not in index:
                connect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_one_cycle(graph, set(component), component[0]) for component in components]


def _one_cycle(graph: dict[str, dict[str, int]], members: set[str], start: str) -> list[str]:
    """A shortest path start -> ... -> start inside one component (breadth first)."""
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for succ in sorted(graph[node]):
                if succ == start:
                    return paths[node] + [start]
                if succ in members and succ not in paths:
                    paths[succ] = paths[node] + [succ]
                    following.append(succ)
        frontier = following
    raise AssertionError(f"no cycle through {start}")


def describe(graph: dict[str, dict[str, int]], cycle: list[str]) -> str:
    return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"


def layer(module: str) -> int:
    """transfer_cli (the version) is the bottom layer, cli.py and __main__.py the top one."""
    parts = module.split(".")
    if len(parts) == 1:
        return LAYERS.index("transfer_cli")
    return LAYERS.index("cli" if parts[1] == "__main__" else parts[1])


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert len(graph) > 60  # the whole package was read
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(describe(graph, cycle) for cycle in found)


def test_sub_packages_import_only_the_layers_below() -> None:
    graph = import_graph()
    upward = [f"{a}:{line} imports {b}" for a, edges in sorted(graph.items()) for b, line in edges.items()
              if layer(b) > layer(a) and (a, b) not in UPWARD]
    assert not upward, "imports that go up the layers " + " < ".join(LAYERS) + ":\n" + "\n".join(upward)
    assert all(b in graph.get(a, {}) for a, b in UPWARD), "an allowed upward import is gone: drop it from UPWARD"


def test_every_module_has_a_layer() -> None:
    for module in import_graph():
        layer(module)  # raises ValueError for a sub-package missing from LAYERS


@pytest.mark.parametrize("extra", ["top", "lazy"])
def test_a_cycle_is_found_and_named(tmp_path: Path, extra: str) -> None:
    root = tmp_path / "transfer_cli"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "sub" / "__init__.py").write_text("")
    (root / "a.py").write_text("from transfer_cli.sub import b\n")
    back = "from transfer_cli.a import thing\n"
    (root / "sub" / "b.py").write_text(back if extra == "top" else f"def f():\n    {back}")
    graph = import_graph(root)
    assert cycles(graph) == [["transfer_cli.a", "transfer_cli.sub.b", "transfer_cli.a"]]
    assert describe(graph, cycles(graph)[0]).startswith("transfer_cli.a (line 1) -> transfer_cli.sub.b (line")
