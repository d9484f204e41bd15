"""The Dramatiq/Redis transport beyond the conformance suite: what only a broker between
processes shows — asks to a module that is not local, events between two buses, replies of every
shape, delays, a graceful stop, and a worker killed mid-message (in a real subprocess)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis
import sqlalchemy as sa

from shop.bus.breaker import BreakerRegistry
from shop.bus.bus import Bus
from shop.bus.errors import AskTimeout, DependencyFailed, HandlerFailed, InputRefused
from shop.bus.messages import Envelope, Message, Query, decode_reply, new_envelope
from shop.bus.retry import RetryPolicy
from shop.bus.transports.base import Outcome, Result
from shop.bus.transports.dramatiq import DramatiqTransport, reply_of, result_of
from shop.db import Database, unit_of_work

from .conftest import (
    ConfBalance,
    ConfBoom,
    ConfDeposit,
    ConfHold,
    ConfSlow,
    Observed,
    audit_log,
    audit_md,
    entries,
    flush_namespace,
    ledger_md,
    make_modules,
)
from .dramatiq_consumer import CrashJob, jobs, jobs_md

pytestmark = pytest.mark.redis

CONSUMER_SCRIPT = Path(__file__).with_name("dramatiq_consumer.py")


@pytest.fixture
def namespace(redis_url: str) -> Iterator[str]:
    ns = f"shoptest-{uuid.uuid4().hex[:12]}"
    yield ns
    flush_namespace(redis_url, ns)


@pytest.fixture
async def transports(redis_url: str, namespace: str) -> AsyncIterator[Callable[..., DramatiqTransport]]:
    """Build transports on the test's namespace; every one is stopped at the end."""
    made: list[DramatiqTransport] = []

    def make(**options: Any) -> DramatiqTransport:
        options.setdefault("shutdown_timeout_s", 5.0)
        transport = DramatiqTransport(redis_url, namespace=namespace, **options)
        made.append(transport)
        return transport

    yield make
    for transport in made:
        await transport.stop()


async def until(predicate: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.01)


def dramatiq_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if type(t).__module__.startswith("dramatiq")]


# -- two buses, one namespace ---------------------------------------------------------------


async def count(database: Database, table: sa.Table, **where: Any) -> int:
    query = sa.select(sa.func.count()).select_from(table)
    for column, value in where.items():
        query = query.where(table.c[column] == value)
    async with database.engine.connect() as conn:
        return int((await conn.execute(query)).scalar_one())


async def test_two_buses_ask_and_publish_across_redis(
    make_database: Any, transports: Callable[..., DramatiqTransport]
) -> None:
    """Bus A runs ledger; bus B runs audit and notify. B asks A through Redis, A's events reach
    B's subscribers, handler failures and timeouts surface to the asker as they do locally."""
    ledger_db = await make_database("ledger", ledger_md)
    audit_db = await make_database("audit", audit_md)
    notify_db = await make_database("notify")
    seen_a, seen_b = Observed(), Observed()
    retry = RetryPolicy(max_attempts=3, base_delay=0.001, max_delay=0.01)
    bus_a = Bus(
        make_modules(seen_a),
        transports(),
        local=["ledger"],
        databases={"ledger": ledger_db},
        retry=retry,
        breakers=BreakerRegistry(),
    )
    bus_b = Bus(
        make_modules(seen_b),
        transports(),
        local=["audit", "notify"],
        databases={"audit": audit_db, "notify": notify_db},
        retry=retry,
        breakers=BreakerRegistry(),
    )
    await bus_a.start()
    await bus_b.start()
    try:
        # ask across processes: a command with an int reply, then a query seeing its effect
        assert await bus_b.ask(ConfDeposit(account="x", amount=7), timeout=5) == 7
        assert await bus_b.ask(ConfBalance(account="x"), timeout=5) == 7
        assert await count(ledger_db, entries, account="x") == 1
        # ...which published ConfDeposited from A's outbox to B's two subscribers
        await until(lambda: _eq(count(audit_db, audit_log, account="x"), 1))
        await until(lambda: _true(seen_b.notified == ["x"]))
        assert [c for c, _ in seen_a.envelopes] == ["ledger.deposit"]

        # a command sent from B's outbox is handled by A, whose event comes back to B
        async with unit_of_work(notify_db):
            await bus_b.send(ConfDeposit(account="y", amount=2))
        await until(lambda: _eq(count(audit_db, audit_log, account="y"), 1))
        assert await bus_b.ask(ConfBalance(account="y"), timeout=5) == 2

        with pytest.raises(HandlerFailed) as failed:
            await bus_b.ask(ConfBoom(), timeout=5)
        assert (failed.value.error_type, failed.value.fault) == ("RuntimeError", "module")
        with pytest.raises(InputRefused) as refused:  # whose fault it was crosses Redis too
            await bus_b.ask(ConfBoom(fault="input"), timeout=5)
        assert refused.value.error_type == "ValueError"
        with pytest.raises(DependencyFailed):
            await bus_b.ask(ConfBoom(fault="dependency"), timeout=5)

        started = time.monotonic()
        with pytest.raises(AskTimeout):
            await bus_b.ask(ConfSlow(seconds=5), timeout=0.2)
        assert time.monotonic() - started < 1.0
    finally:
        await bus_b.stop()
        await bus_a.stop()


async def test_an_ask_to_a_module_whose_consumers_are_down_times_out_and_is_not_run_late(
    make_database: Any, transports: Callable[..., DramatiqTransport]
) -> None:
    ledger_db = await make_database("ledger", ledger_md)
    asker = Bus(make_modules(Observed()), transports(), local=[], databases={}, breakers=BreakerRegistry())
    await asker.start()
    try:
        started = time.monotonic()
        with pytest.raises(AskTimeout):
            await asker.ask(ConfDeposit(account="late", amount=1), timeout=0.3)
        assert time.monotonic() - started < 1.5
        # ledger comes up: the expired request waits in its queue and must not run now
        seen = Observed()
        ledger = Bus(make_modules(seen), transports(), local=["ledger"], databases={"ledger": ledger_db})
        await ledger.start()
        try:
            assert await asker.ask(ConfBalance(account="late"), timeout=5) == 0
            assert await count(ledger_db, entries, account="late") == 0
            assert seen.attempts == {}
        finally:
            await ledger.stop()
    finally:
        await asker.stop()


async def test_a_query_is_answered_promptly_while_the_modules_command_path_is_saturated(
    make_database: Any, transports: Callable[..., DramatiqTransport]
) -> None:
    """The served side's bulkhead: ledger's two command threads are held by slow commands (and
    more wait behind them in Redis); a query to ledger from another process goes by ledger's
    queue of queries and its own threads, and is answered at once."""
    ledger_db = await make_database("ledger", ledger_md)
    ledger = Bus(
        make_modules(Observed()),
        transports(worker_threads=2, query_threads=2),
        local=["ledger"],
        databases={"ledger": ledger_db},
        breakers=BreakerRegistry(),
    )
    asker = Bus(make_modules(Observed()), transports(), local=[], databases={}, breakers=BreakerRegistry())
    await ledger.start()
    await asker.start()
    holding: list[asyncio.Task[Any]] = []
    try:
        assert await asker.ask(ConfBalance(account="warm"), timeout=5) == 0
        started = time.monotonic()
        holding = [asyncio.create_task(asker.ask(ConfHold(seconds=1.5), timeout=10)) for _ in range(6)]
        await asyncio.sleep(0.3)  # both command threads hold a command; four more queue behind
        asked = time.monotonic()
        assert await asker.ask(ConfBalance(account="nobody"), timeout=1.0) == 0
        assert time.monotonic() - asked < 0.5, "a query waited for the saturated command path"
        assert not any(task.done() for task in holding), "the command path was not saturated"
        assert await asyncio.gather(*holding) == ["held"] * 6
        # ...the commands themselves were all answered, two at a time: three waves of 1.5 s
        assert time.monotonic() - started >= 4.4
    finally:
        for task in holding:
            task.cancel()
        await asyncio.gather(*holding, return_exceptions=True)
        await asker.stop()
        await ledger.stop()


# -- the transport alone, with a scripted host ----------------------------------------------


class Shape(Query, frozen=True, kw_only=True):
    """Asks the scripted host for a reply of a given shape."""

    shape: str


class Plain(msgspec.Struct, frozen=True):
    """A reply that is a struct but not a Message."""

    a: int
    b: str


class Token(Message, frozen=True, kw_only=True):
    value: str


class ScriptedHost:
    """A Host whose replies and outcomes the test decides."""

    def __init__(self) -> None:
        self.processed: list[tuple[str, Envelope, float]] = []
        self.outcomes: list[Result] = []
        self.release = asyncio.Event()
        self.release.set()

    async def process(self, queue: str, envelope: Envelope) -> Result:
        await self.release.wait()
        self.processed.append((queue, envelope, time.monotonic()))
        return self.outcomes.pop(0) if self.outcomes else Result(Outcome.DONE)

    async def answer(self, queue: str, envelope: Envelope, message: Message | None = None) -> Any:
        shape = msgspec.msgpack.decode(envelope.body, type=Shape).shape
        replies: dict[str, Any] = {
            "none": None,
            "int": 42,
            "text": "ok",
            "list": [1, "two", None],
            "message": Token(value="t"),
            "struct": Plain(1, "x"),
        }
        if shape == "fail":
            raise HandlerFailed("ledger.boom: KeyError('k')", error_type="KeyError")
        if shape == "crash":
            raise RuntimeError("not wrapped by the kernel")
        return replies[shape]


async def ask(transport: DramatiqTransport, queue: str, shape: str, timeout: float = 5.0) -> Any:
    return await transport.request(queue, new_envelope(Shape(shape=shape)), timeout=timeout)


async def test_replies_of_every_shape_round_trip(transports: Callable[..., DramatiqTransport]) -> None:
    server, client = transports(), transports()
    await server.start(ScriptedHost(), ["echo"])
    await client.start(ScriptedHost(), [])
    assert await ask(client, "echo", "none") is None
    assert await ask(client, "echo", "int") == 42
    assert await ask(client, "echo", "text") == "ok"
    assert await ask(client, "echo", "list") == [1, "two", None]
    assert await ask(client, "echo", "message") == Token(value="t")
    assert await ask(client, "echo", "struct") == {"a": 1, "b": "x"}  # as the inbox replays it
    with pytest.raises(HandlerFailed) as failed:
        await ask(client, "echo", "fail")
    assert failed.value.error_type == "KeyError"
    assert "KeyError('k')" in str(failed.value)
    with pytest.raises(HandlerFailed) as crashed:
        await ask(client, "echo", "crash")
    assert crashed.value.error_type == "RuntimeError"
    # many asks at once, each with its own reply key
    replies = await asyncio.gather(*(ask(client, "echo", "int") for _ in range(50)))
    assert replies == [42] * 50


async def test_an_ask_waiting_while_no_instance_serves_is_answered_by_the_next_one_and_counted_meanwhile(
    transports: Callable[..., DramatiqTransport],
) -> None:
    """Asks wait in Redis, not in a process: one sent while its module has no instance (a
    restart) is answered by the instance that comes up within the asker's timeout, and the
    module's depth counts it while it waits."""
    client = transports()
    await client.start(ScriptedHost(), [])
    waiting = asyncio.create_task(ask(client, "echo", "int", timeout=10))
    await until(lambda: _eq(client.depths(["echo"]), {"echo": 1}), timeout=5)
    assert not waiting.done()
    server = transports()
    await server.start(ScriptedHost(), ["echo"])
    assert await asyncio.wait_for(waiting, 5) == 42
    assert await client.depths(["echo"]) == {"echo": 0}


async def test_a_stopped_instance_leaves_the_asks_it_had_not_taken_to_the_next_one(
    transports: Callable[..., DramatiqTransport],
) -> None:
    first = transports()
    await first.start(ScriptedHost(), ["echo"])
    client = transports()
    await client.start(ScriptedHost(), [])
    assert await ask(client, "echo", "int") == 42
    await first.stop()
    waiting = [asyncio.create_task(ask(client, "echo", "text", timeout=10)) for _ in range(3)]
    await until(lambda: _eq(client.depths(["echo"]), {"echo": 3}), timeout=5)
    second = transports()
    await second.start(ScriptedHost(), ["echo"])
    assert await asyncio.wait_for(asyncio.gather(*waiting), 5) == ["ok"] * 3


async def test_an_ask_after_redis_closed_the_askers_idle_connection_goes_through(
    redis_url: str, transports: Callable[..., DramatiqTransport]
) -> None:
    """Asks reuse their connections outside redis-py's pool; one Redis closed while it sat
    idle (a restart, CLIENT KILL, an idle timeout) must not fail the next ask."""
    import redis.asyncio as aredis

    server, client = transports(), transports()
    await server.start(ScriptedHost(), ["echo"])
    await client.start(ScriptedHost(), [])
    assert await ask(client, "echo", "int") == 42
    connections = client._connections
    assert connections is not None
    assert len(connections._idle) == 1
    idle = connections._idle[0]
    [client_id] = await connections.run(("CLIENT", "ID"))
    admin = aredis.Redis.from_url(redis_url)
    try:
        assert await admin.client_kill_filter(_id=client_id) == 1
    finally:
        await admin.aclose()
    await until(lambda: _true(idle._reader is None or idle._reader.at_eof()), timeout=5)
    assert await ask(client, "echo", "text") == "ok"


def test_the_reply_codec_boxes_like_the_inbox() -> None:
    for value in (None, 0, "", [1, 2], {"k": "v"}, Token(value="v")):
        wire = msgspec.msgpack.encode(reply_of(value))
        assert result_of(decode_reply(wire)) == value


async def test_a_delayed_delivery_and_a_retry_wait_their_delay(
    transports: Callable[..., DramatiqTransport],
) -> None:
    host = ScriptedHost()
    host.outcomes = [Result(Outcome.RETRY, 0.3)]
    transport = transports()
    await transport.start(host, ["jobs"])
    sent = time.monotonic()
    await (await transport.deliver("jobs", new_envelope(Token(value="d")), delay=0.3))
    await until(lambda: _true(len(host.processed) == 2))
    (_, first, at1), (_, second, at2) = host.processed
    assert at1 - sent >= 0.29
    assert at2 - at1 >= 0.29
    assert (first.attempt, second.attempt) == (1, 2)
    assert first.message_id == second.message_id


def _fetches(redis_url: str) -> int:
    """EVALSHA calls Redis has run (the consumers' fetches: Dramatiq's dispatch script)."""
    client = redis.Redis.from_url(redis_url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_an_idle_consumer_fetches_once_for_each_message_that_wakes_it(
    transports: Callable[..., DramatiqTransport], redis_url: str
) -> None:
    """Messages arriving one at a time to a drained queue: each costs the consumer one round
    trip (the wake-up and its fetch together), not a second fetch that finds the queue empty."""
    host = ScriptedHost()
    transport = transports(idle_block_s=5.0)
    await transport.start(host, ["jobs"])
    await (await transport.deliver("jobs", new_envelope(Token(value="warm-up"))))
    await until(lambda: _true(len(host.processed) == 1))
    await asyncio.sleep(0.05)  # the consumer is back in its wait
    before = _fetches(redis_url)
    messages = 20
    for n in range(messages):
        await (await transport.deliver("jobs", new_envelope(Token(value=str(n)))))
        await until(lambda n=n: _true(len(host.processed) == n + 2))
        await asyncio.sleep(0.01)
    fetches = _fetches(redis_url) - before
    assert [e.body for _, e, _ in host.processed[1:]] == [
        msgspec.msgpack.encode(Token(value=str(n))) for n in range(messages)
    ]
    # one fetch a message (+ the delayed-message queue's consumer and a little slack); before
    # this rule, two a message
    assert fetches <= messages + 5, fetches


async def test_a_consumer_goes_on_after_redis_forgot_its_script(
    transports: Callable[..., DramatiqTransport], redis_url: str
) -> None:
    host = ScriptedHost()
    transport = transports()
    await transport.start(host, ["jobs"])
    await (await transport.deliver("jobs", new_envelope(Token(value="before"))))
    await until(lambda: _true(len(host.processed) == 1))
    client = redis.Redis.from_url(redis_url)
    try:
        client.script_flush()  # as after a Redis restart
    finally:
        client.close()
    await (await transport.deliver("jobs", new_envelope(Token(value="after"))))
    await until(lambda: _true(len(host.processed) == 2))


async def test_a_consumer_whose_connection_was_killed_reconnects_and_goes_on(
    transports: Callable[..., DramatiqTransport], redis_url: str
) -> None:
    host = ScriptedHost()
    transport = transports(idle_block_s=5.0)
    await transport.start(host, ["jobs"])
    await (await transport.deliver("jobs", new_envelope(Token(value="before"))))
    await until(lambda: _true(len(host.processed) == 1))
    await asyncio.sleep(0.1)  # back in its wait for the next message
    client = redis.Redis.from_url(redis_url)
    try:
        waiting = [c for c in client.client_list() if c.get("cmd") == "blpop"]
        assert waiting, "the consumer waits in BLPOP"
        for c in waiting:
            client.client_kill_filter(_id=c["id"])
    finally:
        client.close()
    await (await transport.deliver("jobs", new_envelope(Token(value="after"))))
    await until(lambda: _true(len(host.processed) == 2))


async def test_an_acknowledgement_redis_refused_is_written_again(
    transports: Callable[..., DramatiqTransport], redis_url: str, namespace: str
) -> None:
    host = ScriptedHost()
    transport = transports()
    await transport.start(host, ["jobs"])
    [consumer] = transport._consumers
    real_eval = consumer.client.eval
    calls = 0

    async def eval_failing_once(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise redis.ConnectionError("Redis went away for a moment")
        return await real_eval(*args)

    consumer.client.eval = eval_failing_once
    await (await transport.deliver("jobs", new_envelope(Token(value="once"))))
    await until(lambda: _true(len(host.processed) == 1))
    client = redis.Redis.from_url(redis_url)
    try:  # acknowledged in the end: the message's data is gone from Redis
        await until(lambda: _true(client.hlen(f"{namespace}:jobs.msgs") == 0), timeout=5)
    finally:
        client.close()
    assert calls == 2
    assert len(host.processed) == 1


async def test_an_undecodable_message_is_left_aside_and_the_next_one_is_handled(
    transports: Callable[..., DramatiqTransport], redis_url: str, namespace: str
) -> None:
    host = ScriptedHost()
    transport = transports()
    await transport.start(host, ["jobs"])
    client = redis.Redis.from_url(redis_url)
    try:  # a message of no one's making, in the queue's layout, with its wake token
        client.hset(f"{namespace}:jobs.msgs", "garbage", b"\xc1 not msgpack")
        client.rpush(f"{namespace}:jobs", "garbage")
        client.lpush(f"{namespace}:__wake__.jobs", 1)
        await asyncio.sleep(0.2)
        await (await transport.deliver("jobs", new_envelope(Token(value="fine"))))
        await until(lambda: _true(len(host.processed) == 1))
        # not acknowledged: kept for an operator (and for maintenance, were this process gone)
        assert client.hexists(f"{namespace}:jobs.msgs", "garbage")
    finally:
        client.close()


async def test_stop_finishes_the_message_in_hand_puts_back_the_rest_and_leaves_no_thread(
    transports: Callable[..., DramatiqTransport],
) -> None:
    before = set(dramatiq_threads())
    host = ScriptedHost()
    host.release.clear()
    transport = transports(worker_threads=1)
    await transport.start(host, ["jobs", "other"])
    assert len(dramatiq_threads()) > len(before)
    receipts = [await transport.deliver("jobs", new_envelope(Token(value=str(n)))) for n in range(3)]
    await asyncio.gather(*receipts)
    await asyncio.sleep(0.2)  # let the consumer prefetch all three (nothing to await for that)
    stopping = asyncio.create_task(transport.stop())
    await asyncio.sleep(0.2)
    assert not stopping.done(), "stop waits for the message being handled"
    host.release.set()
    await asyncio.wait_for(stopping, 10)
    assert set(dramatiq_threads()) <= before
    assert len(host.processed) == 1
    # the two fetched but not started went back to Redis: a new consumer gets them
    host2 = ScriptedHost()
    await transports().start(host2, ["jobs"])
    await until(lambda: _true(len(host2.processed) == 2))
    handled = {e.message_id for _, e, _ in host.processed + host2.processed}
    assert len(handled) == 3


# -- a worker killed mid-message ------------------------------------------------------------


class Consumer:
    """A dramatiq_consumer.py subprocess whose stdout lines are collected as they come."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, redis_url: str, namespace: str, db_path: Path, mode: str, log: Path) -> Consumer:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(CONSUMER_SCRIPT),
            redis_url,
            namespace,
            str(db_path),
            mode,
            stdout=asyncio.subprocess.PIPE,
            stderr=log.open("ab"),
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        return cls(process)

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            self.lines.append(line.decode().strip())

    async def said(self, line: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while line not in self.lines:
            if self.process.returncode is not None or time.monotonic() > deadline:
                raise AssertionError(f"consumer never said {line!r}; it said {self.lines}")
            await asyncio.sleep(0.02)

    async def end(self, sig: int) -> int:
        if self.process.returncode is None:
            self.process.send_signal(sig)
        code = await asyncio.wait_for(self.process.wait(), 20)
        await self.reader
        return code


@pytest.mark.timeout(90)
async def test_a_message_whose_worker_was_killed_is_redelivered_and_has_its_effect_once(
    redis_url: str,
    namespace: str,
    make_database: Any,
    tmp_path: Path,
    transports: Callable[..., DramatiqTransport],
) -> None:
    database = await make_database("crashy", jobs_md)
    db_path = Path(str(database.engine.url.database))
    log = tmp_path / "consumers.log"
    first = await Consumer.start(redis_url, namespace, db_path, "hang", log)
    second: Consumer | None = None
    try:
        await first.said("ready")
        sender = transports()
        envelope = msgspec.structs.replace(new_envelope(CrashJob(job="j1")), consumer="crashy.do_job")
        await (await sender.deliver("crashy", envelope))
        await first.said("handling j1")
        assert await first.end(signal.SIGKILL) == -signal.SIGKILL
        killed_at = time.monotonic()

        second = await Consumer.start(redis_url, namespace, db_path, "normal", log)
        await second.said("ready")
        await until(lambda: _eq(count(database, jobs, job="j1"), 1), timeout=20)
        redelivered_after = time.monotonic() - killed_at
        await second.said("handling j1", timeout=5)  # its stdout is read by a task of its own
        assert await second.end(signal.SIGTERM) == 0, log.read_text()[-3000:]
        assert "stopped" in second.lines
        assert await count(database, jobs, job="j1") == 1
        assert redelivered_after < 20
    finally:
        for consumer in (first, second):
            if consumer is not None and consumer.process.returncode is None:
                consumer.process.kill()
                await consumer.process.wait()


async def _eq(value: Awaitable[object], expected: object) -> bool:
    return await value == expected


async def _true(value: bool) -> bool:
    return value
