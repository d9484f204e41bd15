"""PostgreSQL units of work: prepared statements run by asyncpg give what SQLAlchemy's path gives
(values, rowcounts, errors, rollbacks), reads take no transaction, and a pooled connection the
server closed is replaced at check-out instead of failing the next unit of work."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from shop import db as shop_db
from shop.db import (
    PG_KEPT_READERS,
    PG_WRITER_SLOTS,
    Database,
    DatabaseBusy,
    Prepared,
    UnitOfWork,
    savepoint,
    unit_of_work,
)

pytestmark = pytest.mark.postgres

MODULE = "pgthings"
metadata = sa.MetaData(schema=MODULE)
things = sa.Table(
    "things",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("name", sa.String(50), nullable=False),
    sa.Column("data", sa.JSON, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("blob", sa.LargeBinary, nullable=True),
    sa.Column("price", sa.Numeric(12, 2), nullable=True),
    sa.Column("n", sa.Integer, nullable=False, default=7),
)
INSERT = Prepared(things.insert())
SELECT = Prepared(sa.select(things).where(things.c.id == sa.bindparam("b_id")))
RENAME = Prepared(things.update().where(things.c.id == sa.bindparam("b_id")))
ADD = Prepared(
    things.update()
    .where(things.c.n >= sa.bindparam("least"), things.c.name == sa.bindparam("b_name"))
    .values(n=things.c.n + sa.bindparam("least"))
)
SOME = Prepared(sa.select(things.c.id).where(things.c.id.in_(sa.bindparam("ids", expanding=True))))
NOW = Prepared(sa.select(sa.func.clock_timestamp().label("c"), sa.func.now().label("t")))


@pytest.fixture
async def database(postgres_url: str) -> AsyncIterator[Database]:
    db = Database(MODULE, postgres_url)
    async with db.engine.begin() as conn:
        await conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{MODULE}" CASCADE')
        await conn.exec_driver_sql(f'CREATE SCHEMA "{MODULE}"')
        await conn.run_sync(metadata.create_all)
    yield db
    async with db.engine.begin() as conn:
        await conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{MODULE}" CASCADE')
    await db.dispose()


def _row(thing_id: uuid.UUID) -> dict[str, object]:
    return {
        "id": thing_id,
        "name": "box",
        "data": {"lines": [1, 2], "ok": True},
        "at": datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
        "blob": b"\x00\x01",
        "price": Decimal("12.50"),
        "n": 3,
    }


@pytest.mark.parametrize("driver_sql", [True, False], ids=["asyncpg", "sqlalchemy"])
async def test_a_prepared_statement_stores_and_reads_what_sqlalchemy_does(
    database: Database, driver_sql: bool
) -> None:
    database.driver_sql = driver_sql
    thing_id = uuid.uuid4()
    async with unit_of_work(database) as uow:
        await INSERT.execute(uow, _row(thing_id))
        renamed = await RENAME.execute(uow, {"b_id": thing_id, "name": "crate"})
        added = await ADD.execute(uow, {"least": 2, "b_name": "crate"})
        missed = await RENAME.execute(uow, {"b_id": uuid.uuid4(), "name": "none"})
    async with unit_of_work(database, write=False) as uow:
        found = (await SELECT.execute(uow, {"b_id": thing_id})).mappings()
        some = (await SOME.execute(uow, {"ids": [thing_id, uuid.uuid4()]})).rows
        plain = (await uow.session.execute(sa.select(things).where(things.c.id == thing_id))).mappings().one()

    assert (renamed.rowcount, added.rowcount, missed.rowcount) == (1, 1, 0)
    assert found == [{**_row(thing_id), "name": "crate", "n": 5}]
    assert found[0] == dict(plain)
    assert some == [(thing_id,)]


async def test_a_duplicate_through_asyncpg_is_sqlalchemys_integrity_error_and_rolls_back(
    database: Database,
) -> None:
    thing_id = uuid.uuid4()
    async with unit_of_work(database) as uow:
        await INSERT.execute(uow, _row(thing_id))

    async def rename_then_insert_again() -> None:
        async with unit_of_work(database) as uow:
            await RENAME.execute(uow, {"b_id": thing_id, "name": "lost"})
            await INSERT.execute(uow, _row(thing_id))

    with pytest.raises(IntegrityError):
        await rename_then_insert_again()

    async with unit_of_work(database, write=False) as uow:
        assert (await SELECT.execute(uow, {"b_id": thing_id})).mappings()[0]["name"] == "box"


def _through_sqlalchemy(database: Database) -> list[str]:
    """The statements SQLAlchemy's own cursor runs on `database` from now on."""
    seen: list[str] = []
    sa.event.listen(
        database.engine.sync_engine, "before_cursor_execute", lambda _c, _cur, sql, *_rest: seen.append(sql)
    )
    return seen


async def test_a_savepoint_rolled_back_keeps_the_rest_of_the_unit_of_work(database: Database) -> None:
    """asyncpg's statements and `shop.db.savepoint` share one transaction; in a writer's unit of
    work the savepoint's statements go to asyncpg too, not through SQLAlchemy's nested transaction."""
    first, second = uuid.uuid4(), uuid.uuid4()
    through_sqlalchemy = _through_sqlalchemy(database)
    async with unit_of_work(database) as uow:
        await INSERT.execute(uow, _row(first))
        with pytest.raises(IntegrityError):
            async with savepoint(uow.session):
                await INSERT.execute(uow, _row(first))
        await INSERT.execute(uow, _row(second))
    assert through_sqlalchemy == []
    async with unit_of_work(database, write=False) as uow:
        assert len((await SOME.execute(uow, {"ids": [first, second]})).rows) == 2


class _Fails(Exception):
    pass


async def _failing_savepoint(uow: UnitOfWork, *rows: uuid.UUID) -> None:
    """Insert `rows` in a savepoint, then fail it; the failure is swallowed here."""
    try:
        async with savepoint(uow.session):
            for row in rows:
                await INSERT.execute(uow, _row(row))
            raise _Fails
    except (_Fails, IntegrityError):
        pass


async def _found(database: Database, *ids: uuid.UUID) -> set[uuid.UUID]:
    async with unit_of_work(database, write=False) as uow:
        return {row[0] for row in (await SOME.execute(uow, {"ids": list(ids)})).rows}


async def test_nested_savepoints_roll_back_only_the_inner_one(database: Database) -> None:
    outer, inner, after = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    async with unit_of_work(database) as uow, savepoint(uow.session):
        await INSERT.execute(uow, _row(outer))
        await _failing_savepoint(uow, inner)
        await INSERT.execute(uow, _row(after))
    assert await _found(database, outer, inner, after) == {outer, after}


async def test_an_outer_savepoint_rolled_back_after_inner_ones_takes_back_all_of_them_and_no_more(
    database: Database,
) -> None:
    before, outer, kept_inner, failed_inner, after = (uuid.uuid4() for _ in range(5))

    async def outer_part(uow: UnitOfWork) -> None:
        async with savepoint(uow.session):
            await INSERT.execute(uow, _row(outer))
            async with savepoint(uow.session):
                await INSERT.execute(uow, _row(kept_inner))
            await _failing_savepoint(uow, failed_inner, before)  # `before` again: a duplicate
            raise _Fails

    async with unit_of_work(database) as uow:
        await INSERT.execute(uow, _row(before))
        with pytest.raises(_Fails):
            await outer_part(uow)
        async with savepoint(uow.session):
            await INSERT.execute(uow, _row(after))
    assert await _found(database, before, outer, kept_inner, failed_inner, after) == {before, after}


async def test_a_savepoint_at_the_start_of_a_unit_of_work_begins_its_transaction(database: Database) -> None:
    """The savepoint is the unit of work's first statement: the transaction begins with it, and
    the failed unit of work rolls back what the savepoint kept."""
    thing_id = uuid.uuid4()

    async def savepoint_first_then_fail() -> None:
        async with unit_of_work(database) as uow:
            async with savepoint(uow.session):
                await INSERT.execute(uow, _row(thing_id))
            raise RuntimeError("after the savepoint")

    with pytest.raises(RuntimeError):
        await savepoint_first_then_fail()
    async with unit_of_work(database, write=False) as uow:
        assert (await SELECT.execute(uow, {"b_id": thing_id})).rows == []


async def test_execute_many_stores_every_row_through_asyncpg(database: Database) -> None:
    ids = [uuid.uuid4() for _ in range(3)]
    through_sqlalchemy = _through_sqlalchemy(database)
    async with unit_of_work(database) as uow:
        await INSERT.execute_many(uow, [{**_row(i), "name": f"box {n}"} for n, i in enumerate(ids)])
    assert through_sqlalchemy == []
    async with unit_of_work(database, write=False) as uow:
        names = [(await SELECT.execute(uow, {"b_id": i})).mappings()[0]["name"] for i in ids]
    assert names == ["box 0", "box 1", "box 2"]


async def test_execute_many_with_a_duplicate_raises_sqlalchemys_error_and_stores_none_of_it(
    database: Database,
) -> None:
    existing, fresh = uuid.uuid4(), uuid.uuid4()
    async with unit_of_work(database) as uow:
        await INSERT.execute(uow, _row(existing))

    async def insert_many() -> None:
        async with unit_of_work(database) as uow:
            await INSERT.execute_many(uow, [_row(fresh), _row(existing)])

    with pytest.raises(IntegrityError):
        await insert_many()
    async with unit_of_work(database, write=False) as uow:
        assert (await SELECT.execute(uow, {"b_id": fresh})).rows == []
        assert len((await SELECT.execute(uow, {"b_id": existing})).rows) == 1


async def test_a_read_only_unit_of_work_runs_each_statement_on_its_own(database: Database) -> None:
    """No transaction around reads: now() is each statement's start, not a transaction's."""
    async with unit_of_work(database, write=False) as uow:
        first = (await NOW.execute(uow)).rows[0]
        await asyncio.sleep(0.02)
        second = (await NOW.execute(uow)).rows[0]
    async with unit_of_work(database) as uow:
        begun = (await NOW.execute(uow)).rows[0]
        await asyncio.sleep(0.02)
        later = (await NOW.execute(uow)).rows[0]
    assert second[1] > first[1]
    assert later[1] == begun[1]  # a writing unit of work is one transaction


async def test_a_pooled_connection_the_server_closed_is_replaced_at_check_out(
    database: Database, postgres_url: str
) -> None:
    thing_id = uuid.uuid4()
    async with unit_of_work(database) as uow:
        await INSERT.execute(uow, _row(thing_id))
        backend = (await uow.session.exec_driver_sql("SELECT pg_backend_pid()")).scalar()
    admin = await asyncpg.connect(postgres_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", backend)
    finally:
        await admin.close()
    await asyncio.sleep(0.2)  # the server's goodbye reaches the pooled connection

    for _ in range(3):  # every pooled connection the pool hands out works
        async with unit_of_work(database, write=False) as uow:
            assert (await SELECT.execute(uow, {"b_id": thing_id})).mappings()[0]["name"] == "box"
            assert (await uow.session.exec_driver_sql("SELECT pg_backend_pid()")).scalar() != backend


async def test_one_statement_serves_a_module_on_sqlite_and_on_postgresql_in_one_process(
    database: Database, tmp_path: Path
) -> None:
    """Compiled per backend: SQLite's `?` SQL is never sent to PostgreSQL, nor the reverse."""
    lite = Database(MODULE, f"sqlite:///{tmp_path / 'things.db'}")
    try:
        async with lite.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        for db in (lite, database, lite, database):
            thing_id = uuid.uuid4()
            async with unit_of_work(db) as uow:
                await INSERT.execute(uow, _row(thing_id))
            async with unit_of_work(db, write=False) as uow:
                assert (await SELECT.execute(uow, {"b_id": thing_id})).mappings()[0]["name"] == "box"
    finally:
        await lite.dispose()


# -- writers on kept connections ------------------------------------------------------------


async def _backend_pid(database: Database) -> int:
    async with unit_of_work(database) as uow:
        return int((await uow.session.exec_driver_sql("SELECT pg_backend_pid()")).scalar_one())


async def _terminate(postgres_url: str, backend: int) -> None:
    admin = await asyncpg.connect(postgres_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", backend)
    finally:
        await admin.close()
    await asyncio.sleep(0.2)  # the server's goodbye reaches the kept connection


async def test_a_writer_keeps_its_connection_for_the_next_writer_without_a_check_out(
    database: Database,
) -> None:
    first = await _backend_pid(database)
    check_outs: list[object] = []
    sa.event.listen(database.engine.sync_engine.pool, "checkout", lambda *args: check_outs.append(args))

    assert await _backend_pid(database) == first
    assert check_outs == []  # the second writer took the kept connection, not the pool's
    assert database.kept_connections == 1
    assert database.engine.sync_engine.pool.checkedout() == 1  # type: ignore[attr-defined]


async def test_a_kept_connection_the_server_closed_is_dropped_and_the_next_writer_works(
    database: Database, postgres_url: str
) -> None:
    backend = await _backend_pid(database)
    await _terminate(postgres_url, backend)

    thing_id = uuid.uuid4()
    async with unit_of_work(database) as uow:
        await INSERT.execute(uow, _row(thing_id))
        assert (await uow.session.exec_driver_sql("SELECT pg_backend_pid()")).scalar() != backend
    async with unit_of_work(database, write=False) as uow:
        assert (await SELECT.execute(uow, {"b_id": thing_id})).mappings()[0]["name"] == "box"


async def test_a_failed_unit_of_work_leaves_nothing_behind_on_its_kept_connection(database: Database) -> None:
    kept_id, lost_id = uuid.uuid4(), uuid.uuid4()
    async with unit_of_work(database) as uow:
        await INSERT.execute(uow, _row(kept_id))
    backend = await _backend_pid(database)

    async def insert_then_a_duplicate() -> None:
        async with unit_of_work(database) as uow:
            await INSERT.execute(uow, _row(lost_id))
            await INSERT.execute(uow, _row(kept_id))  # a duplicate: the transaction is aborted

    with pytest.raises(IntegrityError):
        await insert_then_a_duplicate()
    async with unit_of_work(database) as uow:  # the same connection, in no failed transaction
        assert (await uow.session.exec_driver_sql("SELECT pg_backend_pid()")).scalar() == backend
        await RENAME.execute(uow, {"b_id": kept_id, "name": "renamed"})
    async with unit_of_work(database, write=False) as uow:
        assert (await SELECT.execute(uow, {"b_id": lost_id})).rows == []
        assert (await SELECT.execute(uow, {"b_id": kept_id})).mappings()[0]["name"] == "renamed"


async def test_a_commit_the_server_refuses_raises_sqlalchemys_error_and_stores_nothing(
    database: Database,
) -> None:
    async with database.engine.begin() as conn:
        await conn.exec_driver_sql(
            f'CREATE TABLE "{MODULE}".codes (code INT, CONSTRAINT codes_once UNIQUE (code)'
            " DEFERRABLE INITIALLY DEFERRED)"
        )
    codes = Prepared(sa.text(f'INSERT INTO "{MODULE}".codes VALUES (2), (2)'))

    async def through_sqlalchemy() -> None:  # SQLAlchemy's transaction object commits
        async with unit_of_work(database) as uow:
            await uow.session.exec_driver_sql(f'INSERT INTO "{MODULE}".codes VALUES (1), (1)')

    async def through_the_adapter() -> None:  # no SQLAlchemy transaction: the adapter commits
        async with unit_of_work(database) as uow:
            await codes.execute(uow)

    with pytest.raises(IntegrityError):  # the deferred check fails at COMMIT
        await through_sqlalchemy()
    with pytest.raises(IntegrityError):
        await through_the_adapter()

    async with unit_of_work(database) as uow:  # the next writer is not left in a transaction
        await uow.session.exec_driver_sql(f'INSERT INTO "{MODULE}".codes VALUES (3)')
    async with unit_of_work(database, write=False) as uow:
        found = await uow.session.exec_driver_sql(f'SELECT code FROM "{MODULE}".codes ORDER BY code')
        assert [r[0] for r in found] == [3]


async def test_writers_beyond_their_slots_wait_while_readers_still_get_connections(
    database: Database,
) -> None:
    """A module has PG_WRITER_SLOTS writers at a time, each on a kept connection; more wait for
    a slot (not for the pool), and readers have the rest of the pool."""
    pool = database.engine.sync_engine.pool
    busy = PG_WRITER_SLOTS + 4
    release, all_in = asyncio.Event(), asyncio.Event()
    entered: list[int] = []

    async def writer(n: int) -> None:
        async with unit_of_work(database) as uow:
            entered.append(n)
            if len(entered) == PG_WRITER_SLOTS:
                all_in.set()
            await uow.session.exec_driver_sql("SELECT 1")
            await release.wait()

    async def reader() -> None:
        async with unit_of_work(database, write=False) as uow:
            await uow.session.exec_driver_sql("SELECT 1")

    writers = [asyncio.create_task(writer(n)) for n in range(busy)]
    try:
        await asyncio.wait_for(all_in.wait(), 10)  # the slots' writers open their connections
        await asyncio.sleep(0.2)  # and no more come in
        assert len(entered) == PG_WRITER_SLOTS
        assert pool.checkedout() == PG_WRITER_SLOTS  # type: ignore[attr-defined]
        await asyncio.wait_for(asyncio.gather(*(reader() for _ in range(5))), 5)
    finally:
        release.set()
        await asyncio.wait_for(asyncio.gather(*writers), 10)
    assert sorted(entered) == list(range(busy))
    # kept for the next writers, and for the next readers (five read at once, four are kept)
    assert database.kept_connections == PG_WRITER_SLOTS + PG_KEPT_READERS
    assert pool.checkedout() == PG_WRITER_SLOTS + PG_KEPT_READERS  # type: ignore[attr-defined]


async def test_a_writer_that_finds_no_slot_within_the_busy_timeout_fails_with_database_busy(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shop_db, "SQLITE_BUSY_TIMEOUT_MS", 200)
    release = asyncio.Event()

    async def holder() -> None:
        async with unit_of_work(database):
            await release.wait()

    holders = [asyncio.create_task(holder()) for _ in range(PG_WRITER_SLOTS)]
    await asyncio.sleep(0.1)
    try:
        with pytest.raises(DatabaseBusy):
            async with unit_of_work(database):
                pass
    finally:
        release.set()
        await asyncio.gather(*holders)
    async with unit_of_work(database) as uow:  # the slots are free again
        await INSERT.execute(uow, _row(uuid.uuid4()))


# -- readers on kept connections ------------------------------------------------------------


async def _reader_pid(database: Database) -> int:
    async with unit_of_work(database, write=False) as uow:
        return int((await uow.session.exec_driver_sql("SELECT pg_backend_pid()")).scalar_one())


async def test_a_reader_keeps_its_connection_for_the_next_reader_without_a_check_out(
    database: Database, postgres_url: str
) -> None:
    first = await _reader_pid(database)
    check_outs: list[object] = []
    sa.event.listen(database.engine.sync_engine.pool, "checkout", lambda *args: check_outs.append(args))

    assert await _reader_pid(database) == first
    assert check_outs == []
    admin = await asyncpg.connect(postgres_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:  # kept in autocommit: no transaction left open between readers
        state = await admin.fetchval("SELECT state FROM pg_stat_activity WHERE pid = $1", first)
    finally:
        await admin.close()
    assert state == "idle"


async def test_a_reader_that_failed_gives_its_connection_back_to_the_pool(database: Database) -> None:
    async def failing_reader() -> None:
        async with unit_of_work(database, write=False) as uow:
            await uow.session.exec_driver_sql("SELECT 1")
            raise RuntimeError("the handler failed")

    with pytest.raises(RuntimeError):
        await failing_reader()

    assert database.kept_connections == 0
    await _reader_pid(database)  # the next reader works (the pool's connection)


async def test_readers_keep_at_most_their_share_of_the_pool(database: Database) -> None:
    release = asyncio.Event()

    async def reader() -> None:
        async with unit_of_work(database, write=False) as uow:
            await uow.session.exec_driver_sql("SELECT 1")
            await release.wait()

    readers = [asyncio.create_task(reader()) for _ in range(PG_KEPT_READERS + 3)]
    await asyncio.sleep(0.2)
    release.set()
    await asyncio.gather(*readers)

    assert database.kept_connections == PG_KEPT_READERS
    assert database.engine.sync_engine.pool.checkedout() == PG_KEPT_READERS  # type: ignore[attr-defined]


async def test_a_kept_reader_connection_the_server_closed_is_dropped_and_the_next_reader_works(
    database: Database, postgres_url: str
) -> None:
    backend = await _reader_pid(database)
    await _terminate(postgres_url, backend)

    assert await _reader_pid(database) != backend
