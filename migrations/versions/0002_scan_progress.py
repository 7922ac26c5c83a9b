"""Scan progress: where a polling pass is, so a crash mid-pass resumes instead of restarting.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Time = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "scan_progress",
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("pass_started_at", Time, nullable=False),
        sa.Column("last_address_id", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("addresses_scanned", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("sweeps_queued", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("completed_at", Time, nullable=True),
        sa.Column("updated_at", Time, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_scan_progress")),
    )


def downgrade() -> None:
    op.drop_table("scan_progress")
