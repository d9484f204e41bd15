"""The standalone API gateway of the split deployment (`shop gateway`).

    app = build_gateway_app(settings, registry, verifier=..., limiter=..., breakers=...)
    # or, for an ASGI server's factory: "shop.gateway.gateway_app:create_gateway_app"

One ASGI app: the gateway middleware (request id, trace context, JWT verified once, rate limit,
access log, metrics) in front of a dispatcher. `/api/...` goes to the proxy (raw ASGI, no
framework on the hot path), except `/api/v1/services` and the dead letters; the rest --
`/health`, `/ready`, `/metrics`, `/schema/openapi.json` (the services' documents merged), the API
reference at `/schema`, the operator console at `/admin`, and any 404 -- to a small Litestar app.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import httpx
import msgspec
from litestar import Controller, Litestar, Response, get
from litestar.datastructures import State

from shop.bus.breaker import BreakerConfig, BreakerRegistry
from shop.console.console import console_router
from shop.console.reference import reference_handlers
from shop.discovery.base import Registry
from shop.discovery.factory import registry_for
from shop.gateway.fanout_deadletters import FanOutDeadLetterController
from shop.gateway.fanout_services import service_breakers
from shop.gateway.middleware import GatewayMiddleware
from shop.gateway.ops import OpsController
from shop.gateway.problems import EXCEPTION_HANDLERS, problem
from shop.gateway.proxy import (
    UPSTREAM_BREAKER_PREFIX,
    Proxy,
    ProxyConfig,
    Receive,
    Scope,
    Send,
)
from shop.gateway.ratelimit import RateLimiter, RedisRateLimitStore
from shop.gateway.upstream import HttpxUpstream, UpstreamError
from shop.observability import logging as shop_logging
from shop.observability import metrics, tracing
from shop.observability.logcontext import set_process_module
from shop.observability.loggers import get_logger
from shop.process import freeze_heap_after_start
from shop.security.keys import load_keys
from shop.security.tokens import TokenVerifier
from shop.settings import Settings
from shop.web.proxied import proxied

log = get_logger("shop.gateway")

# An instance that fails half of 10 calls (at least 5) is skipped for 10 s, then probed by 3.
UPSTREAM_BREAKER = BreakerConfig(
    failure_rate_threshold=50.0,
    sliding_window_size=10,
    minimum_number_of_calls=5,
    wait_duration_in_open_state=10.0,
    permitted_calls_in_half_open_state=3,
    slow_call_duration=30.0,
)
OPENAPI_CACHE_S = 30.0
OPENAPI_TIMEOUT_S = 2.0


class SchemaController(Controller):
    include_in_schema = False

    @get("/schema/openapi.json", summary="The OpenAPI document of every module behind the gateway")
    async def openapi(self, state: State) -> Response[Any]:
        gateway: Gateway = state["gateway"]
        document = await gateway.openapi()
        if document is None:
            return problem(
                503,
                "no instance answered with its OpenAPI document; retry later",
                headers={"Retry-After": str(gateway.proxy.config.retry_after_s)},
            )
        return Response(document, media_type="application/vnd.oai.openapi+json")


class Gateway:
    """The gateway ASGI app; `proxy` and `ops` are its two halves (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        *,
        verifier: TokenVerifier,
        limiter: RateLimiter | None,
        breakers: BreakerRegistry,
        http_client: httpx.AsyncClient | None = None,
        config: ProxyConfig | None = None,
        known_routes: Mapping[str, Iterable[str]] | None = None,
        on_shutdown: Sequence[Callable[[], Awaitable[None]]] = (),
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.breakers = breakers
        upstream = HttpxUpstream(http_client) if http_client is not None else None
        self.proxy = Proxy(registry, breakers, config=config, upstream=upstream, known_routes=known_routes)
        self._on_shutdown = list(on_shutdown)
        self._openapi: tuple[float, dict[str, Any]] | None = None
        self.ops = Litestar(
            route_handlers=[
                OpsController,
                SchemaController,
                FanOutDeadLetterController,
                *reference_handlers(),
                console_router(),
            ],
            lifespan=[self._lifespan],
            state=State(
                {
                    "gateway": self,
                    "ready_checks": {"registry": registry.ping},
                    "describe_services": self.describe_services,
                    "instances": self,
                }
            ),
            exception_handlers=EXCEPTION_HANDLERS,
            openapi_config=None,
            logging_config=None,
            debug=False,
        )
        self._ops_asgi: Any = self.ops  # Litestar's ASGI signature is narrower than a plain scope
        self.asgi = GatewayMiddleware(
            self._dispatch,
            verifier=verifier,
            limiter=limiter,
            rate_limit=settings.rate_limit,
            service="gateway",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.asgi(scope, receive, send)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if proxied(path):
                await self.proxy(scope, receive, send)
                return
        await self._ops_asgi(scope, receive, send)

    # -- lifecycle -------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Litestar) -> AsyncIterator[None]:
        async with self.running():
            freeze_heap_after_start()
            yield

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Gateway]:
        """Start the registry refresh and the upstream client; stop them (and `on_shutdown`)."""
        await self.proxy.start()
        metrics.on_scrape(f"gateway:{id(self)}", self._report)
        log.info("gateway.started", modules=self.proxy.table.modules)
        try:
            yield self
        finally:
            metrics.off_scrape(f"gateway:{id(self)}")
            await self.proxy.stop()
            for close in self._on_shutdown:
                try:
                    await close()
                except Exception as exc:
                    log.warning("gateway.shutdown_step_failed", error=repr(exc))
            log.info("gateway.stopped")

    # -- ops -------------------------------------------------------------------------------------

    async def _report(self) -> None:
        """At each scrape: the state of every breaker (one per upstream instance)."""
        for name, state in self.breakers.states().items():
            metrics.set_breaker_state(name, state)

    async def describe_services(self, *, authorization: str | None = None) -> dict[str, Any]:
        """`GET /api/v1/services`: the registry now (else the last snapshot), the gateway's own
        breakers (one per upstream instance) and, under `services`, each service's breakers
        (its modules' and its providers'), asked of one healthy instance per service with the
        admin's token: `{"<url>": {"breakers": {...}}}`, or `{"breakers": null, "error": ...}`
        for a service that did not answer."""
        try:
            views = await asyncio.wait_for(self.proxy.refresh(), OPENAPI_TIMEOUT_S)
        except Exception as exc:
            log.warning("gateway.registry_unavailable", error=repr(exc))
            views = self.proxy.table.views
        modules: dict[str, list[dict[str, object]]] = {m: [] for m in self.proxy.table.modules}
        for view in views:
            modules.setdefault(view.module, []).append(view.public())
        services = await service_breakers(self, authorization)
        return {"modules": modules, "breakers": self.breakers.states(), "services": services}

    def service_urls(self) -> list[str]:
        """One healthy instance URL per distinct service (a process serving several modules
        counts once)."""
        urls: dict[str, None] = {}
        for module in self.proxy.table.modules:
            for view in self.proxy.candidates(module)[:1]:
                urls.setdefault(view.url, None)
        return sorted(urls)

    async def call(
        self, url: str, method: str, path: str, headers: list[tuple[bytes, bytes]]
    ) -> tuple[int, bytes]:
        """One upstream request (for the gateway's own fan-out endpoints), in a CLIENT span."""
        idempotent = method == "GET"
        attributes = {"http.request.method": method, "server.address": url}
        with tracing.child_span(method, tracing.SpanKind.CLIENT, attributes) as span:
            if span is not None:
                headers = [*headers, (b"traceparent", tracing.traceparent_of(span).encode())]
            response = await self.proxy.upstream.request(
                url, method, path, headers, b"", idempotent=idempotent
            )
            try:
                if span is not None:
                    span.set_attribute("http.response.status_code", response.status)
                return response.status, await response.read()
            finally:
                await response.aclose()

    async def openapi(self) -> dict[str, Any] | None:
        """The modules' OpenAPI documents merged (one healthy instance asked per URL), cached."""
        now = time.monotonic()
        if self._openapi is not None and now - self._openapi[0] < OPENAPI_CACHE_S:
            return self._openapi[1]
        urls: dict[str, str] = {}  # url -> the first module served there
        for module in self.proxy.table.modules:
            for view in self.proxy.candidates(module)[:1]:
                urls.setdefault(view.url, module)
        documents = await asyncio.gather(*(self._fetch_openapi(url) for url in sorted(urls)))
        found = [d for d in documents if d is not None]
        if not found:
            return self._openapi[1] if self._openapi is not None else None
        merged = merge_openapi(found)
        if len(found) == len(urls):  # cache only a complete document
            self._openapi = (now, merged)
        return merged

    async def _fetch_openapi(self, url: str) -> dict[str, Any] | None:
        try:
            async with asyncio.timeout(OPENAPI_TIMEOUT_S):
                response = await self.proxy.upstream.request(
                    url,
                    "GET",
                    "/schema/openapi.json",
                    [(b"accept", b"application/json")],
                    b"",
                    idempotent=True,
                )
                try:
                    status, content = response.status, await response.read()
                finally:
                    await response.aclose()
            if status == 200:
                document = msgspec.json.decode(content)
                if isinstance(document, dict):
                    return document
            log.warning("gateway.openapi_unavailable", url=url, status=status)
        except (UpstreamError, TimeoutError, msgspec.DecodeError) as exc:
            log.warning("gateway.openapi_unavailable", url=url, error=repr(exc))
        return None


def merge_openapi(documents: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One document: paths, components and tags united (the first definition of a name wins)."""
    first = documents[0]
    merged: dict[str, Any] = {
        "openapi": first.get("openapi", "3.1.0"),
        "info": dict(first.get("info") or {"title": "Shop", "version": "1.0.0"}),
    }
    paths: dict[str, dict[str, Any]] = {}
    components: dict[str, dict[str, Any]] = {}
    tags: dict[str, Any] = {}
    for document in documents:
        for path, item in (document.get("paths") or {}).items():
            target = paths.setdefault(path, {})
            for method, operation in item.items():
                target.setdefault(method, operation)
        for section, entries in (document.get("components") or {}).items():
            if isinstance(entries, dict):
                bucket = components.setdefault(section, {})
                for name, value in entries.items():
                    bucket.setdefault(name, value)
        for tag in document.get("tags") or []:
            if isinstance(tag, dict) and "name" in tag:
                tags.setdefault(tag["name"], tag)
    security = next((d["security"] for d in documents if d.get("security")), None)
    if security is not None:  # the services share one scheme (bearer): how a token is sent
        merged["security"] = security
    merged["paths"] = dict(sorted(paths.items()))
    if components:
        merged["components"] = {k: dict(sorted(v.items())) for k, v in sorted(components.items())}
    if tags:
        merged["tags"] = [tags[name] for name in sorted(tags)]
    return merged


def build_gateway_app(
    settings: Settings,
    registry: Registry,
    *,
    verifier: TokenVerifier,
    limiter: RateLimiter | None,
    breakers: BreakerRegistry,
    http_client: httpx.AsyncClient | None = None,
    config: ProxyConfig | None = None,
    known_routes: Mapping[str, Iterable[str]] | None = None,
    on_shutdown: Sequence[Callable[[], Awaitable[None]]] = (),
) -> Gateway:
    """The gateway over `registry`. Its ASGI lifespan (or `async with app.running()`) starts the
    registry refresh; stopping closes the upstream connections, then runs `on_shutdown`.

    `http_client`: talk to the instances through this httpx client instead of the gateway's own
    pooled client (tests pass one with an `httpx.MockTransport`); the caller closes it."""
    # httpx logs every request at INFO: one line per proxied request on top of the access log.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return Gateway(
        settings,
        registry,
        verifier=verifier,
        limiter=limiter,
        breakers=breakers,
        http_client=http_client,
        config=config,
        known_routes=known_routes,
        on_shutdown=on_shutdown,
    )


def create_gateway_app(
    settings: Settings | None = None,
    *,
    service_urls: str | None = None,
    known_routes: Mapping[str, Sequence[str]] | None = None,
) -> Gateway:
    """`shop gateway`'s app factory: Redis registry (or static URLs, `SHOP_SERVICE_URLS`),
    Redis rate limits shared by every gateway, the public key from the settings or data dir.
    `known_routes`: the path prefixes of every module (`shop.app.route_table()`), routed (503
    while no instance is healthy) before any instance registers."""
    settings = settings or Settings.from_env()
    shop_logging.configure(settings.log_level)
    tracing.configure_tracing(settings, "shop-gateway")
    set_process_module("gateway")
    keys = load_keys(settings, generate=False)
    registry = registry_for(settings, service_urls, routes=known_routes)
    store = RedisRateLimitStore(settings.redis_url)
    breakers = BreakerRegistry(on_state_change=metrics.on_breaker_change)
    breakers.configure(UPSTREAM_BREAKER_PREFIX, UPSTREAM_BREAKER)
    return build_gateway_app(
        settings,
        registry,
        verifier=TokenVerifier(keys.public_pem),
        limiter=RateLimiter(store),
        breakers=breakers,
        known_routes=known_routes,
        on_shutdown=[registry.aclose, store.aclose, tracing.ashutdown_tracing],
    )
