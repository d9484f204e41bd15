"""Tables of the orders module, all in the `orders` schema."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData(schema="orders")

orders = sa.Table(
    "orders",
    metadata,
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
    sa.Index("ix_orders_customer_created", "customer_id", "created_at", "id"),
    sa.Index("ux_orders_customer_idempotency_key", "customer_id", "idempotency_key", unique=True),
)
