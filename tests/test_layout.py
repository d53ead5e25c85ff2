"""The layout the README promises: a library under code/al/ that imports no script, imports
at the top of modules only (TensorFlow, Keras and Ray may stay lazy), and no import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from al.data_common import REPO_ROOT

CODE = REPO_ROOT / "code"
LIBRARY = sorted((CODE / "al").glob("*.py"))
SCRIPTS = sorted(CODE.glob("*.py"))
SCRIPT_NAMES = {p.stem for p in SCRIPTS}
LIBRARY_NAMES = {f"al.{p.stem}" for p in LIBRARY if p.stem != "__init__"}


def project_imports(path: Path) -> list[tuple[str, bool]]:
    """(module, at top level?) for every import of a project module (al.*, or a script) in ``path``."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + ([f"{node.module}.{a.name}" for a in node.names] if node.module == "al" else [])
        else:
            continue
        for name in names:
            if name in LIBRARY_NAMES or name in SCRIPT_NAMES or name == "al":
                found.append((name, id(node) in top))
    return found


@pytest.mark.parametrize("path", LIBRARY + SCRIPTS, ids=lambda p: p.name)
def test_project_modules_are_imported_at_the_top_only(path):
    inner = [name for name, at_top in project_imports(path) if not at_top]
    assert not inner, f"{path.name} imports project modules inside functions: {inner}"


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: p.name)
def test_the_library_imports_no_script(path):
    scripts = [name for name, _ in project_imports(path) if name in SCRIPT_NAMES]
    assert not scripts, f"al/{path.name} imports the scripts {scripts}"


def test_the_library_has_no_import_cycle():
    graph = {f"al.{p.stem}": {name for name, _ in project_imports(p) if name in LIBRARY_NAMES}
             for p in LIBRARY if p.stem != "__init__"}
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
        imported = {name for name, _ in project_imports(CODE / "al" / f"{module[3:]}.py")}
        higher = imported & set(order[:i])
        assert not higher, f"{module} imports {higher}, which depend on it"
    assert not {name for name, _ in project_imports(CODE / "al" / "runs.py")} - {"al.data_common"}
