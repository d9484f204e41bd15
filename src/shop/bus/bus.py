"""The Bus: `ask`, `send`, `publish`; the handler registry; the middleware chain; retries.

One Bus per process. It knows every module's descriptor (so it can route to modules that run
elsewhere) and runs the handlers of the local ones, each in its own unit of work on its
module's database, with the inbox making every effect happen once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import traceback
import types
import typing
import uuid
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from threading import get_ident
from typing import Any

import msgspec

from shop.bus import context, inbox
from shop.bus.breaker import BreakerRegistry, CircuitBreaker, CircuitOpenError
from shop.bus.errors import (
    AskTimeout,
    DependencyFailed,
    DependencyFailure,
    HandlerFailed,
    InputRefused,
    NoHandler,
    NoUnitOfWork,
)
from shop.bus.inject import InjectionError, Injector, Plan, Scope
from shop.bus.messages import (
    Command,
    Envelope,
    Event,
    Message,
    Query,
    aliases,
    decode_body,
    encode,
    new_envelope,
)
from shop.bus.middleware import _debug, log_failed, log_handled, observe
from shop.bus.module import HandlerSpec, Module
from shop.bus.outbox import Relay, Route
from shop.bus.outbox import write as write_outbox
from shop.bus.retry import RetryPolicy
from shop.bus.transports.base import Outcome, Result, Transport
from shop.bus.transports.inprocess import Bulkhead, Deadline, LocalRequests
from shop.db import Database, current_unit_of_work, unit_of_work
from shop.observability import metrics, tracing
from shop.observability.logcontext import enter_module, leave_module
from shop.observability.loggers import get_logger

log = get_logger("shop.bus")


@dataclass(frozen=True, slots=True)
class Call:
    """What middleware sees of one handler invocation."""

    module: str
    consumer: str
    envelope: Envelope
    message: Message
    # Handed over once for sure (an ask this bus made for its own local handler): the inbox
    # has nothing to deduplicate (see `_chain`).
    once: bool = False
    # Someone waits for the reply (an ask). A delivery (sent, published, redriven) has none
    # waiting, so its inbox row keeps no reply for a duplicate to be answered with.
    replies: bool = True


Next = Callable[[Call], Awaitable[Any]]
Middleware = Callable[[Call, Next], Awaitable[Any]]


class Router:
    """Who owns each command/query and who subscribes to each event, across all modules."""

    def __init__(self, modules: Iterable[Module]) -> None:
        self.owners: dict[str, HandlerSpec] = {}
        self.subscribers: dict[str, list[HandlerSpec]] = {}
        self.by_consumer: dict[str, HandlerSpec] = {}
        for module in modules:
            for spec in module.handlers:
                # The wire name, and the legacy names envelopes written before it still carry.
                for name in aliases(spec.message_type):
                    if spec.role == "owner":
                        if name in self.owners:
                            raise ValueError(
                                f"{name} has two owners: {self.owners[name].module}, {spec.module}"
                            )
                        self.owners[name] = spec
                    else:
                        self.subscribers.setdefault(name, []).append(spec)
                if spec.consumer in self.by_consumer:
                    raise ValueError(f"two handlers named {spec.consumer}")
                self.by_consumer[spec.consumer] = spec

    def owner(self, type_name: str) -> HandlerSpec:
        spec = self.owners.get(type_name)
        if spec is None:
            raise NoHandler(f"no module handles {type_name}")
        return spec

    def routes(self, envelope: Envelope) -> Sequence[Route]:
        """Where an asynchronous message goes: the consumer it names, its owner, or every
        subscriber."""
        if envelope.consumer is not None:
            spec = self.by_consumer.get(envelope.consumer)
            return ((spec.module, spec.consumer),) if spec is not None else ()
        type_name = envelope.type
        if type_name in self.owners:
            spec = self.owners[type_name]
            return ((spec.module, spec.consumer),)
        return tuple((s.module, s.consumer) for s in self.subscribers.get(type_name, ()))


@dataclass(frozen=True, slots=True)
class _Bound:
    spec: HandlerSpec
    plan: Plan
    database: Database | None
    invoke: Next


class _LocalQuery:
    """A query owned by a local module, asked without an envelope (ADR 0027): its handler, its
    bulkhead and its metrics cell resolved once; the handler awaited in the asker's task."""

    __slots__ = ("bulkhead", "cells", "consumer", "handle", "module", "observed", "type_name")

    def __init__(
        self,
        spec: HandlerSpec,
        handle: Callable[[Message], Awaitable[Any]],
        bulkhead: Bulkhead,
        observed: bool,
    ) -> None:
        self.module = spec.module
        self.consumer = spec.consumer
        self.type_name = spec.message_type.type_name()
        self.handle = handle
        self.bulkhead = bulkhead
        self.observed = observed  # the default middleware: count, time, log
        self.cells: dict[int, list[float]] = {}  # the metrics cell of each thread that asks

    def cell(self) -> list[float]:
        """This thread's `BUS_HANDLERS` cell for the query's consumer and type."""
        thread = get_ident()
        cell = self.cells.get(thread)
        if cell is None:
            cell = self.cells[thread] = metrics.BUS_HANDLERS.cell(self.consumer, self.type_name)
        return cell

    def failed(self, exc: Exception) -> HandlerFailed:
        """What `observe` and `Bus.answer` make of a handler's exception: a warning line in
        the query's context, the failed counter, the asker's HandlerFailed (or subclass)."""
        if self.observed:
            log_failed(self.module, self.consumer, self.type_name, context.current().causation_id, 1, exc)
        metrics.BUS_FAILED.labels(self.consumer, self.type_name).inc()
        return _failure_of(exc)(f"{self.consumer}: {exc!r}", error_type=type(exc).__name__)


@dataclass(frozen=True, slots=True)
class _Route:
    """Where `ask` sends one message type: its owner, the breaker of the owner's lane, and the
    local query path when it can take it. Resolved at the type's first ask."""

    spec: HandlerSpec
    breaker: CircuitBreaker
    local: bool
    query: _LocalQuery | None


class Bus:
    """send / ask / publish, and the Host that transports call back into."""

    def __init__(
        self,
        modules: Sequence[Module],
        transport: Transport,
        *,
        local: Iterable[str],
        databases: Mapping[str, Database],
        singletons: Mapping[type[Any], Any] | None = None,
        breakers: BreakerRegistry | None = None,
        retry: RetryPolicy | None = None,
        middleware: Sequence[Middleware] | None = None,
        default_timeout: float = 5.0,
    ) -> None:
        self.modules = {m.name: m for m in modules}
        self.router = Router(modules)
        self.transport = transport
        self.local = tuple(local)
        self.databases = dict(databases)
        self.breakers = breakers if breakers is not None else BreakerRegistry()
        self.retry = retry or RetryPolicy()
        self.middleware: tuple[Middleware, ...] = (observe,) if middleware is None else tuple(middleware)
        self.default_timeout = default_timeout
        self.relay = Relay(
            self.databases, self.router.routes, self._deliver, hand_over=getattr(transport, "hand_over", None)
        )
        self._singletons: dict[type[Any], Any] = {Bus: self, **(singletons or {})}
        self._bound: dict[str, _Bound] = {}
        self._injectors: dict[str, Injector] = {}
        self._reply_types: dict[str, Any] = {}
        self._breaker_cache: dict[str, CircuitBreaker] = {}
        self._started = False
        self._local_set = frozenset(self.local)
        self._local_requests = LocalRequests(self, answer=self._answer_own_ask)
        self._routes: dict[type[Message], _Route] = {}

    # -- lifecycle -------------------------------------------------------------------------

    def bind(self) -> None:
        """Plan every local handler's injection once; a missing provider fails here."""
        for name in self.local:
            module = self.modules[name]
            injector = self.injector_for(name)
            for spec in module.handlers:
                plan = injector.plan(spec.func, skip=1)
                if not spec.transactional and plan.needs_uow:
                    raise InjectionError(
                        f"{spec.consumer} is not transactional: it opens its own units of work"
                        " and cannot take a session or unit of work"
                    )
                self._bound[spec.consumer] = _Bound(
                    spec, plan, self.databases.get(name), self._chain(spec, plan)
                )
        self._routes.clear()

    def injector_for(self, module: str) -> Injector:
        """The module's injector; its singletons are built once and kept."""
        injector = self._injectors.get(module)
        if injector is None:
            descriptor = self.modules[module]
            singletons = dict(self._singletons)
            if module in self.databases:
                singletons[Database] = self.databases[module]  # the module's own database
            injector = Injector(singletons, descriptor.providers, descriptor.singletons)
            self._injectors[module] = injector
        return injector

    def provide(self, kind: type[Any], value: Any) -> None:
        """Add a singleton (before start)."""
        self._singletons[kind] = value

    async def start(self) -> None:
        if not self._bound:
            self.bind()
        await self.transport.start(self, self.local)
        await self.relay.start()
        self._started = True

    async def stop(self) -> None:
        if self._started:
            await self.relay.stop()
            await self.transport.stop()
            self._started = False

    # -- the API ---------------------------------------------------------------------------

    async def ask(self, message: Message, *, timeout: float | None = None) -> Any:
        """Request/reply to the message's owner through its module's circuit breaker for that
        kind of message (`module:<name>:queries` or `module:<name>:commands`), so a failing
        command path leaves the module's reads up. Only the module's own failures count: a
        timeout, or a HandlerFailed that is not a DependencyFailed or an InputRefused.

        A query of a local module, with tracing off and the default middleware, takes the lean
        path (ADR 0027): no envelope, its handler awaited in the asker's task, the timeout
        armed only if the handler suspends."""
        route = self._routes.get(type(message))
        if route is None:
            route = self._route(type(message))
        breaker = route.breaker
        if not breaker.try_acquire():
            raise breaker.rejection()
        query = route.query
        if query is None or tracing.state.tracer is not None or not query.bulkhead.try_enter():
            return await self._ask(route, message, breaker, timeout)
        started = time.perf_counter()
        token = context.enter(context.ask_context(context.current()))
        module = enter_module(query.module)
        try:
            reply = await _run_query(query, message, timeout or self.default_timeout, started)
            elapsed = time.perf_counter() - started
            if query.observed:
                cell = query.cells.get(get_ident())
                metrics.count(query.cell() if cell is None else cell, elapsed)
                if _debug.enabled:
                    log_handled(
                        query.module, query.consumer, query.type_name, context.current().causation_id, elapsed
                    )
        except HandlerFailed as exc:
            if exc.fault == "module":
                breaker.on_error(time.perf_counter() - started, exc)
            else:
                breaker.release_permission()
            raise
        except AskTimeout as exc:  # the query's own timeout (a handler's exceptions are HandlerFailed)
            breaker.on_error(time.perf_counter() - started, exc)
            raise
        except BaseException:  # cancelled by the asker: says nothing about the module
            breaker.release_permission()
            raise
        finally:
            leave_module(module)
            context.leave(token)
            query.bulkhead.leave()
        breaker.on_success(elapsed)
        return reply

    def _route(self, kind: type[Message]) -> _Route:
        spec = self.router.owner(kind.type_name())
        lane = "queries" if issubclass(kind, Query) else "commands"
        breaker = self._breaker_cache.get(f"{spec.module}:{lane}")
        if breaker is None:
            breaker = self._breaker_cache[f"{spec.module}:{lane}"] = self.breakers.get(
                f"module:{spec.module}:{lane}"
            )
        local = spec.module in self._local_set
        query: _LocalQuery | None = None
        bound = self._bound.get(spec.consumer)
        plain_middleware = all(mw is observe for mw in self.middleware) and len(self.middleware) <= 1
        if (
            local
            and lane == "queries"
            and bound is not None
            and plain_middleware
            and not bound.plan.needs_envelope
            and (bound.database is not None or not bound.plan.needs_uow)
        ):
            query = _LocalQuery(
                spec,
                _query_handle(bound),
                self._local_requests.bulkhead(spec.module, True),
                observed=bool(self.middleware),
            )
        route = self._routes[kind] = _Route(spec, breaker, local, query)
        return route

    async def _ask(
        self, route: _Route, message: Message, breaker: CircuitBreaker, timeout: float | None
    ) -> Any:
        """An ask with an envelope: to another process, or with tracing on, or through
        middleware the lean path does not know, or waiting for a slot."""
        spec = route.spec
        local = route.local
        span: tracing.Span | None = None
        if tracing.state.tracer is None:
            envelope = self._envelope(message, consumer=spec.consumer, encode_body=not local)
        else:  # a producer span for the whole request/reply; the handler's span is its child
            span = _producer_span("ask", message, spec.module)
            traceparent = tracing.traceparent_of(span)
            envelope = self._envelope(
                message, consumer=spec.consumer, encode_body=not local, traceparent=traceparent
            )
        started = time.monotonic()
        try:
            if local:
                reply = await self._local_requests.request(
                    spec.module, envelope, timeout=timeout or self.default_timeout, message=message
                )
            else:
                reply = await self.transport.request(
                    spec.module, envelope, timeout=timeout or self.default_timeout
                )
                reply = coerce_reply(reply, self._reply_type(spec))
        except BaseException as exc:
            if isinstance(exc, AskTimeout) or (isinstance(exc, HandlerFailed) and exc.fault == "module"):
                breaker.on_error(time.monotonic() - started, exc)
            else:  # says nothing about the module: no count, and a half-open probe slot back
                breaker.release_permission()
            if span is not None:
                tracing.end(span, exc)
            raise
        breaker.on_success(time.monotonic() - started)
        if span is not None:
            span.end()
        return reply

    def _reply_type(self, spec: HandlerSpec) -> Any:
        if spec.consumer not in self._reply_types:
            self._reply_types[spec.consumer] = plain_reply_type(spec.func)
        return self._reply_types[spec.consumer]

    async def send(self, command: Command, *, message_id: uuid.UUID | None = None) -> uuid.UUID:
        """Hand a command to its owner asynchronously, through the current outbox."""
        self.router.owner(type(command).type_name())
        return await self._via_outbox(command, message_id)

    async def publish(self, event: Event, *, message_id: uuid.UUID | None = None) -> uuid.UUID:
        """Fan an event out to every subscriber, through the current outbox."""
        return await self._via_outbox(event, message_id)

    async def _via_outbox(self, message: Message, message_id: uuid.UUID | None) -> uuid.UUID:
        uow = current_unit_of_work()
        if uow is None:
            raise NoUnitOfWork(f"{type(message).__name__} must be sent inside a unit of work")
        if tracing.state.tracer is None:
            envelope = self._envelope(message, message_id=message_id, sender=uow.database.module)
            await write_outbox(uow, envelope, self.relay)
            return envelope.message_id
        # The producer span ends with the write; the envelope (and so the outbox row) carries its
        # traceparent, so the handlers' spans are its children whenever the row is relayed.
        operation = "send" if isinstance(message, Command) else "publish"
        owner = self.router.owners.get(type(message).type_name())
        span = _producer_span(operation, message, owner.module if owner else None)
        error: BaseException | None = None
        try:
            envelope = self._envelope(
                message,
                message_id=message_id,
                sender=uow.database.module,
                traceparent=tracing.traceparent_of(span),
            )
            span.set_attribute("messaging.message.id", str(envelope.message_id))
            await write_outbox(uow, envelope, self.relay)
        except BaseException as exc:
            error = exc
            raise
        finally:
            tracing.end(span, error)
        return envelope.message_id

    def _envelope(
        self,
        message: Message,
        *,
        message_id: uuid.UUID | None = None,
        consumer: str | None = None,
        sender: str | None = None,
        encode_body: bool = True,
        traceparent: str | None = None,
    ) -> Envelope:
        """A new envelope in the current context; `traceparent`: the producer span's (tracing
        on), else a fresh span id in the current trace."""
        ctx = context.current()
        return new_envelope(
            message,
            message_id=message_id,
            correlation_id=ctx.correlation_id,
            causation_id=ctx.causation_id,
            traceparent=traceparent or context.child_traceparent(ctx.traceparent),
            sender=sender,
            consumer=consumer,
            encode_body=encode_body,
            request_id=ctx.request_id,
        )

    async def _deliver(self, queue: str, envelope: Envelope) -> Awaitable[None]:
        return await self.transport.deliver(queue, envelope)

    # -- Host: what transports call --------------------------------------------------------

    async def answer(self, queue: str, envelope: Envelope, message: Message | None = None) -> Any:
        return await self._answered(queue, envelope, message, once=False)

    async def _answer_own_ask(self, queue: str, envelope: Envelope, message: Message | None) -> Any:
        """An ask this bus made and hands to its local handler itself: the envelope was made
        for this ask and is handed over once, so the inbox has nothing to claim."""
        return await self._answered(queue, envelope, message, once=True)

    async def _answered(self, queue: str, envelope: Envelope, message: Message | None, *, once: bool) -> Any:
        bound = self._lookup(envelope)
        if message is None:
            message = decode_body(envelope.type, envelope.body)
        try:
            return await bound.invoke(Call(queue, bound.spec.consumer, envelope, message, once=once))
        except Exception as exc:
            metrics.BUS_FAILED.labels(bound.spec.consumer, envelope.type).inc()
            failed = _failure_of(exc)
            raise failed(f"{bound.spec.consumer}: {exc!r}", error_type=type(exc).__name__) from exc

    async def process(self, queue: str, envelope: Envelope) -> Result:
        try:
            bound = self._lookup(envelope)
            message = decode_body(envelope.type, envelope.body)
            await bound.invoke(Call(queue, bound.spec.consumer, envelope, message, replies=False))
            return Result(Outcome.DONE)
        except Exception as exc:
            token, module = context.enter(context.of_envelope(envelope, handling=True)), enter_module(queue)
            try:
                return await self._failed(queue, envelope, exc)
            finally:
                leave_module(module)
                context.leave(token)

    async def _failed(self, queue: str, envelope: Envelope, exc: Exception) -> Result:
        """Count a failed delivery; schedule it again, or dead-letter it after the last attempt."""
        consumer = envelope.consumer or "?"
        metrics.BUS_FAILED.labels(consumer, envelope.type).inc()
        if self.retry.should_retry(envelope.attempt):
            # A dependency behind an open breaker: come back when it takes calls again, so that
            # an outage shorter than the breaker's waits does not dead-letter anything.
            delay = max(self.retry.delay(envelope.attempt), _breaker_wait(exc))
            metrics.BUS_RETRIED.labels(consumer, envelope.type).inc()
            log.warning(
                "bus.retry",
                consumer=consumer,
                type=envelope.type,
                attempt=envelope.attempt,
                delay=round(delay, 4),
                error=repr(exc),
            )
            return Result(Outcome.RETRY, delay)
        database = self.databases.get(queue)
        if database is None:
            raise exc
        entry = await inbox.bury(database, queue, envelope, "".join(traceback.format_exception(exc)))
        metrics.BUS_DEAD.labels(consumer, envelope.type).inc()
        log.error(
            "bus.dead_lettered",
            consumer=consumer,
            type=envelope.type,
            attempts=envelope.attempt,
            dead_letter_id=str(entry),
            error=repr(exc),
        )
        return Result(Outcome.DEAD)

    def _lookup(self, envelope: Envelope) -> _Bound:
        consumer = envelope.consumer or self.router.owner(envelope.type).consumer
        bound = self._bound.get(consumer)
        if bound is None:
            raise NoHandler(f"{consumer} is not a local handler")
        return bound

    # -- handler invocation ----------------------------------------------------------------

    def _chain(self, spec: HandlerSpec, plan: Plan) -> Next:
        plain = plain_reply_type(spec.func)
        # A non-transactional handler is idempotent by its own key and opens its own units of work.
        idempotent = spec.transactional and issubclass(spec.message_type, (Command, Event))
        database = self.databases.get(spec.module)

        async def run(call: Call) -> Any:
            if not idempotent and not plan.needs_uow:
                return await spec.func(call.message, **plan.arguments(Scope(envelope=call.envelope)))
            if database is None:
                raise RuntimeError(f"{spec.module} has no database")
            # A delivery (sent, published, redriven), or a request a transport hands over, may
            # come again with the same message id: the inbox claims it first. A local ask this
            # bus made hands its new envelope over once: nothing to claim.
            claims = idempotent and not call.once
            async with unit_of_work(database, write=idempotent) as uow:
                if claims:
                    first, stored = await inbox.claim(uow, call.consumer, call.envelope.message_id)
                    if not first:
                        metrics.BUS_DUPLICATES.labels(call.consumer).inc()
                        return coerce_reply(_decode_reply(stored), plain)
                result = await spec.func(
                    call.message, **plan.arguments(Scope(uow=uow, envelope=call.envelope))
                )
                if claims and call.replies:
                    reply = _encode_reply(result)
                    if reply is not None:
                        await inbox.keep_reply(uow, call.consumer, call.envelope.message_id, reply)
                return result

        invoke: Next = run
        for mw in reversed((_context_middleware, *self.middleware)):
            invoke = _wrap(mw, invoke)
        return invoke


def _query_handle(bound: _Bound) -> Callable[[Message], Awaitable[Any]]:
    """The handler of a local query as a one-argument coroutine function (what `_chain`'s `run`
    does for a query: no inbox; a read-only unit of work if it takes the database)."""
    func, plan, database = bound.spec.func, bound.plan, bound.database
    if not plan.needs_uow:
        if not plan.resolvers:
            return func
        if plan.static:  # singletons only (the bus, the module's database ...): resolved once
            fixed = plan.arguments(Scope())
            return lambda message: func(message, **fixed)
        arguments = plan.arguments

        def call(message: Message) -> Awaitable[Any]:
            return func(message, **arguments(Scope()))

        return call
    assert database is not None

    async def run(message: Message) -> Any:
        async with unit_of_work(database, write=False) as uow:
            return await func(message, **plan.arguments(Scope(uow=uow)))

    return run


@types.coroutine
def _run_query(
    query: _LocalQuery, message: Message, timeout: float, started: float
) -> Generator[Any, Any, Any]:
    """Run a local query's handler in the asker's task (ADR 0027). A handler that answers
    without suspending (a read on the loop's SQLite connection) arms no timer; one that
    suspends is cancelled at `started + timeout`, as `LocalRequests` would, and the asker gets
    AskTimeout. The handler's own exceptions come out as HandlerFailed (`_LocalQuery.failed`)."""
    coro: Any = query.handle(message)  # a coroutine: driven by hand below
    try:
        signal = coro.send(None)
    except StopIteration as done:
        return done.value
    except Exception as exc:
        raise query.failed(exc) from exc
    deadline = Deadline(max(0.0, timeout - (time.perf_counter() - started)))
    try:
        while True:  # what `await coro` does, by hand: the coroutine has started already
            try:
                value = yield signal
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as thrown:
                signal = coro.throw(thrown)
            else:
                signal = coro.send(value)
    except StopIteration as done:
        return done.value
    except asyncio.CancelledError:
        if deadline.expired():
            raise AskTimeout(f"no reply from {query.module} to {query.type_name} within {timeout}s") from None
        raise
    except Exception as exc:
        raise query.failed(exc) from exc
    finally:
        deadline.cancel()


_INPUT_ERRORS = (ValueError, TypeError, LookupError, msgspec.ValidationError)


def _failure_of(exc: BaseException) -> type[HandlerFailed]:
    """Whose fault a handler's exception is (see shop.bus.errors)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (DependencyFailure, CircuitOpenError, HandlerFailed, AskTimeout)):
            return DependencyFailed
        current = current.__cause__ or current.__context__
    return InputRefused if isinstance(exc, _INPUT_ERRORS) else HandlerFailed


def _breaker_wait(exc: BaseException) -> float:
    """The wait of an open breaker that caused `exc` (anywhere in its chain), else 0."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, CircuitOpenError) and current.retry_after is not None:
            return current.retry_after
        current = current.__cause__ or current.__context__
    return 0.0


def _wrap(mw: Middleware, nxt: Next) -> Next:
    async def call(c: Call) -> Any:
        return await mw(c, nxt)

    return call


async def _context_middleware(call: Call, nxt: Next) -> Any:
    """Handlers run in the context of the message (its trace, correlation, cause and request)
    and log as its module."""
    if tracing.state.tracer is not None:
        return await _traced_handling(call, nxt)
    token, module = (
        context.enter(context.of_envelope(call.envelope, handling=True)),
        enter_module(call.module),
    )
    try:
        return await nxt(call)
    finally:
        leave_module(module)
        context.leave(token)


async def _traced_handling(call: Call, nxt: Next) -> Any:
    """`_context_middleware` with tracing on: the handler runs in a CONSUMER span, current while
    it runs, whose parent is the envelope's traceparent -- the producer span, however late or
    how often the message is delivered (relayed after commit, swept after a restart, retried)."""
    env = call.envelope
    # Few attributes: the SDK checks and copies each one (a few us apiece on a slow vCPU).
    span = tracing.start(
        f"handle {env.type}",
        tracing.SpanKind.CONSUMER,
        env.traceparent,
        {
            "shop.consumer": call.consumer,
            "messaging.message.id": str(env.message_id),
            "shop.attempt": env.attempt,
        },
    )
    ctx = dataclasses.replace(
        context.of_envelope(env, handling=True), traceparent=tracing.traceparent_of(span)
    )
    token, module = context.enter(ctx), enter_module(call.module)
    otel_token = tracing.attach(span)
    error: BaseException | None = None
    try:
        return await nxt(call)
    except BaseException as exc:
        error = exc
        raise
    finally:
        tracing.detach(otel_token)
        leave_module(module)
        context.leave(token)
        tracing.end(span, error)


def _producer_span(operation: str, message: Message, destination: str | None) -> tracing.Span:
    """A PRODUCER span for `ask`, `send` or `publish`, child of the current context's span,
    named after the operation and the message type; the destination module as its attribute."""
    attributes = None if destination is None else {"messaging.destination.name": destination}
    name = f"{operation} {type(message).type_name()}"
    return tracing.start(name, tracing.SpanKind.PRODUCER, context.current().traceparent, attributes)


class _ReplyBox(msgspec.Struct, frozen=True):
    type: str | None
    body: bytes | None


def _encode_reply(result: Any) -> bytes | None:
    if result is None:
        return None
    if isinstance(result, Message):
        return encode(_ReplyBox(type(result).type_name(), encode(result)))
    return encode(_ReplyBox(None, encode(result)))


def plain_reply_type(func: Callable[..., Any]) -> Any:
    """The non-message part of a handler's return annotation (e.g. `AddressView | None` of
    `-> AddressView | None`, nothing for `-> StockReserved | StockUnavailable`): what a reply
    that crossed a process boundary, or was replayed from the inbox, is converted back into.
    Messages carry their type name on the wire and need no hint."""
    try:
        hint = typing.get_type_hints(func).get("return")
    except (NameError, TypeError):
        return None
    if hint is None or hint is type(None):
        return None
    origin = typing.get_origin(hint)
    members = typing.get_args(hint) if origin in (typing.Union, types.UnionType) else (hint,)
    plain = [
        m for m in members if m is not type(None) and not (isinstance(m, type) and issubclass(m, Message))
    ]
    if not plain:
        return None
    union = plain[0] if len(plain) == 1 else typing.Union[tuple(plain)]  # noqa: UP007
    return union | None


def coerce_reply(result: Any, plain: Any) -> Any:
    """A decoded reply as the handler returned it (structs, tuples), given its plain type."""
    if plain is None or result is None or isinstance(result, Message):
        return result
    return msgspec.convert(result, plain, strict=False)


def _decode_reply(data: bytes | None) -> Any:
    if data is None:
        return None
    box = msgspec.msgpack.decode(data, type=_ReplyBox)
    if box.body is None:
        return None
    if box.type is not None:
        return decode_body(box.type, box.body)
    return msgspec.msgpack.decode(box.body)
