"""Routing, load balancing, failover and the HTTP proxy of the standalone gateway (raw ASGI).

* Routing: the longest registered route prefix that matches the path (`/api/v1/products` serves
  `/api/v1/products/{id}/stock`) names the module. Prefixes are remembered once seen (and seeded
  with the known modules' routes), so a module whose every instance is gone answers 503, not 404.
* Balancing: round robin over the module's healthy instances, skipping those whose breaker
  (`upstream:<instance_id>`, one per process) does not permit a call.
* Failover: a request that never reached an instance (connect error or timeout, pool timeout)
  goes to the next instance whatever its method -- nothing was sent. An instance that refuses
  the connection is gone: its breaker is opened at once (no more traffic until it probes), the
  registry is read again (once, for every request that met it) and the instances it then lists
  are tried too -- so a replacement that registered since the last refresh takes the request.
  A request that may have been processed (read timeout, broken connection, a 502/503/504
  answer) goes to the next instance only if it is idempotent: GET, HEAD, OPTIONS, PUT, DELETE,
  or a POST with an `Idempotency-Key`. At most `retries` further instances are tried.
* Breakers count transport errors and 502/504 answers as failures; any other answer (503
  included: it is the service telling that *its* dependency is down) as a success.
* No instance could be tried: 503 + Retry-After. Every tried instance failed: 504 after a
  timeout, 502 otherwise (both + Retry-After), unless an instance answered: that answer is
  relayed as it is.

Request headers are forwarded minus hop-by-hop ones, with the gateway's `X-Request-ID` and
`traceparent` (the middleware's context; with tracing on, the CLIENT span of each attempt),
`X-Forwarded-For` (the peer appended), `-Proto` and `-Host`. The request body is read whole,
bounded: it is what makes a retry possible. Over `max_body_bytes` (a declared Content-Length is
checked first) it is 413; not received within `body_timeout_s`, 408; a client that disconnects
before its body is complete gets nothing forwarded. Responses up to `buffer_response_bytes` with a
Content-Length are read whole and sent in one message; others are streamed.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import msgspec

from shop.bus import context
from shop.bus.breaker import BreakerRegistry, CircuitBreaker
from shop.discovery.base import InstanceView, Registry
from shop.gateway.upstream import (
    Upstream,
    UpstreamConnectError,
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
    UpstreamTimeout,
)
from shop.observability import metrics, tracing
from shop.observability.loggers import get_logger

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = get_logger("shop.gateway")

UPSTREAM_BREAKER_PREFIX = "upstream:"
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Set by the gateway itself, or by the client from the body and URL.
_NOT_FORWARDED = HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"expect",
    b"x-request-id",
    b"traceparent",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
}
# The middleware adds the response's X-Request-ID; the front server its own Server/Date.
_NOT_RELAYED = HOP_BY_HOP | {b"x-request-id", b"server", b"date"}
_RETRYABLE_STATUS = frozenset({502, 503, 504})
REFRESH_NOW_TIMEOUT_S = 0.5
_FAILURE_STATUS = frozenset({502, 504})


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    connect_timeout_s: float = 1.0
    read_timeout_s: float = 15.0
    pool_timeout_s: float = 2.0
    retries: int = 2  # further instances tried after the first, where a retry is safe
    retry_after_s: int = 5
    max_body_bytes: int = 1024 * 1024
    body_timeout_s: float = 10.0
    buffer_response_bytes: int = 256 * 1024
    max_connections_per_origin: int = 256
    # Below the upstream servers' own keep-alive timeouts (uvicorn's 5 s), so the gateway closes
    # an idle connection before the server does: fewer requests written into a closing socket.
    keepalive_expiry_s: float = 2.0
    refresh_interval_s: float = 1.0

    def upstream_pool(self) -> UpstreamPool:
        return UpstreamPool(
            connect_timeout_s=self.connect_timeout_s,
            read_timeout_s=self.read_timeout_s,
            pool_timeout_s=self.pool_timeout_s,
            max_connections_per_origin=self.max_connections_per_origin,
            keepalive_expiry_s=self.keepalive_expiry_s,
        )


class RouteTable:
    """Prefix -> module (longest match wins) and module -> healthy instances, one snapshot."""

    def __init__(self, claims: Mapping[str, str], views: Sequence[InstanceView]) -> None:
        self.claims = dict(claims)
        self.views = list(views)
        self._prefixes = sorted(self.claims.items(), key=lambda item: len(item[0]), reverse=True)
        healthy: dict[str, list[InstanceView]] = {}
        for view in self.views:
            if view.healthy:
                healthy.setdefault(view.module, []).append(view)
        self.healthy = healthy

    def match(self, path: str) -> tuple[str, str] | None:
        """(prefix, module) of the longest prefix that is the path or a parent of it."""
        for prefix, module in self._prefixes:
            if path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/"):
                return prefix, module
        return None

    @property
    def modules(self) -> list[str]:
        return sorted(set(self.claims.values()) | {v.module for v in self.views})


class UpstreamStatusError(Exception):
    """An instance answered 502 or 504: recorded as a failure by its breaker."""

    def __init__(self, status: int) -> None:
        super().__init__(f"upstream answered {status}")
        self.status = status


class Proxy:
    def __init__(
        self,
        registry: Registry,
        breakers: BreakerRegistry,
        *,
        config: ProxyConfig | None = None,
        upstream: Upstream | None = None,
        known_routes: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        self.registry = registry
        self.breakers = breakers
        self.config = config or ProxyConfig()
        # One client (keep-alive pools per instance) per gateway; HTTP/1.1 to the instances.
        self.upstream: Upstream = upstream if upstream is not None else self.config.upstream_pool()
        self._claims: dict[str, str] = {}
        for module, prefixes in sorted((known_routes or {}).items()):
            for prefix in prefixes:
                self._claims.setdefault(prefix.rstrip("/"), module)
        self.table = RouteTable(self._claims, [])
        self._turns: dict[str, itertools.count[int]] = {}
        self._refresh_task: asyncio.Task[None] | None = None
        self._refresh_failing = False
        self._refresh_now: asyncio.Task[list[InstanceView]] | None = None
        self.refreshed_at: float | None = None

    # -- lifecycle and the registry snapshot ---------------------------------------------------

    async def start(self) -> None:
        try:
            await asyncio.wait_for(self.refresh(), max(1.0, self.config.refresh_interval_s * 2))
        except Exception as exc:  # start anyway: the loop keeps trying, /ready tells
            log.warning("gateway.registry_unavailable", error=repr(exc))
            self._refresh_failing = True
        self._refresh_task = asyncio.create_task(self._refresh_loop(), name="gateway-registry-refresh")

    async def stop(self) -> None:
        if self._refresh_task is not None:
            self._refresh_task.cancel()
            await asyncio.gather(self._refresh_task, return_exceptions=True)
            self._refresh_task = None
        await self.upstream.aclose()

    async def refresh(self) -> list[InstanceView]:
        """Read the registry now and route by what it says."""
        views = await self.registry.instances()
        self.apply(views)
        return views

    def apply(self, views: Sequence[InstanceView]) -> None:
        for view in views:
            for prefix in view.routes:
                # A prefix stays with the module that claimed it first (seeded by known routes).
                self._claims.setdefault(prefix.rstrip("/"), view.module)
        self.table = RouteTable(self._claims, views)
        self.refreshed_at = time.monotonic()
        counts: dict[tuple[str, str], int] = {}
        for module in self.table.modules:
            counts[(module, "true")] = counts[(module, "false")] = 0
        for view in views:
            counts[(view.module, "true" if view.healthy else "false")] += 1
        for (module, healthy), count in counts.items():
            metrics.REGISTRY_INSTANCES.labels(module, healthy).set(count)

    async def _refresh_loop(self) -> None:
        interval = self.config.refresh_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.wait_for(self.refresh(), max(1.0, interval * 2))
            except Exception as exc:  # keep routing by the last snapshot
                if not self._refresh_failing:
                    log.warning("gateway.registry_unavailable", error=repr(exc))
                self._refresh_failing = True
            else:
                if self._refresh_failing:
                    log.info("gateway.registry_recovered")
                self._refresh_failing = False

    async def refresh_now(self) -> None:
        """Read the registry again now, sharing one read among the requests that ask together;
        within a short bound (on failure, routing goes on by the last snapshot)."""
        if self._refresh_now is None or self._refresh_now.done():
            self._refresh_now = asyncio.create_task(self.refresh(), name="gateway-registry-refresh-now")
        try:
            await asyncio.wait_for(asyncio.shield(self._refresh_now), REFRESH_NOW_TIMEOUT_S)
        except Exception as exc:
            log.warning("gateway.registry_unavailable", error=repr(exc))

    def candidates(self, module: str) -> list[InstanceView]:
        """The module's healthy instances, rotated one step per request (round robin)."""
        pool = self.table.healthy.get(module)
        if not pool:
            return []
        if len(pool) == 1:
            return pool
        turn = self._turns.get(module)
        if turn is None:
            turn = self._turns[module] = itertools.count()
        start = next(turn) % len(pool)
        return pool[start:] + pool[:start]

    # -- the proxy -----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = self.table.match(scope["path"])
        if match is None:
            await send_problem(send, 404, "Not Found")
            return
        prefix, module = match
        scope["path_template"] = prefix  # the metrics' route label: bounded by the prefixes
        body = await _read_body(scope, receive, self.config.max_body_bytes, self.config.body_timeout_s)
        if isinstance(body, int):
            await send_problem(send, body, _BODY_PROBLEMS[body])
            return
        request = _forwarded(scope, module, body)
        candidates = self.candidates(module)
        request.pending = list(candidates)
        request.seen = {view.instance_id for view in candidates}
        while request.pending:
            view = request.pending.pop(0)
            breaker = self.breakers.get(UPSTREAM_BREAKER_PREFIX + view.instance_id)
            if not breaker.try_acquire():
                continue
            request.tried += 1
            step = await self._attempt(request, view, breaker, send)
            if step is _Step.ANSWERED:
                return
            if step is _Step.STOP:
                break
        await self._give_up(request, bool(candidates), send)

    async def _attempt(
        self, request: _Forwarded, view: InstanceView, breaker: CircuitBreaker, send: Send
    ) -> _Step:
        """Send the request to one instance through its breaker; relay its answer unless the
        answer is worth retrying on the next instance (then it is held in reserve)."""
        span = (
            _client_span(request.method, request.module, view.instance_id, view.url)
            if request.traced
            else None
        )
        sent = (
            request.headers
            if span is None
            else [*request.headers, (b"traceparent", tracing.traceparent_of(span).encode())]
        )
        failure: BaseException | None = None
        try:
            started = time.monotonic()
            try:
                response = await self.upstream.request(
                    view.url,
                    request.method,
                    request.target,
                    sent,
                    request.body,
                    idempotent=request.idempotent,
                )
            except UpstreamError as exc:
                breaker.on_error(time.monotonic() - started, exc)
                request.error = failure = exc
                if _refused(exc):  # the instance is gone: no more traffic; who replaced it?
                    breaker.force_open()
                    await self._replacements(request)
                log.warning(
                    "gateway.upstream_failed",
                    module=request.module,
                    instance=view.instance_id,
                    error=repr(exc),
                    sent=exc.sent,
                )
                retry = (request.idempotent or not exc.sent) and request.tried <= self.config.retries
                return _Step.NEXT if retry else _Step.STOP
            except BaseException as exc:  # cancelled (the client went away): not the instance's fault
                breaker.on_error(time.monotonic() - started, exc)
                failure = exc
                raise
            status = response.status
            if span is not None:
                span.set_attribute("http.response.status_code", status)
            if status in _FAILURE_STATUS:
                breaker.on_error(time.monotonic() - started, UpstreamStatusError(status))
            else:
                breaker.on_success(time.monotonic() - started)
            retryable = status in _RETRYABLE_STATUS and request.idempotent
            if retryable and request.tried <= self.config.retries and request.pending:
                request.held, request.error = await _hold(response), None
                return _Step.NEXT
            await self._relay(response, send)
            return _Step.ANSWERED
        finally:
            if span is not None:
                tracing.end(span, failure)

    async def _replacements(self, request: _Forwarded) -> None:
        """Read the registry again and queue the instances it lists that were not candidates."""
        await self.refresh_now()
        for fresh in self.candidates(request.module):
            if fresh.instance_id not in request.seen:
                request.seen.add(fresh.instance_id)
                request.pending.append(fresh)

    async def _give_up(self, request: _Forwarded, had_candidates: bool, send: Send) -> None:
        """No instance's answer was relayed: the 5xx held in reserve, else a problem saying why."""
        if request.held is not None:
            status, response_headers, content = request.held
            await send({"type": "http.response.start", "status": status, "headers": response_headers})
            await send({"type": "http.response.body", "body": content})
            return
        module, error, retry_after = request.module, request.error, self.config.retry_after_s
        if error is None:
            detail = (
                "no healthy instance" if not had_candidates else "every instance's circuit breaker is open"
            )
            await send_problem(send, 503, f"{module} is unavailable ({detail}); retry later", retry_after)
        elif not error.sent:
            detail = f"{module} is unavailable (no instance answered); retry later"
            await send_problem(send, 503, detail, retry_after)
        elif isinstance(error, UpstreamTimeout):
            await send_problem(send, 504, f"{module} did not answer in time; retry later", retry_after)
        else:
            await send_problem(send, 502, f"{module} failed to answer; retry later", retry_after)

    async def _relay(self, response: UpstreamResponse, send: Send) -> None:
        headers = _relayed_headers(response.headers)
        try:
            length = response.content_length
            if length is not None and length <= self.config.buffer_response_bytes:
                try:
                    content = await response.read()
                except UpstreamError as exc:
                    log.warning("gateway.upstream_body_failed", error=repr(exc))
                    await send_problem(send, 502, "the upstream answer was cut short; retry later", 1)
                    return
                await send({"type": "http.response.start", "status": response.status, "headers": headers})
                await send({"type": "http.response.body", "body": content})
                return
            await send({"type": "http.response.start", "status": response.status, "headers": headers})
            async for chunk in response.chunks():
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()


def _client_span(method: str, module: str, instance_id: str, url: str) -> tracing.Span:
    """A CLIENT span for one attempt at an instance, child of the request's SERVER span."""
    return tracing.start(
        method,
        tracing.SpanKind.CLIENT,
        context.current().traceparent,
        {
            "http.request.method": method,
            "server.address": url,
            "shop.module": module,
            "shop.instance_id": instance_id,
        },
    )


class _Step(enum.Enum):
    """What to do after one attempt."""

    ANSWERED = "answered"  # an answer was relayed to the client
    NEXT = "next"  # try the next instance
    STOP = "stop"  # no more attempts: give up


@dataclass(slots=True)
class _Forwarded:
    """One proxied request: what each attempt sends, and what the attempts left."""

    module: str
    method: str
    target: str
    headers: list[tuple[bytes, bytes]]
    body: bytes
    idempotent: bool
    traced: bool  # with tracing on, each attempt sends its own CLIENT span's traceparent
    tried: int = 0
    error: UpstreamError | None = None  # the last attempt's failure, if it failed
    held: tuple[int, list[tuple[bytes, bytes]], bytes] | None = None  # a 5xx kept in reserve
    pending: list[InstanceView] = field(default_factory=list)  # instances still to try, in order
    seen: set[str] = field(default_factory=set)  # instance ids already queued (tried or pending)


def _forwarded(scope: Scope, module: str, body: bytes) -> _Forwarded:
    method: str = scope["method"]
    traced = tracing.state.tracer is not None
    headers, idempotency_key = _upstream_headers(scope, traceparent=not traced)
    target = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
    if scope.get("query_string"):
        target = f"{target}?{scope['query_string'].decode('latin-1')}"
    idempotent = method in IDEMPOTENT_METHODS or (method == "POST" and bool(idempotency_key))
    return _Forwarded(module, method, target, headers, body, idempotent, traced)


async def _hold(response: UpstreamResponse) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
    """A retryable answer read and closed, to relay if no other instance answers better."""
    try:
        return (response.status, _relayed_headers(response.headers), await response.read())
    except UpstreamError:
        return None
    finally:
        await response.aclose()


def _upstream_headers(scope: Scope, *, traceparent: bool = True) -> tuple[list[tuple[bytes, bytes]], bool]:
    """The headers to forward, and whether the request carries an Idempotency-Key.
    `traceparent=False`: without the context's traceparent (the caller adds its span's)."""
    out: list[tuple[bytes, bytes]] = []
    forwarded_for: bytes | None = None
    host: bytes | None = None
    connection: bytes | None = None
    idempotency_key = False
    for raw_name, value in scope["headers"]:
        name = raw_name.lower()
        if name in _NOT_FORWARDED:
            if name == b"x-forwarded-for":
                forwarded_for = value if forwarded_for is None else forwarded_for + b", " + value
            elif name == b"host":
                host = value
            elif name == b"connection":
                connection = value
            continue
        if name == b"idempotency-key":
            idempotency_key = True
        out.append((name, value))
    if connection:  # headers the client named as hop-by-hop in Connection
        named = {token.strip().lower() for token in connection.split(b",")}
        out = [(n, v) for n, v in out if n not in named]
    ctx = context.current()
    if ctx.request_id:
        out.append((b"x-request-id", ctx.request_id.encode()))
    if traceparent and ctx.traceparent:
        out.append((b"traceparent", ctx.traceparent.encode()))
    client = scope.get("client")
    peer = (client[0] if client else "unknown").encode()
    out.append((b"x-forwarded-for", forwarded_for + b", " + peer if forwarded_for else peer))
    out.append((b"x-forwarded-proto", str(scope.get("scheme", "http")).encode()))
    if host:
        out.append((b"x-forwarded-host", host))
    return out, idempotency_key


def _relayed_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(name, value) for name, value in headers if name not in _NOT_RELAYED]


TOO_LARGE, TOO_SLOW, CUT_SHORT = 413, 408, 400
_BODY_PROBLEMS = {
    TOO_LARGE: "the request body is too large",
    TOO_SLOW: "the request body did not arrive in time",
    CUT_SHORT: "the request body was cut short (the client went away)",
}


def _refused(exc: UpstreamError) -> bool:
    """The instance refused the connection (or is unreachable): not a slow start, it is gone."""
    return isinstance(exc, UpstreamConnectError) and not isinstance(exc, UpstreamTimeout)


async def _read_body(scope: Scope, receive: Receive, limit: int, timeout_s: float) -> bytes | int:
    """The whole request body; or the status to answer instead: TOO_LARGE past `limit` bytes
    (a declared Content-Length is checked before reading), TOO_SLOW when it has not arrived
    within `timeout_s`, CUT_SHORT when the client disconnected first (nothing is forwarded)."""
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            try:
                if int(value) > limit:
                    return TOO_LARGE
            except ValueError:
                return CUT_SHORT
    parts: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return CUT_SHORT
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    return TOO_LARGE
                parts.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(parts)
    except TimeoutError:
        return TOO_SLOW


def problem_body(status: int, detail: str) -> bytes:
    phrase = HTTPStatus(status).phrase
    return msgspec.json.encode(
        {
            "type": f"https://shop.example/problems/{phrase.lower().replace(' ', '-')}",
            "title": phrase,
            "status": status,
            "detail": detail,
        }
    )


async def send_problem(send: Send, status: int, detail: str, retry_after: int | None = None) -> None:
    """An RFC 9457 problem, as `shop.gateway.problems.problem` writes it."""
    body = problem_body(status, detail)
    headers = [(b"content-type", b"application/problem+json"), (b"content-length", str(len(body)).encode())]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
