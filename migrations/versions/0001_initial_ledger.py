"""The initial ledger: deposit addresses, sweeps, and the append-only sweep events.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Frozen copies (a migration must not change when the code does); a test checks that the
# CHECK constraint in the database equals sweeper.domain.SweepState.
STATES = (
    "queued", "ordering", "energy_ordered", "energy_ready", "signed", "broadcast",
    "confirmed", "failed", "cancelled",
)  # fmt: skip
OPEN_STATES = ("broadcast", "energy_ordered", "energy_ready", "ordering", "queued", "signed")


def _in(values: tuple[str, ...]) -> str:
    return "state IN (" + ", ".join(f"'{v}'" for v in values) + ")"


BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Time = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "deposit_addresses",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("address", sa.String(34), nullable=False),
        sa.Column("hd_index", sa.BigInteger(), nullable=True),
        sa.Column("label", sa.String(200), nullable=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("watched", sa.Boolean(), nullable=False, server_default=sa.text("true")),
        sa.Column("created_at", Time, nullable=False),
        sa.Column("updated_at", Time, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deposit_addresses")),
        sa.UniqueConstraint("address", name=op.f("uq_deposit_addresses_address")),
        sa.UniqueConstraint("hd_index", name=op.f("uq_deposit_addresses_hd_index")),
        sa.CheckConstraint(
            "source IN ('hd', 'file', 'keyfile', 'import')", name=op.f("ck_deposit_addresses_source")
        ),
    )
    op.create_table(
        "sweeps",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("address", sa.String(34), nullable=False),
        sa.Column("token", sa.String(16), nullable=False),
        sa.Column("token_contract", sa.String(34), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("observed_amount", sa.BigInteger(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("destination", sa.String(34), nullable=True),
        sa.Column("serial", sa.String(64), nullable=True),
        sa.Column("scene", sa.Integer(), nullable=True),
        sa.Column("cost_sun", sa.BigInteger(), nullable=True),
        sa.Column("provider_balance_sun", sa.BigInteger(), nullable=True),
        sa.Column("txid", sa.String(64), nullable=True),
        sa.Column("signed_tx", sa.Text(), nullable=True),
        sa.Column("expiration", Time, nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("next_attempt_at", Time, nullable=True),
        sa.Column("claimed_by", sa.String(128), nullable=True),
        sa.Column("lease_until", Time, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("retry_of", BigId, nullable=True),
        sa.Column("created_at", Time, nullable=False),
        sa.Column("updated_at", Time, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sweeps")),
        sa.ForeignKeyConstraint(
            ["address"],
            ["deposit_addresses.address"],
            name=op.f("fk_sweeps_address_deposit_addresses"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["retry_of"], ["sweeps.id"], name=op.f("fk_sweeps_retry_of_sweeps"), ondelete="RESTRICT"
        ),
        sa.UniqueConstraint("serial", name=op.f("uq_sweeps_serial")),
        sa.UniqueConstraint("txid", name=op.f("uq_sweeps_txid")),
        sa.UniqueConstraint("retry_of", name=op.f("uq_sweeps_retry_of")),
        sa.CheckConstraint(_in(STATES), name=op.f("ck_sweeps_state")),
        sa.CheckConstraint("observed_amount >= 0 AND amount >= 0", name=op.f("ck_sweeps_amounts")),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_sweeps_attempts")),
    )
    op.create_index(
        "uq_sweeps_open_address_token",
        "sweeps",
        ["address", "token"],
        unique=True,
        sqlite_where=sa.text(_in(OPEN_STATES)),
        postgresql_where=sa.text(_in(OPEN_STATES)),
    )
    op.create_index("ix_sweeps_state_next_attempt_at", "sweeps", ["state", "next_attempt_at"])
    op.create_table(
        "sweep_events",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("sweep_id", BigId, nullable=False),
        sa.Column("at", Time, nullable=False),
        sa.Column("from_state", sa.String(16), nullable=True),
        sa.Column("to_state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(128), nullable=True),
        sa.Column("data", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sweep_events")),
        sa.ForeignKeyConstraint(
            ["sweep_id"], ["sweeps.id"], name=op.f("fk_sweep_events_sweep_id_sweeps"), ondelete="RESTRICT"
        ),
    )
    op.create_index("ix_sweep_events_sweep_id", "sweep_events", ["sweep_id"])

    # sweep_events is append-only, enforced by the database itself.
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            CREATE FUNCTION sweep_events_append_only() RETURNS trigger AS $$
            BEGIN
                RAISE EXCEPTION 'sweep_events is append-only';
            END;
            $$ LANGUAGE plpgsql
            """
        )
        op.execute(
            "CREATE TRIGGER sweep_events_append_only BEFORE UPDATE OR DELETE ON sweep_events "
            "FOR EACH ROW EXECUTE FUNCTION sweep_events_append_only()"
        )
    else:
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER sweep_events_no_{verb.lower()} BEFORE {verb} ON sweep_events "
                "BEGIN SELECT RAISE(ABORT, 'sweep_events is append-only'); END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER sweep_events_append_only ON sweep_events")
        op.execute("DROP FUNCTION sweep_events_append_only()")
    else:
        op.execute("DROP TRIGGER sweep_events_no_update")
        op.execute("DROP TRIGGER sweep_events_no_delete")
    op.drop_index("ix_sweep_events_sweep_id", table_name="sweep_events")
    op.drop_table("sweep_events")
    op.drop_index("ix_sweeps_state_next_attempt_at", table_name="sweeps")
    op.drop_index("uq_sweeps_open_address_token", table_name="sweeps")
    op.drop_table("sweeps")
    op.drop_table("deposit_addresses")
