"""TRX sweeps: every sweep has an asset kind, and the transition trigger is keyed by it.

- `asset_kind`: 'token' (a TRC20 token: energy ordered, then `transfer`) or 'trx' (native TRX, a
  plain TransferContract, no energy order). Existing rows are tokens.
- `token_contract` is NULL exactly for a TRX sweep (CHECK `ck_sweeps_asset_kind`).
- `fee_sun`: the TRX the sweep's own transaction burnt (TransactionInfo `fee`), once confirmed.
- The trigger of 0007 is re-created from the two tables below (FROZEN copies of
  `sweeper.domain.TRANSITIONS` and `TRX_TRANSITIONS`): a token row can never go `queued -> signed`,
  a TRX row never enters an ordering state. The message names both states and the kind.

SQLite cannot make a column nullable in place: `sweeps` is rebuilt (foreign keys off, checked after,
by `sweeper.ledger.db.upgrade`), which drops its triggers and its partial unique index; both are
created again here.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

STATES = (
    "queued", "ordering", "energy_ordered", "energy_ready", "signed", "broadcast",
    "confirmed", "failed", "cancelled",
)  # fmt: skip
TOKEN: dict[str | None, tuple[str, ...]] = {
    None: ("queued",),
    "queued": ("ordering", "cancelled"),
    "ordering": ("queued", "cancelled", "energy_ordered", "energy_ready", "failed"),
    "energy_ordered": ("energy_ready", "failed"),
    "energy_ready": ("signed", "failed"),
    "signed": ("broadcast", "energy_ready"),
    "broadcast": ("confirmed", "failed", "energy_ready"),
    "confirmed": (),
    "failed": (),
    "cancelled": (),
}
TRX: dict[str | None, tuple[str, ...]] = {
    None: ("queued",),
    "queued": ("signed", "cancelled", "failed"),
    "ordering": (),
    "energy_ordered": (),
    "energy_ready": (),
    "signed": ("broadcast", "queued"),
    "broadcast": ("confirmed", "failed", "queued"),
    "confirmed": (),
    "failed": (),
    "cancelled": (),
}
TABLES = {"token": TOKEN, "trx": TRX}
OPEN_STATES = ("broadcast", "energy_ordered", "energy_ready", "ordering", "queued", "signed")
OPEN_WHERE = "state IN (" + ", ".join(f"'{s}'" for s in OPEN_STATES) + ")"
KIND_CHECK = "asset_kind IN ('token', 'trx') AND ((asset_kind = 'trx') = (token_contract IS NULL))"

FUNCTION = "sweeps_legal_transition"
INSERT_TRIGGER = "sweeps_legal_insert"
UPDATE_TRIGGER = "sweeps_legal_update"
UNKNOWN = "illegal sweep state change: a state or kind that is not in the transition table (migration 0009)"


def _quoted(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


def _message(source: str, target: str, kind: str) -> str:
    return (
        f"illegal sweep state change {source} -> {target} for a {kind} sweep: "
        "not in the transition table (migration 0009)"
    )


def _postgres_function() -> str:
    triples = ", ".join(
        f"('{kind}', '{s}', '{t}')" for kind, table in TABLES.items() for s, targets in table.items() if s
        for t in targets
    )  # fmt: skip
    return f"""
        CREATE OR REPLACE FUNCTION {FUNCTION}() RETURNS trigger AS $$
        BEGIN
            IF TG_OP = 'INSERT' THEN
                IF NEW.state IN ({_quoted(TOKEN[None])}) THEN
                    RETURN NEW;
                END IF;
                RAISE EXCEPTION '{_message("(none)", "% (sweep %)", "%")}', NEW.state, NEW.id, NEW.asset_kind
                    USING ERRCODE = 'check_violation';
            END IF;
            IF NEW.state IS NOT DISTINCT FROM OLD.state
               OR (OLD.asset_kind, OLD.state, NEW.state) IN ({triples}) THEN
                RETURN NEW;
            END IF;
            RAISE EXCEPTION '{_message("%", "% (sweep %)", "%")}', OLD.state, NEW.state, OLD.id, OLD.asset_kind
                USING ERRCODE = 'check_violation';
        END;
        $$ LANGUAGE plpgsql
    """


def _sqlite_insert_trigger() -> str:
    arms = " ".join(
        f"WHEN '{t}' THEN RAISE(ABORT, '{_message('(none)', t, 'new')}')"
        for t in STATES
        if t not in TOKEN[None]
    )
    return (
        f"CREATE TRIGGER {INSERT_TRIGGER} BEFORE INSERT ON sweeps FOR EACH ROW "
        f"WHEN NOT (NEW.state IN ({_quoted(TOKEN[None])})) "
        f"BEGIN SELECT CASE NEW.state {arms} "
        f"ELSE RAISE(ABORT, '{UNKNOWN}') END; END"
    )


def _sqlite_update_trigger() -> str:
    legal = " OR ".join(
        f"(OLD.asset_kind = '{kind}' AND OLD.state = '{s}' AND NEW.state IN ({_quoted(targets)}))"
        for kind, table in TABLES.items()
        for s, targets in table.items()
        if s and targets
    )
    arms = " ".join(
        f"WHEN '{kind}:{s} -> {t}' THEN RAISE(ABORT, '{_message(s, t, kind)}')"
        for kind, table in TABLES.items()
        for s in STATES
        for t in STATES
        if t != s and t not in table[s]
    )
    return (
        f"CREATE TRIGGER {UPDATE_TRIGGER} BEFORE UPDATE OF state ON sweeps FOR EACH ROW "
        f"WHEN NEW.state IS NOT OLD.state AND NOT ({legal}) "
        f"BEGIN SELECT CASE OLD.asset_kind || ':' || OLD.state || ' -> ' || NEW.state {arms} "
        f"ELSE RAISE(ABORT, '{UNKNOWN}') END; END"
    )


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.add_column(
            "sweeps", sa.Column("asset_kind", sa.String(8), nullable=False, server_default=sa.text("'token'"))
        )
        op.add_column("sweeps", sa.Column("fee_sun", sa.BigInteger(), nullable=True))
        op.alter_column("sweeps", "token_contract", existing_type=sa.String(34), nullable=True)
        op.create_check_constraint(op.f("ck_sweeps_asset_kind"), "sweeps", KIND_CHECK)
        op.execute(_postgres_function())  # the triggers of 0007 call it: they follow the new table
        return
    # SQLite: the rebuild drops the triggers and (reflection may lose its WHERE) the partial index.
    op.execute(f"DROP TRIGGER {UPDATE_TRIGGER}")
    op.execute(f"DROP TRIGGER {INSERT_TRIGGER}")
    op.drop_index("uq_sweeps_open_address_token", table_name="sweeps")
    with op.batch_alter_table("sweeps", recreate="always") as batch:
        batch.add_column(
            sa.Column("asset_kind", sa.String(8), nullable=False, server_default=sa.text("'token'"))
        )
        batch.add_column(sa.Column("fee_sun", sa.BigInteger(), nullable=True))
        batch.alter_column("token_contract", existing_type=sa.String(34), nullable=True)
        batch.create_check_constraint(op.f("ck_sweeps_asset_kind"), KIND_CHECK)
    op.create_index(
        "uq_sweeps_open_address_token",
        "sweeps",
        ["address", "token"],
        unique=True,
        sqlite_where=sa.text(OPEN_WHERE),
    )
    op.execute(_sqlite_insert_trigger())
    op.execute(_sqlite_update_trigger())


def _refuse_trx_rows() -> None:
    count = op.get_bind().execute(sa.text("SELECT count(*) FROM sweeps WHERE asset_kind = 'trx'")).scalar()
    if count:
        raise RuntimeError(
            f"the ledger holds {count} TRX sweep(s): revision 0008 has no place for them; "
            "downgrading would lose them (nothing was changed)"
        )


def _m0007() -> Any:
    """Migration 0007's module: its frozen token-only trigger, put back by the downgrade."""
    spec = importlib.util.spec_from_file_location(
        "m0007", Path(__file__).with_name("0007_transition_trigger.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def downgrade() -> None:
    _refuse_trx_rows()
    m0007 = _m0007()
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint(op.f("ck_sweeps_asset_kind"), "sweeps", type_="check")
        op.alter_column("sweeps", "token_contract", existing_type=sa.String(34), nullable=False)
        op.execute(m0007._postgres_function())  # before the column it reads goes
        op.drop_column("sweeps", "fee_sun")
        op.drop_column("sweeps", "asset_kind")
        return
    op.execute(f"DROP TRIGGER {UPDATE_TRIGGER}")
    op.execute(f"DROP TRIGGER {INSERT_TRIGGER}")
    op.drop_index("uq_sweeps_open_address_token", table_name="sweeps")
    with op.batch_alter_table("sweeps", recreate="always") as batch:
        batch.drop_constraint(op.f("ck_sweeps_asset_kind"), type_="check")
        batch.alter_column("token_contract", existing_type=sa.String(34), nullable=False)
        batch.drop_column("fee_sun")
        batch.drop_column("asset_kind")
    op.create_index(
        "uq_sweeps_open_address_token",
        "sweeps",
        ["address", "token"],
        unique=True,
        sqlite_where=sa.text(OPEN_WHERE),
    )
    op.execute(m0007._sqlite_insert_trigger())
    op.execute(m0007._sqlite_update_trigger())
