"""Tables of the catalog module, all in the `catalog` schema."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData(schema="catalog")

products = sa.Table(
    "products",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("sku", sa.String(64), nullable=False, unique=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("price", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("category", sa.String(100), nullable=True),
    sa.Column("on_hand", sa.BigInteger, nullable=False),
    sa.Column("reserved", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("price >= 0", name="ck_products_price_not_negative"),
    sa.CheckConstraint("reserved >= 0", name="ck_products_reserved_not_negative"),
    sa.CheckConstraint("on_hand >= reserved", name="ck_products_on_hand_covers_reserved"),
    sa.Index("ix_products_created", "created_at", "id"),
    sa.Index("ix_products_category_created", "category", "created_at", "id"),
)

# One row per ReserveStock key (the saga's reservation id). `status` is RESERVED, RELEASED,
# COMMITTED, RESTOCKED, or REJECTED (nothing was reserved; `reason` and `unavailable` keep the
# refusal so that a repeated command gets the same answer). A RELEASED row without lines is a
# tombstone: the release arrived first, and a late ReserveStock must not reserve.
reservations = sa.Table(
    "reservations",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("order_id", sa.Uuid, nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(32), nullable=True),
    sa.Column("unavailable", sa.JSON, nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

reservation_lines = sa.Table(
    "reservation_lines",
    metadata,
    sa.Column(
        "reservation_id",
        sa.Uuid,
        sa.ForeignKey("catalog.reservations.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("product_id", sa.Uuid, sa.ForeignKey("catalog.products.id"), primary_key=True),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("quantity", sa.BigInteger, nullable=False),
    sa.Column("unit_price", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.CheckConstraint("quantity > 0", name="ck_reservation_lines_quantity_positive"),
)
