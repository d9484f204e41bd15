"""SQLite on the loop never blocks it: another process's write lock is waited for with sleeps."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

import shop.db
from shop.db import Database, DatabaseBusy, unit_of_work

from .sqlitedb import sqlite_database

metadata = sa.MetaData()
notes = sa.Table("notes", metadata, sa.Column("n", sa.Integer, nullable=False))


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    async with sqlite_database(tmp_path, "notes", metadata) as db:
        yield db


@pytest.fixture
def other_process(database: Database) -> Iterator[sqlite3.Connection]:
    """Another writer of the same file (a CLI command, a second `shop serve`), holding its lock."""
    conn = sqlite3.connect(str(database.engine.url.database), isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    yield conn
    if conn.in_transaction:
        conn.execute("ROLLBACK")
    conn.close()


async def _count(database: Database) -> int:
    async with unit_of_work(database, write=False) as uow:
        return int((await uow.session.execute(sa.select(sa.func.count()).select_from(notes))).scalar_one())


async def test_a_writer_waits_for_another_process_lock_while_the_loop_keeps_running(
    database: Database, other_process: sqlite3.Connection
) -> None:
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    ticker = asyncio.create_task(tick())
    asyncio.get_running_loop().call_later(0.3, other_process.execute, "COMMIT")
    started = time.monotonic()
    try:
        async with unit_of_work(database) as uow:
            await uow.session.execute(notes.insert().values(n=1))
    finally:
        ticker.cancel()
    waited = time.monotonic() - started

    assert waited >= 0.25  # it did wait for the other process
    assert ticks >= 10  # and the loop ran other work meanwhile (a blocked loop ticks 0-1 times)
    assert await _count(database) == 1


async def test_a_writer_gives_up_with_database_busy_after_the_busy_timeout_and_writes_nothing(
    database: Database, other_process: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shop.db, "SQLITE_BUSY_TIMEOUT_MS", 200)

    async def write() -> None:
        async with unit_of_work(database) as uow:
            await uow.session.execute(notes.insert().values(n=1))

    with pytest.raises(DatabaseBusy):
        await write()

    other_process.execute("COMMIT")
    assert await _count(database) == 0
    await write()  # the writers' connection works again once the lock is free
    assert await _count(database) == 1
