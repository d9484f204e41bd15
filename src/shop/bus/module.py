"""The module descriptor: what a bounded context declares about itself.

A module's handlers.py collects its handlers, with no reference to the descriptor:

    handlers = Handlers()

    @handlers.handles(ReserveStock)
    async def reserve_stock(cmd: ReserveStock, stock: StockLedger) -> StockReserved: ...

    @handlers.on(PaymentCaptured)
    async def when_payment_captured_commit_stock(event: PaymentCaptured, session: AsyncConnection): ...

and its package's `__init__.py` declares the descriptor and includes them, explicitly:

    module = Module("catalog", metadata=models.metadata, controllers=[CatalogController])
    module.include(handlers.handlers)
    module.sagas(saga_engine)  # a module that runs sagas: def saga_engine(...) -> SagaEngine

The composition root reads descriptors; the kernel never imports a module.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import sqlalchemy as sa

from shop.bus.messages import Command, Event, Message, Query
from shop.bus.saga import SagaEngine

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
Hook = Callable[..., Awaitable[None]]


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    """One handler: the message type it takes and whether it owns it or subscribes to it."""

    module: str
    message_type: type[Message]
    func: Callable[..., Awaitable[Any]]
    role: Literal["owner", "subscriber"]
    transactional: bool = True

    @property
    def consumer(self) -> str:
        return f"{self.module}.{self.func.__name__}"


@dataclass(slots=True)
class Module:
    """A bounded context: its name, tables, HTTP controllers, handlers and providers."""

    name: str
    metadata: sa.MetaData | None = None
    controllers: Sequence[Any] = ()
    handlers: list[HandlerSpec] = field(default_factory=list)
    providers: dict[type[Any], Callable[..., Any]] = field(default_factory=dict)
    singletons: dict[type[Any], Callable[..., Any]] = field(default_factory=dict)
    startup_hooks: list[Hook] = field(default_factory=list)
    background_tasks: list[Hook] = field(default_factory=list)
    shutdown_hooks: list[Hook] = field(default_factory=list)
    saga_engine: Callable[..., SagaEngine] | None = None  # see sagas()

    def handles(
        self, message_type: type[Command] | type[Query], *, transactional: bool = True
    ) -> Callable[[F], F]:
        """Register the one handler of a command or query this module owns.

        `transactional=False`: the bus runs the handler outside any unit of work and records
        nothing in the inbox; the handler opens its own short units of work (it may ask for
        `Database`, not for a session) and is idempotent by a key of its own. For handlers
        that call a slow outside system, so that no database lock is held across the call."""
        if not issubclass(message_type, (Command, Query)):
            raise TypeError(f"{message_type.__name__} is not a command or query; use .on() for events")

        def register(func: F) -> F:
            if any(h.message_type is message_type for h in self.handlers):
                raise ValueError(f"{self.name} already handles {message_type.__name__}")
            self.handlers.append(HandlerSpec(self.name, message_type, func, "owner", transactional))
            return func

        return register

    def on(self, event_type: type[Event]) -> Callable[[F], F]:
        """Subscribe a handler to an event (any module's)."""
        if not issubclass(event_type, Event):
            raise TypeError(f"{event_type.__name__} is not an event; use .handles() for commands")

        def register(func: F) -> F:
            self.handlers.append(HandlerSpec(self.name, event_type, func, "subscriber"))
            return func

        return register

    def provide(self, kind: type[Any], factory: Callable[..., Any], *, singleton: bool = False) -> None:
        """Make `kind` injectable into this module's handlers; the factory's own parameters
        are injected by type too. A singleton is built once at start-up (its parameters must
        be singletons too); otherwise once per handled message."""
        (self.singletons if singleton else self.providers)[kind] = factory

    def on_startup(self, hook: F) -> F:
        """Run once when the module starts (after migrations), with injected parameters."""
        self.startup_hooks.append(hook)
        return hook

    def on_shutdown(self, hook: F) -> F:
        """Run once when the module stops (before the bus stops), with injected parameters."""
        self.shutdown_hooks.append(hook)
        return hook

    def background(self, task: F) -> F:
        """A long-running coroutine started with the module and cancelled at shutdown."""
        self.background_tasks.append(task)
        return task

    def sagas(self, factory: Callable[..., SagaEngine]) -> None:
        """Declare that this module runs sagas: ``factory`` (its parameters injected, singletons)
        builds the module's :class:`SagaEngine` once, and it is injectable as ``SagaEngine``.

        The composition root does the rest for every module alike: it resumes the unfinished
        sagas and ticks the timers (:meth:`SagaEngine.serve`), reports the saga gauges at each
        scrape, closes the engine at shutdown and serves the saga admin views over it."""
        if self.saga_engine is not None:
            raise ValueError(f"{self.name} already declares its sagas")
        self.provide(SagaEngine, factory, singleton=True)
        self.saga_engine = factory

    def include(self, handlers: Handlers) -> None:
        """Register everything `handlers` collected, in the order it was declared."""
        for register in handlers.registrations:
            register(self)


class Handlers:
    """A module's handlers and hooks, collected where they are defined (`@handlers.handles(...)`,
    `@handlers.on(...)`, `@handlers.on_startup`, ...) and registered on the descriptor by
    `Module.include`: the same checks and the same order as declaring them on the module."""

    def __init__(self) -> None:
        self.registrations: list[Callable[[Module], object]] = []

    def handles(
        self, message_type: type[Command] | type[Query], *, transactional: bool = True
    ) -> Callable[[F], F]:
        """See `Module.handles`."""
        if not issubclass(message_type, (Command, Query)):
            raise TypeError(f"{message_type.__name__} is not a command or query; use .on() for events")

        def collect(func: F) -> F:
            self.registrations.append(lambda m: m.handles(message_type, transactional=transactional)(func))
            return func

        return collect

    def on(self, event_type: type[Event]) -> Callable[[F], F]:
        """See `Module.on`."""
        if not issubclass(event_type, Event):
            raise TypeError(f"{event_type.__name__} is not an event; use .handles() for commands")

        def collect(func: F) -> F:
            self.registrations.append(lambda m: m.on(event_type)(func))
            return func

        return collect

    def on_startup(self, hook: F) -> F:
        """See `Module.on_startup`."""
        self.registrations.append(lambda m: m.on_startup(hook))
        return hook

    def on_shutdown(self, hook: F) -> F:
        """See `Module.on_shutdown`."""
        self.registrations.append(lambda m: m.on_shutdown(hook))
        return hook

    def background(self, task: F) -> F:
        """See `Module.background`."""
        self.registrations.append(lambda m: m.background(task))
        return task
