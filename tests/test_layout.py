"""The package's layers: no import circles, few imports that run up the layers, few loose modules.

The layers, lowest first (docs/ARCHITECTURE.md draws them): errors, settings; data, models, runtime; classifiers;
report; training, inference; qupath; projects; requests, demo, docs, batch; cli. Imports under ``if TYPE_CHECKING``
are for type checkers only and do not count.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "dlpixel"

LAYER = {
    "errors": 0, "_version": 0, "config": 1,
    "data": 2, "models": 2, "runtime": 2,
    "classifiers": 3,
    "report": 4,
    "training": 5, "inference": 5,
    "qupath": 6,
    "projects": 7,
    "requests": 8, "demo": 8, "docs_gen": 8, "batch": 8,
    "cli": 9,
    "__init__": 10, "__main__": 10,
}


def _modules() -> dict[str, tuple[Path, bool]]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return mods


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(mods: dict[str, tuple[Path, bool]]) -> list[tuple[str, str, bool]]:
    """(importer, imported module, at module scope) for every relative import outside TYPE_CHECKING blocks."""
    found = []
    for name, (path, is_pkg) in mods.items():
        package = name if is_pkg else name.rsplit(".", 1)[0]
        tree = ast.parse(path.read_text())
        top_level = {id(n) for n in tree.body}

        def visit(node: ast.AST, package: str = package, name: str = name, top_level: set = top_level) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.If) and _is_type_checking(child):
                    continue
                if isinstance(child, ast.ImportFrom) and child.level:
                    base = package.split(".")
                    base = base[: len(base) - child.level + 1] if child.level > 1 else base
                    target = ".".join(base + ([child.module] if child.module else []))
                    for alias in child.names:
                        full = f"{target}.{alias.name}"
                        found.append((name, full if full in mods else target, id(child) in top_level))
                visit(child)

        visit(tree)
    return found


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def dfs(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt == node:
                continue
            if state.get(nxt) == 1:
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                dfs(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            dfs(node, [])
    return found


def test_every_module_has_a_layer():
    parts = {_part(m) for m in _modules()}
    assert parts <= set(LAYER), f"modules outside the layer table: {sorted(parts - set(LAYER))}"


def test_no_import_circles_even_through_deferred_imports():
    mods = _modules()
    edges: dict[str, set[str]] = defaultdict(set)
    for src, dst, _ in _imports(mods):
        # A package's __init__ re-exporting its own modules is not a circle.
        if src != dst and not (mods[src][1] and dst.startswith(src + ".")):
            edges[src].add(dst)
    assert _cycles(edges) == []


def test_at_most_four_imports_run_up_the_layers():
    upward = sorted({(s, d) for s, d, _ in _imports(_modules()) if LAYER[_part(s)] < LAYER[_part(d)]})
    assert len(upward) <= 4, upward


def test_training_and_inference_never_import_each_other():
    pairs = {(_part(s), _part(d)) for s, d, _ in _imports(_modules())}
    assert ("training", "inference") not in pairs and ("inference", "training") not in pairs


def test_at_most_six_loose_modules_at_the_top():
    loose = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in {"__init__", "__main__", "errors"})
    assert len(loose) <= 6, loose
