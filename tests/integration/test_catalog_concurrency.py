"""Stock under concurrency, on SQLite and on PostgreSQL: never oversold, never negative.

Many ReserveStock asks run at once on one bus (each in its own unit of work and connection):
the conditional UPDATE lets exactly as many through as there is stock; multi-line reservations
taken in opposite orders neither deadlock nor oversell; admin write-offs racing reservations
never leave less on hand than is reserved; one reservation id sent many times at once reserves once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from shop.bus.bus import Bus
from shop.bus.messages import Rejected
from shop.bus.transports.inprocess import InProcessTransport
from shop.contracts.catalog import (
    AdjustStock,
    CommitStock,
    CreateProduct,
    Line,
    ProductView,
    ReleaseStock,
    ReserveStock,
    StockReserved,
    StockUnavailable,
)
from shop.db import Database
from shop.modules.catalog import models
from shop.modules.catalog import module as catalog_module

pytestmark = pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)

TIMEOUT = 60.0


def _run(coroutine: Coroutine[Any, Any, None]) -> None:
    # In a thread of its own: fixtures may be set up from inside a running event loop.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, coroutine).result()


async def _admin(dsn: str, *statements: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def postgres_url(postgres_url: str) -> Iterator[str]:
    """A database of this module's own on the shared server: other test runs drop and recreate
    the `catalog` schema of the shared test database, which must not happen mid-race here."""
    name = f"shop_test_catalog_race_{os.getpid()}"
    dsn = postgres_url.replace("postgresql+asyncpg://", "postgresql://")
    _run(_admin(dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"'))
    yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    _run(_admin(dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def catalog(make_database: Any) -> AsyncIterator[tuple[Bus, Database]]:
    database = await make_database("catalog", models.metadata)
    bus = Bus([catalog_module], InProcessTransport(), local=["catalog"], databases={"catalog": database})
    await bus.start()
    try:
        yield bus, database
    finally:
        await bus.stop()


async def _product(bus: Bus, stock: int) -> uuid.UUID:
    view = await bus.ask(
        CreateProduct(sku=uuid.uuid4().hex, name="Widget", price=100, currency="EUR", stock=stock),
        timeout=TIMEOUT,
    )
    assert isinstance(view, ProductView)
    return view.id


async def _levels(database: Database, product_id: uuid.UUID) -> tuple[int, int]:
    async with database.engine.connect() as conn:
        row = (
            await conn.execute(
                sa.select(models.products.c.on_hand, models.products.c.reserved).where(
                    models.products.c.id == product_id
                )
            )
        ).one()
    return int(row[0]), int(row[1])


def _reserve(*lines: tuple[uuid.UUID, int], reservation_id: uuid.UUID | None = None) -> ReserveStock:
    return ReserveStock(
        reservation_id=reservation_id or uuid.uuid4(),
        order_id=uuid.uuid4(),
        lines=tuple(Line(product_id=p, quantity=q) for p, q in lines),
    )


async def test_fifty_simultaneous_reservations_of_ten_in_stock_reserve_exactly_ten(
    catalog: tuple[Bus, Database],
) -> None:
    bus, database = catalog
    widget = await _product(bus, stock=10)

    replies = await asyncio.gather(*(bus.ask(_reserve((widget, 1)), timeout=TIMEOUT) for _ in range(50)))

    reserved = [r for r in replies if isinstance(r, StockReserved)]
    refused = [r for r in replies if isinstance(r, StockUnavailable)]
    assert len(reserved) == 10
    assert len(refused) == 40
    assert {r.reason for r in refused} == {"OUT_OF_STOCK"}
    assert await _levels(database, widget) == (10, 10)


async def test_multi_line_reservations_in_opposite_orders_neither_deadlock_nor_oversell(
    catalog: tuple[Bus, Database],
) -> None:
    bus, database = catalog
    a = await _product(bus, stock=15)
    b = await _product(bus, stock=15)

    commands = [_reserve((a, 1), (b, 2)) if n % 2 else _reserve((b, 2), (a, 1)) for n in range(40)]
    replies = await asyncio.gather(*(bus.ask(c, timeout=TIMEOUT) for c in commands))

    reserved = [r for r in replies if isinstance(r, StockReserved)]
    assert len(reserved) == 7  # b runs out first: 7 * 2 = 14 of 15
    assert all(isinstance(r, StockUnavailable) for r in replies if r not in reserved)
    assert await _levels(database, a) == (15, 7)
    assert await _levels(database, b) == (15, 14)


async def test_write_offs_racing_reservations_never_leave_less_on_hand_than_reserved(
    catalog: tuple[Bus, Database],
) -> None:
    bus, database = catalog
    widget = await _product(bus, stock=30)

    work = [bus.ask(_reserve((widget, 1)), timeout=TIMEOUT) for _ in range(30)]
    work += [bus.ask(AdjustStock(product_id=widget, delta=-1), timeout=TIMEOUT) for _ in range(30)]
    replies = await asyncio.gather(*work)

    reserved = sum(isinstance(r, StockReserved) for r in replies)
    written_off = sum(isinstance(r, ProductView) for r in replies)
    below = [r for r in replies if isinstance(r, Rejected)]
    assert {r.code for r in below} <= {"BELOW_RESERVED"}
    assert reserved + written_off == 30  # every unit went one way or the other, none twice
    on_hand, held = await _levels(database, widget)
    assert (on_hand, held) == (30 - written_off, reserved)
    assert 0 <= held <= on_hand


async def test_one_reservation_sent_many_times_at_once_reserves_once(catalog: tuple[Bus, Database]) -> None:
    bus, database = catalog
    widget = await _product(bus, stock=10)
    command = _reserve((widget, 3))

    replies = await asyncio.gather(*(bus.ask(command, timeout=TIMEOUT) for _ in range(20)))

    assert all(r == replies[0] for r in replies)
    assert isinstance(replies[0], StockReserved)
    assert await _levels(database, widget) == (10, 3)


async def test_releases_and_commits_racing_on_one_reservation_apply_exactly_one(
    catalog: tuple[Bus, Database],
) -> None:
    bus, database = catalog
    widget = await _product(bus, stock=10)
    rids = [uuid.uuid4() for _ in range(8)]
    for rid in rids:
        assert isinstance(await bus.ask(_reserve((widget, 1), reservation_id=rid)), StockReserved)

    work = []
    for rid in rids:
        work += [bus.ask(ReleaseStock(reservation_id=rid), timeout=TIMEOUT) for _ in range(3)]
        work += [bus.ask(CommitStock(reservation_id=rid), timeout=TIMEOUT) for _ in range(3)]
    await asyncio.gather(*work)

    on_hand, reserved = await _levels(database, widget)
    assert reserved == 0
    committed = 10 - on_hand
    assert 0 <= committed <= len(rids)
    async with database.engine.connect() as conn:
        statuses = list(
            (
                await conn.execute(
                    sa.select(models.reservations.c.status).where(models.reservations.c.id.in_(rids))
                )
            ).scalars()
        )
    assert len(statuses) == len(rids)
    assert set(statuses) <= {"COMMITTED", "RELEASED"}
    assert statuses.count("COMMITTED") == committed


async def test_a_release_racing_its_own_reservation_always_ends_with_nothing_held(
    catalog: tuple[Bus, Database],
) -> None:
    bus, database = catalog
    widget = await _product(bus, stock=100)
    rids = [uuid.uuid4() for _ in range(20)]

    work = []
    for n, rid in enumerate(rids):
        pair = [
            bus.ask(_reserve((widget, 2), reservation_id=rid), timeout=TIMEOUT),
            bus.ask(ReleaseStock(reservation_id=rid), timeout=TIMEOUT),
        ]
        work += pair if n % 2 else pair[::-1]
    await asyncio.gather(*work)

    assert await _levels(database, widget) == (100, 0)
    async with database.engine.connect() as conn:
        statuses = (
            await conn.execute(
                sa.select(models.reservations.c.status).where(models.reservations.c.id.in_(rids))
            )
        ).scalars()
        assert set(statuses) == {"RELEASED"}
