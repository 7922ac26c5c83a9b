"""Money safety: holds, unpaid cooldowns, persistent pauses, the daily budget, measured energy.

- sweeps.energy_needed: the energy the simulated transfer used (java-tron's constant call).
- sweeps.charge_sun / charge_day: what the row counts against the UTC day's spend cap — the
  quoted price while reserved, the order's real amount once known, less any refund; 0 once the
  order is proven never placed.
- sweeps.refund_sun: a refund the provider reported for the row's order.
- sweeps.send_attempts: rebuilds and rejected broadcasts, bounded by pipeline.max_attempts.
- sweeps.first_claimed_at: when a worker first took the row (the stuck alert counts from here).
- sweeps.reverting_since: when the transfer's simulation started reverting (held after 10 min).
- address_holds: an (address, token) that failed after money was spent is held until released.
- address_cooldowns: unpaid failures space the next attempt (doubling, capped at a day).
- pauses: ordering paused by a cost anomaly, or a token whose every transfer reverts.
- budget_days: one row per UTC day, locked while a reservation is decided.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

Time = sa.DateTime(timezone=True)
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # Nullable or defaulted columns: plain ALTER TABLE ADD COLUMN on both backends.
    op.add_column("sweeps", sa.Column("energy_needed", sa.BigInteger(), nullable=True))
    op.add_column("sweeps", sa.Column("charge_sun", sa.BigInteger(), nullable=True))
    op.add_column("sweeps", sa.Column("charge_day", sa.String(10), nullable=True))
    op.add_column("sweeps", sa.Column("refund_sun", sa.BigInteger(), nullable=True))
    op.add_column(
        "sweeps", sa.Column("send_attempts", sa.Integer(), nullable=False, server_default=sa.text("0"))
    )
    op.add_column("sweeps", sa.Column("first_claimed_at", Time, nullable=True))
    op.add_column("sweeps", sa.Column("reverting_since", Time, nullable=True))
    op.create_index("ix_sweeps_charge_day", "sweeps", ["charge_day"])
    # The claim asks "does another sweep of this address have energy coming?" per candidate row.
    op.create_index("ix_sweeps_address_state", "sweeps", ["address", "state"])
    # Rows ordered before this migration count on the day their row was made (their order's
    # amount is what they cost), so today's cap still sees what was already paid today.
    if op.get_bind().dialect.name == "postgresql":
        day = "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
    else:  # SQLite keeps naive UTC text: 'YYYY-MM-DD HH:MM:SS…'
        day = "substr(created_at, 1, 10)"
    # `day` is one of the two constant expressions above, never input.
    op.execute(f"UPDATE sweeps SET charge_sun = cost_sun, charge_day = {day} WHERE cost_sun IS NOT NULL")  # noqa: S608
    # Rows already claimed once: count from their creation (the best we know).
    op.execute("UPDATE sweeps SET first_claimed_at = created_at WHERE state <> 'queued'")

    op.create_table(
        "address_holds",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("address", sa.String(34), nullable=False),
        sa.Column("token", sa.String(16), nullable=False),
        sa.Column("sweep_id", BigId, nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("held_at", Time, nullable=False),
        sa.Column("released_at", Time, nullable=True),
        sa.Column("released_by", sa.String(128), nullable=True),
        sa.Column("release_reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_address_holds")),
        sa.ForeignKeyConstraint(
            ["address"],
            ["deposit_addresses.address"],
            name=op.f("fk_address_holds_address_deposit_addresses"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["sweep_id"], ["sweeps.id"], name=op.f("fk_address_holds_sweep_id_sweeps"), ondelete="RESTRICT"
        ),
    )
    op.create_index(
        "uq_address_holds_active",
        "address_holds",
        ["address", "token"],
        unique=True,
        sqlite_where=sa.text("released_at IS NULL"),
        postgresql_where=sa.text("released_at IS NULL"),
    )
    op.create_table(
        "address_cooldowns",
        sa.Column("address", sa.String(34), nullable=False),
        sa.Column("token", sa.String(16), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("until", Time, nullable=False),
        sa.Column("last_reason", sa.Text(), nullable=False),
        sa.Column("updated_at", Time, nullable=False),
        sa.PrimaryKeyConstraint("address", "token", name=op.f("pk_address_cooldowns")),
        sa.CheckConstraint("failures > 0", name=op.f("ck_address_cooldowns_failures")),
    )
    op.create_table(
        "pauses",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("since", Time, nullable=False),
        sa.Column("next_check_at", Time, nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_pauses")),
    )
    op.create_table(
        "budget_days",
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("created_at", Time, nullable=False),
        sa.PrimaryKeyConstraint("day", name=op.f("pk_budget_days")),
    )


def downgrade() -> None:
    op.drop_table("budget_days")
    op.drop_table("pauses")
    op.drop_table("address_cooldowns")
    op.drop_index("uq_address_holds_active", table_name="address_holds")
    op.drop_table("address_holds")
    op.drop_index("ix_sweeps_address_state", table_name="sweeps")
    op.drop_index("ix_sweeps_charge_day", table_name="sweeps")
    with op.batch_alter_table("sweeps") as batch:
        for column in (
            "reverting_since", "first_claimed_at", "send_attempts", "refund_sun", "charge_day",
            "charge_sun", "energy_needed",
        ):  # fmt: skip
            batch.drop_column(column)
