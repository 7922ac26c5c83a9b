"""Migrations: empty -> head on both backends, models == migrations, round trip, CHECK == enum."""

from __future__ import annotations

import re

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from sweeper.domain import OPEN_STATES, SweepState
from sweeper.ledger import db
from sweeper.ledger.models import Base


def test_empty_to_head_is_idempotent(db_url: str) -> None:
    engine = db.make_engine(db_url)
    assert db.current_revision(engine) is None
    before, after = db.upgrade(engine)
    assert (before, after) == (None, db.head_revision())
    assert db.upgrade(engine) == (after, after)  # safe to rerun
    db.require_head(engine)
    assert {"deposit_addresses", "sweeps", "sweep_events"} <= set(inspect(engine).get_table_names())
    engine.dispose()


def test_models_and_migrations_agree(db_url: str) -> None:
    engine = db.make_engine(db_url)
    db.upgrade(engine)
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        diff = compare_metadata(context, Base.metadata)
    assert diff == []
    engine.dispose()


def test_downgrade_upgrade_round_trip(db_url: str) -> None:
    engine = db.make_engine(db_url)
    db.upgrade(engine)
    db.downgrade(engine, "base")
    assert db.current_revision(engine) is None
    assert not {"sweeps", "sweep_events", "deposit_addresses"} & set(inspect(engine).get_table_names())
    db.upgrade(engine)
    assert db.current_revision(engine) == db.head_revision()
    engine.dispose()


def _check_sql(engine_url: str) -> tuple[str, str]:
    engine = db.make_engine(engine_url)
    db.upgrade(engine)
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            check = conn.execute(
                text(
                    "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'ck_sweeps_state' "
                    "AND connamespace = current_schema()::regnamespace"
                )
            ).scalar_one()
            index = conn.execute(
                text(
                    "SELECT indexdef FROM pg_indexes WHERE indexname = 'uq_sweeps_open_address_token' "
                    "AND schemaname = current_schema()"
                )
            ).scalar_one()
        else:
            check = conn.execute(text("SELECT sql FROM sqlite_master WHERE name = 'sweeps'")).scalar_one()
            check = check[check.index("CONSTRAINT ck_sweeps_state") :].split(")")[0]
            index = conn.execute(
                text("SELECT sql FROM sqlite_master WHERE name = 'uq_sweeps_open_address_token'")
            ).scalar_one()
    engine.dispose()
    return check, index


def test_state_check_and_open_index_match_the_python_enum(db_url: str) -> None:
    check, index = _check_sql(db_url)
    assert set(re.findall(r"'([a-z_]+)'", check)) == {s.value for s in SweepState}
    assert set(re.findall(r"'([a-z_]+)'", index)) == {s.value for s in OPEN_STATES}


def test_schema_not_ready_names_the_command(sqlite_url: str) -> None:
    engine = db.make_engine(sqlite_url)
    try:
        db.require_head(engine)
    except db.SchemaNotReady as exc:
        assert "run `sweeper migrate`" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("an empty database must not pass require_head")
    engine.dispose()


def test_0006_keeps_existing_amounts_exact_and_the_table_whole(db_url: str) -> None:
    """A ledger with sweeps, events and holds at 0005 is rebuilt to 78-digit amounts (SQLite) or
    NUMERIC(78,0) (Postgres): amounts, foreign keys and the one-open-sweep index all survive."""
    engine = db.make_engine(db_url)
    db.upgrade(engine, "0005")
    address = "TUEZSdKsoDHQMeZwihtdoBiN46zxhGWYdH"
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO deposit_addresses (address, source, watched, created_at, updated_at) "
                "VALUES (:a, 'import', true, :t, :t)"
            ),
            {"a": address, "t": "2026-12-01 00:00:00"},
        )
        for amount, state in ((2**63 - 1, "confirmed"), (125_500_000, "queued")):
            conn.execute(
                text(
                    "INSERT INTO sweeps (address, token, token_contract, state, observed_amount, amount, "
                    "attempts, send_attempts, created_at, updated_at) VALUES (:a, 'USDT', :c, :s, :v, :v, 0, 0, :t, :t)"
                ),
                {"a": address, "c": "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t", "s": state, "v": amount,
                 "t": "2026-12-01 00:00:00"},
            )  # fmt: skip
        conn.execute(
            text(
                "INSERT INTO sweep_events (sweep_id, at, to_state, reason) VALUES (1, :t, 'queued', 'born')"
            ),
            {"t": "2026-12-01 00:00:00"},
        )
    db.upgrade(engine)
    from sweeper.ledger import Ledger

    ledger = Ledger(engine)
    assert [s.amount for s in sorted(ledger.list_sweeps(), key=lambda s: s.id)] == [2**63 - 1, 125_500_000]
    assert ledger.events(1)[0].reason == "born"
    assert (
        ledger.queue_sweep(address, "USDT", "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t", 10**27) is None
    )  # one open
    assert ledger.stats().swept_by_token == {"USDT": 2**63 - 1}
    with engine.connect() as conn:  # foreign keys are back on and hold (SQLite)
        if engine.dialect.name == "sqlite":
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall() == []
    engine.dispose()
