"""Alembic environment: runs on the connection `sweeper.ledger.db` hands over."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from sweeper.ledger.models import Base

target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    # `alembic -x url=...` from a checkout, for developers.
    url = context.get_x_argument(as_dictionary=True).get("url") or context.config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise SystemExit("pass -x url=DATABASE_URL (or use `sweeper migrate`)")
    engine = create_engine(url)
    with engine.begin() as conn:
        _run(conn)


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) mode is not supported; use `sweeper migrate`")
run_migrations_online()
