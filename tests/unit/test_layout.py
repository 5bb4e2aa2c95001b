"""The layout rule of docs: SQL lives in monitor/store (and migrations/), nowhere else."""

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


def test_only_the_store_imports_sqlalchemy():
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 20  # the walk found the package
    outside = {
        path.relative_to(PACKAGE).as_posix() for path in modules
        if path.relative_to(PACKAGE).parts[0] != "store" and imports_sqlalchemy(path)
    }
    assert not outside, f"SQLAlchemy imported outside monitor/store: {sorted(outside)}"
    assert imports_sqlalchemy(PACKAGE / "store" / "store.py")  # the check itself sees an import
