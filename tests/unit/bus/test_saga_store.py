"""Saving a saga row: the version check and the change's timeline lines, written together or not
at all, in the order of the change (on SQLite and PostgreSQL, where it is one statement)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shop.bus.saga import store
from shop.bus.saga.definition import Saga
from shop.bus.saga.queries import SagaQueries
from shop.bus.saga.state import Change, Event, SagaRow
from shop.db import unit_of_work

pytestmark = pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)

START = datetime(2030, 1, 1, tzinfo=UTC)


async def _started(database: Any) -> SagaRow:
    row = SagaRow.new(uuid.uuid4(), "trip", "book_hotel", {"n": 1}, 1, {}, None, START)
    async with unit_of_work(database) as uow:
        assert await store.insert(uow.session, row, "STARTED")
    return row


def _lines(*pairs: tuple[str, str, str | None]) -> Change:
    return Change([Event(step, status, detail) for step, status, detail in pairs])


async def _timeline(database: Any, saga_id: uuid.UUID) -> list[tuple[str, str, str | None]]:
    entries = await SagaQueries(database, lambda: START).timeline(saga_id)
    return [(e.step, e.status, e.detail) for e in entries]


async def test_a_save_writes_the_row_and_its_lines_in_their_order(make_database: Any) -> None:
    database = await make_database("sagastore")
    row = await _started(database)
    row.step, row.step_index, row.data = "book_flight", 1, {"n": 2}
    change = _lines(
        ("book_hotel", "DONE", None), ("book_flight", "STARTED", "seat 3"), ("x", "RETRY", "later")
    )
    later = START + timedelta(seconds=5)
    async with unit_of_work(database) as uow:
        assert await store.write(uow, Saga("trip"), row, change, later)

    assert row.version == 1
    stored = await store.load(database, row.id)
    assert stored is not None
    assert (stored.step, stored.step_index, stored.data["n"], stored.version) == ("book_flight", 1, 2, 1)
    assert stored.updated_at == later
    assert await _timeline(database, row.id) == [
        ("trip", "STARTED", None),
        ("book_hotel", "DONE", None),
        ("book_flight", "STARTED", "seat 3"),
        ("x", "RETRY", "later"),
    ]


async def test_a_save_from_a_stale_version_writes_neither_the_row_nor_its_lines(make_database: Any) -> None:
    database = await make_database("sagastore")
    row = await _started(database)
    ahead = row.copy()
    async with unit_of_work(database) as uow:  # another writer saves first
        assert await store.write(uow, Saga("trip"), ahead, _lines(("book_hotel", "DONE", None)), START)

    row.step = "elsewhere"
    async with unit_of_work(database) as uow:
        assert not await store.write(uow, Saga("trip"), row, _lines(("lost", "DONE", None)), START)

    assert row.stale
    stored = await store.load(database, row.id)
    assert stored is not None
    assert (stored.step, stored.version) == ("book_hotel", 1)
    assert await _timeline(database, row.id) == [("trip", "STARTED", None), ("book_hotel", "DONE", None)]


async def test_saves_that_keep_or_change_the_status_and_the_retry_time_store_each_value(
    make_database: Any,
) -> None:
    """A save leaves an indexed column it does not change out of its UPDATE (SQLite): whatever
    a save changes or keeps, the stored row is the row saved, also after a reload."""
    database = await make_database("sagastore")
    row = await _started(database)
    retry_at = START + timedelta(seconds=30)
    steps: list[tuple[str, datetime | None]] = [
        ("RUNNING", retry_at),  # status kept, a retry time set
        ("RUNNING", retry_at),  # both kept
        ("WAITING", retry_at),  # status changed, retry time kept
        ("WAITING", None),  # status kept, retry time cleared
        ("RUNNING", None),
    ]
    for n, (status, next_attempt_at) in enumerate(steps, start=1):
        if n == 3:  # from a row read back, as after a restart
            reloaded = await store.load(database, row.id)
            assert reloaded is not None
            row = reloaded
        row.status, row.next_attempt_at, row.step_index = status, next_attempt_at, n
        async with unit_of_work(database) as uow:
            assert await store.write(uow, Saga("trip"), row, _lines(("step", status, None)), START)
        stored = await store.load(database, row.id)
        assert stored is not None
        assert (stored.status, stored.next_attempt_at, stored.step_index, stored.version) == (
            status,
            next_attempt_at,
            n,
            n,
        )
