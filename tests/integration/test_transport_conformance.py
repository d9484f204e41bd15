"""The transport conformance suite: every transport must behave like this.

Parametrized over the transports (see conftest.TRANSPORTS); the bus, outbox, inbox, retries and
dead letters are the kernel's, the transport only moves envelopes.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import msgspec
import pytest
from prometheus_client import REGISTRY

from shop.bus import context, inbox
from shop.bus.breaker import CircuitOpenError
from shop.bus.errors import AskTimeout, DependencyFailed, HandlerFailed, InputRefused, NoUnitOfWork
from shop.bus.messages import new_envelope
from shop.bus.outbox import write as write_outbox
from shop.db import unit_of_work

from .conftest import (
    ConfBalance,
    ConfBoom,
    ConfDeposit,
    ConfDeposited,
    ConfHold,
    ConfSlow,
    Observed,
    WorldFactory,
    audit_log,
    entries,
)


async def send_deposit(world: object, cmd: ConfDeposit) -> uuid.UUID:
    bus = world.bus  # type: ignore[attr-defined]
    async with unit_of_work(world.databases["notify"]) as _uow:  # type: ignore[attr-defined]
        return await bus.send(cmd)


async def test_a_sent_command_is_handled_once_by_its_owner(world_factory: WorldFactory) -> None:
    world = await world_factory()
    await send_deposit(world, ConfDeposit(account="a", amount=5))
    await world.until(lambda: _eq(world.count("ledger", entries, account="a"), 1))
    assert await world.bus.ask(ConfBalance(account="a")) == 5
    await world.until(lambda: _eq(world.bus.relay.pending(), 0))


async def test_an_event_fans_out_to_every_subscriber_in_every_module(world_factory: WorldFactory) -> None:
    world = await world_factory()
    await send_deposit(world, ConfDeposit(account="b", amount=1))
    await world.until(lambda: _eq(world.count("audit", audit_log, account="b"), 1))
    await world.until(lambda: _true(world.seen.notified == ["b"]))


async def test_ask_returns_the_owners_reply(world_factory: WorldFactory) -> None:
    world = await world_factory()
    assert await world.bus.ask(ConfBalance(account="nobody")) == 0
    assert await world.bus.ask(ConfDeposit(account="c", amount=7)) == 7
    assert await world.bus.ask(ConfBalance(account="c")) == 7


async def test_ask_times_out_when_the_handler_does_not_answer(world_factory: WorldFactory) -> None:
    world = await world_factory()
    started = time.monotonic()
    with pytest.raises(AskTimeout):
        await world.bus.ask(ConfSlow(seconds=5), timeout=0.05)
    assert time.monotonic() - started < 1.0


async def test_a_failing_handler_surfaces_as_handler_failed_to_the_asker(world_factory: WorldFactory) -> None:
    world = await world_factory()
    with pytest.raises(HandlerFailed) as caught:
        await world.bus.ask(ConfBoom())
    assert (caught.value.error_type, caught.value.fault) == ("RuntimeError", "module")


async def test_ask_goes_through_the_destination_modules_breaker_for_its_kind(
    world_factory: WorldFactory,
) -> None:
    world = await world_factory()
    for _ in range(3):
        with pytest.raises(HandlerFailed):
            await world.bus.ask(ConfBoom())
    assert world.bus.breakers.states()["module:ledger:queries"] == "OPEN"
    calls_before = len(world.seen.envelopes)
    with pytest.raises(CircuitOpenError):
        await world.bus.ask(ConfBalance(account="d"))
    assert len(world.seen.envelopes) == calls_before, "an open breaker must not call the handler"
    # The ledger's commands have a breaker of their own: its failing reads leave writes up.
    assert await world.bus.ask(ConfDeposit(account="d", amount=1)) == 1
    assert world.bus.breakers.states()["module:ledger:commands"] == "CLOSED"


async def test_a_saturated_command_path_leaves_the_modules_reads_their_own_slots(
    world_factory: WorldFactory,
) -> None:
    world = await world_factory()
    slots = world.bus._local_requests.per_queue
    holding = [
        asyncio.create_task(world.bus.ask(ConfHold(seconds=2.0), timeout=10)) for _ in range(slots + 5)
    ]
    try:
        await asyncio.sleep(0.1)  # every command slot is taken, and five commands queue for one
        started = time.monotonic()
        assert await world.bus.ask(ConfBalance(account="nobody"), timeout=1.0) == 0
        assert time.monotonic() - started < 0.5, "a read waited for the saturated command path"
    finally:
        for task in holding:
            task.cancel()
        await asyncio.gather(*holding, return_exceptions=True)


@pytest.mark.parametrize(("fault", "failure"), [("input", InputRefused), ("dependency", DependencyFailed)])
async def test_a_handler_failing_on_its_input_or_a_dependency_counts_against_no_module_breaker(
    world_factory: WorldFactory, fault: str, failure: type[HandlerFailed]
) -> None:
    world = await world_factory()
    for _ in range(10):  # far past the test breakers' minimum number of calls
        with pytest.raises(failure):
            await world.bus.ask(ConfBoom(fault=fault))
    breaker = world.bus.breakers.get("module:ledger:queries")
    assert breaker.state == "CLOSED"
    assert breaker.metrics().failed_calls == 0
    assert await world.bus.ask(ConfBalance(account="nobody")) == 0


async def test_duplicate_delivery_has_its_effect_once(world_factory: WorldFactory) -> None:
    world = await world_factory()
    envelope = msgspec.structs.replace(
        new_envelope(ConfDeposit(account="e", amount=3)), consumer="ledger.deposit"
    )
    duplicates = _duplicates("ledger.deposit")
    receipts = [await world.transport.deliver("ledger", envelope) for _ in range(3)]
    await asyncio.gather(*receipts)
    # A durable broker's receipt means "accepted", not "handled": wait until all three were.
    await world.until(lambda: _true(_duplicates("ledger.deposit") - duplicates == 2))
    assert await world.count("ledger", entries, account="e") == 1
    await world.until(lambda: _eq(world.count("audit", audit_log, account="e"), 1))


async def test_a_repeated_ask_with_the_same_message_id_replays_the_first_reply(
    world_factory: WorldFactory,
) -> None:
    world = await world_factory()
    envelope = msgspec.structs.replace(
        new_envelope(ConfDeposit(account="f", amount=4)), consumer="ledger.deposit"
    )
    first = await world.bus.answer("ledger", envelope)
    second = await world.bus.answer("ledger", envelope)
    assert first == second == 4
    assert await world.count("ledger", entries, account="f") == 1


async def test_a_failing_handler_is_retried_then_its_effect_happens_once(world_factory: WorldFactory) -> None:
    world = await world_factory()
    await send_deposit(world, ConfDeposit(account="g", amount=2, fail_times=2))
    await world.until(lambda: _eq(world.count("ledger", entries, account="g"), 1))
    attempts = [n for key, n in world.seen.attempts.items() if key.startswith("g:")]
    assert attempts == [3]
    # the event published in the failed attempts was rolled back with them: one audit row
    await world.until(lambda: _eq(world.count("audit", audit_log, account="g"), 1))
    await asyncio.sleep(0)  # let any stray delivery run before the final count
    assert await world.count("audit", audit_log, account="g") == 1


async def test_a_message_that_keeps_failing_lands_in_the_dead_letter_store_and_can_be_redriven(
    world_factory: WorldFactory,
) -> None:
    world = await world_factory()
    message_id = await send_deposit(world, ConfDeposit(account="h", amount=9, fail_times=3))
    ledger_db = world.databases["ledger"]

    async def one_dead() -> bool:
        return len(await inbox.list_dead(ledger_db)) == 1

    await world.until(one_dead)
    [dead] = await inbox.list_dead(ledger_db)
    assert dead.consumer == "ledger.deposit"
    assert dead.message_type == "ConfDeposit"
    assert dead.attempts == 3
    assert dead.envelope.message_id == message_id
    assert "transient failure 3" in dead.error
    assert await world.count("ledger", entries, account="h") == 0
    # the fault is gone (the fourth attempt succeeds): an operator redrives it
    assert await inbox.redrive(ledger_db, dead.id, world.bus.relay)
    await world.until(lambda: _eq(world.count("ledger", entries, account="h"), 1))
    assert await inbox.list_dead(ledger_db) == []
    assert not await inbox.redrive(ledger_db, dead.id, world.bus.relay)


async def test_trace_and_correlation_are_carried_across_hops(world_factory: WorldFactory) -> None:
    world = await world_factory()
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    correlation = uuid.uuid4()
    token = context.enter(
        context.MessageContext(correlation_id=correlation, traceparent=f"00-{trace_id}-00f067aa0ba902b7-01")
    )
    try:
        command_id = await send_deposit(world, ConfDeposit(account="i", amount=1))
    finally:
        context.leave(token)
    await world.until(lambda: _true(len(world.seen.envelopes) >= 3))
    by_consumer = dict(world.seen.envelopes)
    command = by_consumer["ledger.deposit"]
    event = by_consumer["audit.when_deposited_write_audit"]
    assert command.message_id == command_id
    assert context.trace_id_of(command.traceparent) == trace_id
    assert context.trace_id_of(event.traceparent) == trace_id
    assert command.traceparent != event.traceparent, "each hop gets its own span id"
    assert command.correlation_id == event.correlation_id == correlation
    assert event.causation_id == command.message_id


async def test_send_outside_a_unit_of_work_is_refused(world_factory: WorldFactory) -> None:
    world = await world_factory()
    with pytest.raises(NoUnitOfWork):
        await world.bus.send(ConfDeposit(account="j", amount=1))


async def test_nothing_is_sent_when_the_sending_transaction_rolls_back(world_factory: WorldFactory) -> None:
    world = await world_factory()

    async def send_then_fail() -> None:
        async with unit_of_work(world.databases["notify"]):
            await world.bus.send(ConfDeposit(account="k", amount=1))
            raise RuntimeError("the caller fails after sending")

    with pytest.raises(RuntimeError):
        await send_then_fail()
    assert await world.bus.relay.pending() == 0
    await world.bus.ask(ConfBalance(account="k"))  # let the loop turn
    assert await world.count("ledger", entries, account="k") == 0


async def test_outbox_rows_left_by_a_crash_are_delivered_at_the_next_start(
    world_factory: WorldFactory,
) -> None:
    seen = Observed()
    crashed = await world_factory(seen=seen, start=False)
    # a process wrote the row and died before relaying it
    async with unit_of_work(crashed.databases["notify"]) as uow:
        await write_outbox(uow, new_envelope(ConfDeposited(account="l", amount=1)), relay=None)
    assert await crashed.bus.relay.pending() == 1
    restarted = await world_factory(seen=seen)
    await restarted.until(lambda: _eq(restarted.count("audit", audit_log, account="l"), 1))
    await restarted.until(lambda: _eq(restarted.bus.relay.pending(), 0))
    # notify's delivery is its own message: it may land after audit's
    await restarted.until(lambda: _true(bool(seen.notified)))
    assert seen.notified == ["l"]


async def _eq(value: object, expected: object) -> bool:
    return await value == expected  # type: ignore[misc]


async def _true(value: bool) -> bool:
    return value


def _duplicates(consumer: str) -> float:
    """How many deliveries to `consumer` the inbox has skipped as duplicates, so far."""
    value = REGISTRY.get_sample_value("shop_bus_messages_duplicate_total", {"consumer": consumer})
    return value or 0.0
