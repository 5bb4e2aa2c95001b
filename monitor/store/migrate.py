"""Schema migrations (Alembic, configured here; the scripts live in the repository's migrations/).

`ood-monitor db upgrade|downgrade|current` runs these; the daemon calls
`ensure_schema_current` and refuses to start on a schema older or newer than the code.
"""

from __future__ import annotations

import argparse
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine

from monitor.errors import MonitorError
from monitor.store.engine import connect, resolve_url, safe_url

MIGRATIONS_ENVIRONMENT_VARIABLE = "MONITOR_MIGRATIONS_DIR"

# Alembic announces each of its plugins at INFO; the migration steps themselves stay visible.
logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


def migrations_dir() -> Path:
    """The migrations/ folder beside the `monitor` package (repository root or image root)."""
    override = os.environ.get(MIGRATIONS_ENVIRONMENT_VARIABLE)
    folder = Path(override) if override else Path(__file__).resolve().parents[2] / "migrations"
    if not (folder / "env.py").is_file():
        raise MonitorError(
            f"migrations folder {folder} not found (no env.py); run from a checkout or an image that "
            f"ships migrations/, or set {MIGRATIONS_ENVIRONMENT_VARIABLE}"
        )
    return folder


def alembic_config(connection=None) -> Config:
    """An Alembic Config without alembic.ini; env.py uses the connection passed in attributes."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:  # pragma: no cover - guards a branching mistake in migrations/
        raise MonitorError(f"migrations have {len(heads)} heads ({', '.join(heads)}); expected one")
    return heads[0]


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at; None for an empty database."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


@contextmanager
def _migrating(engine: Engine) -> Iterator[Connection]:
    """One transaction for the whole migration. On SQLite, altering a table copies it, which a
    table other rows refer to (thresholds, by samples) survives only with foreign keys off; they
    are switched off before the transaction (inside one SQLite ignores the switch), checked before
    it commits and switched on again (https://www.sqlite.org/lang_altertable.html, section 7)."""
    with engine.connect() as connection:
        sqlite = engine.dialect.name == "sqlite"
        if sqlite:
            connection.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
        try:
            with connection.begin():
                yield connection
                if sqlite:
                    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise MonitorError(f"migration left rows that refer to missing rows: {broken[:5]}")
        finally:
            if sqlite:
                connection.connection.driver_connection.execute("PRAGMA foreign_keys=ON")


def upgrade(engine: Engine, revision: str = "head") -> None:
    with _migrating(engine) as connection:
        command.upgrade(alembic_config(connection), revision)


def downgrade(engine: Engine, revision: str = "-1") -> None:
    with _migrating(engine) as connection:
        command.downgrade(alembic_config(connection), revision)


def ensure_schema_current(engine: Engine) -> None:
    """Raise MonitorError unless the database schema is exactly what this code expects."""
    current = current_revision(engine)
    expected = head_revision()
    if current != expected:
        raise MonitorError(
            f"database schema is at {current or 'nothing (empty database)'}, code expects {expected}: "
            "run `ood-monitor db upgrade`"
        )


def run_db_command(args: argparse.Namespace) -> int:
    """Entry point of `ood-monitor db ACTION`: --url, else [store] url of the settings (file + environment)."""
    url = getattr(args, "url", None)
    if not url:
        from monitor.settings import load_settings

        url = load_settings(getattr(args, "config", None)).store.url
    engine = connect(resolve_url(url))
    try:
        action = args.db_action
        if action == "upgrade":
            before = current_revision(engine)
            upgrade(engine, args.revision)
            print(f"{safe_url(engine.url)}: {before or 'empty'} -> {current_revision(engine)}")
        elif action == "downgrade":
            before = current_revision(engine)
            downgrade(engine, args.revision)
            print(f"{safe_url(engine.url)}: {before or 'empty'} -> {current_revision(engine) or 'empty'}")
        elif action == "current":
            current = current_revision(engine)
            expected = head_revision()
            state = "up to date" if current == expected else f"code expects {expected}: run `ood-monitor db upgrade`"
            print(f"{safe_url(engine.url)}: {current or 'empty'} ({state})")
            return 0 if current == expected else 1
        else:  # pragma: no cover - argparse restricts the choices
            raise MonitorError(f"unknown db action {action!r}")
    finally:
        engine.dispose()
    return 0
