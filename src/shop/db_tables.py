"""SQL shapes that several modules' tables share, over a module's own session and table.

No module words: a module passes in its table. Keyset pages read a table with `created_at` and
`id` columns, in that order; the cancelled-orders marker a table of (order_id primary key,
reason, cancelled_at).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from shop.db import Prepared, UnitOfWork


async def keyset_rows(
    session: AsyncConnection,
    table: sa.Table,
    *,
    equal: Mapping[str, Any],
    limit: int,
    after: tuple[datetime, uuid.UUID] | None,
) -> tuple[list[RowMapping], bool]:
    """Up to `limit` rows ordered by (created_at, id), after `after`, where each column of
    `equal` whose value is not None equals it; and whether more rows follow."""
    query = sa.select(table)
    for column, value in equal.items():
        if value is not None:
            query = query.where(table.c[column] == value)
    if after is not None:
        query = query.where(sa.tuple_(table.c.created_at, table.c.id) > sa.tuple_(*after))
    query = query.order_by(table.c.created_at, table.c.id).limit(limit + 1)
    rows = [r._mapping for r in await session.execute(query)]
    return rows[:limit], len(rows) > limit


async def mark_cancelled(session: AsyncConnection, table: sa.Table, order_id: uuid.UUID, reason: str) -> None:
    """Remember that the order was cancelled (idempotent: a second mark, even a racing one, is a
    no-op, left out by the insert itself)."""
    mark = _MARK.get(table)
    if mark is None:
        mark = _MARK[table] = InsertIfAbsent(table)
    await mark.execute(
        session, {"order_id": order_id, "reason": reason[:100], "cancelled_at": datetime.now(UTC)}
    )


_MARK: dict[sa.Table, InsertIfAbsent] = {}


class InsertIfAbsent:
    """An INSERT of a whole row that leaves a row already there (same primary or unique key)
    alone: `INSERT ... ON CONFLICT DO NOTHING`, one statement where a savepoint around a plain
    INSERT takes three round trips on PostgreSQL. A concurrent, uncommitted insert of the same
    key is waited for (PostgreSQL) or serialized by the write lock (SQLite), then left alone."""

    __slots__ = ("_by_dialect",)

    def __init__(self, table: sa.Table) -> None:
        self._by_dialect = {
            "postgresql": Prepared(postgresql.insert(table).on_conflict_do_nothing()),
            "sqlite": Prepared(sqlite.insert(table).on_conflict_do_nothing()),
        }

    async def execute(self, target: UnitOfWork | AsyncConnection, values: Mapping[str, Any]) -> bool:
        """True if the row was inserted, False if one with its key was there already."""
        session = target.session if isinstance(target, UnitOfWork) else target
        return (await self._by_dialect[session.dialect.name].execute(target, values)).rowcount == 1


async def is_marked_cancelled(session: AsyncConnection, table: sa.Table, order_id: uuid.UUID) -> bool:
    query = _IS_CANCELLED.get(table)
    if query is None:
        query = _IS_CANCELLED[table] = Prepared(
            sa.select(table.c.order_id).where(table.c.order_id == sa.bindparam("b_order_id"))
        )
    return (await query.execute(session, {"b_order_id": order_id})).first() is not None


_IS_CANCELLED: dict[sa.Table, Prepared] = {}
