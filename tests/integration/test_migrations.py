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
