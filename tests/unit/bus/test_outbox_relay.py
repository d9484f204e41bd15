"""The outbox relay on its own: a unit of work's messages relayed after commit, each row
forgotten once every receipt has resolved, and left to the sweep when one fails; the same
whether the transport's hand-over is a coroutine (a broker: a task hands them over) or never
waits (in process: the after-commit hook hands them over)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import msgspec
import pytest
import sqlalchemy as sa

from shop.bus import outbox
from shop.bus.messages import Envelope, Event, new_envelope
from shop.bus.outbox import Relay, Route
from shop.bus.tables import kernel_metadata
from shop.bus.tables import outbox as outbox_table
from shop.db import Database, UnitOfWork, unit_of_work

from ..sqlitedb import sqlite_database


class RelayTestHappened(Event, frozen=True, kw_only=True):
    n: int


class Receipts:
    """A transport whose receipts the test resolves: (queue, envelope) -> its receipt."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Envelope, asyncio.Future[None]]] = []

    async def deliver(self, queue: str, envelope: Envelope) -> asyncio.Future[None]:
        return self.hand_over(queue, envelope)

    def hand_over(self, queue: str, envelope: Envelope) -> asyncio.Future[None]:
        receipt: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.sent.append((queue, envelope, receipt))
        return receipt

    def of(self, n: int) -> list[asyncio.Future[None]]:
        """The receipts of message `n`, one a subscriber."""
        return [r for _, e, r in self.sent if msgspec.msgpack.decode(e.body, type=RelayTestHappened).n == n]


def two_subscribers(envelope: Envelope) -> Sequence[Route]:
    return (("audit", "audit.record"), ("mail", "mail.notify"))


@pytest.fixture(params=["task", "hand_over"])
def style(request: pytest.FixtureRequest) -> str:
    """How the transport takes messages: `deliver` awaited in a task, or `hand_over` at once."""
    return str(request.param)


def relay_for(database: Database, transport: Receipts, style: str, **options: float) -> Relay:
    hand_over = transport.hand_over if style == "hand_over" else None
    return Relay({"orders": database}, two_subscribers, transport.deliver, hand_over=hand_over, **options)


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    async with sqlite_database(tmp_path, "orders", kernel_metadata) as db:
        yield db


async def settle(relay: Relay) -> None:
    for _ in range(5):
        await asyncio.sleep(0)
    await relay.flush()


async def two_messages_relayed(database: Database, style: str) -> tuple[Receipts, Relay]:
    """Messages 1 and 2 written in one unit of work, committed, and handed to the transport."""
    transport = Receipts()
    relay = relay_for(database, transport, style)
    async with unit_of_work(database) as uow:
        await outbox.write(uow, new_envelope(RelayTestHappened(n=1)), relay)
        await outbox.write(uow, new_envelope(RelayTestHappened(n=2)), relay)
    await settle(relay)
    return transport, relay


async def test_a_row_is_forgotten_only_once_every_subscriber_has_its_copy(
    database: Database, style: str
) -> None:
    transport, relay = await two_messages_relayed(database, style)
    assert len(transport.sent) == 4  # two messages, two subscribers each, after the commit
    assert {e.consumer for _, e, _ in transport.sent} == {"audit.record", "mail.notify"}
    first, second = transport.of(1), transport.of(2)
    first[0].set_result(None)
    second[0].set_result(None)
    second[1].set_result(None)
    await settle(relay)
    assert await relay.pending() == 1  # message 1 still waits for its second receipt
    first[1].set_result(None)
    await settle(relay)
    assert await relay.pending() == 0


async def test_a_failed_receipt_leaves_the_row_to_the_sweep_and_the_others_go(
    database: Database, style: str
) -> None:
    transport, relay = await two_messages_relayed(database, style)
    first, second = transport.of(1), transport.of(2)
    first[0].set_exception(ConnectionError("broker away"))
    first[1].set_result(None)
    for receipt in second:
        receipt.set_result(None)
    await settle(relay)
    assert await relay.pending() == 1
    # the sweep relays what is left (to every subscriber again: their inboxes drop duplicates)
    transport.sent.clear()
    assert await relay.sweep(grace=0.0) == 1
    await settle(relay)
    again = transport.of(1)
    assert len(again) == 2
    assert not transport.of(2)
    for receipt in again:
        receipt.set_result(None)
    await settle(relay)
    assert await relay.pending() == 0


async def test_a_message_that_cannot_be_handed_over_stays_and_is_not_in_flight(
    database: Database, style: str
) -> None:
    calls = 0

    def refuse() -> asyncio.Future[None]:
        nonlocal calls
        calls += 1
        raise ConnectionError("broker away")

    async def refusing(queue: str, envelope: Envelope) -> asyncio.Future[None]:
        return refuse()

    def refusing_at_once(queue: str, envelope: Envelope) -> asyncio.Future[None]:
        return refuse()

    hand_over = refusing_at_once if style == "hand_over" else None
    relay = Relay({"orders": database}, two_subscribers, refusing, hand_over=hand_over)
    async with unit_of_work(database) as uow:
        await outbox.write(uow, new_envelope(RelayTestHappened(n=1)), relay)
    await settle(relay)
    assert calls == 1
    assert await relay.pending() == 1
    assert await relay.sweep(grace=0.0) == 1  # not in flight any more: swept again
    await settle(relay)
    assert calls == 2


async def test_stop_ends_even_when_a_cancelled_flush_comes_out_as_another_error(database: Database) -> None:
    """A cancellation that lands in a database call can surface as another error (a rollback
    on the interrupted connection failing); the flush loop must still end, and stop with it."""
    transport = Receipts()
    relay = Relay({"orders": database}, two_subscribers, transport.deliver, batch_delay=0.0)
    await relay.start()
    in_flush = asyncio.Event()

    async def flush_interrupted_badly() -> None:
        in_flush.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            raise RuntimeError("rollback failed: the connection is busy") from None

    relay.flush = flush_interrupted_badly  # type: ignore[method-assign]
    relay._flush_wanted.set()
    await asyncio.wait_for(in_flush.wait(), 5)
    relay.flush = _nothing  # type: ignore[method-assign]  # stop's own last flush
    started = time.monotonic()
    await asyncio.wait_for(relay.stop(), 5)
    assert time.monotonic() - started < 2
    assert relay._flusher is not None
    assert relay._flusher.done()


async def _nothing() -> None:
    return None


async def test_an_event_nobody_subscribes_to_is_not_written_and_a_cli_process_writes_it(
    database: Database,
) -> None:
    """No route in the module list: no relay or sweep anywhere would deliver it. Without a
    relay (a CLI process) the row is written as before and left to the shop's sweep."""
    transport = Receipts()
    relay = Relay({"orders": database}, lambda envelope: (), transport.deliver)
    async with unit_of_work(database) as uow:
        await outbox.write(uow, new_envelope(RelayTestHappened(n=1)), relay)
        assert await rows(uow) == 0
    await settle(relay)
    assert transport.sent == []

    async with unit_of_work(database) as uow:
        await outbox.write(uow, new_envelope(RelayTestHappened(n=2)), None)
        assert await rows(uow) == 1
    assert await relay.pending() == 1


async def rows(uow: UnitOfWork) -> int:
    return int((await uow.session.execute(sa.select(sa.func.count()).select_from(outbox_table))).scalar_one())


async def test_a_transport_that_never_waits_has_the_messages_when_the_unit_of_work_ends(
    database: Database,
) -> None:
    """In process: the after-commit hook hands the messages over itself, no task in between."""
    transport = Receipts()
    relay = relay_for(database, transport, "hand_over")
    async with unit_of_work(database) as uow:
        await outbox.write(uow, new_envelope(RelayTestHappened(n=1)), relay)
        assert transport.sent == []  # nothing before the commit
    assert [e.consumer for _, e, _ in transport.sent] == ["audit.record", "mail.notify"]
    assert relay._tasks == set()


async def test_stop_lets_a_flush_in_progress_finish_instead_of_interrupting_it(database: Database) -> None:
    """Cancelling the flush loop inside its unit of work interrupted a database call (on
    PostgreSQL a connection being opened); stop waits for the flush it is in."""
    transport = Receipts()
    relay = relay_for(database, transport, "hand_over", batch_delay=0.0)
    await relay.start()
    in_flush = asyncio.Event()
    outcomes: list[str] = []

    async def slow_flush() -> None:
        in_flush.set()
        try:
            await asyncio.sleep(0.2)
        except asyncio.CancelledError:
            outcomes.append("interrupted")
            raise
        outcomes.append("finished")

    relay.flush = slow_flush  # type: ignore[method-assign]
    relay._flush_wanted.set()
    await asyncio.wait_for(in_flush.wait(), 5)
    await asyncio.wait_for(relay.stop(), 5)
    assert outcomes[0] == "finished"
    assert relay._flusher is not None
    assert relay._flusher.done()
