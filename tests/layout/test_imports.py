"""The package's import graph, read from the source: no import circles among rkserve's
modules (type-only imports included), and no import of an rkserve module inside a function.

A circle means two modules need each other: a third, smaller module is missing. An import
inside a function hides a dependency from the reader and from this test."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

PACKAGE = Path(__file__).resolve().parents[2] / "rkserve"


def modules() -> Dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: Set[str]) -> Iterator[Tuple[str, ast.stmt, bool]]:
    """Every rkserve module ``name`` imports: (module, statement, inside a function)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    inside = {
        id(node)
        for fn in ast.walk(tree)
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for node in ast.walk(fn)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            # `from pkg import module` names a module; `from module import name` does not
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            if target in known and target != name:
                yield target, node, id(node) in inside


def graph() -> Dict[str, Set[str]]:
    known = modules()
    return {
        name: {target for target, _, _ in imports(name, path, set(known))}
        for name, path in known.items()
    }


def cycles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """Tarjan's strongly connected components with more than one module."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    found: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_circles() -> None:
    assert cycles(graph()) == []


def test_no_imports_of_rkserve_modules_inside_functions() -> None:
    known = modules()
    inner = [
        f"{path.relative_to(PACKAGE.parent)}:{node.lineno} imports {target}"
        for name, path in known.items()
        for target, node, inside in imports(name, path, set(known))
        if inside
    ]
    assert inner == []


def test_kernels_know_nothing_of_specs_backends_or_the_daemon() -> None:
    edges = graph()
    allowed = {"rkserve.errors"}
    for name, targets in edges.items():
        if name.startswith("rkserve.kernels"):
            outside = {t for t in targets if not t.startswith("rkserve.kernels")} - allowed
            assert not outside, f"{name} imports {sorted(outside)}"


def test_the_graph_sees_imports() -> None:
    """The reader itself: a known edge is found (a broken reader would pass everything)."""
    edges = graph()
    assert "rkserve.errors" in edges["rkserve.server"]
    assert "rkserve.kernels.image" in edges["rkserve.tasks.vision"]
