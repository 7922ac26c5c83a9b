"""Token amounts exact to 78 digits: any token's whole supply fits (an 18-decimal token included).

Postgres: `observed_amount` and `amount` become NUMERIC(78, 0); the CHECK stays `>= 0`.
SQLite has no exact type that wide: the columns become zero-padded 78-digit TEXT (text order is then
number order) with a CHECK that admits nothing else. SQLite cannot change a column's type in place:
the table is rebuilt (`sweeper.ledger.db.upgrade` runs migrations on SQLite with foreign keys off
and checks them afterwards, as SQLite's documentation prescribes for a rebuild).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

DIGITS = 78
OPEN_STATES = ("broadcast", "energy_ordered", "energy_ready", "ordering", "queued", "signed")
OPEN_WHERE = "state IN (" + ", ".join(f"'{s}'" for s in OPEN_STATES) + ")"


def _sqlite_check(*columns: str) -> str:
    return " AND ".join(f"length({c}) = {DIGITS} AND {c} NOT GLOB '*[^0-9]*'" for c in columns)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for column in ("observed_amount", "amount"):
            op.alter_column(
                "sweeps",
                column,
                type_=sa.Numeric(DIGITS, 0),
                existing_type=sa.BigInteger(),
                postgresql_using=f"{column}::numeric({DIGITS}, 0)",
            )
        return
    # SQLite. The partial unique index is dropped and made again by hand (a rebuild must not lose
    # its WHERE clause, which reflection may not carry over).
    op.drop_index("uq_sweeps_open_address_token", table_name="sweeps")
    with op.batch_alter_table("sweeps", recreate="always") as batch:
        batch.drop_constraint(op.f("ck_sweeps_amounts"), type_="check")
        for column in ("observed_amount", "amount"):
            batch.alter_column(column, type_=sa.String(DIGITS), existing_type=sa.BigInteger())
    # TEXT affinity now: pad the integers the copy carried over to the exact 78-digit form.
    pad = f"printf('%0{DIGITS}d', CAST({{c}} AS INTEGER))"  # DIGITS is a constant, never input
    op.execute(
        "UPDATE sweeps SET "  # noqa: S608
        + ", ".join(f"{c} = {pad.format(c=c)}" for c in ("observed_amount", "amount"))
    )
    with op.batch_alter_table("sweeps", recreate="always") as batch:
        batch.create_check_constraint(op.f("ck_sweeps_amounts"), _sqlite_check("observed_amount", "amount"))
    op.create_index(
        "uq_sweeps_open_address_token",
        "sweeps",
        ["address", "token"],
        unique=True,
        sqlite_where=sa.text(OPEN_WHERE),
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for column in ("observed_amount", "amount"):
            op.alter_column(
                "sweeps",
                column,
                type_=sa.BigInteger(),
                existing_type=sa.Numeric(DIGITS, 0),
                postgresql_using=f"{column}::bigint",
            )
        return
    op.drop_index("uq_sweeps_open_address_token", table_name="sweeps")
    with op.batch_alter_table("sweeps", recreate="always") as batch:
        batch.drop_constraint(op.f("ck_sweeps_amounts"), type_="check")
        for column in ("observed_amount", "amount"):
            batch.alter_column(column, type_=sa.BigInteger(), existing_type=sa.String(DIGITS))
    op.execute(
        "UPDATE sweeps SET observed_amount = CAST(observed_amount AS INTEGER), amount = CAST(amount AS INTEGER)"
    )
    with op.batch_alter_table("sweeps", recreate="always") as batch:
        batch.create_check_constraint(op.f("ck_sweeps_amounts"), "observed_amount >= 0 AND amount >= 0")
    op.create_index(
        "uq_sweeps_open_address_token",
        "sweeps",
        ["address", "token"],
        unique=True,
        sqlite_where=sa.text(OPEN_WHERE),
    )
