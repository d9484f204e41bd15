"""The Dramatiq/Redis transport against raw Redis and against Dramatiq's defaults (bench/README.md).

In one run, each server in a process of its own, on the same Redis:

1. ask latency, one request at a time, interleaved round by round:
     raw        a sync redis-py client: LPUSH request + BLPOP reply, against a server process
                looping BLPOP request + LPUSH reply (the reference; bench/README.md p50 220-300 us)
     raw/async  the same client loop on redis.asyncio (what an asyncio app could do by hand)
     transport  `DramatiqTransport.request` to a process consuming with `DramatiqTransport`,
                whose host answers at once
   -> p50/p99 in microseconds; target: transport p50 <= 1.3x raw p50.
2. no-op delivery throughput: N messages enqueued first, then one consumer process drains them;
   msg/s from its start to the last message handled:
     dramatiq   Dramatiq with its defaults: RedisBroker, default middleware, JSON, 8 threads,
                prefetch 2 x threads, a no-op actor
     transport  DramatiqTransport, 8 threads, no-op host, for each --prefetch value
   -> target: transport >= 1.5x dramatiq (medians of interleaved rounds).

Figures are printed, never asserted; every loop is bounded by a count and a time budget.

    .venv/bin/python bench/transport_redis.py [--redis-url URL] [--asks 400] [--rounds 5]
        [--messages 5000] [--prefetch 8,16,32,64,256] [--drain-rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aredis

from shop.bus.messages import Envelope, Message, Query, new_envelope
from shop.bus.transports.base import Outcome, Result
from shop.bus.transports.dramatiq import DramatiqTransport

REDIS_URL = os.environ.get("SHOP_BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
HERE = Path(__file__).resolve()
BUDGET_S = 60.0  # per measurement


class BenchAsk(Query, frozen=True, kw_only=True):
    n: int = 0


class NoopHost:
    """Answers at once; counts deliveries and says when `expected` have arrived."""

    def __init__(self, expected: int = 0) -> None:
        self.expected = expected
        self.count = 0
        self.done = asyncio.Event()

    async def process(self, queue: str, envelope: Envelope) -> Result:
        self.count += 1
        if self.count >= self.expected:
            self.done.set()
        return Result(Outcome.DONE)

    async def answer(self, queue: str, envelope: Envelope, message: Message | None = None) -> Any:
        return 1


def use_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def flush(url: str, namespace: str) -> None:
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


# -- server processes -----------------------------------------------------------------------


def raw_server(url: str, namespace: str) -> None:
    client = redis.Redis.from_url(url, socket_timeout=None)
    print("ready", flush=True)
    deadline = time.monotonic() + 20 * BUDGET_S
    while time.monotonic() < deadline:
        popped = client.blpop([f"{namespace}:raw:req"], timeout=5)
        if popped is None:
            continue
        if popped[1] == b"stop":
            return
        client.lpush(popped[1], b"1")


async def ask_server(url: str, namespace: str, prefetch: int) -> None:
    transport = DramatiqTransport(url, namespace=namespace, prefetch=prefetch)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await transport.start(NoopHost(), ["bench"])
    print("ready", flush=True)
    await stop.wait()
    await transport.stop()


async def drain_transport(url: str, namespace: str, n: int, prefetch: int, threads: int) -> dict[str, Any]:
    transport = DramatiqTransport(url, namespace=namespace, prefetch=prefetch, worker_threads=threads)
    envelope = new_envelope(BenchAsk(n=0))
    started = time.perf_counter()
    for chunk in range(0, n, 1000):
        receipts = [await transport.deliver("bench", envelope) for _ in range(min(1000, n - chunk))]
        await asyncio.gather(*receipts)
    enqueue_s = time.perf_counter() - started
    host = NoopHost(n)
    started, cpu = time.perf_counter(), time.process_time()
    await transport.start(host, ["bench"])
    try:
        await asyncio.wait_for(host.done.wait(), BUDGET_S)
    except TimeoutError:
        left = redis.Redis.from_url(url).llen(f"{namespace}:bench")
        raise SystemExit(f"drain stalled: {host.count}/{n} handled, {left} still queued") from None
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    await transport.stop()
    return {"msg_per_s": n / elapsed, "cpu_us": cpu / n * 1e6, "enqueue_us": enqueue_s / n * 1e6}


def drain_dramatiq(url: str, namespace: str, n: int) -> dict[str, Any]:
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(url=url, namespace=namespace)  # type: ignore[no-untyped-call]  # all defaults
    dramatiq.set_broker(broker)
    count = 0
    lock = threading.Lock()
    done = threading.Event()

    def noop(x: int) -> None:
        nonlocal count
        with lock:
            count += 1
            if count >= n:
                done.set()

    actor = dramatiq.actor(broker=broker, queue_name="bench")(noop)
    started = time.perf_counter()
    for i in range(n):
        actor.send(i)
    send_s = time.perf_counter() - started
    worker = dramatiq.Worker(broker, worker_threads=8)
    started, cpu = time.perf_counter(), time.process_time()
    worker.start()
    done.wait(BUDGET_S)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    worker.stop(timeout=10_000)
    return {"msg_per_s": n / elapsed, "cpu_us": cpu / n * 1e6, "enqueue_us": send_s / n * 1e6}


async def trickle_consumer(url: str, namespace: str, n: int, threads: int) -> None:
    """Consume `n` deliveries that arrive one at a time; print the process's CPU per message
    (every thread's) from the first to the last."""
    transport = DramatiqTransport(url, namespace=namespace, worker_threads=threads)
    host = NoopHost(n)
    first = asyncio.Event()
    process = host.process

    async def counting(queue: str, envelope: Envelope) -> Result:
        if not first.is_set():
            first.set()
        return await process(queue, envelope)

    host.process = counting  # type: ignore[method-assign]
    await transport.start(host, ["bench"])
    print("ready", flush=True)
    await asyncio.wait_for(first.wait(), BUDGET_S)
    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.wait_for(host.done.wait(), BUDGET_S)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    await transport.stop()
    print(json.dumps({"cpu_us": cpu / max(1, n - 1) * 1e6, "msg_per_s": (n - 1) / elapsed}), flush=True)


async def trickle(url: str, n: int, rate: float, rounds: int, threads: int) -> None:
    """Deliveries arriving one at a time at `rate`/s, as in the split deployment (each finds
    the consumer idle): the consumer's CPU per message."""
    cpus = []
    for _ in range(rounds):
        namespace = f"bench-{uuid.uuid4().hex[:8]}"
        consumer = spawn(
            "--role", "trickle-consumer", "--redis-url", url, "--namespace", namespace,
            "--messages", str(n), "--threads", str(threads),
        )
        sender = DramatiqTransport(url, namespace=namespace)
        try:
            envelope = new_envelope(BenchAsk(n=0))
            for _ in range(n):
                await (await sender.deliver("bench", envelope))
                await asyncio.sleep(1 / rate)
            assert consumer.stdout is not None
            result = json.loads(consumer.stdout.readline())
            consumer.wait(30)
        finally:
            if consumer.poll() is None:
                consumer.kill()
            await sender.stop()
            flush(url, namespace)
        cpus.append(result["cpu_us"])
    print(
        f"\ntrickled deliveries: {n} messages one at a time at {rate:.0f}/s to one consumer process"
        f" ({threads} worker threads), {rounds} rounds: consumer CPU per message median"
        f" {statistics.median(cpus):.0f} us (rounds: {', '.join(f'{c:.0f}' for c in cpus)})"
    )


# -- the orchestrator ------------------------------------------------------------------------


def spawn(*args: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, str(HERE), *args], stdout=subprocess.PIPE, text=True, stderr=subprocess.DEVNULL
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if line != "ready":
        process.kill()
        raise RuntimeError(f"server did not start: {line!r}")
    return process


def run_role(*args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(HERE), *args], capture_output=True, text=True, timeout=BUDGET_S * 2
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def latency(url: str, asks: int, rounds: int, prefetch: int) -> None:
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    raw = spawn("--role", "raw-server", "--redis-url", url, "--namespace", namespace)
    server = spawn(
        "--role", "ask-server", "--redis-url", url, "--namespace", namespace, "--prefetch", str(prefetch)
    )
    sync_client = redis.Redis.from_url(url, socket_timeout=None)
    async_client = aredis.Redis.from_url(url, socket_timeout=None)
    transport = DramatiqTransport(url, namespace=namespace)
    timings: dict[str, list[float]] = {"raw": [], "raw/async": [], "transport": []}
    request_key = f"{namespace}:raw:req"
    reply_key = f"{namespace}:raw:reply"

    def raw_once() -> None:
        sync_client.lpush(request_key, reply_key)
        sync_client.blpop([reply_key], timeout=5)

    async def raw_async_once() -> None:
        await async_client.lpush(request_key, reply_key)
        await async_client.blpop([reply_key], timeout=5)

    async def transport_once() -> None:
        await transport.request("bench", new_envelope(BenchAsk()), timeout=5)

    try:
        for _ in range(200):  # warm-up: connections, scripts, caches
            raw_once()
            await raw_async_once()
            await transport_once()
        budget = time.monotonic() + BUDGET_S
        for _ in range(rounds):
            for name in timings:
                for _ in range(asks):
                    started = time.perf_counter()
                    if name == "raw":
                        raw_once()
                    elif name == "raw/async":
                        await raw_async_once()
                    else:
                        await transport_once()
                    timings[name].append((time.perf_counter() - started) * 1e6)
            if time.monotonic() > budget:
                break
    finally:
        sync_client.lpush(request_key, b"stop")
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        raw.wait(30)
        await transport.stop()
        sync_client.close()
        await async_client.aclose()
        flush(url, namespace)
    print(
        f"ask latency, one at a time, {len(timings['raw'])} per variant in {rounds} interleaved rounds (us):"
    )
    print(f"  {'variant':<11} {'p50':>8} {'p99':>8} {'mean':>8}")
    for name, values in timings.items():
        print(
            f"  {name:<11} {pct(values, 0.5):8.0f} {pct(values, 0.99):8.0f} {statistics.fmean(values):8.0f}"
        )
    ratio = pct(timings["transport"], 0.5) / pct(timings["raw"], 0.5)
    ratio_async = pct(timings["transport"], 0.5) / pct(timings["raw/async"], 0.5)
    verdict = "meets" if ratio <= 1.3 else "misses"
    print(f"  transport p50 / raw p50 = {ratio:.2f}x (target <= 1.3x: {verdict})")
    print(f"  transport p50 / raw/async p50 = {ratio_async:.2f}x")


def throughput(url: str, n: int, prefetches: list[int], rounds: int) -> None:
    print(
        f"\nno-op delivery throughput: {n} messages enqueued first, then one consumer process"
        f" drains them; {rounds} interleaved rounds, median (min-max) msg/s:"
    )
    variants: list[tuple[str, list[str]]] = [("dramatiq defaults", ["--role", "drain-dramatiq"])]
    variants += [
        (f"transport, prefetch {p}", ["--role", "drain-transport", "--prefetch", str(p)]) for p in prefetches
    ]
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in variants}
    budget = time.monotonic() + 4 * BUDGET_S
    for round_ in range(rounds):
        order = variants if round_ % 2 == 0 else variants[::-1]
        for name, args in order:
            namespace = f"bench-{uuid.uuid4().hex[:8]}"
            try:
                result = run_role(*args, "--redis-url", url, "--namespace", namespace, "--messages", str(n))
            finally:
                flush(url, namespace)
            results[name].append(result)
        if time.monotonic() > budget:
            break
    rates = {name: [r["msg_per_s"] for r in rs] for name, rs in results.items()}
    baseline = statistics.median(rates["dramatiq defaults"])
    print(
        f"  {'variant':<24} {'msg/s':>7} {'range':>13} {'vs dramatiq':>12}"
        f" {'consumer cpu us/msg':>20} {'enqueue us/msg':>15}"
    )
    for name, values in rates.items():
        enqueue = statistics.median(r["enqueue_us"] for r in results[name])
        cpu = statistics.median(r["cpu_us"] for r in results[name])
        span = f"{min(values):.0f}-{max(values):.0f}"
        ratio = statistics.median(values) / baseline
        rate = statistics.median(values)
        print(f"  {name:<24} {rate:7.0f} {span:>13} {ratio:11.2f}x {cpu:20.0f} {enqueue:15.1f}")
    print("  (dramatiq enqueue = actor.send, sync; transport enqueue = deliver, batched per loop turn)")
    best = max((n_ for n_ in rates if n_ != "dramatiq defaults"), key=lambda n_: statistics.median(rates[n_]))
    ratio = statistics.median(rates[best]) / baseline
    verdict = "meets" if ratio >= 1.5 else "misses"
    print(f"  best: {best}: {ratio:.2f}x Dramatiq's defaults (target >= 1.5x: {verdict})")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--redis-url", default=REDIS_URL)
    parser.add_argument("--asks", type=int, default=400, help="asks per variant per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument(
        "--prefetch", default="8,16,32,64,256", help="transport prefetch values to drain with"
    )
    parser.add_argument("--drain-rounds", type=int, default=3)
    parser.add_argument("--ask-prefetch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--trickle", type=int, default=1000, help="deliveries one at a time (0: skip)")
    parser.add_argument("--trickle-rate", type=float, default=200.0)
    parser.add_argument("--trickle-rounds", type=int, default=3)
    parser.add_argument("--role", default="main", help=argparse.SUPPRESS)
    parser.add_argument("--namespace", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    use_uvloop()
    if args.role == "raw-server":
        raw_server(args.redis_url, args.namespace)
    elif args.role == "ask-server":
        asyncio.run(ask_server(args.redis_url, args.namespace, int(args.prefetch)))
    elif args.role == "drain-transport":
        result = asyncio.run(
            drain_transport(args.redis_url, args.namespace, args.messages, int(args.prefetch), args.threads)
        )
        print(json.dumps(result))
    elif args.role == "trickle-consumer":
        asyncio.run(trickle_consumer(args.redis_url, args.namespace, args.messages, args.threads))
    elif args.role == "drain-dramatiq":
        print(json.dumps(drain_dramatiq(args.redis_url, args.namespace, args.messages)))
    else:
        redis.Redis.from_url(args.redis_url).ping()
        if not args.skip_latency:
            asyncio.run(latency(args.redis_url, args.asks, args.rounds, args.ask_prefetch))
        if not args.skip_throughput:
            prefetches = [int(p) for p in args.prefetch.split(",")]
            throughput(args.redis_url, args.messages, prefetches, args.drain_rounds)
        if args.trickle:
            asyncio.run(trickle(args.redis_url, args.trickle, args.trickle_rate, args.trickle_rounds, args.threads))


if __name__ == "__main__":
    main()
