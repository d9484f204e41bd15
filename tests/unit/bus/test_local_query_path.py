"""The lean path of an `ask` for a local query (ADR 0027): no envelope, no task, no timer unless
the handler suspends, and every guarantee of the envelope path kept -- the breaker counts the
module's failures and timeouts, the timeout holds, metrics and logs appear in the query's
context, and what the handler sends names the query as its cause."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY

from shop.bus import context
from shop.bus.breaker import BreakerConfig, BreakerRegistry, CircuitOpenError, CircuitState
from shop.bus.bus import Bus
from shop.bus.errors import AskTimeout, DependencyFailed, HandlerFailed, InputRefused
from shop.bus.messages import Envelope, Query, new_envelope
from shop.bus.module import Module
from shop.bus.transports.inprocess import InProcessTransport
from shop.observability import logging as shop_logging

module = Module("leanq")


class LeanEcho(Query, frozen=True, kw_only=True):
    n: int = 0


class LeanSlow(Query, frozen=True, kw_only=True):
    seconds: float


class LeanFails(Query, frozen=True, kw_only=True):
    kind: str  # "module", "input", "dependency"


class LeanWhoAmI(Query, frozen=True, kw_only=True):
    pass


class LeanWantsEnvelope(Query, frozen=True, kw_only=True):
    pass


class LeanNested(Query, frozen=True, kw_only=True):
    pass


class LeanDown(Exception):
    pass


@module.handles(LeanEcho)
async def echo(q: LeanEcho) -> int:
    return q.n


@module.handles(LeanSlow)
async def slow(q: LeanSlow) -> str:
    await asyncio.sleep(q.seconds)
    return "late"


@module.handles(LeanFails)
async def fails(q: LeanFails) -> None:
    if q.kind == "input":
        raise ValueError("no such thing")
    if q.kind == "dependency":
        raise HandlerFailed("another module failed")
    raise LeanDown("the module's own failure")


@module.handles(LeanWhoAmI)
async def who_am_i(q: LeanWhoAmI) -> tuple[str | None, str | None, str | None, str | None]:
    ctx = context.current()
    return (
        str(ctx.correlation_id),
        str(ctx.causation_id),
        ctx.traceparent,
        ctx.request_id,
    )


@module.handles(LeanWantsEnvelope)
async def wants_envelope(q: LeanWantsEnvelope, envelope: Envelope) -> str:
    return str(envelope.message_id)


@module.handles(LeanNested)
async def nested(q: LeanNested, bus: Bus) -> tuple[str, str, str, str]:
    ctx = context.current()
    inner = await bus.ask(LeanWhoAmI())
    sent = bus._envelope(LeanEcho())  # what `send`/`publish` would write from this handler
    return str(ctx.correlation_id), str(ctx.causation_id), str(inner[0]), str(sent.causation_id)


def _bus(**kwargs: Any) -> Bus:
    bus = Bus([module], InProcessTransport(), local=["leanq"], databases={}, **kwargs)
    bus.bind()
    return bus


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    shop_logging.configure("DEBUG", stream=buffer)
    try:
        yield buffer
    finally:
        shop_logging.configure("INFO")


def _lines(buffer: io.StringIO, event: str) -> list[dict[str, Any]]:
    return [line for line in map(json.loads, buffer.getvalue().splitlines()) if line["event"] == event]


async def test_a_local_query_makes_no_envelope_and_no_task_and_arms_no_timer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bus = _bus()

    def no_envelope(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a local query needs no envelope")

    monkeypatch.setattr(bus, "_envelope", no_envelope)
    loop = asyncio.get_running_loop()
    made: list[Any] = []
    loop.set_task_factory(lambda lp, coro, **kw: made.append(coro) or asyncio.Task(coro, loop=lp, **kw))
    real_call_later = loop.call_later
    timers: list[float] = []

    def counting_call_later(delay: float, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        timers.append(delay)
        return real_call_later(delay, *args, **kwargs)

    monkeypatch.setattr(loop, "call_later", counting_call_later)
    try:
        assert [await bus.ask(LeanEcho(n=n)) for n in range(3)] == [0, 1, 2]
    finally:
        loop.set_task_factory(None)
    assert made == []
    assert timers == []


async def test_a_local_query_that_suspends_past_its_timeout_times_out_and_counts_on_the_breaker() -> None:
    registry = BreakerRegistry(default_config=BreakerConfig(minimum_number_of_calls=2, sliding_window_size=2))
    bus = _bus(breakers=registry)
    for _ in range(2):
        with pytest.raises(AskTimeout):
            await bus.ask(LeanSlow(seconds=5), timeout=0.05)
    assert registry.get("module:leanq:queries").state is CircuitState.OPEN
    with pytest.raises(CircuitOpenError):
        await bus.ask(LeanEcho())
    assert registry.get("module:leanq:commands").state is CircuitState.CLOSED  # reads apart from writes


async def test_a_local_query_that_suspends_within_its_timeout_answers() -> None:
    assert await _bus().ask(LeanSlow(seconds=0.01), timeout=2) == "late"


async def test_a_cancelled_asker_is_cancelled_not_timed_out_and_counts_nothing() -> None:
    registry = BreakerRegistry(default_config=BreakerConfig(minimum_number_of_calls=1, sliding_window_size=1))
    bus = _bus(breakers=registry)
    task = asyncio.ensure_future(bus.ask(LeanSlow(seconds=5), timeout=10))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    breaker = registry.get("module:leanq:queries")
    assert breaker.state is CircuitState.CLOSED
    assert breaker.metrics().buffered_calls == 0


async def test_a_failing_local_query_reaches_the_asker_as_handler_failed_and_only_its_own_fault_counts(
    log_lines: io.StringIO,
) -> None:
    registry = BreakerRegistry(default_config=BreakerConfig(minimum_number_of_calls=1, sliding_window_size=1))
    bus = _bus(breakers=registry)
    breaker = registry.get("module:leanq:queries")

    def failed() -> float:
        labels = {"consumer": "leanq.fails", "type": LeanFails.type_name()}
        return REGISTRY.get_sample_value("shop_bus_messages_failed_total", labels) or 0.0

    before = failed()
    with pytest.raises(InputRefused):
        await bus.ask(LeanFails(kind="input"))
    with pytest.raises(DependencyFailed):
        await bus.ask(LeanFails(kind="dependency"))
    assert breaker.state is CircuitState.CLOSED
    with pytest.raises(HandlerFailed) as raised:
        await bus.ask(LeanFails(kind="module"))
    assert raised.value.fault == "module"
    assert raised.value.error_type == "LeanDown"
    assert breaker.state is CircuitState.OPEN
    assert failed() - before == 3
    warnings = _lines(log_lines, "bus.handler_failed")
    assert len(warnings) == 3
    for line in warnings:
        assert line["module"] == "leanq"
        assert line["consumer"] == "leanq.fails"
        assert uuid.UUID(line["message_id"])
        assert line["correlation_id"]
        assert line["trace_id"]


async def test_a_handled_local_query_is_counted_timed_and_logged_at_debug_in_its_context(
    log_lines: io.StringIO,
) -> None:
    def handled() -> float:
        labels = {"consumer": "leanq.echo", "type": LeanEcho.type_name()}
        return REGISTRY.get_sample_value("shop_bus_messages_handled_total", labels) or 0.0

    def timed() -> float:
        labels = {"consumer": "leanq.echo"}
        return REGISTRY.get_sample_value("shop_bus_handler_duration_seconds_count", labels) or 0.0

    before = handled(), timed()
    request = context.MessageContext(correlation_id=uuid.uuid4(), request_id="req-1")
    token = context.enter(request)
    try:
        await _bus().ask(LeanEcho(n=1))
    finally:
        context.leave(token)
    assert (handled() - before[0], timed() - before[1]) == (1, 1)
    [line] = _lines(log_lines, "bus.handled")
    assert line["module"] == "leanq"
    assert line["type"] == LeanEcho.type_name()
    assert line["correlation_id"] == str(request.correlation_id)
    assert line["request_id"] == "req-1"
    assert uuid.UUID(line["message_id"])


async def test_a_local_query_runs_in_the_context_an_envelope_would_carry() -> None:
    parent = context.MessageContext(
        correlation_id=uuid.uuid4(),
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        request_id="req-2",
    )
    token = context.enter(parent)
    try:
        correlation, causation, traceparent, request_id = await _bus().ask(LeanWhoAmI())
    finally:
        context.leave(token)
    assert correlation == str(parent.correlation_id)
    assert causation is not None
    assert causation != correlation
    assert traceparent is not None
    assert traceparent.startswith("00-0af7651916cd43dd8448eb211c80319c-")
    assert traceparent != parent.traceparent  # a span of its own in the caller's trace
    assert request_id == "req-2"
    # Asked outside any context, the query starts its own correlation, as an envelope's would.
    correlation, causation, _, _ = await _bus().ask(LeanWhoAmI())
    assert correlation == causation


async def test_what_a_query_handler_asks_or_sends_keeps_the_correlation_and_names_the_query() -> None:
    correlation = uuid.uuid4()
    token = context.enter(context.MessageContext(correlation_id=correlation))
    try:
        outer_correlation, query_id, inner_correlation, sent_cause = await _bus().ask(LeanNested())
    finally:
        context.leave(token)
    assert outer_correlation == inner_correlation == str(correlation)
    assert sent_cause == query_id


async def test_the_query_id_and_span_are_made_only_when_read_and_then_kept() -> None:
    ctx = context.ask_context(context.MessageContext(correlation_id=uuid.uuid4()))
    for made_on_read in ("_message_id", "_traceparent"):
        with pytest.raises(AttributeError):
            getattr(ctx, made_on_read)
    first, span = ctx.causation_id, ctx.traceparent
    assert first is not None
    assert span is not None
    assert (ctx.causation_id, ctx.traceparent) == (first, span)


async def test_a_handler_taking_the_envelope_or_custom_middleware_gets_the_envelope_path() -> None:
    assert uuid.UUID(await _bus().ask(LeanWantsEnvelope()))
    seen: list[str] = []

    async def spy(call: Any, nxt: Any) -> Any:
        seen.append(call.envelope.type)
        return await nxt(call)

    assert await _bus(middleware=[spy]).ask(LeanEcho(n=4)) == 4
    assert seen == [LeanEcho.type_name()]


@pytest.mark.parametrize("new", [context.new_id, context.new_secret_id], ids=["prng", "urandom"])
def test_new_ids_are_version_4_uuids_and_distinct(new: Callable[[], uuid.UUID]) -> None:
    ids = {new() for _ in range(1000)}
    assert len(ids) == 1000
    for value in ids:
        assert value.version == 4
        assert value.variant == uuid.RFC_4122
        assert uuid.UUID(str(value)) == value
        assert hash(uuid.UUID(value.hex)) == hash(value)


def test_secret_ids_come_from_the_system_random_source(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not from the seeded PRNG that trace ids and `new_id` use: envelopes' ids key idempotency."""
    monkeypatch.setattr(context.os, "urandom", lambda n: b"\xff" * n)
    assert context.new_secret_id() == uuid.UUID("ffffffff-ffff-4fff-bfff-ffffffffffff")
    assert new_envelope(LeanEcho(n=1)).message_id == uuid.UUID("ffffffff-ffff-4fff-bfff-ffffffffffff")
