"""Payments (one row per payment attempt) and the orders whose payment was given up.

Revision ID: payments_0002
Revises: payments_0001
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from shop.migrate import schema

revision: str = "payments_0002"
down_revision: str | Sequence[str] | None = "payments_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    s = schema()
    op.create_table(
        "payments",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("order_id", sa.Uuid, nullable=False),
        sa.Column("customer_id", sa.Uuid, nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("provider_ref", sa.String(100), nullable=True),
        sa.Column("decline_reason", sa.String(100), nullable=True),
        sa.Column("refunded", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("refunded >= 0 AND refunded <= amount", name="ck_payments_refund_within_amount"),
        schema=s,
    )
    op.create_index("ix_payments_order", "payments", ["order_id"], schema=s)
    op.create_index("ix_payments_customer_created", "payments", ["customer_id", "created_at", "id"], schema=s)
    op.create_index("ix_payments_created", "payments", ["created_at", "id"], schema=s)
    op.create_table(
        "cancelled_orders",
        sa.Column("order_id", sa.Uuid, primary_key=True),
        sa.Column("reason", sa.String(100), nullable=False),
        sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=False),
        schema=s,
    )


def downgrade() -> None:
    s = schema()
    op.drop_table("cancelled_orders", schema=s)
    op.drop_index("ix_payments_created", table_name="payments", schema=s)
    op.drop_index("ix_payments_customer_created", table_name="payments", schema=s)
    op.drop_index("ix_payments_order", table_name="payments", schema=s)
    op.drop_table("payments", schema=s)
