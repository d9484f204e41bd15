"""SQLite's WAL is checkpointed by the process's checkpoint thread, never inside a commit on the
loop; and the writers' connection runs statements, transactions and savepoints without greenlets."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.util import concurrency

import shop.sqlite_onloop
from shop.db import Database, unit_of_work
from shop.sqlite_checkpoints import CHECKPOINTS, Checkpointer

metadata = sa.MetaData()
notes = sa.Table("notes", metadata, sa.Column("n", sa.Integer, nullable=False), sa.Column("text", sa.Text))
ROW = "x" * 1000
ROWS = 2000  # ~2 MB: well past the 1000 WAL pages at which a commit would checkpoint by default


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    db = Database("notes", f"sqlite:///{tmp_path / 'notes.db'}")
    async with db.engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    yield db
    await db.dispose()


async def _write(database: Database, rows: int) -> None:
    for start in range(0, rows, 100):
        async with unit_of_work(database) as uow:
            rows_ = [{"n": n, "text": ROW} for n in range(start, start + 100)]
            await uow.session.execute(notes.insert(), rows_)


def _size(path: str) -> int:
    return os.stat(path).st_size  # a stat of a local file: microseconds


def _file(database: Database) -> str:
    return str(database.engine.url.database)


async def _eventually(check: object, seconds: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not check():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "the checkpoint thread did not catch up"
        await asyncio.sleep(0.02)


async def test_commits_leave_the_checkpoint_to_the_thread(database: Database) -> None:
    path = _file(database)
    async with unit_of_work(database) as uow:
        autocheckpoint = (await uow.session.exec_driver_sql("PRAGMA wal_autocheckpoint")).scalar()
    assert autocheckpoint == 0
    CHECKPOINTS.remove(path)  # as if the thread were not there: commits alone
    try:
        await _write(database, ROWS)
        assert _size(path) < 200_000, "a commit copied the WAL into the database file"
        assert _size(path + "-wal") > 1_000_000
    finally:
        CHECKPOINTS.add(path)
    await _eventually(lambda: _size(path) > 1_000_000)


async def test_the_thread_checkpoints_every_file_a_database_has_open(database: Database) -> None:
    path = _file(database)
    assert path in CHECKPOINTS.watched()
    await _write(database, ROWS)
    await _eventually(lambda: _size(path) > 1_000_000)
    async with unit_of_work(database, write=False) as uow:
        assert (await uow.session.execute(sa.select(sa.func.count()).select_from(notes))).scalar() == ROWS


async def test_a_disposed_database_is_no_longer_checkpointed(tmp_path: Path) -> None:
    db = Database("notes", f"sqlite:///{tmp_path / 'gone.db'}")
    path = _file(db)
    assert path in CHECKPOINTS.watched()
    await db.dispose()
    assert path not in CHECKPOINTS.watched()


async def test_a_removed_file_is_never_created_again(tmp_path: Path) -> None:
    checkpoints = Checkpointer(interval_s=0.01)
    path = tmp_path / "removed.db"
    checkpoints.add(str(path))
    runs = checkpoints.runs
    await asyncio.sleep(0.1)
    assert not path.exists()
    assert checkpoints.runs == runs
    checkpoints.remove(str(path))


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
