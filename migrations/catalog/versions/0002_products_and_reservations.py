"""Products, stock reservations and their lines.

Revision ID: catalog_0002
Revises: catalog_0001
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from shop.migrate import schema

revision: str = "catalog_0002"
down_revision: str | Sequence[str] | None = "catalog_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    s = schema()
    prefix = f"{s}." if s else ""
    op.create_table(
        "products",
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
        schema=s,
    )
    op.create_index("ix_products_created", "products", ["created_at", "id"], schema=s)
    op.create_index("ix_products_category_created", "products", ["category", "created_at", "id"], schema=s)
    op.create_table(
        "reservations",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("order_id", sa.Uuid, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(32), nullable=True),
        sa.Column("unavailable", sa.JSON, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        schema=s,
    )
    op.create_table(
        "reservation_lines",
        sa.Column(
            "reservation_id",
            sa.Uuid,
            sa.ForeignKey(f"{prefix}reservations.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("product_id", sa.Uuid, sa.ForeignKey(f"{prefix}products.id"), primary_key=True),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("quantity", sa.BigInteger, nullable=False),
        sa.Column("unit_price", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.CheckConstraint("quantity > 0", name="ck_reservation_lines_quantity_positive"),
        schema=s,
    )


def downgrade() -> None:
    s = schema()
    op.drop_table("reservation_lines", schema=s)
    op.drop_table("reservations", schema=s)
    op.drop_index("ix_products_category_created", table_name="products", schema=s)
    op.drop_index("ix_products_created", table_name="products", schema=s)
    op.drop_table("products", schema=s)
