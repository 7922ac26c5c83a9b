"""sweeps.order_nonce: out_trade_no = "<row id>-<nonce>" for rows made from now on.

A ledger restored from a backup, re-created from scratch, or a staging ledger sharing the API key
reuses row ids; with a random nonce per row its out_trade_no never matches an order another
ledger (or an earlier life of this one) placed, so it never adopts, nor is blocked by, such an
order. Rows made before this migration keep their bare id (nonce NULL).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sweeps", sa.Column("order_nonce", sa.String(8), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sweeps") as batch:
        batch.drop_column("order_nonce")
