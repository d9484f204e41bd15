"""The Dramatiq/Redis transport: module queues in Redis, consumed by a Dramatiq worker; asks on
plain Redis lists beside it.

Commands and events (deliveries, at least once, retried by the kernel) go to the module's
Dramatiq queue `<module>`, one generic actor per queue that takes `(kind, envelope_bytes)`.
Asks (request/reply, between processes) do not go through Dramatiq: the asker pushes the
request to one of the module's two request lists (commands, queries) and waits for the reply on
a key of its own, and the served process answers from a listener task per list on its event
loop (`redis_asks`, ADR 0028). Decisions and measurements are in
docs/adr/0007-dramatiq-transport.md and 0028; in short:

- The transport owns its broker (`_Broker`, a namespaced `RedisBroker`, in `redis_broker.py`),
  never the global one, with no Dramatiq middleware: the kernel retries, dead-letters and times out itself.
- Handlers are async and use resources bound to the app's event loop (the loop that called
  `start`). Dramatiq worker threads hand every message to that loop with
  `run_coroutine_threadsafe` and return (so Dramatiq acks) only when the handling finished: a
  worker killed mid-message has it redelivered by a live worker's queue maintenance once its
  heartbeat is `heartbeat_timeout_ms` old.
- Dramatiq's Redis consumer polls an idle queue with a backoff of up to a second. Ours keeps the
  broker's Lua script and data layout but, when a queue is empty, blocks on a per-queue "wake"
  list that every enqueue pushes to in the same round trip, so an idle consumer answers in
  well under a millisecond and a quiet process costs Redis one fetch per queue per `idle_block`.
- The served side's bulkhead (ADR 0020): asks of queries and asks of commands wait in separate
  lists and have separate slots (`query_threads`, `worker_threads`), and deliveries have the
  Dramatiq worker's threads: a saturated command path leaves the queries theirs.
- The event loop never blocks on Redis: enqueues from the loop go through `redis.asyncio` and are
  batched per loop iteration into one pipeline; the replies to asks wait in `BLPOP` on a client
  without socket timeout, bounded by an asyncio timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Collection, Coroutine
from typing import Any, Final, TypeVar

import dramatiq
import msgspec
import redis
import redis.asyncio as aredis
import structlog

from shop.bus.messages import Envelope, Message, decode_envelope, encode
from shop.bus.transports.base import Host, Outcome, is_query
from shop.bus.transports.redis_asks import AskServer, Connections, ask, reply_of, request_list, result_of
from shop.bus.transports.redis_broker import ENQUEUE_LUA, WAKE_TOKENS, _Broker, actor_name

__all__ = ["DramatiqTransport", "reply_of", "result_of"]

log = structlog.get_logger("shop.bus.dramatiq")
T = TypeVar("T")

DELIVER: Final = "deliver"

#: How long worker threads wait on Dramatiq's in-memory work queue before checking for stop.
WORKER_POLL_MS: Final = 100
#: When handling a delivery failed in a way the kernel did not absorb (the loop is gone, the
#: dead-letter store is down), the message is enqueued again after this long, same attempt.
REDELIVER_AFTER_MS: Final = 1000


class _Batch:
    """Enqueues submitted in one loop iteration, written in one pipeline."""

    __slots__ = ("futures", "items")

    def __init__(self) -> None:
        self.items: list[tuple[str, str, bytes]] = []  # (queue name, redis message id, data)
        self.futures: list[asyncio.Future[None]] = []


class DramatiqTransport:
    """Module queues on Redis, consumed by a Dramatiq worker whose threads run the handlers on
    the app's event loop. See the module docstring and ADR 0007."""

    name = "dramatiq"

    def __init__(
        self,
        redis_url: str,
        *,
        namespace: str = "shop",
        worker_threads: int = 8,
        query_threads: int = 8,
        prefetch: int = 64,
        heartbeat_timeout_ms: int = 15_000,
        maintenance_chance: int = 1_000,
        reply_ttl_s: int = 60,
        dead_message_ttl_ms: int = 7 * 86_400_000,
        idle_block_s: float | None = None,
        shutdown_timeout_s: float = 30.0,
    ) -> None:
        if worker_threads < 1 or query_threads < 1 or prefetch < 1:
            raise ValueError("worker_threads, query_threads and prefetch must be >= 1")
        self.redis_url = redis_url
        self.namespace = namespace
        self.worker_threads = worker_threads
        self.query_threads = query_threads
        self.prefetch = prefetch
        self.reply_ttl_s = reply_ttl_s
        self.shutdown_timeout_s = shutdown_timeout_s
        # An idle consumer heartbeats (fetches) at least this often: well inside the timeout.
        block = idle_block_s if idle_block_s is not None else min(2.0, heartbeat_timeout_ms / 4000)
        self.broker = _Broker(
            redis_url,
            namespace=namespace,
            heartbeat_timeout_ms=heartbeat_timeout_ms,
            maintenance_chance=maintenance_chance,
            dead_message_ttl_ms=dead_message_ttl_ms,
            idle_block_s=block,
        )
        self._host: Host | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._actors: dict[str, dramatiq.Actor[Any, Any]] = {}
        self._worker: dramatiq.Worker | None = None
        self._in_flight: set[asyncio.Task[Any]] = set()  # handlers running (on the loop)
        self._client: aredis.Redis | None = None  # enqueues and replies
        self._blocking: aredis.Redis | None = None  # asks' BLPOP and BLMPOP: no socket timeout
        self._connections: Connections | None = None  # of `_blocking`, taken without its pool
        self._batch: _Batch | None = None
        self._writes: set[asyncio.Task[None]] = set()
        self._asks: AskServer | None = None
        self._started = False

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, host: Host, queues: Collection[str]) -> None:
        if self._started:
            raise RuntimeError("a DramatiqTransport starts once; build a new one to start again")
        self._started = True
        self._host = host
        self._loop = asyncio.get_running_loop()
        await self._clients()
        if not queues:
            return
        client = await self._clients()
        assert self._connections is not None
        self._asks = AskServer(
            namespace=self.namespace,
            client=client,
            connections=self._connections,
            command_slots=self.worker_threads,
            query_slots=self.query_threads,
            reply_ttl_s=self.reply_ttl_s,
        )
        await self._asks.start(host, queues)
        for queue in queues:
            self._actors[queue] = dramatiq.Actor(
                self._consume(queue),
                broker=self.broker,
                actor_name=actor_name(queue),
                queue_name=queue,
                priority=0,
                options={},
            )
        worker = dramatiq.Worker(
            self.broker, queues=set(queues), worker_threads=self.worker_threads, worker_timeout=WORKER_POLL_MS
        )
        worker.queue_prefetch = self.prefetch
        worker.start()
        self._worker = worker

    async def stop(self) -> None:
        """Finish the messages being handled (up to `shutdown_timeout_s`), put back the ones
        fetched but not started, stop every thread, close every connection."""
        self.broker.stopping = True
        asks, self._asks = self._asks, None
        if asks is not None:
            await asks.stop(self.shutdown_timeout_s)
        worker, self._worker = self._worker, None
        if worker is not None:
            for thread in worker.workers:
                thread.stop()  # take no new message after the current one
            with contextlib.suppress(redis.RedisError):
                await self._kick(len(worker.consumers))
            await self._drain(self.shutdown_timeout_s)
            await asyncio.to_thread(worker.stop, timeout=int(self.shutdown_timeout_s * 1000) + 5_000)
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        batch, self._batch = self._batch, None
        if batch is not None:
            for future in batch.futures:
                if not future.done():
                    future.set_exception(ConnectionError("transport stopped"))
        await self._close()

    async def _close(self) -> None:
        """Close every connection of the transport and of its broker."""
        if self._client is not None:
            with contextlib.suppress(redis.RedisError):
                await self._client.delete(self.broker.kick_key)
            await self._client.aclose()
        if self._connections is not None:
            await self._connections.aclose()
        if self._blocking is not None:
            await self._blocking.aclose()
        self._client = self._blocking = self._connections = None
        self.broker.client.close()
        self.broker.wait_client.close()

    async def _kick(self, consumers: int) -> None:
        if self._client is not None and consumers:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.lpush(self.broker.kick_key, *([1] * consumers))
                pipe.expire(self.broker.kick_key, 60)
                await pipe.execute()

    async def _drain(self, timeout: float) -> None:
        """Wait for the handlers in flight; cancel those still running after `timeout` (their
        messages are enqueued again by the worker thread)."""
        deadline = time.monotonic() + timeout
        while (pending := list(self._in_flight)) and (remaining := deadline - time.monotonic()) > 0:
            await asyncio.wait(pending, timeout=remaining)
        for task in list(self._in_flight):
            task.cancel()

    async def _clients(self) -> aredis.Redis:
        """The loop's Redis clients, made on first use on the running loop."""
        if self._client is None:
            self._client = aredis.Redis.from_url(self.redis_url, socket_timeout=10, socket_connect_timeout=5)
            # BLPOP for replies: no socket timeout (redis-py 8 defaults to 5 s); asyncio bounds it.
            self._blocking = aredis.Redis.from_url(
                self.redis_url, socket_timeout=None, socket_connect_timeout=5
            )
            self._connections = Connections(self._blocking)
        return self._client

    # -- sending ---------------------------------------------------------------------------

    async def deliver(self, queue: str, envelope: Envelope, *, delay: float = 0.0) -> Awaitable[None]:
        """Enqueue; the receipt resolves when Redis has the message. Deliveries made in one
        loop iteration go to Redis in one pipeline."""
        await self._clients()
        item = self.broker.wire(queue, DELIVER, encode(envelope), round(delay * 1000))
        loop = asyncio.get_running_loop()
        batch = self._batch
        if batch is None:
            batch = self._batch = _Batch()
            loop.call_soon(self._flush)
        future: asyncio.Future[None] = loop.create_future()
        batch.items.append(item)
        batch.futures.append(future)
        return future

    async def request(
        self, queue: str, envelope: Envelope, *, timeout: float, message: Message | None = None
    ) -> Any:
        """Push the request to the module's list of asks of its kind (a query's or a
        command's) and wait for the reply, in one round trip (ADR 0028)."""
        await self._clients()
        assert self._connections is not None
        body = envelope.body if envelope.body or message is None else encode(message)
        return await ask(
            self._connections,
            self.namespace,
            queue,
            envelope,
            query=is_query(envelope, message),
            timeout=timeout,
            body=body,
        )

    async def depths(self, queues: Collection[str]) -> dict[str, int]:
        """LLEN of each module's Redis lists, its queue and its two lists of asks added (one
        pipelined round trip; delayed retries, messages a consumer has fetched but not
        finished and asks being answered are not counted)."""
        names = sorted(queues)
        if not names:
            return {}
        client = await self._clients()
        async with client.pipeline(transaction=False) as pipe:
            for queue in names:
                pipe.llen(self.broker.enqueue_keys(queue)[1])
                pipe.llen(request_list(self.namespace, queue, False))
                pipe.llen(request_list(self.namespace, queue, True))
            lengths = await pipe.execute()
        return {queue: sum(int(n) for n in lengths[3 * i : 3 * i + 3]) for i, queue in enumerate(names)}

    def _flush(self) -> None:
        batch, self._batch = self._batch, None
        if batch is None:
            return
        task = asyncio.get_running_loop().create_task(self._write(batch))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, batch: _Batch) -> None:
        try:
            client = await self._clients()
            async with client.pipeline(transaction=False) as pipe:
                for queue_name, message_id, data in batch.items:
                    keys = self.broker.enqueue_keys(queue_name)
                    pipe.eval(ENQUEUE_LUA, 3, *keys, message_id, data, WAKE_TOKENS)
                await pipe.execute()
        except Exception as exc:
            for future in batch.futures:
                if not future.done():
                    future.set_exception(exc)
            return
        except asyncio.CancelledError:
            for future in batch.futures:
                future.cancel()
            raise
        for future in batch.futures:
            if not future.done():
                future.set_result(None)

    # -- consuming (worker threads) ----------------------------------------------------------

    def _consume(self, queue: str) -> Callable[[str, bytes], None]:
        """The actor of a module queue."""

        def consume(kind: str, data: bytes) -> None:
            self._process(queue, decode_envelope(data))

        consume.__name__ = consume.__qualname__ = actor_name(queue)
        return consume

    def _on_loop(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run a coroutine on the app's loop and wait for it (from a worker thread): a task
        made on the loop, whose end releases a lock the thread waits on (about half the
        cost of `run_coroutine_threadsafe` and its chained futures, ADR 0028)."""
        loop = self._loop
        assert loop is not None
        done = threading.Lock()
        done.acquire()
        tasks: list[asyncio.Task[T]] = []

        def begin() -> None:
            task = loop.create_task(make())
            tasks.append(task)
            self._in_flight.add(task)
            task.add_done_callback(ended)

        def ended(task: asyncio.Task[T]) -> None:
            self._in_flight.discard(task)
            done.release()

        loop.call_soon_threadsafe(begin)  # RuntimeError if the loop is closed
        while not done.acquire(timeout=1.0):
            if loop.is_closed():
                raise RuntimeError("the event loop closed before the handler ran")
        return tasks[0].result()

    def _process(self, queue: str, envelope: Envelope) -> None:
        assert self._host is not None
        if self.broker.stopping:  # picked up while stopping: put it back for the next worker
            self._again(queue, envelope, 0)
            return
        try:
            host = self._host
            result = self._on_loop(lambda: host.process(queue, envelope))
        except BaseException as exc:  # cancelled at shutdown, loop closed, kernel failure
            log.warning(
                "bus.dramatiq.redeliver", queue=queue, message_id=str(envelope.message_id), error=repr(exc)
            )
            self._again(queue, envelope, REDELIVER_AFTER_MS if not self.broker.stopping else 0)
            return
        if result.outcome is Outcome.RETRY:
            again = msgspec.structs.replace(envelope, attempt=envelope.attempt + 1)
            self._again(queue, again, round(result.delay * 1000))

    def _again(self, queue: str, envelope: Envelope, delay_ms: int) -> None:
        """Enqueue once more; acknowledged only after this succeeded (retries while Redis is
        away, unless stopping: then the un-acked message is redelivered by maintenance)."""
        pause = 0.1
        while True:
            try:
                self._actors[queue].send_with_options(
                    args=(DELIVER, encode(envelope)), delay=delay_ms if delay_ms > 0 else None
                )
                return
            except redis.RedisError:
                if self.broker.stopping:
                    raise
                log.warning("bus.dramatiq.enqueue_failed", queue=queue, retry_in=pause)
                time.sleep(pause)
                pause = min(pause * 2, 5.0)
