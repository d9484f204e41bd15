"""A fault-injecting network between the modules' buses, on a virtual clock.

Every module runs as its own `Shop` (as `shop serve` does), and each bus's transport is an
`Endpoint` of one `Network`. Nothing moves on its own: every command, event and request a bus
hands to its endpoint waits in the network until the test delivers it (in any order: that is
reordering), delivers it twice (duplication), drops it, or lets its delay pass. Requests time
out on the virtual clock; retries wait on it too. A delivery is carried out by the real
transport under test:

* `inprocess`: the destination bus's handlers are called the way the in-process transport's
  workers and `LocalRequests` call them;
* `dramatiq`: the envelope goes through Redis on the Dramatiq transport and is handled by the
  destination's Dramatiq worker.

`Network.settle()` runs the event loop until nothing can move without the test: no runnable
callback, no timer due soon (virtual timeouts are not timers). Database calls run on the loop
itself, so none is in flight while it looks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from shop.bus.clock import Clock
from shop.bus.errors import AskTimeout
from shop.bus.messages import Envelope, Message
from shop.bus.transports.base import Host, Outcome, Result
from shop.bus.transports.inprocess import LocalRequests

# What "soon" means for a real timer while settling: the payment provider's timeout and the
# relay's batch delay are real and short; anything longer is a timeout the test never waits for.
NEAR_TIMER_S = 1.0
SETTLE_LIMIT_S = 60.0
ASK_FORWARD_TIMEOUT_S = 60.0  # the real transport's own timeout for a forwarded request
REDELIVERY_AFTER_S = 10.0  # a broker redelivers an unacknowledged message after this long


class VirtualClock(Clock):
    """Time that moves only when the test advances it."""

    def __init__(self) -> None:
        self.start = datetime(2030, 1, 1, tzinfo=UTC)
        self.elapsed = 0.0

    def now(self) -> datetime:
        return self.start + timedelta(seconds=self.elapsed)

    def monotonic(self) -> float:
        return 1_000.0 + self.elapsed

    def advance(self, seconds: float) -> None:
        self.elapsed += seconds


class MessageLost(Exception):
    """The network dropped this delivery."""


@dataclass(eq=False)
class Pending:
    """A message on its way: a send (command/event) or a request awaiting its reply."""

    seq: int
    origin: str
    queue: str
    envelope: Envelope
    not_before: float
    receipt: asyncio.Future[None] | None = None  # sends: resolves when safe to forget
    reply: asyncio.Future[Any] | None = None  # requests: the asker waits on it
    expires: float | None = None  # requests: the asker's timeout, virtual

    @property
    def is_request(self) -> bool:
        return self.reply is not None


@dataclass
class Stats:
    delivered: int = 0
    duplicated: int = 0
    dropped: int = 0
    lost_replies: int = 0
    timed_out: int = 0
    retried: int = 0
    dead: int = 0


@dataclass
class _Attached:
    host: Host
    forward: Forwarder


class Forwarder:
    """How a delivery reaches the destination's handlers: the transport under test."""

    async def start(self, module: str, host: Host) -> None: ...

    async def stop(self, module: str) -> None: ...

    async def process(self, queue: str, envelope: Envelope) -> Result:
        raise NotImplementedError

    async def answer(self, queue: str, envelope: Envelope) -> Any:
        raise NotImplementedError


class InProcessForwarder(Forwarder):
    """Calls the destination bus as the in-process transport does: `process` for a queued
    message (what its workers do), `LocalRequests` for a request."""

    def __init__(self) -> None:
        self.hosts: dict[str, Host] = {}
        self.requests: dict[str, LocalRequests] = {}

    async def start(self, module: str, host: Host) -> None:
        self.hosts[module] = host
        self.requests[module] = LocalRequests(host)

    async def stop(self, module: str) -> None:
        self.hosts.pop(module, None)
        self.requests.pop(module, None)

    async def process(self, queue: str, envelope: Envelope) -> Result:
        return await self.hosts[queue].process(queue, envelope)

    async def answer(self, queue: str, envelope: Envelope) -> Any:
        return await self.requests[queue].request(queue, envelope, timeout=ASK_FORWARD_TIMEOUT_S)


class Network:
    """Holds every message in flight between the modules; the test decides what happens."""

    def __init__(self, clock: VirtualClock, forwarder: Forwarder, *, durable: bool) -> None:
        self.clock = clock
        self.forwarder = forwarder
        self.durable = durable  # a broker: a send is safe once accepted; a lost delivery comes back
        self.pending: list[Pending] = []
        self.stats = Stats()
        self.up: set[str] = set()
        self._seq = 0
        self.asks: list[Pending] = []  # requests whose asker still waits, delivered or not

    # -- what endpoints call ----------------------------------------------------------------

    def endpoint(self, module: str) -> Endpoint:
        return Endpoint(self, module)

    async def attach(self, module: str, host: Host) -> None:
        await self.forwarder.start(module, host)
        self.up.add(module)

    async def detach(self, module: str) -> None:
        """The module is gone (crash or stop): its requests die with it. (Nothing is being handled
        there: a delivery is handled to its end within the rule that delivers it.)"""
        self.up.discard(module)
        for item in list(self.pending):
            if item.is_request and item.origin == module:
                self.pending.remove(item)
        await self.forwarder.stop(module)

    def send(self, origin: str, queue: str, envelope: Envelope, delay: float) -> asyncio.Future[None]:
        receipt: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._seq += 1
        self.pending.append(
            Pending(self._seq, origin, queue, envelope, self.clock.elapsed + delay, receipt=receipt)
        )
        if self.durable:
            receipt.set_result(None)  # the broker has it
        return receipt

    async def request(self, origin: str, queue: str, envelope: Envelope, timeout: float) -> Any:
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._seq += 1
        item = Pending(
            self._seq,
            origin,
            queue,
            envelope,
            self.clock.elapsed,
            reply=reply,
            expires=self.clock.elapsed + timeout,
        )
        self.pending.append(item)
        self.asks.append(item)
        try:
            return await reply
        finally:
            if item in self.pending:
                self.pending.remove(item)
            self.asks.remove(item)

    # -- what the test does ------------------------------------------------------------------

    def deliverable(self) -> list[Pending]:
        """Messages that may be delivered now (the test puts them in a canonical order)."""
        return [p for p in self.pending if p.not_before <= self.clock.elapsed and p.queue in self.up]

    async def deliver(self, item: Pending, *, duplicate: bool = False, lose_reply: bool = False) -> str:
        """Hand `item` to its destination and wait until its handling is over. `duplicate`
        keeps it pending for a second delivery; `lose_reply` handles a request but never answers."""
        if not duplicate:
            self.pending.remove(item)
        else:
            self.stats.duplicated += 1
        self.stats.delivered += 1
        return await self._handle(item, lose_reply=lose_reply)

    async def _handle(self, item: Pending, *, lose_reply: bool) -> str:
        if item.is_request:
            assert item.reply is not None
            try:
                result = await self.forwarder.answer(item.queue, item.envelope)
            except Exception as exc:
                if lose_reply or item.reply.done():
                    self.stats.lost_replies += lose_reply
                    return "failed, reply lost"
                item.reply.set_exception(exc)
                return f"failed: {type(exc).__name__}"
            if lose_reply or item.reply.done():
                self.stats.lost_replies += lose_reply
                return "answered, reply lost"
            item.reply.set_result(result)
            return f"answered {type(result).__name__}"
        result = await self.forwarder.process(item.queue, item.envelope)
        if result.outcome is Outcome.RETRY:
            self.stats.retried += 1
            again = msgspec.structs.replace(item.envelope, attempt=item.envelope.attempt + 1)
            self._seq += 1
            self.pending.append(
                Pending(
                    self._seq,
                    item.origin,
                    item.queue,
                    again,
                    self.clock.elapsed + result.delay,
                    receipt=item.receipt,
                )
            )
            return f"failed, retry in {result.delay:.2f}s"
        if result.outcome is Outcome.DEAD:
            self.stats.dead += 1
        if item.receipt is not None and not item.receipt.done():
            item.receipt.set_result(None)
        return result.outcome.value

    def drop(self, item: Pending) -> None:
        """Lose one delivery. A request's asker times out; a send in a broker comes back after
        the redelivery delay; in process its outbox row is relayed again by the sweep."""
        self.pending.remove(item)
        self.stats.dropped += 1
        self._requeue_lost(item)

    def _requeue_lost(self, item: Pending) -> None:
        if item.is_request:
            return
        if self.durable:
            self._seq += 1
            self.pending.append(
                Pending(
                    self._seq,
                    item.origin,
                    item.queue,
                    item.envelope,
                    self.clock.elapsed + REDELIVERY_AFTER_S,
                    receipt=item.receipt,
                )
            )
        elif item.receipt is not None and not item.receipt.done():
            item.receipt.set_exception(MessageLost(item.envelope.type))

    def next_due(self) -> float | None:
        """The next virtual time at which something is due: a delayed message or a timeout."""
        times = [p.not_before for p in self.pending if p.not_before > self.clock.elapsed]
        times += [p.expires for p in self.asks if p.expires is not None]
        return min(times) if times else None

    def expire(self) -> int:
        """Time out every request whose asker's deadline has passed."""
        count = 0
        for item in list(self.asks):
            if item.expires is not None and item.expires <= self.clock.elapsed:
                if item in self.pending:
                    self.pending.remove(item)
                assert item.reply is not None
                if not item.reply.done():
                    item.reply.set_exception(
                        AskTimeout(f"no reply from {item.queue} to {item.envelope.type} (virtual)")
                    )
                    count += 1
        self.stats.timed_out += count
        return count

    async def settle(self) -> None:
        """Run until nothing moves without the test (see the module docstring)."""
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        quiet_rounds = 0
        while quiet_rounds < 3:
            if time.monotonic() - started > SETTLE_LIMIT_S:
                raise AssertionError(f"the system did not settle within {SETTLE_LIMIT_S}s")
            await asyncio.sleep(0)
            # Database calls run on this loop (shop.sqlite_onloop): none is ever in flight
            # while the loop looks for work, so "nothing runnable" covers them.
            ready = len(loop._ready)  # type: ignore[attr-defined]
            near = _next_timer_in(loop)
            if ready:
                quiet_rounds = 0
                continue
            if near is not None and near <= NEAR_TIMER_S:
                quiet_rounds = 0
                await asyncio.sleep(max(near, 0.0) + 0.001)
                continue
            quiet_rounds += 1


def _next_timer_in(loop: asyncio.AbstractEventLoop) -> float | None:
    scheduled = [h for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]
    if not scheduled:
        return None
    return min(h.when() for h in scheduled) - loop.time()


class Endpoint:
    """One module's transport: everything it sends waits in the network."""

    name = "faulty"

    def __init__(self, network: Network, module: str) -> None:
        self.network = network
        self.module = module

    async def start(self, host: Host, queues: Collection[str]) -> None:
        await self.network.attach(self.module, host)

    async def stop(self) -> None:
        await self.network.detach(self.module)

    async def deliver(self, queue: str, envelope: Envelope, *, delay: float = 0.0) -> Awaitable[None]:
        return self.network.send(self.module, queue, envelope, delay)

    async def request(
        self, queue: str, envelope: Envelope, *, timeout: float, message: Message | None = None
    ) -> Any:
        return await self.network.request(self.module, queue, envelope, timeout)
