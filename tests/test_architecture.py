"""The package's import graph (read from the source, not by importing): layers import downwards only, no cycles,
no package import hidden inside a function, and the attacker's code never depends on the lock."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "hf_encoderlock"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

# Lowest first; a module may import from its own layer and the layers below it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("_paths", "_files", "_utils"),
    ("encoders", "victim", "data"),
    ("probing",),
    ("hub",),
    ("lock",),
    ("experiment", "audit"),
    ("cli",),
)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in ROOT.rglob("*.py")}


MODULES = all_modules()


def resolve(importer: str, is_package: bool, node: ast.ImportFrom | ast.Import) -> list[str]:
    """Package modules that an import statement loads (a package counts as its ``__init__``)."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        if node.level:
            base = importer.split(".") if is_package else importer.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        # ``from pkg import name`` loads pkg.name when that is a module, else pkg
        targets = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in MODULES else prefix for a in node.names]
    return sorted({t for t in targets if t == PACKAGE or t.startswith(PACKAGE + ".")})


def import_edges() -> tuple[dict[str, set[str]], list[str]]:
    """(module -> package modules it imports, function-level package imports as 'module:line')."""
    edges: dict[str, set[str]] = {}
    hidden: list[str] = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        is_package = path.name == "__init__.py"
        edges[name] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, (ast.Import, ast.ImportFrom)) and resolve(name, is_package, inner):
                        hidden.append(f"{name}:{inner.lineno}")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges[name].update(t for t in resolve(name, is_package, node) if t != name)
    return edges, hidden


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None  # the top-level package: the lazy export table above every layer
    for index, layer in enumerate(LAYERS):
        if parts[1] in layer:
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


EDGES, HIDDEN = import_edges()


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)


def test_no_package_import_inside_a_function():
    assert HIDDEN == [], f"function-level imports of package modules (move them to the top): {HIDDEN}"


def test_layers_import_downwards_only():
    upward = [
        f"{src} (layer {layer_of(src)}) imports {dst} (layer {layer_of(dst)})"
        for src, targets in EDGES.items()
        for dst in targets
        if layer_of(src) is not None and layer_of(dst) is not None and layer_of(dst) > layer_of(src)
    ]
    assert upward == []


def test_probing_never_imports_the_lock():
    leaks = [
        (src, dst)
        for src, targets in EDGES.items()
        if src.startswith(f"{PACKAGE}.probing")
        for dst in targets
        if dst.startswith(f"{PACKAGE}.lock")
    ]
    assert leaks == []


def private_imports(tree: ast.Module) -> list[str]:
    """Names starting with one underscore that a module imports from the package (``_files`` and ``_utils`` are
    modules, not private names)."""
    return [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith(PACKAGE))
        for alias in node.names
        if alias.name.startswith("_") and not alias.name.startswith("__") and alias.name not in ("_files", "_utils")
    ]


def test_no_module_imports_another_modules_private_names():
    leaks = {name: found for name, path in MODULES.items() if (found := private_imports(ast.parse(path.read_text())))}
    assert leaks == {}, f"give these names a public name in the module that owns them: {leaks}"


def test_private_import_finder_finds_them():
    tree = ast.parse("from .card import _domain_name, is_hub_id\nfrom . import _files\nfrom os import _exit\n")
    assert private_imports(tree) == ["_domain_name"]


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path, or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycles():
    assert find_cycle(EDGES) is None, " -> ".join(find_cycle(EDGES))


@pytest.mark.parametrize(
    "edges, cyclic",
    [({"a": {"b"}, "b": {"c"}, "c": set()}, False), ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True)],
)
def test_cycle_finder_finds_cycles(edges, cyclic):
    assert (find_cycle(edges) is not None) == cyclic


def test_relative_imports_resolve_to_modules():
    function = ast.parse("def f():\n    from ..lock import trainer\n").body[0]
    node = next(n for n in ast.walk(function) if isinstance(n, ast.ImportFrom))
    assert resolve(f"{PACKAGE}.probing.suite", False, node) == [f"{PACKAGE}.lock.trainer"]
    package_init = ast.parse("from .base import LockHeads").body[0]
    assert resolve(f"{PACKAGE}.lock.objectives", True, package_init) == [f"{PACKAGE}.lock.objectives.base"]
