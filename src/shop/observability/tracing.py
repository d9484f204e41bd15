"""OpenTelemetry tracing: spans for HTTP requests, bus hops, saga steps, SQL and provider calls.

Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (`Settings.otlp_endpoint`) is set: then
`configure_tracing` installs a TracerProvider (resource `service.name`) with a batch processor
and the OTLP/HTTP exporter, and `shutdown_tracing` flushes it when the process stops. While it is
off, `state.tracer` is None and the hot paths (bus, gateway middleware) test that one attribute
and do what they did before: no SDK span, no OpenTelemetry context is ever created.

`OTEL_TRACES_SAMPLER_ARG` (0..1) records that fraction of new traces (a trace continues its
parent's decision); `OTEL_BSP_*` tune the batch processor; `OTEL_SDK_DISABLED=true` turns it off.

`shop.bus.context` stays the one source of the current traceparent. Whenever a span becomes
current (`activated`), its traceparent goes into the MessageContext (what logs, envelopes and
proxied requests read) and the span into OpenTelemetry's context (what the SQLAlchemy
instrumentation reads), together. Spans that are not made current (a producer span, a client
span) hand their traceparent on explicitly: in the Envelope, in the upstream request's header.

Only the entry points of work start a trace: a client call (SQL, an HTTP call) without a parent
is not sampled, so timers and sweeps do not export a trace per statement.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    Tracer,
)
from opentelemetry.util.types import Attributes

from shop.bus import context
from shop.db import Database
from shop.observability.loggers import get_logger
from shop.settings import Settings

if TYPE_CHECKING:  # the SDK is imported when tracing is configured, not by every process
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.sampling import Sampler

__all__ = [
    "Span",
    "SpanKind",
    "Status",
    "StatusCode",
    "activated",
    "ashutdown_tracing",
    "attach",
    "child_span",
    "configure_tracing",
    "detach",
    "enabled",
    "end",
    "instrument_database",
    "sample_ratio",
    "shutdown_tracing",
    "start",
    "state",
    "traceparent_of",
]

TRACES_PATH = "/v1/traces"
log = get_logger("shop.tracing")


class _State:
    """The process's tracing: `tracer` is None while tracing is off (the hot paths test it)."""

    __slots__ = ("provider", "tracer")

    def __init__(self) -> None:
        self.provider: TracerProvider | None = None
        self.tracer: Tracer | None = None


state = _State()


def enabled() -> bool:
    return state.tracer is not None


def sample_ratio() -> float:
    """The fraction of new traces recorded: OTEL_TRACES_SAMPLER_ARG (0..1), else all of them."""
    raw = os.environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    try:
        ratio = float(raw) if raw else 1.0
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= 1.0:
        log.warning("tracing.bad_sampler_arg", value=raw, using=1.0)
        return 1.0
    return ratio


def _sampler(ratio: float) -> Sampler:
    """Follow the parent's decision. A new trace: never from a client call (SQL, HTTP) outside
    any trace; else recorded for `ratio` of the trace ids."""
    from opentelemetry.sdk.trace.sampling import (
        ALWAYS_OFF,
        ALWAYS_ON,
        ParentBased,
        Sampler,
        SamplingResult,
        TraceIdRatioBased,
    )
    from opentelemetry.trace import Link

    entry: Sampler = ALWAYS_ON if ratio >= 1.0 else TraceIdRatioBased(ratio)

    class EntryPoints(Sampler):
        def should_sample(
            self,
            parent_context: Context | None,
            trace_id: int,
            name: str,
            kind: SpanKind | None = None,
            attributes: Attributes = None,
            links: Sequence[Link] | None = None,
            trace_state: Any = None,
        ) -> SamplingResult:
            sampler = ALWAYS_OFF if kind is SpanKind.CLIENT else entry
            return sampler.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

        def get_description(self) -> str:
            return "ShopEntryPoints"

    return ParentBased(root=EntryPoints())


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT as it is, else the base
    endpoint (OTEL_EXPORTER_OTLP_ENDPOINT) + /v1/traces, as the OpenTelemetry spec says."""
    explicit = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if explicit:
        return explicit
    return endpoint.rstrip("/") + TRACES_PATH


def configure_tracing(
    settings: Settings, service_name: str, *, processor: SpanProcessor | None = None
) -> bool:
    """Trace this process as `service_name` when an OTLP endpoint is configured (or a
    `processor` is given, for tests); return whether tracing is on. Replaces an earlier set-up.

    The batch processor reads OTEL_BSP_* (schedule delay, queue and batch sizes) itself."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        processor = None
    elif processor is None and settings.otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url(settings.otlp_endpoint)))
    shutdown_tracing()
    if processor is None:
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name}),
        sampler=_sampler(sample_ratio()),
        shutdown_on_exit=True,
    )
    provider.add_span_processor(processor)
    state.provider = provider
    state.tracer = provider.get_tracer("shop")
    return True


def shutdown_tracing() -> None:
    """Flush the spans still queued and stop tracing (at shutdown; idempotent)."""
    provider, state.provider, state.tracer = state.provider, None, None
    if provider is None:
        return
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer

    EngineTracer.remove_all_event_listeners()  # type: ignore[no-untyped-call]
    provider.force_flush()
    provider.shutdown()


async def ashutdown_tracing() -> None:
    """`shutdown_tracing` off the event loop (the last export may wait on the collector)."""
    if state.provider is not None:
        await asyncio.to_thread(shutdown_tracing)


def instrument_database(database: Database) -> None:
    """SQL spans (opentelemetry-instrumentation-sqlalchemy) for one module's database, when on.

    Its listeners are attached to the engine directly: the instrumentor's `instrument()` would
    also patch `create_engine` for the whole process, and only instruments once. Every
    statement then goes through SQLAlchemy (no driver SQL, see `shop.db.Prepared`), so that
    every statement is a span."""
    if state.provider is None:
        return
    database.driver_sql = False
    engine = database.engine
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
    from opentelemetry.instrumentation.sqlalchemy.version import __version__
    from opentelemetry.metrics import NoOpUpDownCounter

    tracer = trace.get_tracer("opentelemetry.instrumentation.sqlalchemy", __version__, state.provider)
    EngineTracer(  # type: ignore[no-untyped-call]
        tracer, engine.sync_engine, NoOpUpDownCounter("db.client.connections.usage")
    )


# -- spans -----------------------------------------------------------------------------------


def parent_context(traceparent: str | None) -> Context | None:
    """An OpenTelemetry context whose (remote) span is the W3C `traceparent`, or None."""
    parsed = context.parse_traceparent(traceparent)
    if parsed is None:
        return None
    assert traceparent is not None
    flags = traceparent.strip()[-2:]
    span_context = SpanContext(
        trace_id=int(parsed[0], 16),
        span_id=int(parsed[1], 16),
        is_remote=True,
        trace_flags=TraceFlags(int(flags, 16) & TraceFlags.SAMPLED),
    )
    return trace.set_span_in_context(NonRecordingSpan(span_context))


def start(name: str, kind: SpanKind, parent: str | None, attributes: Attributes = None) -> Span:
    """A started span, child of the W3C `parent` (a root span without one). Tracing must be on;
    end it with `end`."""
    tracer = state.tracer
    if tracer is None:
        return trace.INVALID_SPAN
    # An empty context, not the ambient one: the parent is whatever `parent` says.
    return tracer.start_span(name, parent_context(parent) or Context(), kind, attributes=attributes)


def traceparent_of(span: Span) -> str:
    """The W3C traceparent that names `span` as the parent of the next hop."""
    sc = span.get_span_context()
    return f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags) & 1:02x}"


def end(span: Span, error: BaseException | None = None) -> None:
    """End `span`, marking it failed with `error` if there is one."""
    if error is not None and span.is_recording():
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    span.end()


def attach(span: Span) -> object:
    """Make `span` OpenTelemetry's current span (its context only; see `activated`)."""
    return otel_context.attach(trace.set_span_in_context(span))


def detach(token: object) -> None:
    otel_context.detach(token)  # type: ignore[arg-type]


@contextmanager
def activated(span: Span, **changes: Any) -> Iterator[None]:
    """The block runs with `span` current: its traceparent (and `changes`) in the bus context,
    the span in OpenTelemetry's context."""
    ctx = dataclasses.replace(context.current(), traceparent=traceparent_of(span), **changes)
    token = context.enter(ctx)
    otel_token = attach(span)
    try:
        yield
    finally:
        detach(otel_token)
        context.leave(token)


@contextmanager
def child_span(
    name: str, kind: SpanKind = SpanKind.INTERNAL, attributes: Mapping[str, Any] | None = None
) -> Iterator[Span | None]:
    """A span under the current traceparent, current for the block and failed if the block
    raises; yields None (and does nothing) while tracing is off."""
    if state.tracer is None:
        yield None
        return
    span = start(name, kind, context.current().traceparent, attributes)
    error: BaseException | None = None
    try:
        with activated(span):
            yield span
    except BaseException as exc:
        error = exc
        raise
    finally:
        end(span, error)
