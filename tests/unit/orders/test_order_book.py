"""Storing a new order: one statement, no savepoint; a concurrent request with the same
Idempotency-Key that won the race is answered as a replay (PostgreSQL, where both requests get
past the check before either commits); an order that could not be stored for any other reason
is an error, not a silent replay."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from shop.contracts.catalog import Line
from shop.db import unit_of_work
from shop.modules.orders import service
from shop.modules.orders.models import metadata
from shop.modules.orders.service import OrderBook

BOTH = pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
CUSTOMER, ADDRESS = uuid.uuid4(), uuid.uuid4()
ITEMS = [Line(product_id=uuid.uuid4(), quantity=2)]


async def _create(book: OrderBook, key: str | None) -> tuple[Any, bool]:
    return await book.create(
        customer_id=CUSTOMER, items=ITEMS, address_id=ADDRESS, payment_token="tok_ok", idempotency_key=key
    )


@pytest.mark.parametrize("backend", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
async def test_a_request_that_loses_the_race_for_its_key_is_answered_the_winners_order(
    make_database: Any,
) -> None:
    database = await make_database("orders", metadata)
    inserted, release = asyncio.Event(), asyncio.Event()

    async def winner() -> tuple[Any, bool]:
        async with unit_of_work(database) as uow:
            created = await _create(OrderBook(uow.session), "key-1")
            inserted.set()
            await release.wait()  # still uncommitted while the other request checks the key
        return created

    async def loser() -> tuple[Any, bool]:
        await inserted.wait()
        async with unit_of_work(database) as uow:
            return await _create(OrderBook(uow.session), "key-1")

    first = asyncio.create_task(winner())
    second = asyncio.create_task(loser())
    await asyncio.sleep(0.3)  # the loser's insert now waits on the winner's key
    release.set()
    (won, won_new), (lost, lost_new) = await asyncio.gather(first, second)

    assert (won_new, lost_new) == (True, False)
    assert lost.id == won.id


@BOTH
async def test_an_order_that_cannot_be_stored_is_an_error_not_a_replay(
    make_database: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = await make_database("orders", metadata)
    async with unit_of_work(database) as uow:
        existing, _ = await _create(OrderBook(uow.session), None)
    monkeypatch.setattr(service.uuid, "uuid4", lambda: existing.id)  # a colliding id

    async def create_again() -> None:
        async with unit_of_work(database) as uow:
            await _create(OrderBook(uow.session), None)

    with pytest.raises(RuntimeError, match="was not stored"):
        await create_again()
