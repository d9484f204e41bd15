"""The Redis broker under the Dramatiq transport: a namespaced ``RedisBroker`` with msgpack
messages, per-queue wake-up lists and a stop kick (``_Broker``), and the consumer that blocks on
a queue's wake list instead of polling an idle queue (``_Consumer``). See the docstring of
:mod:`shop.bus.transports.dramatiq` and ADR 0007."""

from __future__ import annotations

import contextlib
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, Final

import dramatiq
import msgspec
import redis
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer, _scripts
from dramatiq.common import current_millis, dq_name
from dramatiq.errors import ConnectionClosed
from redis.exceptions import NoScriptError

from shop.observability.loggers import get_logger

log = get_logger("shop.bus.dramatiq")

#: Wake tokens kept per queue: enough to wake every consumer process of a queue, few enough
#: that an idle consumer spins through them quickly when it has drained the queue.
WAKE_TOKENS: Final = 64
#: Enqueue as Dramatiq's dispatch script does (message data in `<queue>.msgs`, its id pushed on
#: `<queue>`), plus a wake token, in one atomic command. Sent with EVAL (never NOSCRIPT) and
#: without the dispatch script's heartbeat and maintenance, which are for consumers.
#: KEYS: messages hash, queue list, wake list. ARGV: redis message id, data, wake tokens kept.
ENQUEUE_LUA: Final = """
redis.call("hset", KEYS[1], ARGV[1], ARGV[2])
redis.call("rpush", KEYS[2], ARGV[1])
redis.call("lpush", KEYS[3], 1)
redis.call("ltrim", KEYS[3], 0, tonumber(ARGV[3]) - 1)
"""


#: Acknowledge messages as the dispatch script's "ack" does (forget them from this worker's
#: set of fetched messages, then their data), many in one command.
#: KEYS: this worker's acks set of the queue, the queue's messages hash. ARGV: redis message ids.
ACK_LUA: Final = """
for i = 1, #ARGV do
    if redis.call("srem", KEYS[1], ARGV[i]) > 0 then
        redis.call("hdel", KEYS[2], ARGV[i])
    end
end
"""


def actor_name(queue: str) -> str:
    """The generic actor that consumes a module queue."""
    return f"shop_bus.{queue}"


class MsgpackEncoder(dramatiq.Encoder):
    """Dramatiq messages as msgpack (msgspec): the envelope travels as raw bytes, not base64."""

    def __init__(self) -> None:
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(dict[str, Any])

    def encode(self, data: dict[str, Any]) -> bytes:
        return self._encoder.encode(data)

    def decode(self, data: bytes) -> dict[str, Any]:
        try:
            return self._decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise dramatiq.DecodeError("undecodable message", data, exc) from None  # type: ignore[no-untyped-call]


# -- the broker -----------------------------------------------------------------------------


class _Broker(RedisBroker):
    """A namespaced RedisBroker with msgpack messages, wake-up lists, a stop kick, and queue
    maintenance at least every `maintenance_interval_ms` per queue (on top of the chance)."""

    def __init__(
        self,
        redis_url: str,
        *,
        namespace: str,
        heartbeat_timeout_ms: int,
        maintenance_chance: int,
        dead_message_ttl_ms: int,
        idle_block_s: float,
    ) -> None:
        client = redis.Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=5)
        super().__init__(  # type: ignore[no-untyped-call]
            middleware=[],
            namespace=namespace,
            heartbeat_timeout=heartbeat_timeout_ms,
            maintenance_chance=maintenance_chance,
            dead_message_ttl=dead_message_ttl_ms,
            client=client,
        )
        self.encoder = MsgpackEncoder()
        self.idle_block_s = idle_block_s
        # BLPOP on wake lists needs a socket timeout longer than the block (redis-py 8: 5 s).
        self.wait_client = redis.Redis.from_url(
            redis_url, socket_timeout=idle_block_s + 10, socket_connect_timeout=5
        )
        self.kick_key = f"{namespace}:__kick__.{self.broker_id}"
        self.maintenance_interval_ms = max(100, heartbeat_timeout_ms // 2)
        self._maintained: dict[str, int] = {}
        self.stopping = False

    @property
    def consumer_class(self) -> type[_Consumer]:
        return _Consumer

    def wake_key(self, queue_name: str) -> str:
        return f"{self.namespace}:__wake__.{queue_name}"

    def maintain_now(self, command: str, queue_name: str, now: int) -> int:
        """1 if this dispatch should run queue maintenance (requeue a dead worker's messages)."""
        if command in ("ack", "nack"):
            return 0
        if random.randint(1, 1_000_000) <= self.maintenance_chance or (
            now - self._maintained.get(queue_name, 0) >= self.maintenance_interval_ms
        ):
            self._maintained[queue_name] = now
            return 1
        return 0

    def dispatch_args(self, command: str, queue_name: str, *args: Any, max_unpack: int) -> list[Any]:
        now = current_millis()
        return [
            command,
            now,
            queue_name,
            self.broker_id,
            self.heartbeat_timeout,
            self.dead_message_ttl,
            self.maintain_now(command, queue_name, now),
            max_unpack,
            *args,
        ]

    def _dispatch(self, command: str) -> Callable[..., Any]:
        dispatch = self.scripts["dispatch"]
        keys = [self.namespace]

        def do_dispatch(queue_name: str, *args: Any) -> Any:
            arguments = self.dispatch_args(command, queue_name, *args, max_unpack=self._max_unpack_size())  # type: ignore[no-untyped-call]
            return dispatch(args=arguments, keys=keys)

        return do_dispatch

    def enqueue_keys(self, queue_name: str) -> tuple[str, str, str]:
        """KEYS of ENQUEUE_LUA for a queue (or delay queue) name."""
        full = f"{self.namespace}:{queue_name}"
        return f"{full}.msgs", full, self.wake_key(queue_name)

    def wire(self, queue: str, kind: str, data: bytes, delay_ms: int) -> tuple[str, str, bytes]:
        """A Dramatiq message for a module queue's actor, encoded: (queue name, id, bytes)."""
        now = current_millis()
        message_id = str(uuid.uuid4())
        options: dict[str, Any] = {"redis_message_id": message_id}
        queue_name = queue
        if delay_ms > 0:
            queue_name = dq_name(queue)
            options["eta"] = now + delay_ms
        fields = {
            "queue_name": queue_name,
            "actor_name": actor_name(queue),
            "args": (kind, data),
            "kwargs": {},
            "options": options,
            "message_id": message_id,
            "message_timestamp": now,
        }
        return queue_name, message_id, self.encoder.encode(fields)

    def enqueue(self, message: dramatiq.Message[Any], *, delay: int | None = None) -> dramatiq.Message[Any]:
        """Dramatiq's enqueue (retries and due delayed messages, from worker threads), with
        our encoder and a wake token, in one command."""
        options: dict[str, Any] = {"redis_message_id": str(uuid.uuid4())}
        queue_name = message.queue_name
        if delay is not None:
            queue_name = dq_name(queue_name)
            options["eta"] = current_millis() + delay
        message = message.copy(queue_name=queue_name, options=options)
        self.emit_before("enqueue", message, delay)
        data = self.encoder.encode(message.asdict())
        keys = self.enqueue_keys(queue_name)
        self.client.eval(ENQUEUE_LUA, 3, *keys, options["redis_message_id"], data, WAKE_TOKENS)
        self.emit_after("enqueue", message, delay)
        return message


class _Consumer(_RedisConsumer):
    """Dramatiq's Redis consumer, blocking on the queue's wake list instead of sleeping."""

    broker: _Broker

    def __init__(self, broker: _Broker, queue_name: str, prefetch: int, timeout: int) -> None:
        super().__init__(broker, queue_name, prefetch, timeout)  # type: ignore[no-untyped-call]
        self.delayed = queue_name.endswith(".DQ")
        self.etas: dict[str, int] = {}  # delayed messages held in memory -> their eta (ms)
        self.freed = threading.Event()
        self.refill = max(1, prefetch // 4)
        self.wake = broker.wake_key(queue_name)
        self.kick = broker.kick_key.encode()
        self.ack_keys = (
            f"{broker.namespace}:__acks__.{broker.broker_id}.{queue_name}",
            f"{broker.namespace}:{queue_name}.msgs",
        )
        self._ack_lock = threading.Lock()
        self._acks: list[str] = []  # acknowledged by a worker thread, not yet in Redis
        self._acking = False
        # The last fetch took fewer messages than it asked for: the queue was empty then, so
        # the next one waits for a wake token first (its fetch goes in the same round trip).
        self.drained = False

    def ack(self, message: MessageProxy) -> None:
        """Acknowledge as a group: the worker thread that finds no acknowledgement under way
        writes its own and every one that arrives meanwhile (one command each round); the
        others leave theirs to it. One left unwritten (Redis away, a crash) means the message
        is delivered again, as with any unacknowledged message; the inbox drops the duplicate."""
        try:
            self._ack(message.options["redis_message_id"])
        except redis.ConnectionError as exc:
            raise ConnectionClosed(exc) from None  # type: ignore[no-untyped-call]
        finally:
            self.queued_message_ids.discard(message.message_id)
            self._release(message.message_id)

    def _ack(self, redis_message_id: str) -> None:
        with self._ack_lock:
            self._acks.append(redis_message_id)
            if self._acking:
                return
            self._acking = True
        while True:
            with self._ack_lock:
                ids, self._acks = self._acks, []
                if not ids:
                    self._acking = False
                    return
            try:
                self.broker.client.eval(ACK_LUA, 2, *self.ack_keys, *ids)
            except BaseException:
                with self._ack_lock:
                    self._acks[:0] = ids  # for the next acknowledgement, or close()
                    self._acking = False
                raise

    def nack(self, message: MessageProxy) -> None:
        try:
            super().nack(message)  # type: ignore[no-untyped-call]
        finally:
            self._release(message.message_id)

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        messages = list(messages)
        super().requeue(messages)  # type: ignore[no-untyped-call]
        for message in messages:
            self.etas.pop(message.message_id, None)
        if messages:  # wake whoever else consumes this queue
            with contextlib.suppress(redis.RedisError):
                self.broker.client.lpush(self.wake, *([1] * min(len(messages), WAKE_TOKENS)))

    def _release(self, message_id: str) -> None:
        self.etas.pop(message_id, None)
        self.freed.set()

    def __next__(self) -> MessageProxy | None:
        try:
            while True:
                if self.message_cache:
                    data = self.message_cache.pop(0)
                    if data is None:
                        continue
                    fields = self.broker.encoder.decode(data)
                    fields["args"] = tuple(fields["args"])
                    message: dramatiq.Message[Any] = dramatiq.Message(**fields)
                    self.queued_message_ids.add(message.message_id)
                    if self.delayed:
                        self.etas[message.message_id] = int(message.options.get("eta") or 0)
                    return MessageProxy(message)
                if self.broker.stopping:
                    time.sleep(0.01)
                    return None
                self.freed.clear()
                capacity = self.prefetch - self.outstanding_message_count
                # Refill in batches (a quarter of the prefetch at least), not one fetch per ack.
                if capacity >= self.refill or capacity == self.prefetch:
                    if not self.drained:
                        self.message_cache = self.broker.do_fetch(self.queue_name, capacity)
                        self.drained = len(self.message_cache) < capacity
                        if self.message_cache:
                            continue
                    # Every message enqueued since that fetch pushed a wake token.
                    woken = self._block_and_fetch(self._wait_s(), capacity)
                    self.drained = len(self.message_cache) < capacity
                    if not woken and not self.message_cache:
                        return None  # timed out or kicked: let the thread check delays and stop
                else:
                    # Full enough: wait for workers to finish (or a delayed message to fall due).
                    self.freed.wait(self._wait_s())
                    return None
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise ConnectionClosed(exc) from None  # type: ignore[no-untyped-call]

    def _wait_s(self) -> float:
        wait = self.broker.idle_block_s
        if self.etas:
            wait = min(wait, max(0.0, (min(self.etas.values()) - current_millis()) / 1000))
        return wait

    def _block_and_fetch(self, seconds: float, capacity: int) -> bool:
        """Wait for a wake token and fetch in the same round trip (Redis runs the pipelined
        fetch as soon as the BLPOP returns); False on a timeout or a stop kick."""
        if seconds < 0.001:
            return False
        pipe = self.broker.wait_client.pipeline(transaction=False)
        pipe.blpop([self.wake, self.broker.kick_key], timeout=seconds)
        unpack = self.broker._max_unpack_size()  # type: ignore[no-untyped-call]
        arguments = self.broker.dispatch_args("fetch", self.queue_name, capacity, max_unpack=unpack)
        pipe.evalsha(self.broker.scripts["dispatch"].sha, 1, self.broker.namespace, *arguments)
        popped, fetched = pipe.execute(raise_on_error=False)
        if isinstance(fetched, NoScriptError):
            self.broker.client.script_load(_scripts["dispatch"])  # Redis restarted
        elif isinstance(fetched, Exception):
            raise fetched
        else:
            self.message_cache = fetched
        if isinstance(popped, Exception):
            raise popped
        return popped is not None and popped[0] != self.kick

    def close(self) -> None:
        """Write the acknowledgements left, and put back what was fetched but never handed to
        a worker (Dramatiq leaves it to the heartbeat timeout)."""
        with self._ack_lock:
            ids, self._acks = self._acks, []
        if ids:
            with contextlib.suppress(redis.RedisError):
                self.broker.client.eval(ACK_LUA, 2, *self.ack_keys, *ids)
        cached, self.message_cache = self.message_cache, []
        proxies = []
        for data in cached:
            if data is not None:
                with contextlib.suppress(dramatiq.DecodeError):
                    fields = self.broker.encoder.decode(data)
                    fields["args"] = tuple(fields["args"])
                    proxies.append(MessageProxy(dramatiq.Message(**fields)))
        if proxies:
            with contextlib.suppress(redis.RedisError):
                self.requeue(proxies)


# -- the transport --------------------------------------------------------------------------
