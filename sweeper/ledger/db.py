"""Engines and migrations for the ledger (SQLite by default, Postgres in production)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url

import sweeper
from sweeper.errors import LedgerError


class SchemaNotReady(LedgerError):
    """The database is not at the newest migration; the operator must run `sweeper migrate`."""


def migrations_dir() -> Path:
    """migrations/ inside the installed wheel (sweeper/migrations), else the source checkout's."""
    package_dir = Path(sweeper.__file__).resolve().parent
    for candidate in (package_dir / "migrations", package_dir.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise RuntimeError("the Alembic migrations are missing from this installation")


def make_engine(url: str, *, sqlite_synchronous: str = "FULL", **kwargs: Any) -> Engine:
    """An engine with the settings the ledger relies on.

    SQLite: WAL (readers never block the daemon), foreign keys on, a busy timeout, and every
    transaction begun IMMEDIATE so that a guarded UPDATE never loses a race to a deferred upgrade.
    `synchronous=FULL`: in WAL mode, NORMAL may lose the last commits on a power cut (they are in
    the WAL but not yet synced); a lost `signed` row whose transaction was then broadcast would be
    rebuilt and sent again after expiry. FULL syncs the WAL at every commit. (`sqlite_synchronous`
    exists for the ledger benchmark's before/after figure only.)
    """
    if sqlite_synchronous not in ("FULL", "NORMAL", "EXTRA"):
        raise ValueError(f"sqlite_synchronous must be FULL, NORMAL or EXTRA, not {sqlite_synchronous!r}")
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute(f"PRAGMA synchronous={sqlite_synchronous}")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _alembic_config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str]:
    """Apply migrations up to `revision`; safe to rerun. Returns (before, after)."""
    before = current_revision(engine)
    with _migration_connection(engine) as conn, conn.begin():
        command.upgrade(_alembic_config(conn), revision)
    after = current_revision(engine)
    assert after is not None
    return before, after


def downgrade(engine: Engine, revision: str) -> None:
    with _migration_connection(engine) as conn, conn.begin():
        command.downgrade(_alembic_config(conn), revision)


@contextmanager
def _migration_connection(engine: Engine) -> Iterator[Connection]:
    """A connection to migrate on. SQLite: foreign keys off while a migration rebuilds a table
    (they cannot change inside a transaction; SQLite's documented procedure for a table rebuild),
    then checked: a violation aborts with the rows named, and keys are back on either way."""
    with engine.connect() as conn:
        if conn.dialect.name != "sqlite":
            yield conn
            return
        # On the driver's connection, outside any transaction (SQLAlchemy would begin one).
        raw = conn.connection.driver_connection
        assert raw is not None
        raw.execute("PRAGMA foreign_keys=OFF")
        try:
            yield conn
            problems = raw.execute("PRAGMA foreign_key_check").fetchall()
            if problems:
                raise RuntimeError(f"the migration left foreign keys broken: {problems[:5]}")
        finally:
            raw.execute("PRAGMA foreign_keys=ON")


def require_head(engine: Engine) -> None:
    current = current_revision(engine)
    head = head_revision()
    if current != head:
        state = "is empty" if current is None else f"is at revision {current}, the newest is {head}"
        raise SchemaNotReady(f"the ledger schema {state}: run `sweeper migrate`")


@contextmanager
def connect_checked(url: str) -> Iterator[Engine]:
    """An engine for commands that need the schema at head (exit 2 with a hint otherwise)."""
    engine = make_engine(url)
    try:
        require_head(engine)
        yield engine
    finally:
        engine.dispose()
