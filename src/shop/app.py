"""The composition root: builds the shop for a set of local modules and a transport.

`shop run` builds it with every module local on the in-process transport and the embedded
databases; `shop serve` (split mode) with some modules and the Redis transport. Only this file
and the CLI import modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from litestar import Litestar, Request
from litestar.config.app import AppConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from shop import migrate as migrations
from shop import modules as modules_registry
from shop.bus import inbox
from shop.bus.breaker import BreakerConfig, BreakerRegistry
from shop.bus.bus import Bus
from shop.bus.clock import Clock
from shop.bus.module import Module
from shop.bus.saga import SagaEngine
from shop.bus.saga import gauges as saga_gauges
from shop.bus.transports.base import Transport
from shop.bus.transports.inprocess import InProcessTransport
from shop.console.console import console_router
from shop.console.reference import ReferenceRenderPlugin
from shop.db import Database
from shop.gateway.deadletters import DeadLetterController
from shop.gateway.middleware import GatewayMiddleware
from shop.gateway.ops import OpsController, now_rfc3339
from shop.gateway.problems import EXCEPTION_HANDLERS
from shop.gateway.ratelimit import MemoryRateLimitStore, RateLimiter, RateLimitStore
from shop.gateway.sagas import SagaAdminController
from shop.observability import logging as shop_logging
from shop.observability import metrics, tracing
from shop.observability.logcontext import bound_module, set_process_module
from shop.observability.loggers import get_logger
from shop.process import die_with_parent, freeze_heap_after_start
from shop.security.keys import load_keys
from shop.security.throttle import Throttle, client_address
from shop.security.tokens import Principal, TokenIssuer, TokenVerifier
from shop.settings import MODULE_NAMES, Settings
from shop.web.openapi import ShopOpenAPIJson, fix_options_allow

log = get_logger("shop.app")
MAX_BODY_BYTES = 1024 * 1024  # no request of the API comes near it


def load_module(name: str) -> Module:
    """A module's descriptor, by name."""
    return modules_registry.descriptor(name)


def served_controllers(module: Module) -> list[Any]:
    """The HTTP controllers a module's process serves for it: its own, and the kernel's saga
    admin views when it declares sagas (what it registers in discovery too)."""
    return [*module.controllers, *([SagaAdminController] if module.saga_engine is not None else [])]


@dataclass
class Shop:
    """The running parts of one process."""

    settings: Settings
    modules: list[Module]
    local: tuple[str, ...]
    databases: dict[str, Database]
    bus: Bus
    breakers: BreakerRegistry
    verifier: TokenVerifier
    limiter: RateLimiter
    migrate_on_start: bool = False
    # the saga engines of the local modules that declare sagas, by module (filled at start)
    saga_engines: dict[str, SagaEngine] = field(default_factory=dict)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self, *, background: bool = True) -> None:
        """Start the bus, run the modules' start-up hooks and (unless `background=False`, for a
        harness that drives timers itself) their background tasks."""
        if self.migrate_on_start:
            await migrations.upgrade(self.settings, self.local)
        await self.bus.start()
        for name in self.local:
            module = self.bus.modules[name]
            injector = self.bus.injector_for(name)
            with bound_module(name):  # the hooks and background tasks log as their module
                for hook in module.startup_hooks:
                    await hook(**injector.plan(hook).arguments(_startup_scope()))
                for task in module.background_tasks if background else ():
                    arguments = injector.plan(task).arguments(_startup_scope())
                    coroutine = cast(Coroutine[Any, Any, None], task(**arguments))
                    self._tasks.append(asyncio.create_task(coroutine, name=f"{name}:{task.__name__}"))
                if module.saga_engine is not None:  # resumed, then ticked, the same for every module
                    engine = self.saga_engines[name] = injector.resolve(SagaEngine)
                    if background:
                        self._tasks.append(asyncio.create_task(engine.serve(), name=f"{name}:sagas"))
        if background:
            self._tasks.append(asyncio.create_task(self._prune_inboxes(), name="shop:prune_inboxes"))
        metrics.on_scrape(f"shop:{id(self)}", self._report)
        if self.saga_engines:  # the saga gauges, read from the modules' databases
            metrics.on_scrape(f"sagas:{id(self)}", lambda: saga_gauges.report(self.saga_engines.values()))
        log.info("shop.started", modules=list(self.local), transport=self.bus.transport.name)

    async def _prune_inboxes(self) -> None:
        """Every so often, forget inbox rows older than SHOP_INBOX_RETENTION_S (a tenth of the
        retention, between 1 s and an hour); a failed round is logged and tried again later."""
        retention = self.settings.inbox_retention_s
        interval = min(3600.0, max(1.0, retention / 10))
        while True:
            await asyncio.sleep(interval)
            for name, database in self.databases.items():
                try:
                    removed = await inbox.prune(database, time.time() - retention)
                except Exception as exc:
                    log.warning("inbox.prune_failed", module=name, error=repr(exc))
                    continue
                if removed:
                    log.info("inbox.pruned", module=name, removed=removed)

    async def _report(self) -> None:
        """At each scrape: the depth of the queues this process consumes, every breaker's state."""
        for queue, depth in (await self.bus.transport.depths(self.local)).items():
            metrics.BUS_QUEUE_DEPTH.labels(queue).set(depth)
        for name, state in self.breakers.states().items():
            metrics.set_breaker_state(name, state)

    async def stop(self) -> None:
        metrics.off_scrape(f"shop:{id(self)}")
        metrics.off_scrape(f"sagas:{id(self)}")
        for name in self.local:
            injector = self.bus.injector_for(name)
            for hook in self.bus.modules[name].shutdown_hooks:
                try:
                    await hook(**injector.plan(hook).arguments(_startup_scope()))
                except Exception as exc:
                    log.warning("shop.shutdown_hook_failed", module=name, hook=hook.__name__, error=repr(exc))
            engine = self.saga_engines.pop(name, None)
            if engine is not None:
                await engine.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        await self.bus.stop()
        for database in self.databases.values():
            await database.dispose()
        log.info("shop.stopped")

    async def auth_throttle(self, action: str, email: str, address: str) -> float | None:
        """Logins and sign-ups per client address (SHOP_AUTH_ADDRESS_RATE_LIMIT) and per email
        from that address (SHOP_LOGIN_RATE_LIMIT); see shop.security.throttle."""
        by_address = await self.limiter.check(
            f"{action}-address", address, self.settings.auth_address_rate_limit
        )
        by_email = await self.limiter.check(
            f"{action}-email", f"{address}|{email}", self.settings.login_rate_limit
        )
        waits = [wait for wait in (by_address, by_email) if wait is not None]
        return max(waits) if waits else None

    async def describe_services(self, *, authorization: str | None = None) -> dict[str, Any]:
        """Every module is a local instance of this process; its breakers are all there is."""
        del authorization  # nothing further to ask
        url = f"http://{self.settings.host}:{self.settings.port}"
        seen = now_rfc3339()
        return {
            "modules": {
                name: [{"instance_id": "local", "url": url, "healthy": True, "last_seen": seen}]
                for name in self.local
            },
            "breakers": self.breakers.states(),
        }


def _startup_scope() -> Any:
    from shop.bus.inject import Scope

    return Scope()


def build_shop(
    settings: Settings,
    *,
    local: Sequence[str] = MODULE_NAMES,
    transport: Transport | None = None,
    rate_limit_store: RateLimitStore | None = None,
    migrate_on_start: bool = False,
    clock: Clock | None = None,
    overrides: Mapping[type[Any], Any] | None = None,
) -> Shop:
    """The shop for `local` modules. `clock` replaces the system clock (deadlines, breakers);
    `overrides` replace singletons a module would build (e.g. its payment provider)."""
    local = tuple(local)
    if "payments" in local:  # before anything is built: a provider that cannot take payments here
        settings.check_payment_provider()
    modules = [load_module(name) for name in MODULE_NAMES]
    clock = clock or Clock()
    databases = {name: Database(name, settings.database_url_for(name)) for name in local}
    for database in databases.values():  # SQL spans, when tracing is on
        tracing.instrument_database(database)
    keys = load_keys(settings, generate="users" in local)
    verifier = TokenVerifier(keys.public_pem)
    breakers = BreakerRegistry(clock=clock.monotonic, on_state_change=metrics.on_breaker_change)
    # Asks between modules: open on real failure rates over a meaningful window, not on a burst
    # that only queued (a timeout still counts); probe again soon.
    breakers.configure(
        "module:",
        BreakerConfig(
            failure_rate_threshold=50.0,
            minimum_number_of_calls=20,
            sliding_window_size=50,
            slow_call_duration=10.0,
            wait_duration_in_open_state=5.0,
            permitted_calls_in_half_open_state=5,
        ),
    )
    singletons: dict[type[Any], Any] = {
        Settings: settings,
        BreakerRegistry: breakers,
        TokenVerifier: verifier,
        Clock: clock,
        **(overrides or {}),
    }
    if keys.private_pem is not None and "users" in local:
        singletons[TokenIssuer] = TokenIssuer(keys.private_pem)
    bus = Bus(
        modules,
        transport or InProcessTransport(),
        local=local,
        databases=databases,
        singletons=singletons,
        breakers=breakers,
    )
    bus.bind()
    return Shop(
        settings=settings,
        modules=modules,
        local=local,
        databases=databases,
        bus=bus,
        breakers=breakers,
        verifier=verifier,
        limiter=RateLimiter(rate_limit_store or MemoryRateLimitStore()),
        migrate_on_start=migrate_on_start,
    )


def build_app(
    shop: Shop,
    *,
    rate_limit: bool = True,
    ready_checks: dict[str, Callable[[], Awaitable[None]]] | None = None,
    around: Callable[[], contextlib.AbstractAsyncContextManager[None]] | None = None,
    console: bool = False,
) -> Litestar:
    """The Litestar app of a shop: gateway middleware, ops endpoints, the local controllers, the
    API reference at /schema, and with `console` the operator console at /admin.

    `rate_limit=False` for a service behind `shop gateway` (the gateway limits per client;
    behind it every client would share the gateway's address). `around` wraps the running
    shop (e.g. the discovery heartbeat of `shop serve`)."""
    controllers: list[Any] = [OpsController, DeadLetterController]
    if console:
        controllers.append(console_router())
    for name in shop.local:
        controllers.extend(served_controllers(shop.bus.modules[name]))
    controllers = list(dict.fromkeys(controllers))  # the saga admin views once, for every module
    checks: dict[str, Callable[[], Awaitable[None]]] = {
        f"db:{name}": db.ping for name, db in shop.databases.items()
    }
    checks.update(ready_checks or {})

    def provide_client_address(request: Request[Any, Any, Any]) -> str:
        # Without the rate limit the app is a service behind `shop gateway` (see below).
        return client_address(request.scope, behind_gateway=not rate_limit)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Litestar) -> AsyncIterator[None]:
        try:
            await shop.start()
        except Exception as exc:  # the server exits; this line is what the operator sees
            log.error("shop.start_failed", error=f"{type(exc).__name__}: {exc}".splitlines()[0])
            raise
        freeze_heap_after_start()
        try:
            if around is None:
                yield
            else:
                async with around():
                    yield
        finally:
            await shop.stop()
            await tracing.ashutdown_tracing()  # flush this process's last spans to the collector

    app = Litestar(
        route_handlers=controllers,
        lifespan=[lifespan],
        state=State(
            {
                "shop": shop,
                "ready_checks": checks,
                "describe_services": shop.describe_services,
                "databases": shop.databases,
                "saga_engines": shop.saga_engines,
                "relay": shop.bus.relay,
            }
        ),
        dependencies={
            "bus": Provide(lambda: shop.bus, use_cache=True, sync_to_thread=False),
            "settings": Provide(lambda: shop.settings, use_cache=True, sync_to_thread=False),
            "auth_throttle": Provide(lambda: shop.auth_throttle, use_cache=True, sync_to_thread=False),
            "client_address": Provide(provide_client_address, sync_to_thread=False),
        },
        signature_namespace={"Bus": Bus, "Principal": Principal, "Settings": Settings, "Throttle": Throttle},
        exception_handlers=EXCEPTION_HANDLERS,
        openapi_config=OpenAPIConfig(
            title="Shop",
            version="1.0.0",
            path="/schema",
            # /schema/openapi.json, and the interactive reference at /schema itself.
            render_plugins=[ShopOpenAPIJson(), ReferenceRenderPlugin()],
            # A bearer token is read when sent (Swagger UI's "Authorize" sends it), never required
            # by the document as a whole: each operation says 401/403 where it needs one.
            components=Components(
                security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer", bearer_format="JWT")}
            ),
            security=[{"bearer": []}, {}],
        ),
        on_app_init=[_no_debug],
        logging_config=None,
        request_max_body_size=MAX_BODY_BYTES,  # 413 past it, as at the gateway
    )
    fix_options_allow(app)
    # Around the whole router (not per route), so unmatched paths get request ids, logs and
    # rate limits too; errors inside are still turned into problem details by Litestar.
    service = "shop" if len(shop.local) > 1 else shop.local[0]
    set_process_module(service)  # what lines outside any module's work say they are about
    app.asgi_handler = cast(Any, GatewayMiddleware)(
        app.asgi_handler,
        verifier=shop.verifier,
        limiter=shop.limiter if rate_limit else None,
        rate_limit=shop.settings.rate_limit,
        service=service,
    )
    return app


def _no_debug(config: AppConfig) -> AppConfig:
    config.debug = False
    return config


def create_app(settings: Settings | None = None, *, local: Sequence[str] = MODULE_NAMES) -> Litestar:
    """`shop run`'s app: every module in one process, migrating the embedded default on start."""
    die_with_parent()
    settings = settings or Settings.from_env()
    shop_logging.configure(settings.log_level)
    tracing.configure_tracing(settings, "shop")
    for name in local:  # no registry: each module is its one local instance
        metrics.REGISTRY_INSTANCES.labels(name, "true").set(1)
        metrics.REGISTRY_INSTANCES.labels(name, "false").set(0)
    return build_app(build_shop(settings, local=local, migrate_on_start=True), console=True)


def create_service_app(settings: Settings | None = None, modules: Sequence[str] | None = None) -> Litestar:
    """`shop serve MODULE...`'s app: those modules' routes and consumers on the Redis transport
    (unless `settings.transport` says otherwise), registered in discovery with a TTL heartbeat.

    The modules come from `modules` or SHOP_SERVE_MODULES (comma-separated, set by the CLI).
    Schemas are migrated by `shop migrate` (a deploy step), not by each instance."""
    from shop.bus.transports.dramatiq import DramatiqTransport
    from shop.discovery import (
        Instance,
        advertised_url,
        heartbeat,
        new_instance_id,
        registry_for,
        route_prefixes,
    )
    from shop.gateway.ratelimit import RedisRateLimitStore

    die_with_parent()
    settings = settings or Settings.from_env()
    shop_logging.configure(settings.log_level)
    names = list(modules or [m for m in os.environ.get("SHOP_SERVE_MODULES", "").split(",") if m])
    if not names:
        raise ValueError("shop serve needs at least one module")
    tracing.configure_tracing(settings, "shop-" + "-".join(names))
    transport: Transport = (
        InProcessTransport()
        if settings.service_transport == "inprocess"
        else DramatiqTransport(settings.redis_url)
    )
    shop = build_shop(
        settings, local=names, transport=transport, rate_limit_store=RedisRateLimitStore(settings.redis_url)
    )
    registry = registry_for(settings)
    instance_id = new_instance_id()
    url = advertised_url(settings.host, settings.port)
    instances = [
        Instance(
            module=name,
            instance_id=instance_id,
            url=url,
            routes=route_prefixes(served_controllers(shop.bus.modules[name])),
        )
        for name in shop.local
    ]

    @contextlib.asynccontextmanager
    async def registered() -> AsyncIterator[None]:
        try:
            async with heartbeat(registry, instances, interval_s=2.0, ttl_s=6.0):
                yield
        finally:
            await registry.aclose()

    return build_app(shop, rate_limit=False, ready_checks={"registry": registry.ping}, around=registered)


def create_gateway() -> Any:
    """`shop gateway`'s app factory (the gateway itself lives in shop.gateway)."""
    from shop.gateway.gateway_app import create_gateway_app

    die_with_parent()
    return create_gateway_app(known_routes=route_table())


def route_table() -> dict[str, tuple[str, ...]]:
    """The path prefixes each module serves, derived from its controllers: what `shop serve`
    registers for it, and what the gateway and a static registry route by."""
    from shop.discovery.routes import route_prefixes

    return {
        module.name: route_prefixes(served_controllers(module)) for module in modules_registry.descriptors()
    }
