"""A module queue's deliveries consumed on the event loop (ADR 0007, "Consuming on the loop").

Dramatiq's Redis broker keeps its layout, message format and dispatch script (fetch, ack,
requeue, heartbeat, maintenance); what runs on the loop instead of Dramatiq's consumer and worker
threads is the loop around them: wait for a wake token and fetch in one round trip, hand each
message to a handling task, acknowledge what was handled (many in one command), put back at stop
what was fetched but not started. One `QueueConsumer` a queue; the transport bounds how many
deliveries are handled at once across its queues, and handles each (`Handle`).

Why: a delivery that arrives alone (as in the split deployment) cost ~1.4 ms of CPU through
three threads handing the GIL to each other (~40 futex calls a message); on the loop, ~0.9 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Final

import redis
from dramatiq.brokers.redis import _scripts

from shop.bus.messages import Envelope, decode_envelope
from shop.bus.transports.redis_asks import Connections
from shop.bus.transports.redis_broker import ACK_LUA, WAKE_TOKENS, _Broker
from shop.observability.loggers import get_logger

log = get_logger("shop.bus.dramatiq")

#: After a Redis error, the consumer tries again after this long (doubling up to 5 s).
RETRY_PAUSE_S: Final = 0.1

#: (the consumer, envelope, redis message id) -> handled: the transport decides what a failure
#: means, and acknowledges (`ack`) or puts back (`put_back`) through the consumer it is given.
Handle = Callable[["QueueConsumer", Envelope, str], Awaitable[None]]


class QueueConsumer:
    """Fetches a module queue's messages on the loop and hands each to `handle`."""

    def __init__(
        self,
        broker: _Broker,
        client: Any,
        connections: Connections,
        queue: str,
        handle: Handle,
        *,
        prefetch: int,
        idle_block_s: float,
    ) -> None:
        self.broker = broker
        self.client = client  # acknowledgements and requeues (not blocking)
        self.connections = connections  # the wait and fetch (blocking, no socket timeout)
        self.queue = queue
        self.handle = handle
        self.prefetch = prefetch
        self.refill = max(1, prefetch // 4)
        self.idle_block_s = idle_block_s
        self.wake = broker.wake_key(queue)
        self.ack_keys = (
            f"{broker.namespace}:__acks__.{broker.broker_id}.{queue}",
            f"{broker.namespace}:{queue}.msgs",
        )
        self.outstanding: set[str] = set()  # fetched, not yet acknowledged or put back
        self.freed = asyncio.Event()
        self.stopping = False
        self.tasks: set[asyncio.Task[None]] = set()
        self._acks: list[str] = []
        self._acking: asyncio.Task[None] | None = None
        self._runner: asyncio.Task[None] | None = None
        self._unpack = 0

    async def start(self) -> None:
        # Dramatiq asks Redis for its Lua stack size once per process (a blocking call).
        self._unpack = await asyncio.to_thread(self.broker._max_unpack_size)
        self._runner = asyncio.get_running_loop().create_task(self._run(), name=f"bus:consume:{self.queue}")

    async def stop_fetching(self) -> None:
        """Fetch nothing more (a stop kick wakes a consumer waiting for a message)."""
        self.stopping = True
        self.freed.set()
        if self._runner is not None:
            _, pending = await asyncio.wait([self._runner], timeout=self.idle_block_s + 1)
            for task in pending:  # Redis is away: nothing was fetched that could be lost
                task.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)

    async def _run(self) -> None:
        drained = False
        pause = RETRY_PAUSE_S
        while not self.stopping:
            capacity = self.prefetch - len(self.outstanding)
            # Refill in batches (a quarter of the prefetch at least), not one fetch per ack.
            if capacity < self.refill and capacity != self.prefetch:
                self.freed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.freed.wait(), self.idle_block_s)
                continue
            try:
                fetched = await self._fetch(capacity, wait=drained)
                pause = RETRY_PAUSE_S
            except (redis.RedisError, OSError) as exc:
                log.warning("bus.dramatiq.fetch_failed", queue=self.queue, error=repr(exc), retry_in=pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)
                continue
            if fetched is None:  # kicked, or the wait timed out with nothing fetched
                drained = True
                continue
            # Fewer than asked for: the queue was empty then, and every message enqueued since
            # pushes a wake token; so the next round trip waits for one (and fetches with it).
            drained = len(fetched) < capacity
            for data in fetched:
                if data is not None:
                    self._take(data)

    async def _fetch(self, capacity: int, *, wait: bool) -> list[bytes | None] | None:
        """Fetch up to `capacity` messages; when `wait`, first wait for a wake token (or the
        stop kick, or `idle_block_s`) in the same round trip. None when the wait was kicked."""
        arguments = self.broker.dispatch_args("fetch", self.queue, capacity, max_unpack=self._unpack)
        fetch = ("EVALSHA", self.broker.scripts["dispatch"].sha, 1, self.broker.namespace, *arguments)
        commands: list[tuple[Any, ...]] = [fetch]
        if wait:
            commands.insert(0, ("BLPOP", self.wake, self.broker.kick_key, self.idle_block_s))
        try:
            replies = await self.connections.run(*commands)
        except redis.exceptions.NoScriptError:  # Redis restarted: load the script again
            await self.client.script_load(_scripts["dispatch"])
            replies = await self.connections.run(*commands)
        fetched: list[bytes | None] = list(replies[-1] or [])
        if wait and replies[0] is not None and replies[0][0] == self.broker.kick_key.encode():
            return fetched or None
        return fetched

    def _take(self, data: bytes) -> None:
        try:
            fields = self.broker.encoder.decode(data)
            redis_id = str(fields["options"]["redis_message_id"])
            envelope = decode_envelope(fields["args"][1])
        except Exception as exc:  # not a message of ours: log it and leave it to maintenance
            log.error("bus.dramatiq.undecodable_message", queue=self.queue, error=repr(exc))
            return
        self.outstanding.add(redis_id)
        task = asyncio.get_running_loop().create_task(self._handled(envelope, redis_id))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _handled(self, envelope: Envelope, redis_id: str) -> None:
        try:
            await self.handle(self, envelope, redis_id)
        finally:
            self.freed.set()

    # -- acknowledgements and requeues (the transport's handling calls these) --------------

    def ack(self, redis_id: str) -> None:
        """Forget a handled message: acknowledged with the others of this loop iteration, in
        one command. One left unwritten (Redis away, a crash) is delivered again, as any
        unacknowledged message; the inbox drops the duplicate."""
        self.outstanding.discard(redis_id)
        self._acks.append(redis_id)
        if self._acking is None:
            self._acking = asyncio.get_running_loop().create_task(self._write_acks())

    async def _write_acks(self) -> None:
        pause = RETRY_PAUSE_S
        try:
            while self._acks:
                await asyncio.sleep(0)  # the acknowledgements of this loop iteration together
                ids, self._acks = self._acks, []
                try:
                    await self.client.eval(ACK_LUA, 2, *self.ack_keys, *ids)
                    pause = RETRY_PAUSE_S
                except (redis.RedisError, OSError) as exc:
                    self._acks[:0] = ids
                    if self.stopping:  # left to the heartbeat timeout: delivered again
                        log.warning("bus.dramatiq.ack_failed", queue=self.queue, error=repr(exc))
                        return
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 5.0)
        finally:
            self._acking = None

    async def put_back(self, redis_id: str) -> None:
        """Return a fetched message that was not handled to the queue, for any consumer."""
        self.outstanding.discard(redis_id)
        arguments = self.broker.dispatch_args("requeue", self.queue, redis_id, max_unpack=self._unpack)
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.evalsha(self.broker.scripts["dispatch"].sha, 1, self.broker.namespace, *arguments)
                pipe.lpush(self.wake, 1)
                pipe.ltrim(self.wake, 0, WAKE_TOKENS - 1)
                await pipe.execute()
        except (redis.RedisError, OSError) as exc:  # back after the heartbeat timeout instead
            log.warning("bus.dramatiq.requeue_failed", queue=self.queue, error=repr(exc))

    async def flush_acks(self) -> None:
        if self._acking is not None:
            await asyncio.gather(self._acking, return_exceptions=True)
