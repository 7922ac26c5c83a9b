"""Migrations: empty -> head on both backends, models == migrations, round trip, CHECK == enum,
the triggers at head, the transition trigger (0007) == domain.TRANSITIONS, the follow cursor (0008)."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.exc import IntegrityError

from sweeper.domain import OPEN_STATES, TRANSITIONS_BY_KIND, AssetKind, SweepState
from sweeper.ledger import db
from sweeper.ledger.models import Base


def test_empty_to_head_is_idempotent(db_url: str) -> None:
    engine = db.make_engine(db_url)
    assert db.current_revision(engine) is None
    before, after = db.upgrade(engine)
    assert (before, after) == (None, db.head_revision())
    assert db.upgrade(engine) == (after, after)  # safe to rerun
    db.require_head(engine)
    assert {"deposit_addresses", "sweeps", "sweep_events", "follow_cursor"} <= set(
        inspect(engine).get_table_names()
    )
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
    assert not {"sweeps", "sweep_events", "deposit_addresses", "follow_cursor"} & set(
        inspect(engine).get_table_names()
    )
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


# --- triggers ------------------------------------------------------------------------------------

# Every trigger the ledger relies on at head, per backend: sweep_events is append-only (0001) and
# sweeps only changes state along the transition table (0007). On SQLite, Alembic's batch mode
# (`op.batch_alter_table`, which copies a table and drops the old one) DROPS the table's triggers:
# a later migration that batch-alters `sweeps` or `sweep_events` must create their triggers again
# (as of 0007 none was lost: 0006 rebuilt `sweeps` before it had any). This test fails until it does.
EXPECTED_TRIGGERS = {
    "sqlite": {
        ("sweep_events", "sweep_events_no_update"),
        ("sweep_events", "sweep_events_no_delete"),
        ("sweeps", "sweeps_legal_insert"),
        ("sweeps", "sweeps_legal_update"),
    },
    "postgresql": {
        ("sweep_events", "sweep_events_append_only"),
        ("sweeps", "sweeps_legal_insert"),
        ("sweeps", "sweeps_legal_update"),
    },
}
TRANSITION_TRIGGERS = {("sweeps", "sweeps_legal_insert"), ("sweeps", "sweeps_legal_update")}


def _triggers(engine: Engine) -> set[tuple[str, str]]:
    """(table, trigger) of every enabled user trigger in the ledger's schema."""
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            rows = conn.execute(
                text(
                    "SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                    "WHERE NOT t.tgisinternal AND t.tgenabled <> 'D' "
                    "AND c.relnamespace = current_schema()::regnamespace"
                )
            ).all()
        else:
            rows = conn.execute(text("SELECT tbl_name, name FROM sqlite_master WHERE type = 'trigger'")).all()
    return {(str(table), str(name)) for table, name in rows}


def test_every_expected_trigger_exists_at_head(db_url: str) -> None:
    engine = db.make_engine(db_url)
    db.upgrade(engine)
    assert _triggers(engine) == EXPECTED_TRIGGERS[engine.dialect.name], (
        "a migration dropped (or added) a trigger; on SQLite a batch rebuild of a table drops its "
        "triggers: re-create them in that migration"
    )
    engine.dispose()


ADDRESS = "TUEZSdKsoDHQMeZwihtdoBiN46zxhGWYdH"
USDT_CONTRACT = "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t"
TIME = "2026-12-01 00:00:00"
RETRIGGER = (
    "the database's transition trigger (migration 0007) disagrees with sweeper.domain.TRANSITIONS: "
    "a change to domain.TRANSITIONS needs a NEW migration that re-creates the trigger (never edit 0007)"
)


def _add_address(conn: Connection) -> None:
    conn.execute(
        text(
            "INSERT INTO deposit_addresses (address, source, watched, created_at, updated_at) "
            "VALUES (:a, 'import', true, :t, :t)"
        ),
        {"a": ADDRESS, "t": TIME},
    )


def _insert_sweep(conn: Connection, state: str, token: str) -> int:
    """A sweeps row with only the NOT NULL columns, in plain SQL (amounts: 78-digit text on SQLite)."""
    amount: int | str = 1 if conn.dialect.name == "postgresql" else "1".zfill(78)
    conn.execute(
        text(
            "INSERT INTO sweeps (address, token, token_contract, state, observed_amount, amount, attempts, "
            "send_attempts, created_at, updated_at) VALUES (:a, :token, :c, :s, :v, :v, 0, 0, :t, :t)"
        ),
        {"a": ADDRESS, "token": token, "c": USDT_CONTRACT, "s": state, "v": amount, "t": TIME},
    )
    return int(
        conn.execute(text("SELECT id FROM sweeps WHERE token = :token"), {"token": token}).scalar_one()
    )


def _refused(engine: Engine, change: Callable[[Connection], object]) -> str | None:
    """Make `change` in a transaction that is rolled back either way: the refusal's message, or
    None if the database accepted it. Only IntegrityError counts as a refusal."""
    with engine.connect() as conn:
        transaction = conn.begin()
        try:
            change(conn)
        except IntegrityError as exc:
            return str(exc.orig)
        finally:
            transaction.rollback()
    return None


def _set_state(sweep_id: int, state: SweepState) -> Callable[[Connection], object]:
    return lambda conn: conn.execute(
        text("UPDATE sweeps SET state = :s WHERE id = :id"), {"s": state.value, "id": sweep_id}
    )


@pytest.mark.parametrize("kind", list(AssetKind))
def test_the_database_allows_exactly_the_transition_table(db_url: str, kind: AssetKind) -> None:
    """At head, plain SQL (no ledger code) can make exactly the state changes in the transition
    table of the row's asset kind (domain.TRANSITIONS_BY_KIND): every (from, to) pair of states by
    UPDATE, every state by INSERT; the rest is IntegrityError."""
    engine = db.make_engine(db_url)
    db.upgrade(engine, "0006")  # one row in each state, made before the trigger existed
    with engine.begin() as conn:
        _add_address(conn)
        row = {state: _insert_sweep(conn, state.value, f"T-{state.value}") for state in SweepState}
    db.upgrade(engine)
    if kind is AssetKind.TRX:  # not a state change: the trigger lets it through
        with engine.begin() as conn:
            conn.execute(text("UPDATE sweeps SET asset_kind = 'trx', token_contract = NULL"))

    allowed: set[tuple[SweepState | None, SweepState]] = set()
    refusals: dict[tuple[SweepState | None, SweepState], str] = {}
    for target in SweepState:
        changes: dict[SweepState | None, Callable[[Connection], object]] = {
            None: lambda conn, target=target: _insert_sweep(conn, target.value, "NEW"),
            **{source: _set_state(row[source], target) for source in SweepState},
        }
        for source, change in changes.items():
            message = _refused(engine, change)
            if message is not None:
                refusals[source, target] = message
            elif source is not target:
                allowed.add((source, target))

    transitions = TRANSITIONS_BY_KIND[kind]
    table = {(source, target) for source, targets in transitions.items() for target in targets}
    assert allowed == table, (
        f"{RETRIGGER}; allowed - table: {allowed - table}, table - allowed: {table - allowed}"
    )
    assert not {(s, s) for s in SweepState} & set(refusals), "an UPDATE that keeps the state must pass"
    for (source, target), message in refusals.items():  # refused by the trigger, naming both states
        assert f"{source.value if source else '(none)'} -> {target.value}" in message, message
    # Nothing was left behind: every attempt was rolled back.
    with engine.connect() as conn:
        states = {r.id: r.state for r in conn.execute(text("SELECT id, state FROM sweeps"))}
    assert states == {row[s]: s.value for s in SweepState}
    engine.dispose()


def test_0007_downgrade_and_upgrade_again(db_url: str) -> None:
    engine = db.make_engine(db_url)
    db.upgrade(engine)
    db.downgrade(engine, "0006")
    assert db.current_revision(engine) == "0006"
    assert _triggers(engine) == EXPECTED_TRIGGERS[engine.dialect.name] - TRANSITION_TRIGGERS
    with engine.begin() as conn:  # without the trigger the database takes any known state
        _add_address(conn)
        _insert_sweep(conn, "signed", "OLD")
    db.upgrade(engine)
    assert db.current_revision(engine) == db.head_revision()
    assert _triggers(engine) == EXPECTED_TRIGGERS[engine.dialect.name]
    with pytest.raises(IntegrityError, match="illegal sweep state change"), engine.begin() as conn:
        _insert_sweep(conn, "signed", "NEW")
    engine.dispose()


def test_the_state_check_constraint_refuses_an_unknown_state_without_the_trigger(db_url: str) -> None:
    """Since 0007 the trigger refuses `state = 'lost'` first; the CHECK must still hold on its own
    (the trigger is dropped inside a transaction that is rolled back, so the ledger keeps it)."""
    from sweeper.ledger import Ledger, NewAddress

    engine = db.make_engine(db_url)
    try:
        db.upgrade(engine)
        ledger = Ledger(engine)
        ledger.upsert_addresses([NewAddress(ADDRESS, "import")])
        sweep_id = ledger.queue_sweep(ADDRESS, "USDT", USDT_CONTRACT, 11_000_000)
        assert sweep_id is not None
        on_table = " ON sweeps" if engine.dialect.name == "postgresql" else ""
        with engine.connect() as conn:
            tx = conn.begin()
            conn.execute(text(f"DROP TRIGGER sweeps_legal_update{on_table}"))
            with pytest.raises(IntegrityError) as refused:
                conn.execute(text("UPDATE sweeps SET state = 'lost' WHERE id = :id"), {"id": sweep_id})
            assert "illegal sweep state change" not in str(refused.value), (
                "the CHECK refused it, not the trigger"
            )
            tx.rollback()
        assert ("sweeps", "sweeps_legal_update") in _triggers(engine)
    finally:
        engine.dispose()


def test_0008_follow_cursor_downgrade_and_upgrade_again(db_url: str) -> None:
    """0008 adds `follow_cursor` only: down to 0007 drops it and keeps every trigger; up again
    brings it back empty, and its CHECKs refuse a half-written lease or a cursor without a start."""
    engine = db.make_engine(db_url)
    db.upgrade(engine)
    db.downgrade(engine, "0007")
    assert db.current_revision(engine) == "0007"
    assert "follow_cursor" not in inspect(engine).get_table_names()
    assert _triggers(engine) == EXPECTED_TRIGGERS[engine.dialect.name]
    db.upgrade(engine)
    assert db.current_revision(engine) == db.head_revision()
    assert _triggers(engine) == EXPECTED_TRIGGERS[engine.dialect.name]
    insert = (
        "INSERT INTO follow_cursor (name, next_block, start_block, start_recorded_at, holder, lease_token, "
        "lease_until, started_at, updated_at) VALUES ('blocks', :n, :s, :r, :h, :k, :u, :t, :t)"
    )
    good = {"n": 10, "s": 5, "r": TIME, "h": "daemon", "k": "ab" * 8, "u": TIME, "t": TIME}
    for bad in (
        {"h": None},  # a token without a holder
        {"u": None},  # a lease without an end
        {"s": None},  # a cursor without its start
        {"r": None},  # a start without when it was recorded
        {"n": 4},  # before its start
    ):
        assert _refused(engine, lambda conn, bad=bad: conn.execute(text(insert), {**good, **bad})), bad
    assert _refused(engine, lambda conn: conn.execute(text(insert), good)) is None
    engine.dispose()


def test_0009_asset_kind_check_and_downgrade_guard(db_url: str) -> None:
    """A TRX row has no contract and a token row has one (the CHECK); a downgrade below 0009 with a
    TRX row in the ledger refuses and changes nothing."""
    engine = db.make_engine(db_url)
    db.upgrade(engine)
    with engine.begin() as conn:
        _add_address(conn)
        _insert_sweep(conn, "queued", "USDT")
    assert _refused(engine, lambda c: c.execute(text("UPDATE sweeps SET asset_kind = 'trx'"))) is not None
    assert _refused(engine, lambda c: c.execute(text("UPDATE sweeps SET token_contract = NULL"))) is not None
    assert _refused(engine, lambda c: c.execute(text("UPDATE sweeps SET asset_kind = 'nft'"))) is not None
    with engine.begin() as conn:
        conn.execute(text("UPDATE sweeps SET asset_kind = 'trx', token_contract = NULL, token = 'TRX'"))
    with pytest.raises(RuntimeError, match="1 TRX sweep"):
        db.downgrade(engine, "0008")
    assert db.current_revision(engine) == db.head_revision()
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM sweeps"))
    db.downgrade(engine, "0008")
    assert _triggers(engine) == EXPECTED_TRIGGERS[engine.dialect.name]
    db.upgrade(engine)
    assert _triggers(engine) == EXPECTED_TRIGGERS[engine.dialect.name]
    engine.dispose()
