"""The layering of `worker/`: no module imports, even indirectly, a module that imports it back.

The graph is read from the source with `ast`, every `.py` file below `worker/` found by walking
the folder (no list of modules to keep up to date). Every import statement counts wherever it
stands: at the top, inside a function (a lazy import) or under `TYPE_CHECKING`, since a lower
layer that reaches up lazily still depends on the higher one. An edge goes to the module named
(`import a.b`, `from a.b import c`) and, for `from a import b` with `b` a module, to `a.b` as
well; the parent packages an import initializes on the way are not edges of their own.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

Graph = Mapping[str, set[str]]


def module_names(package: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package's __init__) for every module below `package`."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        modules[".".join(parts)] = (path, is_package)
    return modules


def imported_names(tree: ast.AST, module: str, is_package: bool) -> Iterable[str]:
    """Every dotted name the module's import statements name, relative ones made absolute."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            yield source
            yield from (f"{source}.{alias.name}" for alias in node.names)


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same package tree it imports."""
    modules = module_names(package)
    graph = {}
    for name, (path, is_package) in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        named = set(imported_names(tree, name, is_package))
        graph[name] = {target for target in named if target in modules and target != name}
    return graph


def find_cycles(graph: Graph) -> list[list[str]]:
    """The import circles: each strongly connected set of two or more modules, sorted."""
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = lowlink[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                lowlink[node] = min(lowlink[node], lowlink[target])
            elif target in on_stack:
                lowlink[node] = min(lowlink[node], index[target])
        if lowlink[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(cycles)


def test_worker_has_no_import_cycles() -> None:
    graph = import_graph(ROOT / "worker")
    assert len(graph) == len(list((ROOT / "worker").rglob("*.py")))
    cycles = find_cycles(graph)
    assert not cycles, "import circles in worker/: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_find_cycles_names_each_circle_once() -> None:
    graph = {
        "a": {"b"},
        "b": {"c"},
        "c": {"a", "d"},
        "d": set(),
        "e": {"f"},
        "f": {"e"},
        "g": {"a"},
    }
    assert find_cycles(graph) == [["a", "b", "c"], ["e", "f"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a", "c"}}) == []


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_graph_counts_relative_lazy_and_type_only_imports(tmp_path: Path) -> None:
    write(tmp_path / "pkg" / "__init__.py", "")
    write(tmp_path / "pkg" / "low.py", "def f():\n    from .sub import high\n")
    write(tmp_path / "pkg" / "sub" / "__init__.py", "")
    write(tmp_path / "pkg" / "sub" / "high.py", "from ..low import f\n")
    write(
        tmp_path / "pkg" / "typed.py",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import other\n",
    )
    write(tmp_path / "pkg" / "other.py", "import pkg.typed\n")
    graph = import_graph(tmp_path / "pkg")
    assert graph["pkg.low"] == {"pkg.sub", "pkg.sub.high"}
    assert graph["pkg.sub.high"] == {"pkg.low"}
    assert find_cycles(graph) == [["pkg.low", "pkg.sub.high"], ["pkg.other", "pkg.typed"]]


def test_every_package_of_worker_is_shipped() -> None:
    """pyproject.toml lists the packages a wheel carries; one left out installs from a checkout
    (editable) and fails to import from the wheel and the image."""
    import tomllib

    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    packages = {
        name for name, (_, is_package) in module_names(ROOT / "worker").items() if is_package
    }
    assert packages <= listed
