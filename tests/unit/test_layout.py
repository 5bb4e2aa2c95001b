"""The layout rule of docs: SQL lives in monitor/store (and migrations/), nowhere else: no other
module imports SQLAlchemy or reaches for the store's engine."""

from __future__ import annotations

import ast
from pathlib import Path

import monitor

PACKAGE = Path(monitor.__file__).parent


def imports_sqlalchemy(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "sqlalchemy" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "sqlalchemy":
            return True
    return False


def touches_an_engine(path: Path) -> bool:
    """`x.engine` or `getattr(x, "engine")`: the store's engine read from outside it."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute) and node.attr == "engine":
            return True
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
                and len(node.args) > 1 and isinstance(node.args[1], ast.Constant) and node.args[1].value == "engine"):
            return True
    return False


def outside_the_store(check) -> set[str]:
    return {
        path.relative_to(PACKAGE).as_posix() for path in sorted(PACKAGE.rglob("*.py"))
        if path.relative_to(PACKAGE).parts[0] != "store" and check(path)
    }


def test_only_the_store_imports_sqlalchemy():
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 20  # the walk found the package
    outside = {
        path.relative_to(PACKAGE).as_posix() for path in modules
        if path.relative_to(PACKAGE).parts[0] != "store" and imports_sqlalchemy(path)
    }
    assert not outside, f"SQLAlchemy imported outside monitor/store: {sorted(outside)}"
    assert imports_sqlalchemy(PACKAGE / "store" / "store.py")  # the check itself sees an import


def test_only_the_store_touches_its_engine():
    outside = outside_the_store(touches_an_engine)
    assert not outside, f"store.engine used outside monitor/store: {sorted(outside)}"
    assert touches_an_engine(PACKAGE / "store" / "store.py")  # the check itself sees a use
