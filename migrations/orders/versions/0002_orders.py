"""Orders.

Revision ID: orders_0002
Revises: orders_0001
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from shop.migrate import schema

revision: str = "orders_0002"
down_revision: str | Sequence[str] | None = "orders_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    s = schema()
    op.create_table(
        "orders",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("customer_id", sa.Uuid, nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("items", sa.JSON, nullable=False),
        sa.Column("total", sa.BigInteger, nullable=True),
        sa.Column("currency", sa.String(3), nullable=True),
        sa.Column("address_id", sa.Uuid, nullable=False),
        sa.Column("payment_token", sa.String(200), nullable=False),
        sa.Column("failure_reason", sa.String(64), nullable=True),
        sa.Column("idempotency_key", sa.String(200), nullable=True),
        sa.Column("request_fingerprint", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        schema=s,
    )
    op.create_index("ix_orders_customer_created", "orders", ["customer_id", "created_at", "id"], schema=s)
    op.create_index(
        "ux_orders_customer_idempotency_key",
        "orders",
        ["customer_id", "idempotency_key"],
        unique=True,
        schema=s,
    )


def downgrade() -> None:
    s = schema()
    op.drop_index("ux_orders_customer_idempotency_key", table_name="orders", schema=s)
    op.drop_index("ix_orders_customer_created", table_name="orders", schema=s)
    op.drop_table("orders", schema=s)
