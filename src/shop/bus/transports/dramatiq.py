"""The Dramatiq/Redis transport: module queues in Redis, consumed by a Dramatiq worker.

Two Redis queues per module: `<module>` for commands and events (deliveries) and for asks of
commands, and `<module>.queries` for asks of queries; one generic actor per queue that takes
`(kind, envelope_bytes)`, kind being "deliver" (a command or event, at least once) or "request"
(an `ask` from another process, answered on a per-request reply key). Each kind of queue has its
own Dramatiq worker (consumer threads and worker threads), so commands saturating a module leave
its queries threads of their own (the served side's bulkhead, ADR 0020). Decisions and
measurements are in docs/adr/0007-dramatiq-transport.md; in short:

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
- The event loop never blocks on Redis: enqueues from the loop go through `redis.asyncio` and are
  batched per loop iteration into one pipeline; the replies to asks wait in `BLPOP` on a client
  without socket timeout, bounded by an asyncio timeout.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Coroutine
from typing import Any, Final, TypeVar

import dramatiq
import msgspec
import redis
import redis.asyncio as aredis
import structlog

from shop.bus.errors import AskTimeout, HandlerFailed, handler_failed
from shop.bus.messages import Envelope, Message, Reply, decode_body, decode_envelope, decode_reply, encode
from shop.bus.transports.base import Host, Outcome, is_query
from shop.bus.transports.redis_broker import ENQUEUE_LUA, WAKE_TOKENS, _Broker, actor_name

log = structlog.get_logger("shop.bus.dramatiq")
T = TypeVar("T")

DELIVER: Final = "deliver"
REQUEST: Final = "request"

#: The suffix of a module's queue of queries (`<module>.queries`).
QUERIES: Final = ".queries"
#: How long worker threads wait on Dramatiq's in-memory work queue before checking for stop.
WORKER_POLL_MS: Final = 100
#: When handling a delivery failed in a way the kernel did not absorb (the loop is gone, the
#: dead-letter store is down), the message is enqueued again after this long, same attempt.
REDELIVER_AFTER_MS: Final = 1000

# -- replies --------------------------------------------------------------------------------


def queries_queue(queue: str) -> str:
    """The queue of a module's queries (asks of Query messages), apart from its commands."""
    return f"{queue}{QUERIES}"


def reply_of(result: Any) -> Reply:
    """Box a handler's reply as the inbox does (bus._encode_reply): a Message by type name and
    body, anything else as plain msgpack, None as no body."""
    if result is None:
        return Reply()
    if isinstance(result, Message):
        return Reply(type=type(result).type_name(), body=encode(result))
    return Reply(body=encode(result))


def result_of(reply: Reply) -> Any:
    """The asker's side of `reply_of`; a handler error is raised as HandlerFailed."""
    if reply.error is not None or reply.error_type is not None:
        raise handler_failed(reply.error or "", error_type=reply.error_type or "Exception", fault=reply.fault)
    if reply.body is None:
        return None
    if reply.type is not None:
        return decode_body(reply.type, reply.body)
    return msgspec.msgpack.decode(reply.body)


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
        self._workers: list[dramatiq.Worker] = []
        self._in_flight: set[concurrent.futures.Future[Any]] = set()
        self._client: aredis.Redis | None = None  # enqueues and replies
        self._blocking: aredis.Redis | None = None  # BLPOP on reply keys: no socket timeout
        self._batch: _Batch | None = None
        self._writes: set[asyncio.Task[None]] = set()
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
        for module in queues:
            for queue in (module, queries_queue(module)):
                self._actors[queue] = dramatiq.Actor(
                    self._consume(queue, module),
                    broker=self.broker,
                    actor_name=actor_name(queue),
                    queue_name=queue,
                    priority=0,
                    options={},
                )
        # Two workers on one broker, each with its own threads and in-memory work queue: the
        # commands' and the queries' (their whitelists are disjoint).
        for names, threads in (
            (set(queues), self.worker_threads),
            ({queries_queue(m) for m in queues}, self.query_threads),
        ):
            worker = dramatiq.Worker(
                self.broker, queues=names, worker_threads=threads, worker_timeout=WORKER_POLL_MS
            )
            worker.queue_prefetch = self.prefetch
            worker.start()
            self._workers.append(worker)

    async def stop(self) -> None:
        """Finish the messages being handled (up to `shutdown_timeout_s`), put back the ones
        fetched but not started, stop every thread, close every connection."""
        self.broker.stopping = True
        workers, self._workers = self._workers, []
        if workers:
            for worker in workers:
                for thread in worker.workers:
                    thread.stop()  # take no new message after the current one
            with contextlib.suppress(redis.RedisError):
                await self._kick(sum(len(worker.consumers) for worker in workers))
            await self._drain(self.shutdown_timeout_s)
            for worker in workers:
                await asyncio.to_thread(worker.stop, timeout=int(self.shutdown_timeout_s * 1000) + 5_000)
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        batch, self._batch = self._batch, None
        if batch is not None:
            for future in batch.futures:
                if not future.done():
                    future.set_exception(ConnectionError("transport stopped"))
        if self._client is not None:
            with contextlib.suppress(redis.RedisError):
                await self._client.delete(self.broker.kick_key)
            await self._client.aclose()
        if self._blocking is not None:
            await self._blocking.aclose()
        self._client = self._blocking = None
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
            await asyncio.wait([asyncio.wrap_future(f) for f in pending], timeout=remaining)
        for future in list(self._in_flight):
            future.cancel()

    async def _clients(self) -> aredis.Redis:
        """The loop's Redis clients, made on first use on the running loop."""
        if self._client is None:
            self._client = aredis.Redis.from_url(self.redis_url, socket_timeout=10, socket_connect_timeout=5)
            # BLPOP for replies: no socket timeout (redis-py 8 defaults to 5 s); asyncio bounds it.
            self._blocking = aredis.Redis.from_url(
                self.redis_url, socket_timeout=None, socket_connect_timeout=5
            )
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
        """Enqueue the request and wait for its reply in one pipeline: [EVAL enqueue, BLPOP].
        A query goes to the module's queue of queries, anything else to the module's queue."""
        await self._clients()
        assert self._blocking is not None
        reply_key = f"{self.namespace}:__reply__.{uuid.uuid4().hex}"
        deadline = time.time() + timeout
        if envelope.deadline is not None:
            deadline = min(deadline, envelope.deadline)
        body = envelope.body if envelope.body or message is None else encode(message)
        wire = msgspec.structs.replace(envelope, body=body, reply_to=reply_key, deadline=deadline)
        target = queries_queue(queue) if is_query(envelope, message) else queue
        queue_name, message_id, data = self.broker.wire(target, REQUEST, encode(wire), 0)
        try:
            async with asyncio.timeout(timeout):
                async with self._blocking.pipeline(transaction=False) as pipe:
                    pipe.eval(
                        ENQUEUE_LUA, 3, *self.broker.enqueue_keys(queue_name), message_id, data, WAKE_TOKENS
                    )
                    # The server-side block outlives ours, so a reply is never popped and lost.
                    pipe.blpop([reply_key], timeout=math.ceil(timeout) + 1)
                    _, popped = await pipe.execute()
        except TimeoutError:
            raise AskTimeout(f"no reply from {queue} to {envelope.type} within {timeout}s") from None
        if popped is None:
            raise AskTimeout(f"no reply from {queue} to {envelope.type} within {timeout}s")
        raw = popped[1]
        assert isinstance(raw, bytes)
        return result_of(decode_reply(raw))

    async def depths(self, queues: Collection[str]) -> dict[str, int]:
        """LLEN of each module's Redis lists, its queue and its queue of queries added (one
        pipelined round trip; delayed retries and messages a consumer has fetched but not
        finished are not counted)."""
        names = sorted(queues)
        if not names:
            return {}
        client = await self._clients()
        async with client.pipeline(transaction=False) as pipe:
            for queue in names:
                pipe.llen(self.broker.enqueue_keys(queue)[1])
                pipe.llen(self.broker.enqueue_keys(queries_queue(queue))[1])
            lengths = await pipe.execute()
        return {queue: int(lengths[2 * n]) + int(lengths[2 * n + 1]) for n, queue in enumerate(names)}

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

    def _consume(self, queue: str, module: str) -> Callable[[str, bytes], None]:
        """The actor of a Redis queue (`module` or its queue of queries): the host hears of
        the module, whichever of its queues the message came by."""

        def consume(kind: str, data: bytes) -> None:
            envelope = decode_envelope(data)
            if kind == REQUEST:
                self._answer(module, envelope)
            else:
                self._process(module, envelope)

        consume.__name__ = consume.__qualname__ = actor_name(queue)
        return consume

    def _on_loop(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run a coroutine on the app's loop and wait for it (from a worker thread)."""
        assert self._loop is not None
        coroutine = make()
        try:
            future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        except RuntimeError:  # the loop is closed
            coroutine.close()
            raise
        self._in_flight.add(future)
        try:
            return future.result()
        finally:
            self._in_flight.discard(future)

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

    def _answer(self, queue: str, envelope: Envelope) -> None:
        if envelope.deadline is not None and time.time() >= envelope.deadline:
            log.info("bus.dramatiq.expired_request", queue=queue, type=envelope.type)
            return  # the asker has given up (AskTimeout): its outcome is unknown, not run late
        try:
            reply = self._on_loop(lambda: self._reply(queue, envelope))
            if reply is not None and envelope.reply_to is not None:
                # From this thread with the sync client: measured as fast as pushing from the
                # loop (ADR 0007), and it keeps that work off the app's loop.
                pipe = self.broker.client.pipeline(transaction=False)
                pipe.lpush(envelope.reply_to, encode(reply))
                pipe.expire(envelope.reply_to, self.reply_ttl_s)
                pipe.execute()
        except BaseException as exc:  # cancelled at shutdown, loop closed, Redis away
            log.warning("bus.dramatiq.reply_failed", queue=queue, type=envelope.type, error=repr(exc))

    async def _reply(self, queue: str, envelope: Envelope) -> Reply | None:
        """Run the handler on the app's loop within the asker's deadline; None if past it."""
        assert self._host is not None
        remaining = None if envelope.deadline is None else max(0.0, envelope.deadline - time.time())
        try:
            async with asyncio.timeout(remaining) as scope:
                return reply_of(await self._host.answer(queue, envelope))
        except HandlerFailed as exc:
            return Reply(error=str(exc), error_type=exc.error_type, fault=exc.fault)
        except TimeoutError as exc:
            if scope.expired():
                return None  # the asker has given up
            return Reply(error=repr(exc), error_type=type(exc).__name__)
        except Exception as exc:
            return Reply(error=repr(exc), error_type=type(exc).__name__)
