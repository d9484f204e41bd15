"""OpenTelemetry tracing, with spans kept in memory: HTTP server spans continue the caller's
trace; every bus hop is a producer span and a consumer span under it, however late the outbox
relays it; saga steps belong to the trace that started the saga; logs carry the current span's
ids; and with tracing off, nothing is traced at all."""

from __future__ import annotations

import asyncio
import contextvars
import io
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec
import pytest
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from shop.bus import context
from shop.bus.breaker import BreakerConfig, BreakerRegistry
from shop.bus.bus import Bus
from shop.bus.messages import Command, Envelope, Query
from shop.bus.module import Module
from shop.bus.retry import RetryPolicy
from shop.bus.saga import META_KEY, Saga, SagaContext, SagaEngine
from shop.bus.transports.inprocess import InProcessTransport
from shop.db import Database, unit_of_work
from shop.discovery import Instance, MemoryRegistry
from shop.gateway.gateway_app import build_gateway_app
from shop.gateway.middleware import GatewayMiddleware
from shop.gateway.proxy import ProxyConfig
from shop.modules.payments.provider import GuardedProvider, ProviderError
from shop.modules.payments.simulated import SimulatedProvider
from shop.observability import logging as shop_logging
from shop.observability import tracing
from shop.security.tokens import TokenVerifier
from shop.settings import RateLimit, Settings

MakeDatabase = Callable[..., Awaitable[Database]]
INCOMING_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
INCOMING_SPAN = "00f067aa0ba902b7"
INCOMING = f"00-{INCOMING_TRACE}-{INCOMING_SPAN}-01"


# -- spans kept in memory ------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _tracing_off_afterwards() -> Iterator[None]:
    """Tracing is process-wide: whatever a test turned on is off for the next one."""
    yield
    tracing.shutdown_tracing()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for the test, every span exported to memory as it ends."""
    exporter = InMemorySpanExporter()
    assert tracing.configure_tracing(Settings(), "shop-test", processor=SimpleSpanProcessor(exporter))
    try:
        yield exporter
    finally:
        tracing.shutdown_tracing()


def hexes(span: ReadableSpan) -> tuple[str, str]:
    """(trace id, span id) of a finished span, as in a traceparent."""
    assert span.context is not None
    return f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"


def parent_id(span: ReadableSpan) -> str | None:
    return None if span.parent is None else f"{span.parent.span_id:016x}"


def named(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    found = [s for s in exporter.get_finished_spans() if s.name == name]
    assert len(found) == 1, (name, [s.name for s in exporter.get_finished_spans()])
    return found[0]


async def until(check: Callable[[], Any], *, timeout: float = 5.0, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        await asyncio.sleep(0.01)
    raise AssertionError(f"{what}: not within {timeout}s")


def has_span(exporter: InMemorySpanExporter, name: str) -> Callable[[], bool]:
    return lambda: any(s.name == name for s in exporter.get_finished_spans())


# -- a tiny world: "shipping" handles a command and asks "stock" -----------------------------------


class TrShip(Command, frozen=True, kw_only=True):
    order: str


class TrCountStock(Query, frozen=True, kw_only=True):
    sku: str


@dataclass
class Seen:
    """What the handlers saw of the current trace."""

    traceparents: dict[str, str | None] = field(default_factory=dict)
    otel_span_ids: dict[str, str] = field(default_factory=dict)
    envelopes: dict[str, Envelope] = field(default_factory=dict)


def make_modules(seen: Seen) -> list[Module]:
    shipping = Module("shipping")
    stock = Module("stock")
    log = structlog.get_logger("tests.tracing")

    def remember(name: str, envelope: Envelope) -> None:
        seen.traceparents[name] = context.current().traceparent
        seen.otel_span_ids[name] = f"{trace.get_current_span().get_span_context().span_id:016x}"
        seen.envelopes[name] = envelope

    @shipping.handles(TrShip)
    async def ship(cmd: TrShip, bus: Bus, envelope: Envelope) -> None:
        remember("ship", envelope)
        log.info("tests.shipping", order=cmd.order)
        await bus.ask(TrCountStock(sku=cmd.order))

    @stock.handles(TrCountStock)
    async def count_stock(query: TrCountStock, envelope: Envelope) -> int:
        remember("count_stock", envelope)
        return 3

    return [shipping, stock]


async def open_bus(make_database: MakeDatabase, seen: Seen, *, start: bool = True) -> Bus:
    database = await make_database("shipping")
    bus = Bus(
        make_modules(seen),
        InProcessTransport(),
        local=["shipping", "stock"],
        databases={"shipping": database},
        breakers=BreakerRegistry(BreakerConfig(minimum_number_of_calls=100)),
        retry=RetryPolicy(max_attempts=1),
    )
    bus.bind()
    if start:
        await bus.start()
    return bus


async def send_ship(bus: Bus, order: str) -> None:
    async with unit_of_work(bus.databases["shipping"]):
        await bus.send(TrShip(order=order))


# -- HTTP ----------------------------------------------------------------------------------------


def verifier() -> TokenVerifier:
    key = Ed25519PrivateKey.generate().public_key()
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return TokenVerifier(pem)


async def test_an_http_server_span_continues_the_incoming_traceparent_and_is_current(
    spans: InMemorySpanExporter,
) -> None:
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope["path_template"] = "/api/v1/things/{id}"
        seen.setdefault(scope["path"], (context.current().traceparent, trace.get_current_span()))
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    middleware = GatewayMiddleware(app, verifier=verifier(), limiter=None, rate_limit=RateLimit(10, 1.0))
    transport = httpx.ASGITransport(app=middleware)
    async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as client:
        answered = await client.post("/api/v1/things/7", headers={"traceparent": INCOMING})
        assert answered.status_code == 201
        assert (await client.get("/health")).status_code == 201  # probes: no span

    [server] = spans.get_finished_spans()
    assert server.kind is SpanKind.SERVER
    assert server.name == "POST /api/v1/things/{id}"
    assert hexes(server)[0] == INCOMING_TRACE
    assert parent_id(server) == INCOMING_SPAN
    assert server.parent is not None
    assert server.parent.is_remote
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == 201
    assert server.attributes["http.route"] == "/api/v1/things/{id}"
    # the one current traceparent (what logs, envelopes and proxied calls read) is the span's
    traceparent, current = seen["/api/v1/things/7"]
    assert traceparent == f"00-{hexes(server)[0]}-{hexes(server)[1]}-01"
    assert f"{current.get_span_context().span_id:016x}" == hexes(server)[1]
    probe_traceparent, probe_current = seen["/health"]
    assert context.trace_id_of(probe_traceparent) is not None
    assert probe_current is trace.INVALID_SPAN


async def test_the_gateway_proxies_in_a_client_span_whose_traceparent_it_sends_upstream(
    spans: InMemorySpanExporter,
) -> None:
    sent: list[httpx.Request] = []

    async def upstream(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json={"ok": True})

    registry = MemoryRegistry()
    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream)) as upstream_client:
        gateway = build_gateway_app(
            Settings(rate_limit=RateLimit(1000, 1.0)),
            registry,
            verifier=verifier(),
            limiter=None,
            breakers=BreakerRegistry(),
            http_client=upstream_client,
            config=ProxyConfig(refresh_interval_s=3600),
        )
        transport = httpx.ASGITransport(app=gateway)
        async with gateway.running(), httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            await registry.register(
                Instance(
                    module="catalog",
                    instance_id="catalog-a",
                    url="http://catalog-a:8000",
                    routes=("/api/v1/products",),
                )
            )
            await gateway.proxy.refresh()
            answered = await client.get("/api/v1/products", headers={"traceparent": INCOMING})
            assert answered.status_code == 200

    server = next(s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER)
    client_span = next(s for s in spans.get_finished_spans() if s.kind is SpanKind.CLIENT)
    assert hexes(server)[0] == hexes(client_span)[0] == INCOMING_TRACE
    assert parent_id(client_span) == hexes(server)[1]
    assert client_span.attributes is not None
    assert client_span.attributes["shop.instance_id"] == "catalog-a"
    assert client_span.attributes["http.response.status_code"] == 200
    [request] = sent
    assert request.headers.get_list("traceparent") == [f"00-{INCOMING_TRACE}-{hexes(client_span)[1]}-01"]


# -- the bus -------------------------------------------------------------------------------------


async def test_a_send_and_its_handling_are_a_producer_span_and_its_consumer_child(
    spans: InMemorySpanExporter, make_database: MakeDatabase
) -> None:
    seen = Seen()
    bus = await open_bus(make_database, seen)
    tracing.instrument_database(bus.databases["shipping"])
    buffer = io.StringIO()
    shop_logging.configure("INFO", stream=buffer)
    try:
        with tracing.child_span("POST /shipments", SpanKind.SERVER) as request:
            assert request is not None
            await send_ship(bus, "o-1")
        await until(has_span(spans, "handle TrShip"), what="the command handled")
    finally:
        await bus.stop()
        shop_logging.configure("INFO")

    root, send, handle = (
        named(spans, "POST /shipments"),
        named(spans, "send TrShip"),
        named(spans, "handle TrShip"),
    )
    ask, answer = named(spans, "ask TrCountStock"), named(spans, "handle TrCountStock")
    assert {hexes(s)[0] for s in (root, send, handle, ask, answer)} == {hexes(root)[0]}
    assert (send.kind, handle.kind, ask.kind, answer.kind) == (
        SpanKind.PRODUCER,
        SpanKind.CONSUMER,
        SpanKind.PRODUCER,
        SpanKind.CONSUMER,
    )
    assert parent_id(send) == hexes(root)[1]
    assert parent_id(handle) == hexes(send)[1], "the consumer's parent is the producer"
    assert parent_id(ask) == hexes(handle)[1]
    assert parent_id(answer) == hexes(ask)[1]
    # the envelope carried the producer span; the handler ran with its consumer span current
    assert seen.envelopes["ship"].traceparent == f"00-{hexes(send)[0]}-{hexes(send)[1]}-01"
    assert seen.traceparents["ship"] == f"00-{hexes(handle)[0]}-{hexes(handle)[1]}-01"
    assert seen.otel_span_ids["ship"] == hexes(handle)[1]
    # SQL under the handler (its inbox row), from the SQLAlchemy instrumentation
    sql = [
        s
        for s in spans.get_finished_spans()
        if s.kind is SpanKind.CLIENT and parent_id(s) == hexes(handle)[1]
    ]
    assert sql, "the handler's statements are spans under it"
    # logs and traces join: the handler's log line names its consumer span
    [line] = [json.loads(x) for x in buffer.getvalue().splitlines() if '"tests.shipping"' in x]
    assert (line["trace_id"], line["span_id"]) == hexes(handle)


async def test_a_message_relayed_from_the_outbox_after_a_restart_continues_the_writers_trace(
    make_database: MakeDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the first process writes the command and dies after commit, before relaying it
    before = InMemorySpanExporter()
    tracing.configure_tracing(Settings(), "shop-test", processor=SimpleSpanProcessor(before))
    seen = Seen()
    crashed = await open_bus(make_database, seen, start=False)
    monkeypatch.setattr(crashed.relay, "relay", lambda database, envelopes: None)
    with tracing.child_span("POST /shipments", SpanKind.SERVER):
        await send_ship(crashed, "o-2")
    assert await crashed.relay.pending() == 1
    tracing.shutdown_tracing()
    # the next process's start-up sweep relays the row
    after = InMemorySpanExporter()
    tracing.configure_tracing(Settings(), "shop-test", processor=SimpleSpanProcessor(after))
    restarted = await open_bus(make_database, seen, start=False)  # the same SQLite file
    try:
        await restarted.start()
        await until(has_span(after, "handle TrShip"), what="the swept command handled")
    finally:
        await restarted.stop()
        tracing.shutdown_tracing()

    root, send = named(before, "POST /shipments"), named(before, "send TrShip")
    handle = named(after, "handle TrShip")
    assert hexes(handle)[0] == hexes(send)[0] == hexes(root)[0]
    assert parent_id(handle) == hexes(send)[1], "the consumer's parent is the producer span of the write"


async def test_saga_steps_belong_to_the_trace_that_started_the_saga_even_after_a_restart(
    spans: InMemorySpanExporter, make_database: MakeDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = await make_database("trips")
    steps: dict[str, str | None] = {}

    async def book(ctx: SagaContext) -> dict[str, Any]:
        steps[ctx.step] = context.current().traceparent
        return {ctx.step: True}

    saga = Saga("tr_trip").step("flight", action=book).step("hotel", action=book)
    crashed = SagaEngine(database, [saga])
    monkeypatch.setattr(crashed, "_schedule", lambda saga_id: None)  # dies after commit
    saga_id = uuid.uuid4()
    with tracing.child_span("POST /trips", SpanKind.SERVER):
        async with unit_of_work(database):
            await crashed.start(saga, saga_id, {"who": "ann"})
    # the next process resumes it from its start-up pass: no request, no context
    restarted = SagaEngine(database, [saga])
    resumed = asyncio.get_running_loop().create_task(restarted.resume_all(), context=contextvars.Context())
    assert await resumed == 1

    state = await restarted.get(saga_id)
    assert state is not None
    assert state.status == "COMPLETED"
    assert state.data == {"who": "ann", "flight": True, "hotel": True}, "the trace is not saga data"
    root = named(spans, "POST /trips")
    flight, hotel = named(spans, "saga tr_trip flight"), named(spans, "saga tr_trip hotel")
    assert {hexes(flight)[0], hexes(hotel)[0]} == {hexes(root)[0]}
    assert parent_id(flight) == parent_id(hotel) == hexes(root)[1]
    assert steps == {
        "flight": f"00-{hexes(flight)[0]}-{hexes(flight)[1]}-01",
        "hotel": f"00-{hexes(hotel)[0]}-{hexes(hotel)[1]}-01",
    }


async def test_a_saga_stored_before_tracing_advances_as_before(make_database: MakeDatabase) -> None:
    database = await make_database("trips")
    saga = Saga("tr_old_trip").step("flight", action=_no_op)
    engine = SagaEngine(database, [saga])
    saga_id = uuid.uuid4()
    async with unit_of_work(database):  # no context at all: nothing to keep
        await engine.start(saga, saga_id, {"who": "bo"})
    await engine.drain()
    state = await engine.get(saga_id)
    assert state is not None
    assert state.status == "COMPLETED"
    from shop.bus.tables import saga_instances

    async with database.engine.connect() as conn:
        stored = (await conn.execute(saga_instances.select())).mappings().one()["data"]
    assert META_KEY not in stored


async def _no_op(ctx: SagaContext) -> None:
    return None


async def test_with_tracing_off_a_resumed_saga_still_logs_in_its_starters_trace(
    make_database: MakeDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not tracing.enabled()
    database = await make_database("trips")
    seen: list[str | None] = []

    async def step(ctx: SagaContext) -> None:
        seen.append(context.current().traceparent)

    saga = Saga("tr_quiet_trip").step("flight", action=step)
    crashed = SagaEngine(database, [saga])
    monkeypatch.setattr(crashed, "_schedule", lambda saga_id: None)
    token = context.enter(context.MessageContext(correlation_id=uuid.uuid4(), traceparent=INCOMING))
    try:
        async with unit_of_work(database):
            await crashed.start(saga, uuid.uuid4(), {})
    finally:
        context.leave(token)
    restarted = SagaEngine(database, [saga])
    await asyncio.get_running_loop().create_task(restarted.resume_all(), context=contextvars.Context())
    assert [context.trace_id_of(tp) for tp in seen] == [INCOMING_TRACE]


# -- payments --------------------------------------------------------------------------------------


async def test_payment_provider_calls_are_client_spans_with_their_outcome_and_no_card_token(
    spans: InMemorySpanExporter,
) -> None:
    breakers = BreakerRegistry(BreakerConfig(minimum_number_of_calls=100))
    retry = RetryPolicy(max_attempts=2, base_delay=0.0)
    guard = GuardedProvider(SimulatedProvider(), breakers, timeout=1.0, retry=retry)
    with tracing.child_span("handle TakePayment", SpanKind.CONSUMER) as handler:
        assert handler is not None
        approved = await guard.authorize("order-1:take", 900, "EUR", "tok_ok")
        assert not (await guard.authorize("order-2:take", 900, "EUR", "tok_decline")).approved
        with pytest.raises(ProviderError):
            await guard.authorize("order-3:take", 900, "EUR", "tok_error")
        await guard.capture("order-1:capture", approved.provider_ref or "")

    calls = [s for s in spans.get_finished_spans() if s.name.startswith("payment_provider ")]
    summary = [
        (
            s.name,
            s.kind,
            dict(s.attributes or {}).get("payment.outcome"),
            dict(s.attributes or {})["payment.attempts"],
        )
        for s in calls
    ]
    assert summary == [
        ("payment_provider authorize", SpanKind.CLIENT, "approved", 1),
        ("payment_provider authorize", SpanKind.CLIENT, "declined", 1),
        ("payment_provider authorize", SpanKind.CLIENT, "error", 2),
        ("payment_provider capture", SpanKind.CLIENT, "approved", 1),
    ]
    handler_span = named(spans, "handle TakePayment")
    assert {parent_id(s) for s in calls} == {hexes(handler_span)[1]}
    assert all(dict(s.attributes or {})["payment.provider"] == "simulated" for s in calls)
    exported = msgspec.json.encode([dict(s.attributes or {}) for s in calls]).decode()
    assert "tok_" not in exported, "no card token in any attribute"


# -- off -----------------------------------------------------------------------------------------


async def test_with_tracing_off_no_span_is_made_and_no_exporter_exists(
    make_database: MakeDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not tracing.configure_tracing(Settings(otlp_endpoint=None), "shop")
    assert tracing.state.tracer is None
    assert tracing.state.provider is None

    def no_span(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a span was started with tracing off")

    monkeypatch.setattr(tracing, "start", no_span)
    seen = Seen()
    bus = await open_bus(make_database, seen)
    try:
        middleware = GatewayMiddleware(
            _answer_by_sending(bus), verifier=verifier(), limiter=None, rate_limit=RateLimit(10, 1.0)
        )
        transport = httpx.ASGITransport(app=middleware)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as client:
            answered = await client.post("/ship", headers={"traceparent": INCOMING})
        assert answered.status_code == 202
        await until(lambda: "count_stock" in seen.traceparents, what="the hop handled")
    finally:
        await bus.stop()
    # the context still carries W3C trace context, hop by hop, in the caller's trace
    assert {context.trace_id_of(seen.traceparents[n]) for n in ("ship", "count_stock")} == {INCOMING_TRACE}
    assert set(seen.otel_span_ids.values()) == {"0000000000000000"}, "no OpenTelemetry span anywhere"


def _answer_by_sending(bus: Bus) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send_ship(bus, "o-off")
        await send({"type": "http.response.start", "status": 202, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    return app


def test_an_otlp_endpoint_installs_a_batch_processor_exporting_to_its_traces_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    try:
        assert tracing.configure_tracing(Settings(otlp_endpoint="http://127.0.0.1:4318/"), "shop-orders")
        provider = tracing.state.provider
        assert provider is not None
        assert provider.resource.attributes["service.name"] == "shop-orders"
        processors: Sequence[Any] = provider._active_span_processor._span_processors
        [processor] = processors
        assert isinstance(processor, BatchSpanProcessor)
        exporter = processor.span_exporter
        assert isinstance(exporter, OTLPSpanExporter)
        assert exporter._endpoint == "http://127.0.0.1:4318/v1/traces"
    finally:
        tracing.shutdown_tracing()
    assert tracing.state.tracer is None


async def test_a_sampler_ratio_of_zero_records_no_new_trace_but_hops_keep_their_trace_id(
    make_database: MakeDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    exporter = InMemorySpanExporter()
    assert tracing.configure_tracing(Settings(), "shop-test", processor=SimpleSpanProcessor(exporter))
    seen = Seen()
    bus = await open_bus(make_database, seen)
    try:
        await send_ship(bus, "o-unsampled")
        await until(lambda: "count_stock" in seen.traceparents, what="the hop handled")
    finally:
        await bus.stop()
    assert exporter.get_finished_spans() == ()
    ship, count = seen.traceparents["ship"], seen.traceparents["count_stock"]
    assert ship is not None
    assert count is not None
    assert context.trace_id_of(ship) == context.trace_id_of(count)
    assert ship.endswith("-00"), "the decision travels with the trace"


def test_an_unreadable_sampler_ratio_records_every_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    for raw, ratio in (("0.25", 0.25), ("", 1.0), ("half", 1.0), ("2", 1.0)):
        monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", raw)
        assert tracing.sample_ratio() == ratio
