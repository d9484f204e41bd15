"""Asks across processes on plain Redis lists, beside Dramatiq (ADR 0028).

An ask (request/reply) does not go through Dramatiq's consumers and worker threads:

- The asker sends ``[LPUSH <request list>, BLPOP <reply key>]`` in one pipeline on a
  connection of its own from the pool (one round trip to Redis, then it waits for the reply),
  bounded by an asyncio timeout. The request is the encoded envelope with `reply_to` (a key of
  its own per request) and `deadline` set.
- Each served module has two request lists, one per bulkhead (ADR 0020): ``<ns>:__asks__.<module>``
  for asks of commands and ``<ns>:__asks__.<module>.queries`` for asks of queries. A listener
  task per list on the app's event loop takes requests (``BLMPOP``, as many as it has free
  slots) and runs each in a task of its own; a list has its own slots (the commands' and the
  queries' counts), so commands holding all of theirs leave the queries theirs. A request is
  taken only when a slot is free: what a saturated or stopped instance cannot start stays in
  Redis for another instance (or the next one) to take.
- The reply (`Reply`, as the inbox boxes it) is pushed to the request's reply key with a TTL;
  the replies finished in one loop iteration go to Redis in one pipeline.
- A request whose deadline has passed when it is taken is dropped unanswered (its asker has
  raised AskTimeout: its outcome is unknown, it is not run late). A request taken by an
  instance that dies before replying is lost: its asker times out.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import Collection
from typing import Any, Final

import msgspec
import redis
import redis.asyncio as aredis
from redis.asyncio.connection import AbstractConnection as Connection

from shop.bus.errors import AskTimeout, HandlerFailed, handler_failed
from shop.bus.messages import Envelope, Message, Reply, decode_body, decode_envelope, decode_reply, encode
from shop.bus.transports.base import Host
from shop.observability.loggers import get_logger

log = get_logger("shop.bus.asks")

#: The suffix of a module's list of asks of queries (apart from its asks of commands).
QUERIES: Final = ".queries"
#: A listener blocks at most this long before it looks again (a stop kick wakes it at once).
LISTEN_BLOCK_S: Final = 5.0


class Connections:
    """Connections of a client's pool taken and given back without the pool's bookkeeping
    (redis-py 8 records metrics and checks health on every checkout: more than a round trip
    costs here). A connection whose command was interrupted is dropped, never reused."""

    def __init__(self, client: aredis.Redis) -> None:
        self.pool = client.connection_pool
        self._idle: list[Connection] = []
        self._all: set[Connection] = set()

    async def take(self) -> Connection:
        """An idle connection, or a new one; one Redis closed while it sat idle (a restart, a
        CLIENT KILL, a timeout) is dropped, not used."""
        while self._idle:
            connection = self._idle.pop()
            reader = getattr(connection, "_reader", None)
            if reader is not None and not reader.at_eof():
                return connection
            await self.drop(connection)
        return await self._fresh()

    async def _fresh(self) -> Connection:
        connection: Connection = self.pool.make_connection()  # type: ignore[no-untyped-call]
        self._all.add(connection)
        try:
            await connection.connect()  # type: ignore[no-untyped-call]
        except BaseException:
            self._all.discard(connection)
            raise
        return connection

    def give(self, connection: Connection) -> None:
        self._idle.append(connection)

    async def drop(self, connection: Connection) -> None:
        self._all.discard(connection)
        with contextlib.suppress(Exception):
            await connection.disconnect(nowait=True)

    async def run(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Send the commands in one write and read their replies (one round trip); raise the
        first error reply."""
        connection = await self.take()
        try:
            await connection.send_packed_command(connection.pack_commands(commands), check_health=False)
            replies = [await connection.read_response() for _ in commands]
        except BaseException:
            await self.drop(connection)
            raise
        self.give(connection)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    async def aclose(self) -> None:
        connections, self._idle = list(self._all), []
        self._all.clear()
        for connection in connections:
            with contextlib.suppress(Exception):
                await connection.disconnect()


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


def request_list(namespace: str, module: str, query: bool) -> str:
    """The Redis list a module's asks of one kind wait in."""
    return f"{namespace}:__asks__.{module}{QUERIES if query else ''}"


async def ask(
    connections: Connections,
    namespace: str,
    queue: str,
    envelope: Envelope,
    *,
    query: bool,
    timeout: float,
    body: bytes,
) -> Any:
    """Push the request and wait for its reply, in one round trip; AskTimeout after `timeout`
    (or at the envelope's own deadline, if sooner)."""
    reply_key = f"{namespace}:__reply__.{uuid.uuid4().hex}"
    deadline = time.time() + timeout
    if envelope.deadline is not None:
        deadline = min(deadline, envelope.deadline)
    wire = msgspec.structs.replace(envelope, body=body, reply_to=reply_key, deadline=deadline)
    try:
        async with asyncio.timeout(timeout):
            # The server-side block outlives ours, so a reply is never popped and lost.
            _, popped = await connections.run(
                ("LPUSH", request_list(namespace, queue, query), encode(wire)),
                ("BLPOP", reply_key, math.ceil(timeout) + 1),
            )
    except TimeoutError:
        raise AskTimeout(f"no reply from {queue} to {envelope.type} within {timeout}s") from None
    if popped is None:
        raise AskTimeout(f"no reply from {queue} to {envelope.type} within {timeout}s")
    raw = popped[1]
    assert isinstance(raw, bytes)
    return result_of(decode_reply(raw))


class AskServer:
    """Answers the asks of the local modules: a listener task per request list, replies
    batched per loop iteration. Runs on the loop that called `start`."""

    def __init__(
        self,
        *,
        namespace: str,
        client: aredis.Redis,
        connections: Connections,
        command_slots: int,
        query_slots: int,
        reply_ttl_s: int,
    ) -> None:
        self.namespace = namespace
        self.client = client
        self.connections = connections
        self.command_slots = command_slots
        self.query_slots = query_slots
        self.reply_ttl_s = reply_ttl_s
        self.kick_key = f"{namespace}:__askkick__.{uuid.uuid4().hex}"
        self._host: Host | None = None
        self._listeners: list[asyncio.Task[None]] = []
        self._handling: set[asyncio.Task[None]] = set()
        self._replies: list[tuple[str, bytes]] = []
        self._writes: set[asyncio.Task[None]] = set()
        self._stopping = False

    def lists(self, modules: Collection[str]) -> list[str]:
        """The request lists of these modules (both kinds)."""
        return [request_list(self.namespace, m, q) for m in sorted(modules) for q in (False, True)]

    async def start(self, host: Host, modules: Collection[str]) -> None:
        self._host = host
        loop = asyncio.get_running_loop()
        for module in modules:
            for query, slots in ((False, self.command_slots), (True, self.query_slots)):
                key = request_list(self.namespace, module, query)
                self._listeners.append(loop.create_task(self._listen(module, key, slots)))

    async def stop(self, timeout: float) -> None:
        """Take no new request; finish those being answered (up to `timeout`), then cancel."""
        self._stopping = True
        if self._listeners:
            with contextlib.suppress(redis.RedisError):
                async with self.client.pipeline(transaction=False) as pipe:
                    # Enough for every listener even if one pops as many as it has slots.
                    tokens = len(self._listeners) * max(self.command_slots, self.query_slots)
                    pipe.lpush(self.kick_key, *([1] * tokens))
                    pipe.expire(self.kick_key, 60)
                    await pipe.execute()
            _, pending = await asyncio.wait(self._listeners, timeout=min(timeout, LISTEN_BLOCK_S + 1))
            for task in pending:  # Redis is away: nothing was taken that could be lost
                task.cancel()
            await asyncio.gather(*self._listeners, return_exceptions=True)
            self._listeners = []
        if self._handling:
            _, pending = await asyncio.wait(list(self._handling), timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        self._flush()
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        with contextlib.suppress(redis.RedisError):
            await self.client.delete(self.kick_key)

    async def _listen(self, module: str, key: str, slots: int) -> None:
        free = asyncio.Semaphore(slots)
        loop = asyncio.get_running_loop()
        pause = 0.1
        while not self._stopping:
            await free.acquire()
            if self._stopping:
                free.release()
                break
            taken = 1
            while taken < slots and not free.locked():  # every free slot, without waiting
                await free.acquire()
                taken += 1
            try:
                [popped] = await self.connections.run(
                    ("BLMPOP", LISTEN_BLOCK_S, 2, key, self.kick_key, "LEFT", "COUNT", taken)
                )
                pause = 0.1
            except (redis.RedisError, OSError) as exc:
                for _ in range(taken):
                    free.release()
                log.warning("bus.asks.listen_failed", list=key, error=repr(exc), retry_in=pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)
                continue
            items: list[bytes] = []
            if popped is not None:
                name, values = popped
                if name == self.kick_key.encode():
                    self._stopping = True
                else:
                    items = [v for v in values if isinstance(v, bytes)]
            for _ in range(taken - len(items)):
                free.release()
            for data in items:
                task = loop.create_task(self._handle(module, data, free))
                self._handling.add(task)
                task.add_done_callback(self._handling.discard)

    async def _handle(self, module: str, data: bytes, free: asyncio.Semaphore) -> None:
        try:
            envelope = decode_envelope(data)
            if envelope.deadline is not None and time.time() >= envelope.deadline:
                log.info("bus.asks.expired_request", queue=module, type=envelope.type)
                return  # the asker has given up (AskTimeout): not run late
            reply = await self._reply(module, envelope)
            if reply is not None and envelope.reply_to is not None:
                if not self._replies:
                    asyncio.get_running_loop().call_soon(self._flush)
                self._replies.append((envelope.reply_to, encode(reply)))
        except Exception as exc:  # an undecodable request
            log.warning("bus.asks.bad_request", queue=module, error=repr(exc))
        finally:
            free.release()

    async def _reply(self, module: str, envelope: Envelope) -> Reply | None:
        """Run the handler within the asker's deadline; None if past it."""
        assert self._host is not None
        remaining = None if envelope.deadline is None else max(0.0, envelope.deadline - time.time())
        try:
            async with asyncio.timeout(remaining) as scope:
                return reply_of(await self._host.answer(module, envelope))
        except HandlerFailed as exc:
            return Reply(error=str(exc), error_type=exc.error_type, fault=exc.fault)
        except TimeoutError as exc:
            if scope.expired():
                return None  # the asker has given up
            return Reply(error=repr(exc), error_type=type(exc).__name__)
        except Exception as exc:
            return Reply(error=repr(exc), error_type=type(exc).__name__)

    def _flush(self) -> None:
        replies, self._replies = self._replies, []
        if replies:
            task = asyncio.get_running_loop().create_task(self._write(replies))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

    async def _write(self, replies: list[tuple[str, bytes]]) -> None:
        try:
            commands: list[tuple[Any, ...]] = []
            for key, data in replies:
                commands.append(("LPUSH", key, data))
                commands.append(("EXPIRE", key, self.reply_ttl_s))
            await self.connections.run(*commands)
        except redis.RedisError as exc:  # the askers time out
            log.warning("bus.asks.reply_failed", replies=len(replies), error=repr(exc))
