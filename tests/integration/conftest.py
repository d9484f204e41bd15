"""A small world of test modules on a real bus, parametrized over the transports."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from shop.bus.breaker import BreakerConfig, BreakerRegistry
from shop.bus.bus import Bus
from shop.bus.errors import DependencyFailure
from shop.bus.messages import Command, Envelope, Event, Query
from shop.bus.module import Module
from shop.bus.retry import RetryPolicy
from shop.bus.transports.base import Transport
from shop.bus.transports.inprocess import InProcessTransport
from shop.db import Database

TRANSPORTS = ["inprocess", "dramatiq"]


class ConfDeposit(Command, frozen=True, kw_only=True):
    account: str
    amount: int
    fail_times: int = 0


class ConfDeposited(Event, frozen=True, kw_only=True):
    account: str
    amount: int


class ConfBalance(Query, frozen=True, kw_only=True):
    account: str


class ConfSlow(Query, frozen=True, kw_only=True):
    seconds: float


class ConfHold(Command, frozen=True, kw_only=True):
    """A command that takes its time (it holds a slot of the ledger's command bulkhead)."""

    seconds: float


class ConfBoom(Query, frozen=True, kw_only=True):
    """The handler raises: `fault` "module" (its own failure), "input" (a ValueError on its
    input) or "dependency" (something outside the module failed)."""

    fault: str = "module"


class ConfDependencyDown(DependencyFailure):
    """A dependency outside the ledger module (say, a provider) is down."""


ledger_md = sa.MetaData(schema="ledger")
entries = sa.Table(
    "entries",
    ledger_md,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("account", sa.String(50), nullable=False),
    sa.Column("amount", sa.Integer, nullable=False),
)
audit_md = sa.MetaData(schema="audit")
audit_log = sa.Table(
    "log",
    audit_md,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("account", sa.String(50), nullable=False),
    sa.Column("traceparent", sa.String(64), nullable=True),
    sa.Column("correlation_id", sa.String(64), nullable=True),
)


@dataclass
class Observed:
    """What the handlers saw, for assertions."""

    attempts: dict[str, int] = field(default_factory=dict)
    envelopes: list[tuple[str, Envelope]] = field(default_factory=list)
    notified: list[str] = field(default_factory=list)


def make_modules(seen: Observed) -> list[Module]:
    ledger = Module("ledger", metadata=ledger_md)
    audit = Module("audit", metadata=audit_md)
    notify = Module("notify")

    @ledger.handles(ConfDeposit)
    async def deposit(cmd: ConfDeposit, session: AsyncConnection, bus: Bus, envelope: Envelope) -> int:
        key = f"{cmd.account}:{envelope.message_id}"
        seen.attempts[key] = seen.attempts.get(key, 0) + 1
        seen.envelopes.append(("ledger.deposit", envelope))
        await session.execute(entries.insert().values(account=cmd.account, amount=cmd.amount))
        await bus.publish(ConfDeposited(account=cmd.account, amount=cmd.amount))
        if seen.attempts[key] <= cmd.fail_times:
            raise RuntimeError(f"transient failure {seen.attempts[key]}")
        return cmd.amount

    @ledger.handles(ConfBalance)
    async def balance(query: ConfBalance, session: AsyncConnection) -> int:
        total = await session.execute(
            sa.select(sa.func.coalesce(sa.func.sum(entries.c.amount), 0)).where(
                entries.c.account == query.account
            )
        )
        return int(total.scalar_one())

    @ledger.handles(ConfSlow)
    async def slow(query: ConfSlow) -> str:
        await asyncio.sleep(query.seconds)
        return "late"

    @ledger.handles(ConfHold, transactional=False)
    async def hold(command: ConfHold) -> str:
        await asyncio.sleep(command.seconds)
        return "held"

    @ledger.handles(ConfBoom)
    async def boom(query: ConfBoom) -> None:
        if query.fault == "input":
            raise ValueError("boom: bad input")
        if query.fault == "dependency":
            raise ConfDependencyDown("boom: the provider is down")
        raise RuntimeError("boom: the ledger's disk is gone")

    @audit.on(ConfDeposited)
    async def when_deposited_write_audit(
        event: ConfDeposited, session: AsyncConnection, envelope: Envelope
    ) -> None:
        seen.envelopes.append(("audit.when_deposited_write_audit", envelope))
        await session.execute(
            audit_log.insert().values(
                account=event.account,
                traceparent=envelope.traceparent,
                correlation_id=str(envelope.correlation_id),
            )
        )

    @notify.on(ConfDeposited)
    async def when_deposited_notify(event: ConfDeposited, envelope: Envelope) -> None:
        seen.envelopes.append(("notify.when_deposited_notify", envelope))
        seen.notified.append(event.account)

    return [ledger, audit, notify]


@dataclass
class World:
    bus: Bus
    databases: dict[str, Database]
    seen: Observed
    transport: Transport

    async def count(self, module: str, table: sa.Table, **where: Any) -> int:
        query = sa.select(sa.func.count()).select_from(table)
        for column, value in where.items():
            query = query.where(table.c[column] == value)
        async with self.databases[module].engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def until(self, predicate: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
        """Poll a condition with a deadline (tests never sleep for a fixed time)."""
        deadline = time.monotonic() + timeout
        while not await predicate():
            if time.monotonic() > deadline:
                raise AssertionError("condition not met before the deadline")
            await asyncio.sleep(0.005)


def make_transport(name: str, **options: Any) -> Transport:
    """A fresh transport; "dramatiq" takes `redis_url` and `namespace` (see transport_options)."""
    if name == "inprocess":
        return InProcessTransport()
    if name == "dramatiq":
        from shop.bus.transports.dramatiq import DramatiqTransport

        options.setdefault("shutdown_timeout_s", 5.0)
        return DramatiqTransport(options.pop("redis_url"), **options)
    raise ValueError(name)


@pytest.fixture(params=TRANSPORTS)
def transport_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def flush_namespace(redis_url: str, namespace: str) -> None:
    """Delete every key of a test namespace."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def transport_options(request: pytest.FixtureRequest, transport_name: str) -> Iterator[dict[str, Any]]:
    """What make_transport needs besides the name: for "dramatiq", a live Redis (skip, or fail
    under CI) and a namespace of this test's own, flushed afterwards."""
    if transport_name != "dramatiq":
        yield {}
        return
    redis_url = str(request.getfixturevalue("redis_url"))
    namespace = f"shoptest-{uuid.uuid4().hex[:12]}"
    yield {"redis_url": redis_url, "namespace": namespace}
    flush_namespace(redis_url, namespace)


WorldFactory = Callable[..., Awaitable[World]]


@pytest.fixture
async def world_factory(
    make_database: Any, transport_name: str, transport_options: dict[str, Any]
) -> AsyncIterator[WorldFactory]:
    worlds: list[World] = []
    databases: dict[str, Database] = {}

    async def build(*, seen: Observed | None = None, start: bool = True, **bus_options: Any) -> World:
        if not databases:
            databases["ledger"] = await make_database("ledger", ledger_md)
            databases["audit"] = await make_database("audit", audit_md)
            databases["notify"] = await make_database("notify")
        seen = seen or Observed()
        bus_options.setdefault("retry", RetryPolicy(max_attempts=3, base_delay=0.001, max_delay=0.01))
        bus_options.setdefault(
            "breakers",
            BreakerRegistry(
                BreakerConfig(
                    minimum_number_of_calls=3, sliding_window_size=5, wait_duration_in_open_state=60
                )
            ),
        )
        transport = make_transport(transport_name, **transport_options)
        bus = Bus(
            make_modules(seen),
            transport,
            local=["ledger", "audit", "notify"],
            databases=databases,
            **bus_options,
        )
        if start:
            await bus.start()
        world = World(bus, databases, seen, transport)
        worlds.append(world)
        return world

    yield build
    for world in worlds:
        await world.bus.stop()
