"""The Dramatiq/Redis transport: module queues in Dramatiq's Redis layout, consumed on the
app's event loop; asks on plain Redis lists beside them.

Commands and events (deliveries, at least once, retried by the kernel) go to the module's
Dramatiq queue `<module>` as messages of one generic actor per queue that takes
`(kind, envelope_bytes)`. Asks (request/reply, between processes) do not go through Dramatiq:
the asker pushes the request to one of the module's two request lists (commands, queries) and
waits for the reply on a key of its own, and the served process answers from a listener task
per list on its event loop (`redis_asks`, ADR 0028). Decisions and measurements are in
docs/adr/0007-dramatiq-transport.md and 0028; in short:

- The transport owns its broker (`_Broker`, a namespaced `RedisBroker`, in `redis_broker.py`),
  never the global one, with no Dramatiq middleware: the kernel retries, dead-letters and times out itself.
- Handlers are async and use resources bound to the app's event loop. A `QueueConsumer` a
  module queue (`redis_consumer.py`) fetches on that loop with Dramatiq's dispatch script (so
  heartbeats, maintenance and the message layout are Dramatiq's) and acknowledges a message only
  once it was handled (or its retry enqueued): a process killed mid-message has it redelivered
  by a live consumer's queue maintenance once its heartbeat is `heartbeat_timeout_ms` old.
  Dramatiq's own worker runs for the delay queues only (`_DelayWorker`): it holds delayed
  messages until due and enqueues them on their module queue.
- An idle consumer blocks on a per-queue "wake" list that every enqueue pushes to in the same
  round trip, and fetches in that round trip, so it answers in well under a millisecond and a
  quiet process costs Redis one fetch per queue per `idle_block`.
- The served side's bulkhead (ADR 0020): asks of queries and asks of commands wait in separate
  lists and have separate slots (`query_threads`, `worker_threads`), and deliveries have
  `worker_threads` slots of their own: a saturated command path leaves the queries theirs.
- The event loop never blocks on Redis: enqueues from the loop go through `redis.asyncio` and are
  batched per loop iteration into one pipeline; the replies to asks and the consumers' waits
  block in Redis on connections without socket timeout, bounded by asyncio or by the block.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Final

import dramatiq
import msgspec
import redis
import redis.asyncio as aredis

from shop.bus.messages import Envelope, Message, encode
from shop.bus.transports.base import Host, Outcome, is_query
from shop.bus.transports.inprocess import Bulkhead
from shop.bus.transports.redis_asks import AskServer, Connections, ask, reply_of, request_list, result_of
from shop.bus.transports.redis_broker import ENQUEUE_LUA, WAKE_TOKENS, _Broker, actor_name
from shop.bus.transports.redis_consumer import QueueConsumer
from shop.observability.loggers import get_logger

__all__ = ["DramatiqTransport", "reply_of", "result_of"]

log = get_logger("shop.bus.dramatiq")

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


class _DelayWorker(dramatiq.Worker):
    """Dramatiq's worker for the delay queues only: it holds delayed messages until they are
    due, then enqueues them on their module queue. The module queues are consumed on the loop
    (`QueueConsumer`)."""

    def _add_consumer(self, queue_name: str, *, delay: bool = False) -> None:
        if delay:
            super()._add_consumer(queue_name, delay=True)


class DramatiqTransport:
    """Module queues on Redis in Dramatiq's layout, consumed on the app's event loop (the delay
    queues by a Dramatiq worker). See the module docstring and ADR 0007."""

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
        self._worker: dramatiq.Worker | None = None
        self._in_flight: set[asyncio.Task[Any]] = set()  # handlers running (on the loop)
        self._consumers: list[QueueConsumer] = []
        self._slots = Bulkhead(worker_threads)  # deliveries handled at once, all queues
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
            # Declared on the broker for the delay queue's consumer (and Dramatiq's tooling).
            dramatiq.Actor(
                self._never_called(queue),
                broker=self.broker,
                actor_name=actor_name(queue),
                queue_name=queue,
                priority=0,
                options={},
            )
        worker = _DelayWorker(
            self.broker, queues=set(queues), worker_threads=1, worker_timeout=WORKER_POLL_MS
        )
        worker.start()
        self._worker = worker
        for queue in queues:
            consumer = QueueConsumer(
                self.broker,
                client,
                self._connections,
                queue,
                self._handle,
                prefetch=self.prefetch,
                idle_block_s=self.broker.idle_block_s,
            )
            await consumer.start()
            self._consumers.append(consumer)

    async def stop(self) -> None:
        """Finish the messages being handled (up to `shutdown_timeout_s`), put back the ones
        fetched but not started, stop every thread, close every connection."""
        self.broker.stopping = True
        asks, self._asks = self._asks, None
        if asks is not None:
            await asks.stop(self.shutdown_timeout_s)
        worker, self._worker = self._worker, None
        await self._stop_consuming(worker)
        if worker is not None:
            await asyncio.to_thread(worker.stop, timeout=int(self.shutdown_timeout_s * 1000) + 5_000)
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        batch, self._batch = self._batch, None
        if batch is not None:
            for future in batch.futures:
                if not future.done():
                    future.set_exception(ConnectionError("transport stopped"))
        await self._close()

    async def _stop_consuming(self, worker: dramatiq.Worker | None) -> None:
        """Fetch no more; let the deliveries in hand finish (up to `shutdown_timeout_s`) and
        the fetched ones still waiting for a slot go back; write the last acknowledgements."""
        consumers = self._consumers
        for consumer in consumers:  # before the kick: a kicked consumer must not wait again
            consumer.stopping = True
        kicks = len(consumers) + (len(worker.consumers) if worker is not None else 0)
        with contextlib.suppress(redis.RedisError, OSError):
            await self._kick(kicks)
        for consumer in consumers:
            await consumer.stop_fetching()
        if worker is not None:
            for thread in worker.workers:
                thread.stop()
        await self._drain(self.shutdown_timeout_s)
        waiting = [task for consumer in consumers for task in consumer.tasks]
        if waiting:  # fetched, not started: each puts its message back once it has a slot
            _, pending = await asyncio.wait(waiting, timeout=self.shutdown_timeout_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)
        for consumer in consumers:
            await consumer.flush_acks()

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
        messages are enqueued again, same attempt, by `_handle`)."""
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

    # -- consuming (on the loop) -------------------------------------------------------------

    @staticmethod
    def _never_called(queue: str) -> Callable[[str, bytes], None]:
        """The actor of a module queue: Dramatiq's worker consumes only the delay queues, and
        moves their due messages to the module queue, which `QueueConsumer` consumes."""

        def consume(kind: str, data: bytes) -> None:
            raise RuntimeError(f"{actor_name(queue)} is consumed on the event loop")

        consume.__name__ = consume.__qualname__ = actor_name(queue)
        return consume

    async def _handle(self, consumer: QueueConsumer, envelope: Envelope, redis_id: str) -> None:
        """Handle one delivery within the transport's slots, then acknowledge it: after its
        retry is enqueued (RETRY), or once the host stored it (DONE, DEAD). Fetched while
        stopping, or still waiting for a slot then: put back for the next consumer."""
        assert self._host is not None
        slots = self._slots
        try:
            if not slots.try_enter():
                await slots.enter()
        except asyncio.CancelledError:
            await consumer.put_back(redis_id)
            raise
        try:
            if self.broker.stopping:
                await consumer.put_back(redis_id)
                return
            queue = consumer.queue
            task = asyncio.current_task()
            assert task is not None
            self._in_flight.add(task)
            try:
                result = await self._host.process(queue, envelope)
            except asyncio.CancelledError:  # stopped before it finished: the same attempt again
                await self._again(queue, envelope, 0)
                consumer.ack(redis_id)
                raise
            except Exception as exc:  # a kernel failure (the dead-letter store is down ...)
                log.warning(
                    "bus.dramatiq.redeliver",
                    queue=queue,
                    message_id=str(envelope.message_id),
                    error=repr(exc),
                )
                await self._again(queue, envelope, REDELIVER_AFTER_MS)
                consumer.ack(redis_id)
                return
            finally:
                self._in_flight.discard(task)
            if result.outcome is Outcome.RETRY:
                again = msgspec.structs.replace(envelope, attempt=envelope.attempt + 1)
                await self._again(queue, again, round(result.delay * 1000))
            consumer.ack(redis_id)
        except (redis.RedisError, OSError, ConnectionError) as exc:
            # Stopping with Redis away: unacknowledged, so delivered again after the heartbeat
            # timeout (the inbox drops a duplicate).
            log.warning("bus.dramatiq.not_acknowledged", queue=consumer.queue, error=repr(exc))
        finally:
            slots.leave()

    async def _again(self, queue: str, envelope: Envelope, delay_ms: int) -> None:
        """Enqueue once more (the acknowledgement comes after this succeeded); retries while
        Redis is away, unless stopping."""
        pause = 0.1
        while True:
            try:
                await (await self.deliver(queue, envelope, delay=delay_ms / 1000))
                return
            except (redis.RedisError, OSError, ConnectionError):
                if self.broker.stopping:
                    raise
                log.warning("bus.dramatiq.enqueue_failed", queue=queue, retry_in=pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)
