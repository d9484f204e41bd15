"""In-process bus `ask` overhead beyond the handler itself (target: <= 5 us, bench/README.md).

One `Bus` on the `InProcessTransport` with one local test module ("bench") whose query handler
does nothing. In one run, on uvloop, interleaved round by round so drift hits every variant alike:

  direct      `await ping(q)`                     the handler alone
  ask/default `await bus.ask(q)`, default middleware (metrics + debug log, filtered at WARNING)
  ask/none    `await bus.ask(q)`, `middleware=[]`

Prints microseconds per call (best round and median round) and the overhead = ask - direct.
Then times the pieces an ask is made of, each alone, and profiles the default-middleware `ask`
with cProfile: top 15 by tottime to stderr, the full listing to bench/results/ask_profile.txt
(git-ignored).

Figures are printed, never asserted. Every loop is bounded by a count and a wall-clock budget.

    .venv/bin/python bench/ask_overhead.py [--n 200000] [--budget 10] [--no-profile] [--tracing]

`--tracing` measures with OpenTelemetry tracing on (as with OTEL_EXPORTER_OTLP_ENDPOINT set):
a producer and a consumer span per ask, batched by the SDK's BatchSpanProcessor to an exporter
that drops them (the export itself happens on the processor's thread, off the measured path).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import importlib.metadata
import io
import pstats
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog
import uvloop

from shop.bus.bus import Bus
from shop.bus.messages import Query
from shop.bus.module import Module
from shop.bus.transports.inprocess import InProcessTransport
from shop.observability import logging as shop_logging

TARGET_US = 5.0
RESULTS = Path(__file__).resolve().parent / "results"


class BenchPing(Query, frozen=True, kw_only=True):
    """The benchmark's no-op query."""

    n: int = 0


module = Module("bench")


@module.handles(BenchPing)
async def ping(q: BenchPing) -> int:
    return q.n


Op = Callable[[], Awaitable[Any]]


async def _round(op: Op, count: int) -> float:
    """Seconds per call over `count` sequential awaits of `op`."""
    started = time.perf_counter()
    for _ in range(count):
        await op()
    return (time.perf_counter() - started) / count


async def _build(middleware: list[Any] | None) -> Bus:
    kwargs: dict[str, Any] = {} if middleware is None else {"middleware": middleware}
    bus = Bus([module], InProcessTransport(), local=["bench"], databases={}, **kwargs)
    await bus.start()
    return bus


async def measure(n: int, budget_s: float, rounds: int) -> dict[str, list[float]]:
    default_bus = await _build(None)
    bare_bus = await _build([])
    q = BenchPing(n=1)
    ops: dict[str, Op] = {
        "direct": lambda: ping(q),
        "ask/default": lambda: default_bus.ask(q),
        "ask/none": lambda: bare_bus.ask(q),
    }
    try:
        # Sanity: both buses answer what the handler answers.
        assert await default_bus.ask(q) == 1
        assert await bare_bus.ask(q) == 1
        for op in ops.values():  # warm-up (caches, breaker, semaphores, prometheus children)
            await _round(op, 2_000)
        per_round = max(1, n // rounds)
        results: dict[str, list[float]] = {name: [] for name in ops}
        deadline = time.monotonic() + budget_s
        gc.collect()
        for _ in range(rounds):
            if time.monotonic() > deadline:
                break
            for name, op in ops.items():
                results[name].append(await _round(op, per_round))
        return results
    finally:
        await default_bus.stop()
        await bare_bus.stop()


async def profile(count: int, budget_s: float) -> str:
    bus = await _build(None)
    q = BenchPing(n=1)
    try:
        await _round(lambda: bus.ask(q), 2_000)
        profiler = cProfile.Profile()
        deadline = time.monotonic() + budget_s
        done = 0
        profiler.enable()
        while done < count and time.monotonic() < deadline:
            for _ in range(1_000):
                await bus.ask(q)
            done += 1_000
        profiler.disable()
    finally:
        await bus.stop()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ask_profile.txt").write_text(f"{done} asks, default middleware, cProfile\n{out.getvalue()}")
    top = io.StringIO()
    pstats.Stats(profiler, stream=top).sort_stats("tottime").print_stats(15)
    return f"{done} asks profiled\n" + _trim(top.getvalue())


def _trim(text: str) -> str:
    """pstats output without its preamble, paths shortened to the package."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    keep = []
    for line in lines[start:]:
        for marker in ("/site-packages/", "/src/"):
            if marker in line:
                head, _, tail = line.partition(marker)
                prefix = head.rsplit(" ", 1)[0] + " " if " " in head else ""
                line = prefix + tail
        keep.append(line)
    return "\n".join(keep).rstrip()


async def components(count: int) -> list[tuple[str, float | None]]:
    """Microseconds per call of the pieces an ask is made of, each timed alone (no profiler).

    They mirror what Bus.ask / LocalRequests.request / observe do today; a piece whose API
    changed prints n/a rather than failing the benchmark."""
    from shop.bus import context
    from shop.observability import metrics

    bus = await _build(None)
    q = BenchPing(n=1)
    consumer = "bench.ping"
    log = structlog.get_logger("shop.bus.handler")
    sem = asyncio.Semaphore(64)
    loop = asyncio.get_running_loop()
    out: list[tuple[str, float | None]] = []

    def sync(name: str, fn: Callable[[], Any]) -> None:
        try:
            fn()
            started = time.perf_counter()
            for _ in range(count):
                fn()
            out.append((name, (time.perf_counter() - started) / count * 1e6))
        except Exception:  # a renamed internal: report n/a, keep going
            out.append((name, None))

    async def aio(name: str, fn: Callable[[], Awaitable[Any]]) -> None:
        try:
            await fn()
            started = time.perf_counter()
            for _ in range(count):
                await fn()
            out.append((name, (time.perf_counter() - started) / count * 1e6))
        except Exception:
            out.append((name, None))

    async def with_timeout() -> None:
        async with asyncio.timeout(5.0):  # noqa: ASYNC100 - the cost of arming and disarming it
            pass

    async def with_semaphore() -> None:
        async with sem:
            pass

    async def future_round_trip() -> None:
        fut = loop.create_future()
        loop.call_soon(fut.set_result, None)
        await fut

    def context_enter_leave() -> None:
        ctx = context.current()
        context.leave(context.enter(context.MessageContext(correlation_id=ctx.correlation_id)))

    def breaker() -> None:
        b = bus.breakers.get("module:bench")
        b.try_acquire()
        b.on_success(1e-6)

    def observe_metrics() -> None:
        metrics.count(metrics.BUS_HANDLERS.cell(consumer, "BenchPing"), 1e-6)

    def observe_debug_log() -> None:
        log.debug(
            "bus.handled",
            module="bench",
            consumer=consumer,
            type="BenchPing",
            message_id="x",
            duration_ms=0.001,
        )

    try:
        await aio("reference: Future request/reply on uvloop (bench/README.md ~3.6 us)", future_round_trip)
        sync(
            "Bus._envelope (uuid4, traceparent, msgpack encode, replace)",
            lambda: bus._envelope(q, consumer=consumer),
        )
        sync(
            "context.child_traceparent(None) (2x secrets.token_hex)", lambda: context.child_traceparent(None)
        )
        sync("context enter + leave", context_enter_leave)
        sync("circuit breaker try_acquire + on_success", breaker)
        await aio("async with asyncio.timeout(5)", with_timeout)
        await aio("async with Semaphore", with_semaphore)
        sync("observe: handled + latency counted in a plain cell (ADR 0027)", observe_metrics)
        sync("observe: log.debug filtered at WARNING", observe_debug_log)
    finally:
        await bus.stop()
    return out


def report(results: dict[str, list[float]], per_round: int) -> None:
    us = {name: [t * 1e6 for t in times] for name, times in results.items()}
    best = {name: min(v) for name, v in us.items()}
    med = {name: statistics.median(v) for name, v in us.items()}
    rounds = len(us["direct"])
    print(
        f"in-process bus ask (uvloop, InProcessTransport, no-op query handler): {rounds} interleaved rounds "
        f"of {per_round:,} calls per variant"
    )
    print(f"{'variant':<14}{'best us/call':>14}{'median us/call':>16}{'overhead (median)':>19}")
    for name in us:
        over = "" if name == "direct" else f"{med[name] - med['direct']:>16.2f} us"
        print(f"{name:<14}{best[name]:>14.3f}{med[name]:>16.3f}{over:>19}")
    for name in ("ask/default", "ask/none"):
        overhead = med[name] - med["direct"]
        verdict = "meets" if overhead <= TARGET_US else "MISSES"
        print(
            f"  {name}: overhead {overhead:.2f} us per ask vs target <= {TARGET_US:.0f} us -> {verdict} "
            f"({overhead / TARGET_US:.2f}x of the budget)"
        )
    mw = med["ask/default"] - med["ask/none"]
    print(f"  default middleware (observe: metrics + filtered debug log) costs {mw:.2f} us per ask")


def _trace_to_nowhere() -> None:
    """Tracing on, every span batched and then dropped."""
    from collections.abc import Sequence

    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    from shop.observability import tracing
    from shop.settings import Settings

    class Discard(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    tracing.configure_tracing(Settings(), "bench", processor=BatchSpanProcessor(Discard()))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=200_000, help="calls per variant (default 200000)")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds (default 10)")
    parser.add_argument("--budget", type=float, default=10.0, help="seconds for the timed part (default 10)")
    parser.add_argument("--profile-n", type=int, default=50_000, help="asks under cProfile (default 50000)")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--tracing", action="store_true", help="with OpenTelemetry tracing on")
    args = parser.parse_args()

    shop_logging.configure("WARNING")
    if args.tracing:
        _trace_to_nowhere()
        print("tracing: ON (spans batched to a discarding exporter)")
    print(f"python {sys.version.split()[0]}, uvloop {importlib.metadata.version('uvloop')}")
    results = uvloop.run(measure(args.n, args.budget, args.rounds))
    report(results, max(1, args.n // args.rounds))
    print("\npieces of an ask, each timed alone (us per call):")
    for name, value in uvloop.run(components(20_000)):
        print(f"  {'n/a' if value is None else f'{value:6.2f}':>6}  {name}")
    if not args.no_profile:
        summary = uvloop.run(profile(args.profile_n, budget_s=10.0))
        print(
            "\ncProfile of ask/default, top 15 by tottime (cProfile inflates small calls):", file=sys.stderr
        )
        print(summary, file=sys.stderr)
        print(f"full profile: {RESULTS / 'ask_profile.txt'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
