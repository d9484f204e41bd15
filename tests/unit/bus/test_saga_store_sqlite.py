"""Saving a saga row on SQLite: SQLite rewrites an index's entry whenever an UPDATE sets one of
its columns, so a save leaves out the indexed columns (status, next_attempt_at) it does not
change. (PostgreSQL saves the row and its lines in one statement with every column, and skips
index entries whose values did not change by itself.)"""

from __future__ import annotations

from typing import Any

import pytest

from shop.bus.saga import store
from shop.bus.saga.definition import Saga
from shop.db import unit_of_work

from .test_saga_store import START, _lines, _started

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


async def test_a_save_on_sqlite_leaves_unchanged_indexed_columns_out_of_its_update(
    make_database: Any,
) -> None:
    database = await make_database("sagastore")
    row = await _started(database)
    updates: list[str] = []

    async def save(status: str) -> None:
        row.status = status
        async with unit_of_work(database) as uow:
            uow.driver().set_trace_callback(
                lambda sql: updates.append(sql) if sql.lstrip().upper().startswith("UPDATE") else None
            )
            try:
                assert await store.write(uow, Saga("trip"), row, _lines(("step", status, None)), START)
            finally:
                uow.driver().set_trace_callback(None)

    await save("RUNNING")
    await save("WAITING")
    kept, changed = (sql.split(" WHERE ")[0] for sql in updates)
    assert "status=" not in kept.replace(" ", "")
    assert "next_attempt_at" not in kept
    assert "status=" in changed.replace(" ", "")
    assert "next_attempt_at" not in changed
