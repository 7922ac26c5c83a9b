"""Block following: the cursor and the follower's lease (`follow_cursor`, one row per follower).

- next_block: the first block NOT yet processed; NULL until following has a start.
- start_block / start_recorded_at: where following began on a fresh ledger (the solid head read
  before the first full poll pass) and when that was written; set once, never moved.
- initial_poll_done_at: that first full poll pass finished (it began after start_recorded_at).
- holder / lease_token / lease_until: who may move the cursor, the random token every write must
  present, and until when (the database's clock). A take writes a new token.
- advanced_at / last_block_at: when the cursor last moved; the time of the last block processed.

A new table only: `sweeps` and `sweep_events` (and their triggers, 0001/0007) are untouched.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

Time = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "follow_cursor",
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("next_block", sa.BigInteger(), nullable=True),
        sa.Column("start_block", sa.BigInteger(), nullable=True),
        sa.Column("start_recorded_at", Time, nullable=True),
        sa.Column("initial_poll_done_at", Time, nullable=True),
        sa.Column("holder", sa.String(128), nullable=True),
        sa.Column("lease_token", sa.String(32), nullable=True),
        sa.Column("lease_until", Time, nullable=True),
        sa.Column("advanced_at", Time, nullable=True),
        sa.Column("last_block_at", Time, nullable=True),
        sa.Column("started_at", Time, nullable=False),
        sa.Column("updated_at", Time, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_follow_cursor")),
        sa.CheckConstraint(
            "(next_block IS NULL AND start_block IS NULL AND start_recorded_at IS NULL) OR "
            "(next_block IS NOT NULL AND start_block IS NOT NULL AND start_recorded_at IS NOT NULL "
            "AND start_block >= 0 AND next_block >= start_block)",
            name=op.f("ck_follow_cursor_blocks"),
        ),
        sa.CheckConstraint(
            "initial_poll_done_at IS NULL OR start_block IS NOT NULL",
            name=op.f("ck_follow_cursor_initial_poll"),
        ),
        sa.CheckConstraint(
            "(holder IS NULL AND lease_token IS NULL AND lease_until IS NULL) OR "
            "(holder IS NOT NULL AND lease_token IS NOT NULL AND lease_until IS NOT NULL)",
            name=op.f("ck_follow_cursor_lease"),
        ),
    )


def downgrade() -> None:
    op.drop_table("follow_cursor")
