"""Alembic environment. Configured from monitor.store.migrate (there is no alembic.ini):
the caller passes an open connection in `config.attributes["connection"]`."""

from __future__ import annotations

from alembic import context

from monitor.store.engine import connect
from monitor.store.models import Base
from monitor.store.types import UtcDateTime

config = context.config
target_metadata = Base.metadata


def render_item(type_, obj, autogen_context):
    # Migrations hold plain SQLAlchemy types, so they never import the package's type helpers.
    if type_ == "type" and isinstance(obj, UtcDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def run_with(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
        compare_type=True,
        render_item=render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) migrations are not supported; run `ood-monitor db upgrade`")

connection = config.attributes.get("connection")
if connection is not None:
    run_with(connection)
else:
    engine = connect(config.get_main_option("sqlalchemy.url"))
    with engine.begin() as own_connection:
        run_with(own_connection)
    engine.dispose()
