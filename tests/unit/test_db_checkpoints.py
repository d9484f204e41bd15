"""SQLite's WAL is checkpointed by the checkpoint thread of the process that writes the file,
never inside a commit on the loop, and never by a thread or connection inherited across a fork."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from shop.db import Database, unit_of_work
from shop.sqlite_checkpoints import AUTOCHECKPOINT_PAGES, CHECKPOINTS, Checkpointer

from .sqlitedb import sqlite_database

metadata = sa.MetaData()
notes = sa.Table("notes", metadata, sa.Column("n", sa.Integer, nullable=False), sa.Column("text", sa.Text))
ROW = "x" * 1000
ROWS = 6000  # ~6 MB: past the 1000 WAL pages (4 MB) at which a commit would checkpoint by default


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    async with sqlite_database(tmp_path, "notes", metadata) as db:
        yield db


async def _write(database: Database, rows: int) -> None:
    for start in range(0, rows, 200):
        async with unit_of_work(database) as uow:
            rows_ = [{"n": n, "text": ROW} for n in range(start, start + 200)]
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
    assert autocheckpoint == AUTOCHECKPOINT_PAGES
    CHECKPOINTS.remove(path)  # as if the thread were not there: commits alone
    try:
        await _write(database, ROWS)
        assert _size(path) < 200_000, "a commit copied the WAL into the database file"
        assert _size(path + "-wal") > 5_000_000
    finally:
        CHECKPOINTS.add(path)
    await _eventually(lambda: _size(path) > 5_000_000)


async def test_a_file_is_checkpointed_by_the_process_once_it_writes_it(database: Database) -> None:
    path = _file(database)
    assert path not in CHECKPOINTS.watched()  # opening a Database is not writing it
    await _write(database, ROWS)
    assert path in CHECKPOINTS.watched()
    await _eventually(lambda: _size(path) > 5_000_000)
    async with unit_of_work(database, write=False) as uow:
        assert (await uow.session.execute(sa.select(sa.func.count()).select_from(notes))).scalar() == ROWS


async def test_a_disposed_database_is_no_longer_checkpointed(tmp_path: Path) -> None:
    db = Database("notes", f"sqlite:///{tmp_path / 'gone.db'}")
    path = _file(db)
    async with unit_of_work(db):
        pass
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


async def test_a_forked_child_keeps_neither_the_parents_thread_nor_its_files(database: Database) -> None:
    await _write(database, 400)
    await _eventually(lambda: CHECKPOINTS.runs > 0 and _file(database) in CHECKPOINTS._connections)
    pid = os.fork()
    if pid == 0:  # the child: report through the exit code, never return into pytest
        ok = CHECKPOINTS.watched() == [] and CHECKPOINTS._thread is None and not CHECKPOINTS._connections
        os._exit(0 if ok else 1)
    _, status = await asyncio.to_thread(os.waitpid, pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert _file(database) in CHECKPOINTS.watched()  # the parent goes on as before
