"""The gateway middleware every HTTP entry point runs behind (pure ASGI, one pass).

Per request: a request id (echoed if the client sent a sane one), the W3C trace context (with
tracing on, a SERVER span that continues the caller's `traceparent`), the bearer token verified
once, the rate limit (per token subject, else per peer address; forwarding headers are not
trusted), an access log line and the HTTP metrics.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import msgspec

from shop.bus import context
from shop.gateway.ratelimit import RateLimiter
from shop.observability import logging as shop_logging
from shop.observability import metrics, tracing
from shop.security.guards import AUTH_ERROR_KEY, PRINCIPAL_KEY
from shop.security.tokens import InvalidToken, TokenVerifier
from shop.settings import RateLimit

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
UNLIMITED_PATHS = frozenset({"/health", "/ready", "/metrics"})
# Probes and scrapes: no server span (a trace every few seconds per instance, about nothing).
UNTRACED_PATHS = UNLIMITED_PATHS


class GatewayMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        verifier: TokenVerifier,
        limiter: RateLimiter | None,
        rate_limit: RateLimit,
        service: str = "shop",
    ) -> None:
        self.app = app
        self.verifier = verifier
        self.limiter = limiter
        self.rate_limit = rate_limit
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id, incoming, authorization = _read_headers(scope)
        correlation_id = context.new_id()  # names the request in logs; not a secret (ADR 0027)
        if request_id is None or not _REQUEST_ID.match(request_id):
            request_id = correlation_id.hex  # one random id for both: they name the same request
        parent = incoming if incoming is not None and context.parse_traceparent(incoming) else None
        path = scope["path"]
        span: tracing.Span | None = None
        otel_token: object = None
        if tracing.state.tracer is None or path in UNTRACED_PATHS:
            traceparent = context.child_traceparent(parent)
        else:  # a SERVER span continuing the caller's trace; current for the whole request
            span = _start_server_span(scope, parent, request_id)
            traceparent = tracing.traceparent_of(span)
            otel_token = tracing.attach(span)
        token = context.enter(
            context.MessageContext(
                correlation_id=correlation_id, traceparent=traceparent, request_id=request_id
            )
        )
        status_holder = [500]
        rid = request_id.encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder[0] = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", rid)]
            await send(message)

        try:
            subject = self._authenticate(scope, authorization) if authorization else None
            if self.limiter is not None and path not in UNLIMITED_PATHS:
                key = subject or _peer(scope)
                retry_after = await self.limiter.check("api", key, self.rate_limit)
                if retry_after is not None:
                    metrics.RATE_LIMITED.labels("api").inc()
                    await _too_many(send_with_id, retry_after)
                    return
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = _route_of(scope)
            status = status_holder[0]
            method = method_label(scope["method"])
            metrics.observe_http(method, route, status, elapsed)
            shop_logging.access(self.service, scope["method"], path, route, status, round(elapsed * 1000, 3))
            context.leave(token)
            if span is not None:
                _end_server_span(span, otel_token, method, route, status)

    def _authenticate(self, scope: Scope, authorization: str) -> str | None:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            scope[AUTH_ERROR_KEY] = "expected 'Authorization: Bearer <token>'"
            return None
        try:
            principal = self.verifier.verify(credentials.strip())
        except InvalidToken as exc:
            scope[AUTH_ERROR_KEY] = str(exc)
            return None
        scope[PRINCIPAL_KEY] = principal
        return f"sub:{principal.user_id}"


def _start_server_span(scope: Scope, parent: str | None, request_id: str) -> tracing.Span:
    return tracing.start(
        method_label(scope["method"]),
        tracing.SpanKind.SERVER,
        parent,
        {
            "http.request.method": scope["method"],
            "url.path": scope["path"],
            "url.scheme": str(scope.get("scheme", "http")),
            "shop.request_id": request_id,
        },
    )


def _end_server_span(span: tracing.Span, otel_token: object, method: str, route: str, status: int) -> None:
    tracing.detach(otel_token)
    if route != "unmatched":
        span.update_name(f"{method} {route}")
        span.set_attribute("http.route", route)
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(tracing.Status(tracing.StatusCode.ERROR))
    span.end()


_WANTED = frozenset({b"x-request-id", b"traceparent", b"authorization"})


def _read_headers(scope: Scope) -> tuple[str | None, str | None, str | None]:
    """The three request headers the gateway reads: X-Request-ID, traceparent, Authorization
    (one pass over the headers; ASGI servers give lower-case names, mixed case is accepted)."""
    request_id = traceparent = authorization = None
    for name, value in scope.get("headers", ()):
        if name not in _WANTED:
            name = name.lower()
            if name not in _WANTED:
                continue
        if name == b"x-request-id":
            request_id = value.decode("latin-1")
        elif name == b"traceparent":
            traceparent = value.decode("latin-1")
        else:
            authorization = value.decode("latin-1")
    return request_id, traceparent, authorization


KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    """The request method as a metric label: a client picks it, so anything but the standard
    methods the API could serve is "OTHER" (bounded label cardinality)."""
    return method if method in KNOWN_METHODS else "OTHER"


def _peer(scope: Scope) -> str:
    client = scope.get("client")
    return f"ip:{client[0]}" if client else "ip:unknown"


def _route_of(scope: Scope) -> str:
    """The matched route's template (bounded label cardinality), set by Litestar's router."""
    return str(scope.get("path_template") or "unmatched")


_PROBLEM_429 = msgspec.json.encode(
    {
        "type": "https://shop.example/problems/too-many-requests",
        "title": "Too Many Requests",
        "status": 429,
        "detail": "rate limit exceeded; retry later",
    }
)


async def _too_many(send: Send, retry_after: float) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 429,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"retry-after", str(int(retry_after)).encode()),
                (b"content-length", str(len(_PROBLEM_429)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": _PROBLEM_429})
