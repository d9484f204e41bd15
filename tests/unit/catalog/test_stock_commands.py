"""The order saga's stock commands on the bus, on SQLite and on PostgreSQL.

ReserveStock is all-or-none; every command is idempotent by its reservation id (sent again
under a new message id it changes nothing and answers the same); a release that arrives before
its reservation leaves a tombstone; stock is conserved through any sequence.
"""

from __future__ import annotations

import random
import uuid
from typing import Any, ClassVar

import pytest

from shop.bus.messages import Envelope, Rejected
from shop.bus.module import Module
from shop.contracts.catalog import (
    AdjustStock,
    CommitStock,
    GetProduct,
    Line,
    PricedLine,
    ProductView,
    ReleaseStock,
    ReserveStock,
    RestockItems,
    StockCommitted,
    StockReleased,
    StockReserved,
    StockRestocked,
    StockUnavailable,
    UpdateProduct,
)

pytestmark = pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)


def _reserve(
    reservation_id: uuid.UUID, *lines: tuple[uuid.UUID, int], order_id: uuid.UUID | None = None
) -> ReserveStock:
    return ReserveStock(
        reservation_id=reservation_id,
        order_id=order_id or uuid.uuid4(),
        lines=tuple(Line(product_id=p, quantity=q) for p, q in lines),
    )


async def test_a_reservation_holds_every_line_and_answers_with_priced_lines(stock: Any) -> None:
    tea = await stock.product("TEA", stock=10, price=1299, currency="EUR")
    mug = await stock.product("MUG", stock=5, price=450, currency="EUR")
    rid, order_id = uuid.uuid4(), uuid.uuid4()

    reply = await stock.ask(_reserve(rid, (tea, 3), (mug, 5), order_id=order_id))

    assert reply == StockReserved(
        reservation_id=rid,
        order_id=order_id,
        lines=(
            PricedLine(product_id=tea, name="Product TEA", unit_price=1299, currency="EUR", quantity=3),
            PricedLine(product_id=mug, name="Product MUG", unit_price=450, currency="EUR", quantity=5),
        ),
    )
    assert await stock.levels(tea) == (10, 3)
    assert await stock.levels(mug) == (5, 5)
    view = await stock.ask(GetProduct(product_id=mug))
    assert isinstance(view, ProductView)
    assert view.stock_available == 0
    assert await stock.reservation_status(rid) == "RESERVED"


async def test_duplicate_lines_of_one_product_are_merged(stock: Any) -> None:
    tea = await stock.product(stock=10)

    reply = await stock.ask(_reserve(uuid.uuid4(), (tea, 2), (tea, 3)))

    assert isinstance(reply, StockReserved)
    assert [(line.product_id, line.quantity) for line in reply.lines] == [(tea, 5)]
    assert await stock.levels(tea) == (10, 5)


async def test_merged_lines_are_checked_together_against_the_stock(stock: Any) -> None:
    tea = await stock.product(stock=4)

    reply = await stock.ask(_reserve(uuid.uuid4(), (tea, 3), (tea, 2)))

    assert isinstance(reply, StockUnavailable)
    assert reply.reason == "OUT_OF_STOCK"
    assert await stock.levels(tea) == (4, 0)


async def test_one_short_line_reserves_nothing_at_all(stock: Any) -> None:
    plenty = await stock.product(stock=100)
    short = await stock.product(stock=2)
    also_plenty = await stock.product(stock=100)
    rid = uuid.uuid4()

    reply = await stock.ask(_reserve(rid, (plenty, 5), (short, 3), (also_plenty, 5)))

    assert isinstance(reply, StockUnavailable)
    assert reply.reason == "OUT_OF_STOCK"
    assert reply.product_ids == (short,)
    assert reply.reservation_id == rid
    for product in (plenty, short, also_plenty):
        assert (await stock.levels(product))[1] == 0


async def test_every_short_line_is_named(stock: Any) -> None:
    a = await stock.product(stock=1)
    b = await stock.product(stock=10)
    c = await stock.product(stock=0)

    reply = await stock.ask(_reserve(uuid.uuid4(), (a, 2), (b, 1), (c, 1)))

    assert isinstance(reply, StockUnavailable)
    assert reply.product_ids == (a, c)


async def test_an_unknown_product_reserves_nothing(stock: Any) -> None:
    tea = await stock.product(stock=10)
    ghost = uuid.uuid4()

    reply = await stock.ask(_reserve(uuid.uuid4(), (tea, 1), (ghost, 1)))

    assert isinstance(reply, StockUnavailable)
    assert reply.reason == "UNKNOWN_PRODUCT"
    assert reply.product_ids == (ghost,)
    assert await stock.levels(tea) == (10, 0)


async def test_out_of_stock_leaves_the_stock_for_the_next_order(stock: Any) -> None:
    tea = await stock.product(stock=3)

    refused = await stock.ask(_reserve(uuid.uuid4(), (tea, 4)))
    accepted = await stock.ask(_reserve(uuid.uuid4(), (tea, 3)))

    assert isinstance(refused, StockUnavailable)
    assert isinstance(accepted, StockReserved)
    assert await stock.levels(tea) == (3, 3)


@pytest.mark.parametrize("quantity", [0, -1])
async def test_a_quantity_below_one_is_rejected(stock: Any, quantity: int) -> None:
    tea = await stock.product(stock=3)

    reply = await stock.ask(_reserve(uuid.uuid4(), (tea, quantity)))

    assert isinstance(reply, Rejected)
    assert reply.code == "INVALID"
    assert await stock.levels(tea) == (3, 0)


# -- idempotency by reservation id ------------------------------------------------------------


async def test_reserving_the_same_reservation_twice_reserves_once_and_answers_the_same(stock: Any) -> None:
    tea = await stock.product(stock=10)
    command = _reserve(uuid.uuid4(), (tea, 4))

    first = await stock.ask(command)
    second = await stock.ask(command)  # a new message id: only the reservation id says "same"

    assert isinstance(first, StockReserved)
    assert second == first
    assert await stock.levels(tea) == (10, 4)


async def test_a_refused_reservation_stays_refused_when_sent_again(stock: Any) -> None:
    tea = await stock.product(stock=1)
    command = _reserve(uuid.uuid4(), (tea, 2))

    first = await stock.ask(command)
    await stock.ask(AdjustStock(product_id=tea, delta=10))
    second = await stock.ask(command)

    assert isinstance(first, StockUnavailable)
    assert second == first
    assert await stock.levels(tea) == (11, 0)


async def test_releasing_gives_the_stock_back_once(stock: Any) -> None:
    tea = await stock.product(stock=10)
    rid = uuid.uuid4()
    await stock.ask(_reserve(rid, (tea, 4)))

    first = await stock.ask(ReleaseStock(reservation_id=rid))
    second = await stock.ask(ReleaseStock(reservation_id=rid))

    assert first == second == StockReleased(reservation_id=rid)
    assert await stock.levels(tea) == (10, 0)
    assert await stock.reservation_status(rid) == "RELEASED"


async def test_a_released_reservation_sent_again_reserves_nothing(stock: Any) -> None:
    tea = await stock.product(stock=10)
    command = _reserve(uuid.uuid4(), (tea, 4))
    await stock.ask(command)
    await stock.ask(ReleaseStock(reservation_id=command.reservation_id))

    again = await stock.ask(command)

    assert isinstance(again, StockUnavailable)
    assert again.reason == "RELEASED"
    assert await stock.levels(tea) == (10, 0)


async def test_a_release_before_its_reservation_leaves_a_tombstone(stock: Any) -> None:
    tea = await stock.product(stock=10)
    rid = uuid.uuid4()

    released = await stock.ask(ReleaseStock(reservation_id=rid))
    late = await stock.ask(_reserve(rid, (tea, 4)))

    assert released == StockReleased(reservation_id=rid)
    assert isinstance(late, StockUnavailable)
    assert late.reason == "RELEASED"
    assert late.product_ids == ()
    assert await stock.levels(tea) == (10, 0)
    assert await stock.reservation_status(rid) == "RELEASED"


async def test_committing_takes_the_stock_off_the_shelf_once(stock: Any) -> None:
    tea = await stock.product(stock=10)
    rid = uuid.uuid4()
    await stock.ask(_reserve(rid, (tea, 4)))

    first = await stock.ask(CommitStock(reservation_id=rid))
    second = await stock.ask(CommitStock(reservation_id=rid))

    assert first == second == StockCommitted(reservation_id=rid)
    assert await stock.levels(tea) == (6, 0)
    assert await stock.reservation_status(rid) == "COMMITTED"


async def test_a_committed_reservation_is_not_released(stock: Any) -> None:
    tea = await stock.product(stock=10)
    rid = uuid.uuid4()
    await stock.ask(_reserve(rid, (tea, 4)))
    await stock.ask(CommitStock(reservation_id=rid))

    reply = await stock.ask(ReleaseStock(reservation_id=rid))

    assert reply == StockReleased(reservation_id=rid)
    assert await stock.levels(tea) == (6, 0)
    assert await stock.reservation_status(rid) == "COMMITTED"


@pytest.mark.parametrize("state", ["unknown", "released", "refused"])
async def test_committing_what_is_not_reserved_is_rejected_and_changes_nothing(
    stock: Any, state: str
) -> None:
    tea = await stock.product(stock=3)
    rid = uuid.uuid4()
    if state == "released":
        await stock.ask(_reserve(rid, (tea, 2)))
        await stock.ask(ReleaseStock(reservation_id=rid))
    elif state == "refused":
        await stock.ask(_reserve(rid, (tea, 5)))

    reply = await stock.ask(CommitStock(reservation_id=rid))

    assert isinstance(reply, Rejected)
    assert reply.code == "NOT_RESERVED"
    assert await stock.levels(tea) == (3, 0)


async def test_restocking_puts_committed_stock_back_once(stock: Any) -> None:
    tea = await stock.product(stock=10)
    rid = uuid.uuid4()
    await stock.ask(_reserve(rid, (tea, 4)))
    await stock.ask(CommitStock(reservation_id=rid))

    first = await stock.ask(RestockItems(reservation_id=rid))
    second = await stock.ask(RestockItems(reservation_id=rid))

    assert first == second == StockRestocked(reservation_id=rid)
    assert await stock.levels(tea) == (10, 0)
    assert await stock.reservation_status(rid) == "RESTOCKED"
    # a commit arriving again after the restock changes nothing either
    assert await stock.ask(CommitStock(reservation_id=rid)) == StockCommitted(reservation_id=rid)
    assert await stock.levels(tea) == (10, 0)


@pytest.mark.parametrize("state", ["unknown", "reserved", "released"])
async def test_restocking_what_was_never_committed_is_rejected_and_changes_nothing(
    stock: Any, state: str
) -> None:
    tea = await stock.product(stock=10)
    rid = uuid.uuid4()
    if state in ("reserved", "released"):
        await stock.ask(_reserve(rid, (tea, 2)))
    if state == "released":
        await stock.ask(ReleaseStock(reservation_id=rid))
    before = await stock.levels(tea)

    reply = await stock.ask(RestockItems(reservation_id=rid))

    assert isinstance(reply, Rejected)
    assert reply.code == "NOT_COMMITTED"
    assert await stock.levels(tea) == before


async def test_a_reservation_answered_again_keeps_its_prices_after_a_price_change(stock: Any) -> None:
    tea = await stock.product("TEA", stock=10, price=100)
    command = _reserve(uuid.uuid4(), (tea, 1))
    first = await stock.ask(command)
    await stock.ask(UpdateProduct(product_id=tea, price=999, name="Renamed"))

    second = await stock.ask(command)

    assert second == first
    assert isinstance(second, StockReserved)
    assert (second.lines[0].unit_price, second.lines[0].name) == (100, "Product TEA")


async def test_a_write_off_never_goes_below_what_is_reserved(stock: Any) -> None:
    tea = await stock.product(stock=10)
    await stock.ask(_reserve(uuid.uuid4(), (tea, 7)))

    refused = await stock.ask(AdjustStock(product_id=tea, delta=-4))
    accepted = await stock.ask(AdjustStock(product_id=tea, delta=-3))

    assert isinstance(refused, Rejected)
    assert refused.code == "BELOW_RESERVED"
    assert isinstance(accepted, ProductView)
    assert (accepted.on_hand, accepted.reserved, accepted.stock_available) == (7, 7, 0)


# -- conservation ------------------------------------------------------------------------------


async def test_stock_is_conserved_through_a_long_mixed_sequence(stock: Any) -> None:
    """initial + admin deltas + restocked items == on_hand + committed, reserved >= 0 and
    on_hand >= reserved, after every step of a seeded random walk (repeats included)."""
    rng = random.Random(20261125)
    initial = {await stock.product(stock=s): s for s in (5, 8, 13)}
    products = list(initial)
    deltas = dict.fromkeys(products, 0)
    committed = dict.fromkeys(products, 0)
    restocked = dict.fromkeys(products, 0)
    reserved_by: dict[uuid.UUID, dict[uuid.UUID, int]] = {}
    status: dict[uuid.UUID, str] = {}

    for _step in range(120):
        action = rng.choice(["reserve", "reserve", "release", "commit", "restock", "adjust", "repeat"])
        if action == "reserve" or (action == "repeat" and not reserved_by):
            rid = uuid.uuid4()
            picked = rng.sample(products, rng.randint(1, 3))
            lines = {p: rng.randint(1, 4) for p in picked}
            reply = await stock.ask(_reserve(rid, *lines.items()))
            if isinstance(reply, StockReserved):
                reserved_by[rid] = lines
                status[rid] = "RESERVED"
        elif action == "repeat":
            rid = rng.choice(list(reserved_by))
            message = rng.choice(
                [
                    _reserve(rid, *reserved_by[rid].items()),
                    ReleaseStock(reservation_id=rid),
                    CommitStock(reservation_id=rid),
                    RestockItems(reservation_id=rid),
                ]
            )
            before = status[rid]
            await stock.ask(message)
            if isinstance(message, ReleaseStock) and before == "RESERVED":
                status[rid] = "RELEASED"
            elif isinstance(message, CommitStock) and before == "RESERVED":
                status[rid] = "COMMITTED"
                for p, q in reserved_by[rid].items():
                    committed[p] += q
            elif isinstance(message, RestockItems) and before == "COMMITTED":
                status[rid] = "RESTOCKED"
                for p, q in reserved_by[rid].items():
                    restocked[p] += q
        elif action in ("release", "commit", "restock"):
            wanted = "COMMITTED" if action == "restock" else "RESERVED"
            candidates = [r for r, s in status.items() if s == wanted]
            if not candidates:
                continue
            rid = rng.choice(candidates)
            if action == "release":
                assert await stock.ask(ReleaseStock(reservation_id=rid)) == StockReleased(reservation_id=rid)
                status[rid] = "RELEASED"
            elif action == "commit":
                assert await stock.ask(CommitStock(reservation_id=rid)) == StockCommitted(reservation_id=rid)
                status[rid] = "COMMITTED"
                for p, q in reserved_by[rid].items():
                    committed[p] += q
            else:
                assert await stock.ask(RestockItems(reservation_id=rid)) == StockRestocked(reservation_id=rid)
                status[rid] = "RESTOCKED"
                for p, q in reserved_by[rid].items():
                    restocked[p] += q
        else:
            product = rng.choice(products)
            delta = rng.randint(-6, 6)
            reply = await stock.ask(AdjustStock(product_id=product, delta=delta))
            if isinstance(reply, ProductView):
                deltas[product] += delta

        for product in products:
            on_hand, reserved = await stock.levels(product)
            open_reservations = sum(
                lines.get(product, 0) for r, lines in reserved_by.items() if status[r] == "RESERVED"
            )
            assert 0 <= reserved <= on_hand
            assert reserved == open_reservations
            assert initial[product] + deltas[product] + restocked[product] == on_hand + committed[product]


# -- events for observers ----------------------------------------------------------------------


class Seen:
    events: ClassVar[list[tuple[str, uuid.UUID]]] = []


async def when_stock_reserved(event: StockReserved, envelope: Envelope) -> None:
    Seen.events.append((envelope.type, event.reservation_id))


async def when_stock_released(event: StockReleased, envelope: Envelope) -> None:
    Seen.events.append((envelope.type, event.reservation_id))


async def when_stock_committed(event: StockCommitted, envelope: Envelope) -> None:
    Seen.events.append((envelope.type, event.reservation_id))


async def when_stock_restocked(event: StockRestocked, envelope: Envelope) -> None:
    Seen.events.append((envelope.type, event.reservation_id))


async def test_stock_events_reach_a_subscriber_once_per_change(stock_bus: Any) -> None:
    Seen.events = []
    observer = Module("observer")
    observer.on(StockReserved)(when_stock_reserved)
    observer.on(StockReleased)(when_stock_released)
    observer.on(StockCommitted)(when_stock_committed)
    observer.on(StockRestocked)(when_stock_restocked)
    stock = await stock_bus(observer)
    tea = await stock.product(stock=10)
    kept, dropped = uuid.uuid4(), uuid.uuid4()

    for _ in range(2):  # every command twice: the repeat changes nothing and announces nothing
        await stock.ask(_reserve(kept, (tea, 1)))
        await stock.ask(_reserve(dropped, (tea, 1)))
        await stock.ask(ReleaseStock(reservation_id=dropped))
        await stock.ask(CommitStock(reservation_id=kept))
        await stock.ask(RestockItems(reservation_id=kept))
    await stock.until(lambda: len(Seen.events) >= 5)
    await stock.bus.stop()  # drains the relay

    assert sorted(Seen.events) == sorted(
        [
            ("catalog.StockReserved.v1", kept),
            ("catalog.StockReserved.v1", dropped),
            ("catalog.StockReleased.v1", dropped),
            ("catalog.StockCommitted.v1", kept),
            ("catalog.StockRestocked.v1", kept),
        ]
    )
