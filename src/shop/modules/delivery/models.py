"""Tables of the delivery module, all in the `delivery` schema."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData(schema="delivery")


def _address_columns() -> list[sa.Column[str]]:
    return [
        sa.Column("recipient", sa.String(200), nullable=False),
        sa.Column("line1", sa.String(200), nullable=False),
        sa.Column("line2", sa.String(200), nullable=True),
        sa.Column("city", sa.String(100), nullable=False),
        sa.Column("postal_code", sa.String(20), nullable=False),
        sa.Column("country", sa.String(2), nullable=False),
    ]


# Where an order awaiting payment would ship to, and whose it is: kept from OrderAwaitingPayment by
# versions before OrderCompleted carried the address (read, no longer written; see ADR 0030).
shipping_instructions = sa.Table(
    "shipping_instructions",
    metadata,
    sa.Column("order_id", sa.Uuid, primary_key=True),
    sa.Column("customer_id", sa.Uuid, nullable=False),
    *_address_columns(),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

# One delivery per order, created PREPARING when the order's payment is captured.
deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("order_id", sa.Uuid, nullable=False, unique=True),
    sa.Column("customer_id", sa.Uuid, nullable=False),
    # PREPARING, SHIPPED, IN_TRANSIT, DELIVERED, CANCELLED
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("tracking_number", sa.String(32), nullable=True, unique=True),
    *_address_columns(),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_deliveries_customer_created", "customer_id", "created_at", "id"),
    sa.Index("ix_deliveries_created", "created_at", "id"),
)

# Orders whose delivery was called off, even before it existed: a later PaymentCaptured
# creates none.
cancelled_orders = sa.Table(
    "cancelled_orders",
    metadata,
    sa.Column("order_id", sa.Uuid, primary_key=True),
    sa.Column("reason", sa.String(100), nullable=False),
    sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=False),
)
