"""`deposit_addresses.updated_at` indexed: the block follower asks every step which addresses were
watched or unwatched since its last look (`Ledger.watch_changes_since`); without the index that is a
scan of every deposit address.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_deposit_addresses_updated_at", "deposit_addresses", ["updated_at"])


def downgrade() -> None:
    op.drop_index("ix_deposit_addresses_updated_at", table_name="deposit_addresses")
