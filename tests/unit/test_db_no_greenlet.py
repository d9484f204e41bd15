"""The SQLite writers' connection runs statements, transactions and savepoints without greenlets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.util import concurrency

import shop.sqlite_onloop
from shop.db import Database, unit_of_work

from .sqlitedb import sqlite_database

metadata = sa.MetaData()
notes = sa.Table("notes", metadata, sa.Column("n", sa.Integer, nullable=False), sa.Column("text", sa.Text))


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    async with sqlite_database(tmp_path, "notes", metadata) as db:
        yield db


async def _undone_savepoint(session: AsyncConnection) -> None:
    async with session.begin_nested():
        await session.execute(notes.insert(), {"n": 3, "text": "rolled back"})
        raise RuntimeError("undo the savepoint")


async def _undone_transaction(database: Database) -> None:
    async with unit_of_work(database) as uow:
        await uow.session.execute(notes.insert(), {"n": 4, "text": "rolled back"})
        raise RuntimeError("undo the transaction")


async def test_statements_transactions_and_savepoints_skip_the_greenlet(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    await database.writer()
    await database.reader()  # opened (through the greenlet, as the pool may await)
    spawned = 0
    original = concurrency.greenlet_spawn

    async def counting(*args: object, **kwargs: object) -> object:
        nonlocal spawned
        spawned += 1
        return await original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(shop.sqlite_onloop, "greenlet_spawn", counting)
    monkeypatch.setattr("sqlalchemy.ext.asyncio.engine.greenlet_spawn", counting)
    async with unit_of_work(database) as uow:
        await uow.session.execute(notes.insert(), {"n": 1, "text": "kept"})
        async with uow.session.begin_nested():
            await uow.session.execute(notes.insert(), {"n": 2, "text": "kept too"})
        with pytest.raises(RuntimeError):
            await _undone_savepoint(uow.session)
    with pytest.raises(RuntimeError):
        await _undone_transaction(database)
    async with unit_of_work(database, write=False) as uow:
        kept = (await uow.session.execute(sa.select(notes.c.n).order_by(notes.c.n))).scalars().all()
    assert kept == [1, 2]
    assert spawned == 0
