"""sweeps.order_sent_at: when an energy order POST was last sent for the row, written BEFORE it.

A POST whose answer was lost, or that a crash interrupted, may still create the order later; the
pipeline does not send another one until this is old enough for the first to have landed or died.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A nullable column: a plain ALTER TABLE ADD COLUMN on both backends (no table copy on SQLite).
    op.add_column("sweeps", sa.Column("order_sent_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sweeps") as batch:
        batch.drop_column("order_sent_at")
