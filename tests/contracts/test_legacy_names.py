"""Messages written before wire names existed carry the bare class name (`ReserveStock`): outbox
rows, retries and dead letters in existing databases. They still decode, route and get handled."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import msgspec
import pytest

from shop.bus import inbox, outbox
from shop.bus.bus import Bus
from shop.bus.messages import Envelope, encode, new_envelope, to_json
from shop.bus.transports.inprocess import InProcessTransport
from shop.contracts.catalog import CreateProduct, GetProduct, Line, ProductView, ReserveStock, StockReserved
from shop.db import Database, unit_of_work
from shop.modules.catalog import models
from shop.modules.catalog import module as catalog_module


@dataclasses.dataclass
class Catalog:
    bus: Bus
    database: Database

    async def product(self, stock: int) -> uuid.UUID:
        view = await self.bus.ask(
            CreateProduct(
                sku=f"SKU-{uuid.uuid4().hex[:8]}", name="Tea", price=500, currency="EUR", stock=stock
            )
        )
        assert isinstance(view, ProductView)
        return view.id

    async def reserved(self, product_id: uuid.UUID) -> int:
        view = await self.bus.ask(GetProduct(product_id=product_id))
        assert isinstance(view, ProductView)
        return view.reserved

    async def eventually(self, check: Callable[[], Awaitable[bool]]) -> None:
        for _ in range(200):
            if await check():
                return
            await asyncio.sleep(0.02)
        raise AssertionError("never happened")


@pytest.fixture
async def catalog(make_database: Callable[..., Awaitable[Database]]) -> AsyncIterator[Catalog]:
    database = await make_database("catalog", models.metadata)
    bus = Bus([catalog_module], InProcessTransport(), local=["catalog"], databases={"catalog": database})
    await bus.start()
    try:
        yield Catalog(bus, database)
    finally:
        await bus.stop()


def legacy(envelope: Envelope, **changes: object) -> Envelope:
    """The envelope as the code before wire names wrote it: its type the bare class name."""
    old_name = envelope.type.split(".")[1]
    return msgspec.structs.replace(envelope, type=old_name, **changes)


def reserve(product_id: uuid.UUID, quantity: int) -> ReserveStock:
    return ReserveStock(
        reservation_id=uuid.uuid4(),
        order_id=uuid.uuid4(),
        lines=(Line(product_id=product_id, quantity=quantity),),
    )


def test_a_legacy_envelope_routes_like_its_wire_name(catalog: Catalog) -> None:
    current = new_envelope(reserve(uuid.uuid4(), 1))
    event = new_envelope(StockReserved(reservation_id=uuid.uuid4(), order_id=uuid.uuid4(), lines=()))

    assert catalog.bus.router.routes(legacy(current)) == catalog.bus.router.routes(current)
    assert catalog.bus.router.routes(current) == (("catalog", "catalog.reserve_stock"),)
    assert catalog.bus.router.routes(legacy(event)) == catalog.bus.router.routes(event)


def test_a_legacy_dead_letter_shows_its_body() -> None:
    message = reserve(uuid.uuid4(), 3)

    shown = to_json(legacy(new_envelope(message)))

    assert shown["type"] == "ReserveStock"
    assert shown["body"] == msgspec.to_builtins(message)


async def test_an_outbox_row_written_before_wire_names_is_relayed_and_handled(catalog: Catalog) -> None:
    tea = await catalog.product(stock=5)
    envelope = legacy(new_envelope(reserve(tea, 2)))

    async with unit_of_work(catalog.database) as uow:
        await outbox.write(uow, envelope, catalog.bus.relay)

    await catalog.eventually(lambda: _is(catalog.reserved(tea), 2))


async def test_a_dead_letter_stored_before_wire_names_is_redriven_and_handled(catalog: Catalog) -> None:
    tea = await catalog.product(stock=5)
    envelope = legacy(new_envelope(reserve(tea, 4)), consumer="catalog.reserve_stock", attempt=5)
    entry = await inbox.bury(catalog.database, "catalog", envelope, "boom")
    [dead] = await inbox.list_dead(catalog.database)
    assert dead.message_type == "ReserveStock"

    assert await inbox.redrive(catalog.database, entry, catalog.bus.relay)

    await catalog.eventually(lambda: _is(catalog.reserved(tea), 4))
    assert await inbox.list_dead(catalog.database) == []


async def test_a_reply_boxed_under_a_legacy_name_decodes() -> None:
    from shop.bus.messages import Reply
    from shop.bus.transports.dramatiq import result_of

    event = StockReserved(reservation_id=uuid.uuid4(), order_id=uuid.uuid4(), lines=())

    assert result_of(Reply(type="StockReserved", body=encode(event))) == event


async def _is(value: Awaitable[int], expected: int) -> bool:
    return await value == expected
