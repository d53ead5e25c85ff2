"""The layout the README promises: a library under code/al/ that imports no script, imports
at the top of modules only (TensorFlow, Keras and Ray may stay lazy), no import cycle, and one
module per strategy family under code/al/strategies/ that leans on nothing but its base."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from al.data_common import REPO_ROOT

CODE = REPO_ROOT / "code"
LIBRARY = sorted((CODE / "al").rglob("*.py"))
SCRIPTS = sorted(CODE.glob("*.py"))
SCRIPT_NAMES = {p.stem for p in SCRIPTS}


def module_name(path: Path) -> str:
    """``code/al/strategies/base.py`` -> ``al.strategies.base``; a package's ``__init__.py`` -> the package."""
    parts = path.relative_to(CODE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in LIBRARY}
LIBRARY_NAMES = set(MODULES) - {"al"}
STRATEGY_MODULES = sorted(n for n in LIBRARY_NAMES if n.startswith("al.strategies."))


def absolute_module(path: Path, node: ast.ImportFrom) -> str:
    """The module a ``from ... import`` names, with a relative one (``from .base import x``)
    resolved against the package of ``path``, so relative imports obey the same rules."""
    if not node.level:
        return node.module or ""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[:len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def within(name: str, modules) -> bool:
    """Whether ``name`` is one of ``modules`` or a submodule of one."""
    return any(name == m or name.startswith(m + ".") for m in modules)


def project_imports(path: Path) -> list[tuple[str, bool]]:
    """(module, at top level?) for every import of a project module (al.*, or a script) in ``path``."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = absolute_module(path, node)
            names = [module] + [f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in LIBRARY_NAMES]
        else:
            continue
        for name in names:
            if name in LIBRARY_NAMES or name in SCRIPT_NAMES or name == "al":
                found.append((name, id(node) in top))
    return found


@pytest.mark.parametrize("path", LIBRARY + SCRIPTS, ids=lambda p: str(p.relative_to(CODE)))
def test_project_modules_are_imported_at_the_top_only(path):
    inner = [name for name, at_top in project_imports(path) if not at_top]
    assert not inner, f"{path.name} imports project modules inside functions: {inner}"


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(CODE)))
def test_the_library_imports_no_script(path):
    scripts = [name for name, _ in project_imports(path) if name in SCRIPT_NAMES]
    assert not scripts, f"al/{path.name} imports the scripts {scripts}"


def test_the_library_has_no_import_cycle():
    graph = {name: {imported for imported, _ in project_imports(path) if imported in LIBRARY_NAMES}
             for name, path in MODULES.items() if name != "al"}
    state: dict[str, str] = {}

    def visit(node, trail):
        if state.get(node) == "open":
            raise AssertionError("import cycle: " + " -> ".join(trail + [node]))
        if state.get(node) == "done":
            return
        state[node] = "open"
        for nxt in sorted(graph[node]):
            visit(nxt, trail + [node])
        state[node] = "done"

    for node in sorted(graph):
        visit(node, [])


def test_dependencies_point_one_way():
    """cli -> grid -> loop -> {strategies -> keras_ops, runs}: nothing lower imports anything higher."""
    order = ["al.cli", "al.grid", "al.loop", "al.strategies", "al.keras_ops"]
    for i, module in enumerate(order):
        package = [path for name, path in MODULES.items() if name == module or name.startswith(module + ".")]
        imported = {name for path in package for name, _ in project_imports(path)}
        higher = {name for name in imported if within(name, order[:i]) and not within(name, [module])}
        assert not higher, f"{module} imports {higher}, which depend on it"
    assert not {name for name, _ in project_imports(CODE / "al" / "runs.py")} - {"al.data_common"}


def test_there_is_one_module_per_strategy_family():
    assert {"al.strategies.base", "al.strategies.uncertainty", "al.strategies.mc_dropout",
            "al.strategies.coreset", "al.strategies.badge", "al.strategies.typiclust"} <= set(STRATEGY_MODULES)


@pytest.mark.parametrize("module", STRATEGY_MODULES)
def test_a_strategy_module_imports_only_the_base_and_the_model_side(module):
    """A strategy family leans on :mod:`al.strategies.base` and :mod:`al.keras_ops` only, never on
    another family (shared code goes to base), so each can be read and replaced on its own."""
    allowed = {"al.strategies.base", "al.keras_ops"} - {module}
    imported = {name for name, _ in project_imports(MODULES[module])}
    assert imported <= allowed, f"{module} imports {sorted(imported - allowed)}"


@pytest.mark.parametrize("source, expected", [
    ("from .base import x", ["al.strategies.base"]),
    ("from . import badge", ["al.strategies", "al.strategies.badge"]),
    ("from ..loop import f", ["al.loop"]),
])
def test_relative_imports_are_resolved_so_they_obey_the_same_rules(monkeypatch, source, expected):
    path = CODE / "al" / "strategies" / "coreset.py"
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: source + "\n")
    assert [name for name, _ in project_imports(path)] == expected


def test_every_registered_strategy_lives_in_a_strategy_module():
    from al.strategies import STRATEGIES
    homes = {cls.__module__ for cls in STRATEGIES.values()}
    assert homes <= set(STRATEGY_MODULES) - {"al.strategies.base"}, homes
