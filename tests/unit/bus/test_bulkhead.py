"""The in-process bulkhead (`shop.bus.transports.inprocess.Bulkhead`): at most `limit` at once,
the others wait in arrival order, and a waiter cancelled as its slot arrives passes it on."""

from __future__ import annotations

import asyncio

from shop.bus.transports.inprocess import Bulkhead


async def test_past_the_limit_requests_wait_and_get_their_slots_in_arrival_order() -> None:
    bulkhead = Bulkhead(2)
    assert bulkhead.try_enter()
    assert bulkhead.try_enter()
    assert not bulkhead.try_enter()
    order: list[int] = []

    async def wait(n: int) -> None:
        await bulkhead.enter()
        order.append(n)

    waiters = [asyncio.ensure_future(wait(n)) for n in range(3)]
    await asyncio.sleep(0)
    assert order == []
    assert bulkhead.busy == 2
    bulkhead.leave()
    await asyncio.sleep(0)
    assert order == [0]
    assert not bulkhead.try_enter()  # a free slot is not taken past those who wait
    bulkhead.leave()
    bulkhead.leave()
    await asyncio.gather(*waiters)
    assert order == [0, 1, 2]
    assert bulkhead.busy == 2
    bulkhead.leave()
    bulkhead.leave()
    assert bulkhead.busy == 0


async def test_a_waiter_cancelled_as_its_slot_arrives_passes_the_slot_on() -> None:
    bulkhead = Bulkhead(1)
    assert bulkhead.try_enter()
    first = asyncio.ensure_future(bulkhead.enter())
    second = asyncio.ensure_future(bulkhead.enter())
    await asyncio.sleep(0)
    bulkhead.leave()  # the slot is handed to `first` ...
    first.cancel()  # ... which is cancelled before it runs
    await asyncio.sleep(0)
    await asyncio.wait_for(second, 1)
    assert first.cancelled()
    assert bulkhead.busy == 1


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    bulkhead = Bulkhead(1)
    assert bulkhead.try_enter()
    waiting = asyncio.ensure_future(bulkhead.enter())
    await asyncio.sleep(0)
    waiting.cancel()
    await asyncio.sleep(0)
    bulkhead.leave()
    assert bulkhead.busy == 0
    assert bulkhead.try_enter()
