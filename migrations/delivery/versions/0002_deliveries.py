"""Shipping instructions, deliveries and the orders whose delivery was called off.

Revision ID: delivery_0002
Revises: delivery_0001
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from shop.migrate import schema

revision: str = "delivery_0002"
down_revision: str | Sequence[str] | None = "delivery_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _address_columns() -> list[sa.Column[str]]:
    return [
        sa.Column("recipient", sa.String(200), nullable=False),
        sa.Column("line1", sa.String(200), nullable=False),
        sa.Column("line2", sa.String(200), nullable=True),
        sa.Column("city", sa.String(100), nullable=False),
        sa.Column("postal_code", sa.String(20), nullable=False),
        sa.Column("country", sa.String(2), nullable=False),
    ]


def upgrade() -> None:
    s = schema()
    op.create_table(
        "shipping_instructions",
        sa.Column("order_id", sa.Uuid, primary_key=True),
        sa.Column("customer_id", sa.Uuid, nullable=False),
        *_address_columns(),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        schema=s,
    )
    op.create_table(
        "deliveries",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("order_id", sa.Uuid, nullable=False, unique=True),
        sa.Column("customer_id", sa.Uuid, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("tracking_number", sa.String(32), nullable=True, unique=True),
        *_address_columns(),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        schema=s,
    )
    op.create_index(
        "ix_deliveries_customer_created", "deliveries", ["customer_id", "created_at", "id"], schema=s
    )
    op.create_index("ix_deliveries_created", "deliveries", ["created_at", "id"], schema=s)
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
    op.drop_index("ix_deliveries_created", table_name="deliveries", schema=s)
    op.drop_index("ix_deliveries_customer_created", table_name="deliveries", schema=s)
    op.drop_table("deliveries", schema=s)
    op.drop_table("shipping_instructions", schema=s)
