"""The kernel's tables (outbox, inbox, dead letters, sagas): the first revision of every module.

One file in every module's history (shop.migrate puts migrations/_kernel/versions beside
migrations/<module>/versions). In each it is revision `<module>_0001` with the module's branch
label, as when every module carried its own copy, so databases migrated then stay valid.

Revision ID: <module>_0001
Revises:
Create Date: 2025-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

from shop.migrate import create_kernel_tables_v1, drop_kernel_tables_v1, kernel_revision

revision: str
branch_labels: str | Sequence[str] | None
revision, branch_labels = kernel_revision()
down_revision: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_kernel_tables_v1()


def downgrade() -> None:
    drop_kernel_tables_v1()
