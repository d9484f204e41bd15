"""Tables of the users module, all in the `users` schema."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData(schema="users")

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("email", sa.String(320), nullable=False, unique=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("password_hash", sa.String(200), nullable=False),
    sa.Column("role", sa.String(20), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

addresses = sa.Table(
    "addresses",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("user_id", sa.Uuid, sa.ForeignKey("users.users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("recipient", sa.String(200), nullable=False),
    sa.Column("line1", sa.String(200), nullable=False),
    sa.Column("line2", sa.String(200), nullable=True),
    sa.Column("city", sa.String(100), nullable=False),
    sa.Column("postal_code", sa.String(20), nullable=False),
    sa.Column("country", sa.String(2), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_addresses_user_created", "user_id", "created_at", "id"),
)
