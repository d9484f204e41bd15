"""SQLite group commit: the writers of a loop turn share one commit, each still all-or-nothing."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from shop.db import Database, savepoint, unit_of_work
from shop.sqlite_group_commit import TransactionLost

from .sqlitedb import sqlite_database

metadata = sa.MetaData()
notes = sa.Table("notes", metadata, sa.Column("n", sa.Integer, primary_key=True))
parents = sa.Table("parents", metadata, sa.Column("id", sa.Integer, primary_key=True))
NOTE = sa.text("INSERT INTO notes (n) VALUES (:n)")
# a foreign key checked at COMMIT: a commit that fails
CHILDREN = "CREATE TABLE children (parent INTEGER REFERENCES parents (id) DEFERRABLE INITIALLY DEFERRED)"


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    async with sqlite_database(tmp_path, "notes", metadata) as db:
        yield db


def stored(database: Database) -> list[int]:
    """The notes as another connection (another process) reads them: committed ones only."""
    with sqlite3.connect(str(database.engine.url.database)) as other:
        return [n for (n,) in other.execute("SELECT n FROM notes ORDER BY n")]


async def commits_during(database: Database, work: Callable[[], Awaitable[object]]) -> int:
    """How many COMMITs the writer connection ran while `work()` ran."""
    driver = (await database.writer()).sync_connection.connection.driver_connection  # type: ignore[union-attr]
    seen: list[str] = []
    driver.set_trace_callback(seen.append)
    try:
        await work()
    finally:
        driver.set_trace_callback(None)
    return sum(1 for statement in seen if statement.strip().upper() == "COMMIT")


async def write_note(database: Database, n: int) -> None:
    async with unit_of_work(database) as uow:
        await uow.session.execute(NOTE, {"n": n})


async def test_writers_that_end_in_the_same_loop_turn_share_one_commit(database: Database) -> None:
    async def eight_writers() -> None:
        await asyncio.gather(*(write_note(database, n) for n in range(1, 9)))

    async def one_after_another() -> None:
        for n in range(11, 14):
            await write_note(database, n)

    assert await commits_during(database, eight_writers) == 1
    assert stored(database) == list(range(1, 9))
    assert await commits_during(database, one_after_another) == 3


async def test_a_unit_of_work_returns_only_once_its_work_is_committed(database: Database) -> None:
    async with unit_of_work(database) as uow:
        await uow.session.execute(NOTE, {"n": 1})
        assert stored(database) == []

    assert stored(database) == [1]


async def test_a_failing_writer_takes_back_its_own_work_and_the_others_commit(database: Database) -> None:
    async def fail_after_writing() -> None:
        async with unit_of_work(database) as uow:
            await uow.session.execute(NOTE, {"n": 2})
            raise RuntimeError("the handler failed")

    results = await asyncio.gather(
        write_note(database, 1), fail_after_writing(), write_note(database, 3), return_exceptions=True
    )

    assert [type(r) for r in results] == [type(None), RuntimeError, type(None)]
    assert stored(database) == [1, 3]


async def test_a_constraint_error_takes_back_the_writer_that_met_it_only(database: Database) -> None:
    await write_note(database, 1)

    results = await asyncio.gather(
        write_note(database, 2), write_note(database, 1), write_note(database, 3), return_exceptions=True
    )

    assert isinstance(results[1], IntegrityError)
    assert stored(database) == [1, 2, 3]


async def test_a_savepoint_rolled_back_inside_a_writer_keeps_the_rest_of_it(database: Database) -> None:
    async def with_inner_failure() -> None:
        async with unit_of_work(database) as uow:
            await uow.session.execute(NOTE, {"n": 2})
            with pytest.raises(IntegrityError):
                async with savepoint(uow.session):
                    await uow.session.execute(NOTE, {"n": 1})
            await uow.session.execute(NOTE, {"n": 3})

    await write_note(database, 1)
    await asyncio.gather(with_inner_failure(), write_note(database, 4))

    assert stored(database) == [1, 2, 3, 4]


async def test_a_commit_that_fails_fails_every_writer_of_its_transaction_and_stores_nothing(
    database: Database,
) -> None:
    async with unit_of_work(database) as uow:
        await uow.session.execute(sa.text(CHILDREN))

    async def orphan() -> None:
        async with unit_of_work(database) as uow:
            await uow.session.execute(sa.text("INSERT INTO children (parent) VALUES (42)"))

    results = await asyncio.gather(write_note(database, 1), orphan(), return_exceptions=True)

    assert all(isinstance(r, IntegrityError) for r in results), results
    assert stored(database) == []
    await write_note(database, 2)  # the writer goes on with a new transaction
    assert stored(database) == [2]


async def test_an_open_writer_holds_the_commit_until_it_ends(database: Database) -> None:
    inside = asyncio.Event()
    go_on = asyncio.Event()

    async def slow() -> None:
        async with unit_of_work(database) as uow:
            await uow.session.execute(NOTE, {"n": 2})
            inside.set()
            await go_on.wait()

    slow_task = asyncio.create_task(slow())
    await inside.wait()
    quick = asyncio.create_task(write_note(database, 1))  # waits for the lock, then joins
    await asyncio.sleep(0.05)
    assert stored(database) == []  # nothing half-done of the slow writer is committed

    go_on.set()
    await asyncio.gather(slow_task, quick)
    assert stored(database) == [1, 2]


async def test_writers_waiting_for_a_commit_fail_when_the_writer_connection_is_dropped(
    database: Database,
) -> None:
    writer = asyncio.create_task(write_note(database, 1))
    await asyncio.sleep(0)  # it ran its unit of work and waits for the commit, due next turn
    await database.drop_writer()  # e.g. after a BEGIN that failed half-way

    with pytest.raises(TransactionLost):
        await writer
    assert stored(database) == []
    await write_note(database, 2)  # a new connection, a new transaction
    assert stored(database) == [2]


async def test_a_writer_cancelled_while_it_waits_for_the_commit_is_committed_with_the_others(
    database: Database,
) -> None:
    hooks: list[int] = []

    async def write_and_hook(n: int) -> None:
        async with unit_of_work(database) as uow:
            await uow.session.execute(NOTE, {"n": n})

            async def ran() -> None:
                hooks.append(n)

            uow.after_commit(ran)

    cancelled = asyncio.create_task(write_and_hook(1))
    other = asyncio.create_task(write_and_hook(2))
    await asyncio.sleep(0)  # both wait for the commit, due next turn
    cancelled.cancel()

    await asyncio.gather(cancelled, other, return_exceptions=True)

    assert cancelled.cancelled()
    assert other.exception() is None
    assert stored(database) == [1, 2]  # its work had joined: it commits (as after a commit
    assert hooks == [2]  # that the cancel came too late for); its hooks do not run


async def test_another_connection_of_the_process_that_writes_commits_the_waiting_writers_first(
    database: Database,
) -> None:
    writer = asyncio.create_task(write_note(database, 1))
    await asyncio.sleep(0)  # it waits for the commit, due next turn
    started = time.monotonic()
    async with database.engine.begin() as conn:  # a tool's or a test's own connection
        await conn.execute(NOTE, {"n": 2})

    assert time.monotonic() - started < 1.0, "it waited for SQLite's lock on the loop"
    await writer
    assert stored(database) == [1, 2]
