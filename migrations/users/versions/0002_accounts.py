"""Accounts and addresses.

Revision ID: users_0002
Revises: users_0001
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from shop.migrate import schema

revision: str = "users_0002"
down_revision: str | Sequence[str] | None = "users_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    s = schema()
    op.create_table(
        "users",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("email", sa.String(320), nullable=False, unique=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("password_hash", sa.String(200), nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        schema=s,
    )
    op.create_table(
        "addresses",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column(
            "user_id",
            sa.Uuid,
            sa.ForeignKey(f"{s}.users.id" if s else "users.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("recipient", sa.String(200), nullable=False),
        sa.Column("line1", sa.String(200), nullable=False),
        sa.Column("line2", sa.String(200), nullable=True),
        sa.Column("city", sa.String(100), nullable=False),
        sa.Column("postal_code", sa.String(20), nullable=False),
        sa.Column("country", sa.String(2), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        schema=s,
    )
    op.create_index("ix_addresses_user_created", "addresses", ["user_id", "created_at", "id"], schema=s)


def downgrade() -> None:
    s = schema()
    op.drop_index("ix_addresses_user_created", table_name="addresses", schema=s)
    op.drop_table("addresses", schema=s)
    op.drop_table("users", schema=s)
