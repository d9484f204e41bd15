"""Prepared statements: the driver's SQL on SQLite gives what SQLAlchemy's path gives, errors too."""

from __future__ import annotations

import gc
import tracemalloc
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from shop.db import Database, Prepared, savepoint, unit_of_work

from .sqlitedb import sqlite_database

metadata = sa.MetaData(schema="things")  # translated away on SQLite, as a module's is
things = sa.Table(
    "things",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("name", sa.String(50), nullable=False),
    sa.Column("data", sa.JSON, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("blob", sa.LargeBinary, nullable=True),
    sa.Column("n", sa.Integer, nullable=False, default=7),
)
INSERT = Prepared(things.insert())
SELECT = Prepared(sa.select(things).where(things.c.id == sa.bindparam("b_id")))
RENAME = Prepared(things.update().where(things.c.id == sa.bindparam("b_id")))


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    async with sqlite_database(tmp_path, "things", metadata) as db:
        yield db


def _row(thing_id: uuid.UUID) -> dict[str, object]:
    return {
        "id": thing_id,
        "name": "box",
        "data": {"lines": [1, 2], "ok": True},
        "at": datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
        "blob": b"\x00\x01",
        "n": 3,
    }


@pytest.mark.parametrize("driver_sql", [True, False], ids=["driver-sql", "sqlalchemy"])
async def test_a_prepared_statement_stores_and_reads_what_sqlalchemy_does(
    database: Database, driver_sql: bool
) -> None:
    database.driver_sql = driver_sql
    thing_id = uuid.uuid4()
    async with unit_of_work(database) as uow:
        await INSERT.execute(uow, _row(thing_id))
        renamed = await RENAME.execute(uow, {"b_id": thing_id, "name": "crate"})
    async with unit_of_work(database, write=False) as uow:
        found = (await SELECT.execute(uow, {"b_id": thing_id})).mappings()
        # what SQLAlchemy itself reads back from the same row
        plain = (await uow.session.execute(sa.select(things).where(things.c.id == thing_id))).mappings().one()

    assert renamed.rowcount == 1
    stored_at = datetime(2030, 1, 2, 3, 4, 5, 678000)  # SQLite keeps no offset: naive, in UTC
    assert found == [{**_row(thing_id), "name": "crate", "at": stored_at}]
    assert found[0] == dict(plain)


async def test_a_duplicate_through_the_driver_is_sqlalchemys_integrity_error_and_rolls_back(
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


async def test_parameters_the_compiled_form_does_not_cover_go_through_sqlalchemy(database: Database) -> None:
    """`n` left out: SQLAlchemy fills in its Python-side default; the driver's SQL could not."""
    thing_id = uuid.uuid4()
    row = _row(thing_id)
    del row["n"]
    async with unit_of_work(database) as uow:
        await INSERT.execute(uow, row)
    async with unit_of_work(database, write=False) as uow:
        assert (await SELECT.execute(uow, {"b_id": thing_id})).mappings()[0]["n"] == 7


async def _fail_inside_savepoint(session: object, row: dict[str, object]) -> None:
    async with savepoint(session):  # type: ignore[arg-type]
        await INSERT.execute(session, row)  # type: ignore[arg-type]
        raise RuntimeError("undo the savepoint only")


async def test_a_savepoint_undoes_only_its_own_writes_and_a_duplicate_inside_one_is_caught(
    database: Database,
) -> None:
    kept, undone = uuid.uuid4(), uuid.uuid4()
    async with unit_of_work(database) as uow:
        await INSERT.execute(uow, _row(kept))
        with pytest.raises(RuntimeError):
            await _fail_inside_savepoint(uow.session, _row(undone))
        with pytest.raises(IntegrityError):  # a duplicate, as modules' "insert unless there" does
            async with savepoint(uow.session):
                await INSERT.execute(uow, _row(kept))
        async with savepoint(uow.session):
            await RENAME.execute(uow, {"b_id": kept, "name": "renamed"})
    async with unit_of_work(database, write=False) as uow:
        assert (await SELECT.execute(uow, {"b_id": undone})).rows == []
        assert (await SELECT.execute(uow, {"b_id": kept})).mappings()[0]["name"] == "renamed"


async def _mixed_then_fail(database: Database, first: uuid.UUID, second: uuid.UUID) -> None:
    async with unit_of_work(database) as uow:
        await INSERT.execute(uow, _row(first))  # the driver's SQL
        await uow.session.execute(things.insert(), _row(second))  # SQLAlchemy's path
        raise RuntimeError("roll the whole unit of work back")


async def test_driver_and_sqlalchemy_statements_share_one_transaction_that_commits_or_rolls_back_whole(
    database: Database,
) -> None:
    undone = (uuid.uuid4(), uuid.uuid4())
    with pytest.raises(RuntimeError):
        await _mixed_then_fail(database, *undone)
    kept = (uuid.uuid4(), uuid.uuid4(), uuid.uuid4())
    async with unit_of_work(database) as uow:  # SQLAlchemy's path first, then the driver's
        await uow.session.execute(things.insert(), _row(kept[0]))
        await INSERT.execute(uow, _row(kept[1]))
    async with unit_of_work(database) as uow:  # the driver's alone, after a mixed one
        await INSERT.execute(uow, _row(kept[2]))
    async with unit_of_work(database, write=False) as uow:
        found = {
            thing_id for thing_id in (*undone, *kept) if (await SELECT.execute(uow, {"b_id": thing_id})).rows
        }
    assert found == set(kept)
    writer = await database.writer()
    assert not writer.in_transaction()
    raw = await writer.get_raw_connection()
    assert not raw.driver_connection.in_transaction  # type: ignore[union-attr]


@pytest.mark.parametrize("seed", range(3))
def test_the_fast_sqlite_datetime_bind_writes_what_sqlalchemys_does(seed: int) -> None:
    import random
    from datetime import date, timedelta, timezone

    from sqlalchemy.dialects import sqlite

    from shop.db import _sqlite_datetime

    sqlalchemys = sqlite.DATETIME().bind_processor(sqlite.dialect())  # type: ignore[no-untyped-call]
    rng = random.Random(seed)
    zones = [None, UTC, timezone(timedelta(hours=-7, minutes=-30))]
    values: list[object] = [
        None,
        date(2026, 12, 6),
        datetime(1, 1, 1),
        datetime(9999, 12, 31, 23, 59, 59, 999999),
    ]
    for _ in range(2000):
        values.append(
            datetime(
                rng.randint(1, 9999),
                rng.randint(1, 12),
                rng.randint(1, 28),
                rng.randint(0, 23),
                rng.randint(0, 59),
                rng.randint(0, 59),
                rng.choice([0, rng.randint(0, 999_999)]),
                tzinfo=rng.choice(zones),
            )
        )
    # each one again (the bind keeps the last text), and an equal instant in another zone
    # right after it (equal datetimes, another text)
    pairs = [
        (v, v.astimezone(zones[2] if v.tzinfo is UTC else UTC))
        for v in values
        if isinstance(v, datetime) and v.tzinfo is not None and 2 <= v.year <= 9998
    ]
    assert all(a == b and a.tzinfo is not b.tzinfo for a, b in pairs)
    for value in [*values, *values, *(x for pair in pairs for x in pair)]:
        assert _sqlite_datetime(value) == sqlalchemys(value), value


async def test_statements_and_units_of_work_leave_nothing_behind_on_the_connection(
    database: Database,
) -> None:
    """A long-running shop runs millions of statements on one writer connection: each must
    leave nothing behind (a cursor constructed on the connection, not taken from it, left a
    weak reference there for good, ~90 bytes a statement)."""
    thing_id = uuid.uuid4()
    async with unit_of_work(database) as uow:
        await INSERT.execute(uow, _row(thing_id))

    async def work(n: int) -> None:
        for _ in range(n):
            async with unit_of_work(database) as uow:  # BEGIN, two statements, a batch, COMMIT
                await RENAME.execute(uow, {"b_id": thing_id, "name": "crate"})
                await SELECT.execute(uow, {"b_id": thing_id})
                await RENAME.execute_many(uow, [{"b_id": thing_id, "name": "box"}])

    await work(300)  # caches warm
    tracemalloc.start()
    try:
        gc.collect()
        before = tracemalloc.take_snapshot()
        await work(2000)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(d.size_diff for d in after.compare_to(before, "filename"))
    assert grown < 2000 * 20, f"{grown / 2000:.0f} bytes kept a unit of work"
