"""Tables of the payments module, all in the `payments` schema."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData(schema="payments")

# One row per payment attempt (id = the saga's payment_id); the source of truth, not the provider.
payments = sa.Table(
    "payments",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("order_id", sa.Uuid, nullable=False),
    sa.Column("customer_id", sa.Uuid, nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    # PENDING, AUTHORIZED, CAPTURED, DECLINED, VOIDED, REFUNDED
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("provider_ref", sa.String(100), nullable=True),
    sa.Column("decline_reason", sa.String(100), nullable=True),
    sa.Column("refunded", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("refunded >= 0 AND refunded <= amount", name="ck_payments_refund_within_amount"),
    sa.Index("ix_payments_order", "order_id"),
    sa.Index("ix_payments_customer_created", "customer_id", "created_at", "id"),
    sa.Index("ix_payments_created", "created_at", "id"),
)

# Orders whose payment was given up (VoidPayment / RefundPayment), kept even when no payment
# row exists yet, so that a TakePayment arriving later never charges.
cancelled_orders = sa.Table(
    "cancelled_orders",
    metadata,
    sa.Column("order_id", sa.Uuid, primary_key=True),
    sa.Column("reason", sa.String(100), nullable=False),
    sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=False),
)
