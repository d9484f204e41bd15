"""The kernel's tables (outbox, inbox, dead letters, sagas) in the users module's schema.

Revision ID: users_0001
Revises:
Create Date: 2025-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

from shop.migrate import create_kernel_tables_v1, drop_kernel_tables_v1

revision: str = "users_0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = ("users",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_kernel_tables_v1()


def downgrade() -> None:
    drop_kernel_tables_v1()
