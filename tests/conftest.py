"""Shared fixtures: ledger backends (SQLite always; Postgres from SWEEPER_TEST_POSTGRES_URL), a clock.

Postgres tests skip locally without the variable and FAIL under CI=true: a CI run that silently
skipped the production backend would prove nothing.
"""

from __future__ import annotations

import io
import os
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url

from sweeper.ledger import Ledger, make_engine, upgrade

POSTGRES_URL = os.environ.get("SWEEPER_TEST_POSTGRES_URL", "")
IN_CI = os.environ.get("CI", "").lower() == "true"
REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"


@pytest.fixture(scope="session")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite ledger file, made once: tests copy it (a migration per test costs seconds)."""
    path = tmp_path_factory.mktemp("template") / "ledger.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    return path


@pytest.fixture
def fast_engine(migrated: Path, tmp_path: Path) -> Iterator[Engine]:
    """A copy of the migrated template, without an fsync per commit: durability is not what the
    in-process unit rigs test, and it keeps a case in milliseconds."""
    path = tmp_path / "ledger.db"
    shutil.copy(migrated, path)
    engine = make_engine(f"sqlite:///{path}")
    event.listen(engine, "connect", lambda conn, _record: conn.execute("PRAGMA synchronous=OFF"))
    yield engine
    engine.dispose()


def require_postgres() -> str:
    if not POSTGRES_URL:
        if IN_CI:
            pytest.fail("SWEEPER_TEST_POSTGRES_URL is not set under CI=true: the Postgres suite must run")
        pytest.skip("SWEEPER_TEST_POSTGRES_URL not set (Postgres tests run in scripts/test and CI)")
    return POSTGRES_URL


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A URL whose connections live in a fresh, empty schema (dropped afterwards)."""
    base = require_postgres()
    schema = f"t_{uuid.uuid4().hex[:16]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """Every ledger contract test runs once per backend."""
    name = "postgres_url" if request.param == "postgres" else "sqlite_url"
    return str(request.getfixturevalue(name))


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    upgrade(eng)
    yield eng
    eng.dispose()


class FakeClock:
    """The injected `now()`: moves only when a test says so."""

    def __init__(self, start: datetime | None = None) -> None:
        self.current = start or datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.current

    def advance(self, seconds: float) -> datetime:
        self.current += timedelta(seconds=seconds)
        return self.current


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ledger(engine: Engine, clock: FakeClock) -> Ledger:
    return Ledger(engine, clock)


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Text on a (fake) terminal is as wide as the terminal says (`shutil.get_terminal_size` reads
    COLUMNS first); under xdist that would be whatever the worker inherits. A fixed, wide one keeps
    the tests of the text forms independent of where they run."""
    monkeypatch.setenv("COLUMNS", "200")


class Tty(io.StringIO):
    """An in-memory stdout that says it is a terminal: the commands print text and tables to it."""

    def isatty(self) -> bool:
        return True
