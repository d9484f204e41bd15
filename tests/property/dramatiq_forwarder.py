"""Deliveries through Redis on the Dramatiq transport, for the fault-injecting network.

Each module gets its own `DramatiqTransport` (as its own `shop serve` process would), consuming
its queue with Dramatiq workers. The network forwards the delivery it chose through Redis and
waits until the destination's worker has handled it. Retries stay the network's business (on
the virtual clock): the host the workers call reports the kernel's verdict to the network and
acknowledges the message either way.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from typing import Any

import redis

from shop.bus.messages import Envelope, Message
from shop.bus.transports.base import Host, Outcome, Result
from shop.bus.transports.dramatiq import DramatiqTransport

from .network import ASK_FORWARD_TIMEOUT_S, Forwarder

HANDLED_WITHIN_S = 30.0


class _ReportingHost:
    """The module's host as Dramatiq's workers see it: the kernel's result goes to the forwarder."""

    def __init__(self, host: Host, forwarder: DramatiqForwarder) -> None:
        self.host = host
        self.forwarder = forwarder

    async def process(self, queue: str, envelope: Envelope) -> Result:
        result = await self.host.process(queue, envelope)
        self.forwarder.handled(envelope, result)
        return Result(Outcome.DONE)

    async def answer(self, queue: str, envelope: Envelope, message: Message | None = None) -> Any:
        return await self.host.answer(queue, envelope, message)


class DramatiqForwarder(Forwarder):
    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self.namespace = f"shop-property-{uuid.uuid4().hex[:10]}"
        self.transports: dict[str, DramatiqTransport] = {}
        self._waiting: defaultdict[tuple[uuid.UUID, str | None, int], list[asyncio.Future[Result]]] = (
            defaultdict(list)
        )

    async def start(self, module: str, host: Host) -> None:
        transport = DramatiqTransport(
            self.redis_url,
            namespace=self.namespace,
            worker_threads=2,
            prefetch=4,
            idle_block_s=0.2,
            shutdown_timeout_s=5.0,
        )
        await transport.start(_ReportingHost(host, self), [module])
        self.transports[module] = transport

    async def stop(self, module: str) -> None:
        transport = self.transports.pop(module, None)
        if transport is not None:
            await transport.stop()

    def handled(self, envelope: Envelope, result: Result) -> None:
        waiting = self._waiting.get((envelope.message_id, envelope.consumer, envelope.attempt))
        if waiting:
            future = waiting.pop(0)
            if not future.done():
                future.set_result(result)

    async def process(self, queue: str, envelope: Envelope) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        key = (envelope.message_id, envelope.consumer, envelope.attempt)
        self._waiting[key].append(future)
        try:
            receipt = await self.transports[queue].deliver(queue, envelope)
            await receipt
            async with asyncio.timeout(HANDLED_WITHIN_S):
                return await future
        finally:
            if future in self._waiting.get(key, []):
                self._waiting[key].remove(future)
            if not self._waiting.get(key):
                self._waiting.pop(key, None)

    async def answer(self, queue: str, envelope: Envelope) -> Any:
        return await self.transports[queue].request(queue, envelope, timeout=ASK_FORWARD_TIMEOUT_S)

    def forget(self) -> None:
        """Delete this program's keys from Redis."""
        client = redis.Redis.from_url(self.redis_url)
        try:
            keys = list(client.scan_iter(match=f"{self.namespace}*", count=500))
            if keys:
                client.delete(*keys)
        finally:
            client.close()
