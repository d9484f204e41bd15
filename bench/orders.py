"""Orders per second through HTTP on `shop run` (SQLite, granian), and the saga's latency.

bench/README.md: "orders completed per second, `shop run` on SQLite, and its p99 saga latency:
report; the goal is >= 200/s here".

Setup, before anything is timed (argon2 sign-up and log-in are slow on purpose): `shop run` on
granian in a fresh SHOP_DATA_DIR, with SHOP_RATE_LIMIT and SHOP_LOGIN_RATE_LIMIT at
1000000/second and the admin from SHOP_ADMIN_EMAIL/SHOP_ADMIN_PASSWORD; the admin creates
--products products with ample stock; --customers customers sign up, log in and add an address;
a few warm-up orders run to the end (not counted).

The timed run: --orders orders (1 to --max-items lines of distinct products, 1 to 3 of each,
`payment_token: tok_ok`, the customers taking turns), placed by --concurrency workers with
httpx.AsyncClient, each keeping one POST /api/v1/orders in flight (`--mode open`, the default: a
worker posts its next order as soon as the 202 is back, so the sagas may queue up behind the
POSTs), or each keeping one ORDER in flight (`--mode closed`: the worker waits until its order
is terminal before placing the next, so at most --concurrency sagas run at once). A poller
follows the orders through the list endpoint, GET /api/v1/orders?limit=N per customer that has
unfinished orders (N: how many are unfinished + 10, at most 100; it pages on while some are not
seen yet), each customer at most every --poll-interval seconds, at most --poll-concurrency polls
in flight: the poller's load on the server is bounded, and it is printed. Everything stops at
--timeout seconds after the first POST.

Printed:
  accepted/s   202s per second, from the first POST sent to the last 202 received
  completed/s  terminal orders per second, from the first POST sent to the last order's terminal
               `updated_at` (stamped by the server; same machine, same clock)
  latency      POST -> 202; 202 -> terminal as the client saw it (202 received -> the poll that
               saw it terminal: includes the poller's delay); and the saga as the server stamped
               it (the order's updated_at - created_at: no polling in it); p50 / p99 / max
  statuses     how many orders ended in each status (all should be COMPLETED), and whether the
               customers' order lists hold any order the client never got a 202 for
  CPU          the shop's processes' CPU seconds during the timed run, per order
  bus          from the shop's /metrics, before and after: messages handled per consumer, per
               order, mean handler time; retries, failures, dead letters; outbox lag
  log          warning/error events of the shop's log, counted (the first 200 lines are kept in
               bench/results/orders-shop-<mode>.warnings)
--count-hops starts the shop with bench/hopcount on its PYTHONPATH, which counts every call
aiosqlite hands to a connection thread (a "hop", ~100 µs each per bench/README.md), and prints
hops, SQL statements and transactions per order.
--profile records the shop with py-spy (when installed: `.venv/bin/pip install py-spy`; not a
project dependency) during the timed run, prints the hottest functions and keeps the raw
stacks in bench/results/orders_pyspy.txt.

--split runs the same measurement against the split deployment instead of `shop run`: Redis
on 127.0.0.1:6379 db 11 (--redis-db; only that db is flushed, before and after), `shop migrate`,
the signing key made once (`load_keys(Settings.from_env())`), then `shop serve users`, `shop
serve catalog` twice, `shop serve orders`, `shop serve payments`, `shop serve delivery` and `shop
gateway`, each on its own loopback port with SHOP_TRANSPORT=dramatiq and a fresh
SHOP_DATA_DIR; the run starts once GET /api/v1/services (as the admin) lists every module
healthy (catalog twice), and the orders go through the gateway's port. CPU is summed over every
process of the deployment and its workers (not Redis); the bus figures are the services'
/metrics summed. Every process and its workers are killed at the end, whatever happens.
(--profile is not available with --split.)

Figures are printed, never asserted. Every wait is bounded.

    .venv/bin/python bench/orders.py [--orders 400] [--concurrency 16] [--customers 20]
        [--products 20] [--mode open|closed] [--poll-interval 0.1] [--timeout 120] [--profile]
        [--count-hops] [--split [--redis-db 11]]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import http_servers as hs
import httpx
from catalog_read import group_cpu_seconds

HERE = Path(__file__).resolve().parent
HOST = hs.HOST
RATE_LIMIT = hs.RATE_LIMIT
ADMIN_EMAIL = "bench-admin@example.com"
ADMIN_PASSWORD = "bench-admin-password-1"
PASSWORD = "bench-customer-password-1"
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED")
POLL_BACKOFF_S = 0.5  # a customer whose poll failed waits this much longer
ADDRESS = hs.ADDRESS


@dataclass(eq=False)  # hashed by identity (the poller keeps a set of them)
class Customer:
    email: str
    token: str = ""
    address_id: str = ""
    pending: set[str] = field(default_factory=set)  # accepted, not yet seen terminal
    last_poll: float = 0.0

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class Order:
    customer: Customer
    body: dict[str, Any]
    sent: float = 0.0  # monotonic, POST sent
    accepted: float | None = None  # monotonic, 202 received
    order_id: str | None = None
    http_status: int | None = None
    error: str | None = None
    status: str | None = None  # the last status seen
    failure_reason: str | None = None
    seen_terminal: float | None = None  # monotonic, the poll that saw it terminal
    created_at: datetime | None = None  # server stamps
    updated_at: datetime | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Stats:
    started_wall: float = 0.0
    started: float = 0.0
    polls: int = 0
    poll_errors: int = 0
    poll_statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    poll_seconds: float = 0.0
    cpu_s: float = 0.0
    cpu_parts: dict[str, float] = field(default_factory=dict)  # split: CPU seconds by service
    ended: float = 0.0
    timed_out: bool = False


# -- setup ---------------------------------------------------------------------------------


async def expect(response: httpx.Response, *statuses: int) -> dict[str, Any]:
    if response.status_code not in statuses:
        raise RuntimeError(
            f"{response.request.method} {response.request.url.path}: "
            f"{response.status_code} {response.text[:300]}"
        )
    data: dict[str, Any] = response.json()
    return data


async def gather_bounded(limit: int, coros: list[Any]) -> list[Any]:
    semaphore = asyncio.Semaphore(limit)

    async def one(coro: Any) -> Any:
        async with semaphore:
            return await coro

    return await asyncio.gather(*(one(c) for c in coros))


async def set_up(client: httpx.AsyncClient, args: argparse.Namespace) -> tuple[list[str], list[Customer]]:
    admin = await expect(
        await client.post("/api/v1/auth/token", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}), 200
    )
    admin_headers = {"Authorization": f"Bearer {admin['access_token']}"}

    async def product(n: int) -> str:
        body = {
            "sku": f"ORD-{n:04d}",
            "name": f"Order bench product {n}",
            "price": 500 + 10 * n,
            "currency": "EUR",
            "category": "bench",
            "stock": 10_000_000,  # ample: orders take at most 3 of each line
        }
        created = await expect(await client.post("/api/v1/products", json=body, headers=admin_headers), 201)
        return str(created["id"])

    async def customer(n: int) -> Customer:
        c = Customer(email=f"customer-{n:03d}@example.com")
        await expect(
            await client.post(
                "/api/v1/users", json={"email": c.email, "password": PASSWORD, "name": f"C {n}"}
            ),
            201,
        )
        token = await expect(
            await client.post("/api/v1/auth/token", json={"email": c.email, "password": PASSWORD}), 200
        )
        c.token = str(token["access_token"])
        address = await expect(
            await client.post("/api/v1/users/me/addresses", json=ADDRESS, headers=c.headers), 201
        )
        c.address_id = str(address["id"])
        return c

    started = time.monotonic()
    product_ids = await gather_bounded(4, [product(n) for n in range(args.products)])
    customers = await gather_bounded(2, [customer(n) for n in range(args.customers)])
    print(
        f"[setup] {len(product_ids)} products, {len(customers)} customers with addresses"
        f" in {time.monotonic() - started:.1f}s",
        file=sys.stderr,
        flush=True,
    )
    return product_ids, customers


def plan(
    args: argparse.Namespace, count: int, product_ids: list[str], customers: list[Customer]
) -> list[Order]:
    rng = random.Random(args.seed)
    orders = []
    for n in range(count):
        lines = rng.sample(product_ids, rng.randint(1, min(args.max_items, len(product_ids))))
        customer = customers[n % len(customers)]
        body = {
            "items": [{"product_id": p, "quantity": rng.randint(1, 3)} for p in lines],
            "address_id": customer.address_id,
            "payment_token": "tok_ok",
        }
        orders.append(Order(customer, body))
    return orders


# -- the timed run -------------------------------------------------------------------------


def _stamp(text: str) -> datetime:
    return datetime.fromisoformat(text)


async def place(client: httpx.AsyncClient, order: Order) -> None:
    order.sent = time.monotonic()
    try:
        response = await client.post("/api/v1/orders", json=order.body, headers=order.customer.headers)
    except httpx.HTTPError as exc:
        order.error = f"{type(exc).__name__}: {exc}"
        order.done.set()
        return
    order.http_status = response.status_code
    if response.status_code != 202:
        order.error = f"{response.status_code} {response.text[:200]}"
        order.done.set()
        return
    order.accepted = time.monotonic()
    data = response.json()
    order.order_id, order.status = str(data["id"]), str(data["status"])
    order.created_at = _stamp(data["created_at"])
    order.customer.pending.add(order.order_id)


async def poll_customer(
    client: httpx.AsyncClient, customer: Customer, by_id: dict[str, Order], stats: Stats
) -> None:
    """Page through the customer's orders (newest first) until every pending one was seen."""
    customer.last_poll = time.monotonic()
    wanted = set(customer.pending)
    cursor: str | None = None
    # Newest first, and the unfinished orders are among the newest: a page a little larger than
    # the number still wanted usually covers them (paging on when it does not) and keeps the
    # poller's reads small.
    limit = min(100, len(wanted) + 10)
    for _ in range(1 + len(by_id) // limit):  # bounded: never more pages than there are orders
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        started = time.monotonic()
        try:
            response = await client.get("/api/v1/orders", params=params, headers=customer.headers)
        except httpx.HTTPError:
            stats.poll_errors += 1
            customer.last_poll += POLL_BACKOFF_S
            return
        finally:
            stats.polls += 1
            stats.poll_seconds += time.monotonic() - started
        if response.status_code != 200:
            stats.poll_errors += 1
            stats.poll_statuses[response.status_code] += 1
            customer.last_poll += POLL_BACKOFF_S  # e.g. a 503: do not hammer a struggling shop
            return
        seen_at = time.monotonic()
        page = response.json()
        for item in page["items"]:
            order = by_id.get(item["id"])
            if order is None or item["id"] not in wanted:
                continue
            wanted.discard(item["id"])
            order.status = item["status"]
            if item["status"] in TERMINAL:
                order.seen_terminal = seen_at
                order.failure_reason = item["failure_reason"]
                order.updated_at = _stamp(item["updated_at"])
                customer.pending.discard(item["id"])
                order.done.set()
        cursor = page.get("next_cursor")
        if not wanted or not cursor:
            return


async def poller(
    client: httpx.AsyncClient,
    customers: list[Customer],
    by_id: dict[str, Order],
    stats: Stats,
    args: argparse.Namespace,
    deadline: float,
    finished: asyncio.Event,
) -> None:
    semaphore = asyncio.Semaphore(args.poll_concurrency)
    in_flight: set[Customer] = set()
    tasks: set[asyncio.Task[None]] = set()

    async def one(customer: Customer) -> None:
        try:
            await poll_customer(client, customer, by_id, stats)
        finally:
            in_flight.discard(customer)
            semaphore.release()

    while not finished.is_set() and time.monotonic() < deadline:
        due = [
            c
            for c in customers
            if c.pending and c not in in_flight and time.monotonic() - c.last_poll >= args.poll_interval
        ]
        due.sort(key=lambda c: c.last_poll)  # the longest-waiting first
        for customer in due:
            await semaphore.acquire()
            in_flight.add(customer)
            task = asyncio.create_task(one(customer))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.sleep(min(0.01, args.poll_interval / 4))
    for task in list(tasks):
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def timed_run(
    client: httpx.AsyncClient, orders: list[Order], customers: list[Customer], args: argparse.Namespace
) -> Stats:
    stats = Stats()
    by_id: dict[str, Order] = {}
    queue = collections.deque(orders)
    finished = asyncio.Event()
    stats.started_wall, stats.started = time.time(), time.monotonic()
    deadline = stats.started + args.timeout

    async def worker() -> None:
        while queue and time.monotonic() < deadline:
            order = queue.popleft()
            await place(client, order)
            if order.order_id:
                by_id[order.order_id] = order
                if args.mode == "closed":
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(order.done.wait(), max(0.0, deadline - time.monotonic()))

    async def all_done() -> None:
        for order in orders:
            await order.done.wait()
        finished.set()

    poll_task = asyncio.create_task(poller(client, customers, by_id, stats, args, deadline, finished))
    done_task = asyncio.create_task(all_done())
    try:
        await asyncio.wait_for(
            asyncio.gather(*(worker() for _ in range(args.concurrency))),
            max(1.0, deadline - time.monotonic()),
        )
        await asyncio.wait_for(done_task, max(0.0, deadline - time.monotonic()))
    except TimeoutError:
        stats.timed_out = True
    finally:
        finished.set()
        done_task.cancel()
        await asyncio.gather(done_task, return_exceptions=True)
        await asyncio.wait_for(poll_task, 30)
    stats.ended = time.monotonic()
    return stats


async def warm_up(client: httpx.AsyncClient, orders: list[Order], customers: list[Customer]) -> set[str]:
    """A few orders through the whole saga before timing (code paths, caches, connections)."""
    args = argparse.Namespace(
        mode="closed", concurrency=2, timeout=60.0, poll_interval=0.05, poll_concurrency=1
    )
    stats = await timed_run(client, orders, customers, args)
    done = sum(1 for o in orders if o.status in TERMINAL)
    print(
        f"[warm-up] {done}/{len(orders)} orders terminal in {stats.ended - stats.started:.1f}s",
        file=sys.stderr,
        flush=True,
    )
    return {o.order_id for o in orders if o.order_id}


# -- what the server says: /metrics and the customers' own order lists -------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The shop's Prometheus samples, keyed by (name, sorted labels); {} if /metrics fails."""
    try:
        response = await client.get("/metrics")
    except httpx.HTTPError:
        return {}
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for line in response.text.splitlines():
        match = _SAMPLE.match(line)
        if not match or line.startswith("#"):
            continue
        labels = tuple(sorted(_LABEL.findall(match.group(2) or "")))
        with contextlib.suppress(ValueError):
            samples[(match.group(1), labels)] = float(match.group(3))
    return samples


def metrics_report(before: dict[Any, float], after: dict[Any, float], orders: int) -> str:
    """Bus work per order during the timed run, from the shop's own counters."""
    if not before or not after:
        return "bus metrics: /metrics did not answer"

    def delta(name: str, key: str) -> dict[str, float]:
        out: dict[str, float] = collections.defaultdict(float)
        for (metric, labels), value in after.items():
            if metric == name:
                label = dict(labels).get(key, "")
                out[label] += value - before.get((metric, labels), 0.0)
        return {k: v for k, v in out.items() if v}

    handled = delta("shop_bus_messages_handled_total", "consumer")
    seconds = delta("shop_bus_handler_duration_seconds_sum", "consumer")
    lines = [f"bus during the timed run (shop's /metrics; per order: / {orders} terminal orders):"]
    lines.append(f"  {'consumer':<44}{'handled':>9}{'per order':>11}{'mean ms':>9}{'total s':>9}")
    for consumer, count in sorted(handled.items(), key=lambda kv: -seconds.get(kv[0], 0.0)):
        total = seconds.get(consumer, 0.0)
        lines.append(
            f"  {consumer:<44}{count:>9.0f}{count / max(orders, 1):>11.1f}"
            f"{total / count * 1e3:>9.1f}{total:>9.1f}"
        )
    lines.append(f"  {'all':<44}{sum(handled.values()):>9.0f}{sum(handled.values()) / max(orders, 1):>11.1f}")
    for name, label in (
        ("shop_bus_messages_retried_total", "retried"),
        ("shop_bus_messages_failed_total", "failed"),
        ("shop_bus_messages_dead_lettered_total", "dead-lettered"),
        ("shop_bus_messages_duplicate_total", "duplicates skipped"),
    ):
        counts = delta(name, "consumer")
        if counts:
            text = ", ".join(f"{k} {v:.0f}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
            lines.append(f"  {label}: {text}")
    lag_sum = sum(delta("shop_outbox_lag_seconds_sum", "").values())
    lag_count = sum(delta("shop_outbox_lag_seconds_count", "").values())
    if lag_count:
        lines.append(f"  outbox: {lag_count:.0f} deliveries, mean lag {lag_sum / lag_count * 1e3:.0f} ms")
    return "\n".join(lines)


async def reconcile(
    client: httpx.AsyncClient, customers: list[Customer], known: set[str]
) -> collections.Counter[str]:
    """Every order the customers have, by status, that the client never got a 202 for (e.g. a POST
    answered 503 whose order was placed anyway). Bounded: at most 100 pages per customer."""
    unknown: collections.Counter[str] = collections.Counter()
    for customer in customers:
        cursor: str | None = None
        for _ in range(100):
            params: dict[str, Any] = {"limit": 100, **({"cursor": cursor} if cursor else {})}
            try:
                response = await client.get("/api/v1/orders", params=params, headers=customer.headers)
            except httpx.HTTPError:
                break
            if response.status_code != 200:
                break
            page = response.json()
            for item in page["items"]:
                if item["id"] not in known:
                    unknown[item["status"]] += 1
            cursor = page.get("next_cursor")
            if not cursor:
                break
    return unknown


# -- --count-hops: aiosqlite thread hand-offs, counted in the shop (bench/hopcount) ----------


def hop_snapshot(directory: Path | None) -> collections.Counter[tuple[str, str]]:
    """The hop counts of every shop process so far (their files are rewritten every 0.2 s)."""
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    if directory is None:
        return counts
    for path in directory.glob("*.tsv"):
        with contextlib.suppress(OSError, ValueError):
            for line in path.read_text().splitlines():
                n, name, verb = line.split("\t")
                counts[(name, verb)] += int(n)
    return counts


def hops_report(
    before: collections.Counter[tuple[str, str]], after: collections.Counter[tuple[str, str]], orders: int
) -> str:
    delta = after.copy()
    delta.subtract(before)
    per = max(orders, 1)
    total = sum(v for v in delta.values() if v > 0)
    if not total:
        return "aiosqlite hops: none counted (is bench/hopcount on the shop's PYTHONPATH?)"
    statements = sum(v for (name, _), v in delta.items() if name in ("execute", "executemany"))
    begins = delta[("execute", "BEGIN")]
    lines = [
        f"aiosqlite thread hops during the timed run (bench/hopcount; includes the poller's reads):"
        f" {total / per:.0f} per order; {statements / per:.0f} SQL statements and {begins / per:.1f}"
        " transactions (BEGIN) per order",
        "  "
        + ", ".join(
            f"{name}{' ' + verb if verb else ''} {v / per:.1f}"
            for (name, verb), v in delta.most_common()
            if v > 0
        ),
    ]
    return "\n".join(lines)


# -- report --------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def latency_line(label: str, values_ms: list[float]) -> str:
    if not values_ms:
        return f"  {label:<44} n/a"
    return (
        f"  {label:<44} p50 {pct(values_ms, 0.50):7.0f} ms   p99 {pct(values_ms, 0.99):7.0f} ms"
        f"   max {max(values_ms):7.0f} ms   (mean {statistics.fmean(values_ms):.0f})"
    )


def deployment_label(args: argparse.Namespace) -> str:
    if getattr(args, "split", False):
        return (
            f"the split deployment (gateway + users, catalog x2, orders, payments, delivery;"
            f" {args.server}, SQLite, dramatiq on Redis db {args.redis_db})"
        )
    return f"`shop run` ({args.server}, SQLite, in-process bus)"


def report(orders: list[Order], stats: Stats, args: argparse.Namespace, loadavg: tuple[str, str]) -> None:
    accepted = [o for o in orders if o.accepted is not None]
    terminal = [o for o in accepted if o.status in TERMINAL and o.updated_at is not None]
    refused = [o for o in orders if o.sent and o.accepted is None]
    never_sent = [o for o in orders if not o.sent]
    print(
        f"\nOrders through HTTP on {deployment_label(args)}: {len(orders)} orders of 1-"
        f"{args.max_items} lines, tok_ok, {args.customers} customers, {args.products} products;\n"
        f"{args.concurrency} {'POSTs' if args.mode == 'open' else 'orders'} in flight (--mode {args.mode});"
        f" httpx on the same cores, loopback; load average {loadavg[0]} before, {loadavg[1]} after."
    )
    if accepted:
        last_202 = max(o.accepted for o in accepted if o.accepted is not None)
        span = last_202 - stats.started
        print(
            f"accepted:  {len(accepted)} orders (202) in {span:.2f}s = {len(accepted) / span:,.1f} orders/s"
        )
    if terminal:
        last_end = max(o.updated_at.timestamp() for o in terminal if o.updated_at is not None)
        span = last_end - stats.started_wall
        print(
            f"completed: {len(terminal)} orders terminal in {span:.2f}s"
            " (first POST -> last terminal updated_at)"
            f" = {len(terminal) / span:,.1f} orders/s"
        )
    client_ms = [(o.seen_terminal - o.accepted) * 1e3 for o in terminal if o.seen_terminal and o.accepted]
    server_ms = [
        (o.updated_at - o.created_at).total_seconds() * 1e3 for o in terminal if o.updated_at and o.created_at
    ]
    post_ms = [(o.accepted - o.sent) * 1e3 for o in accepted if o.accepted is not None]
    print("latency:")
    print(latency_line("POST /api/v1/orders -> 202", post_ms))
    print(latency_line("202 -> terminal, seen by the poller", client_ms))
    print(latency_line("saga: created_at -> terminal updated_at", server_ms))
    counts = collections.Counter(o.status or "never accepted" for o in orders if o.sent)
    reasons = collections.Counter(o.failure_reason for o in terminal if o.failure_reason)
    status_text = ", ".join(f"{k} {v}" for k, v in counts.most_common())
    print(f"statuses:  {status_text}" + (f"; failure reasons {dict(reasons)}" if reasons else ""))
    if refused:
        print(f"  {len(refused)} POSTs not accepted, e.g. {refused[0].error}")
    if never_sent:
        print(f"  {len(never_sent)} orders never sent (the --timeout of {args.timeout:.0f}s came first)")
    elapsed = stats.ended - stats.started
    poll_mean = stats.poll_seconds / stats.polls * 1e3 if stats.polls else 0.0
    poll_codes = ", ".join(f"{code}: {n}" for code, n in stats.poll_statuses.most_common())
    poll_codes = f" [{poll_codes}]" if poll_codes else ""
    print(
        f"poller:    {stats.polls} list requests ({stats.polls / elapsed:.0f}/s, mean {poll_mean:.0f} ms,"
        f" {stats.poll_errors} errors{poll_codes}); each customer at most every"
        f" {args.poll_interval * 1e3:.0f} ms,"
        f" at most {args.poll_concurrency} in flight"
    )
    if terminal:
        print(
            f"CPU:       the shop's processes used {stats.cpu_s:.1f} s in {elapsed:.1f} s of timed run"
            f" = {stats.cpu_s / len(terminal) * 1e3:.1f} ms per order (including the poller's reads)"
        )
        if stats.cpu_parts:
            parts = sorted(stats.cpu_parts.items(), key=lambda kv: -kv[1])
            print(
                "           by service: "
                + ", ".join(f"{name} {s / len(terminal) * 1e3:.1f}" for name, s in parts)
                + " ms per order"
            )
    if stats.timed_out:
        print(
            f"WARNING: the run hit its --timeout of {args.timeout:.0f}s;"
            " unfinished orders are counted as such"
        )
    if any(o.status != "COMPLETED" for o in orders if o.sent):
        print("WARNING: not every order ended COMPLETED")


# -- py-spy --------------------------------------------------------------------------------


def py_spy() -> str | None:
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


def summarize_profile(raw: Path, top: int = 25) -> str:
    """The hottest functions of a py-spy raw (collapsed stacks) file: self and inclusive."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [
            re.sub(r":\d+\)$", ")", f) for f in stack.split(";") if not f.startswith(("process ", "thread "))
        ]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return "py-spy: no samples"
    lines = [f"py-spy (--gil: samples while holding the GIL): {total} samples", "  self:"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in own.most_common(top)]
    lines.append("  inclusive (shop and library frames, not the server's outer frames):")
    skip = ("threading.py", "multiprocessing", "granian/server", "runpy", "shop/cli.py", "asyncio/")
    shown = [(name, n) for name, n in inclusive.most_common(top * 4) if not any(s in name for s in skip)]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in shown[:top]]
    return "\n".join(lines)


# -- --split: the split deployment (Redis, the modules as services, the gateway) ----------

SPLIT_SERVICES = (  # name, shop arguments
    ("users", ("serve", "users")),
    ("catalog-1", ("serve", "catalog")),
    ("catalog-2", ("serve", "catalog")),
    ("orders", ("serve", "orders")),
    ("payments", ("serve", "payments")),
    ("delivery", ("serve", "delivery")),
)
SPLIT_INSTANCES = {"users": 1, "catalog": 2, "orders": 1, "payments": 1, "delivery": 1}
REDIS_BASE = "redis://127.0.0.1:6379"


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (granian's workers do not stay in the server's process group)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def tree_cpu_seconds(roots: list[int]) -> float:
    """utime + stime of every live process in the trees below `roots` (the roots included)."""
    total = 0
    for pid in {p for root in roots for p in (root, *descendants(root))}:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


@dataclass
class Split:
    """The split deployment's processes, each started in its own session; stop() kills them all."""

    data_dir: Path
    env: dict[str, str]
    shop: str
    gateway_port: int = 0
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    seen: set[int] = field(default_factory=set)  # every worker pid seen, for stop()

    def log(self, name: str) -> Path:
        return self.data_dir / f"{name}.log"

    def start(self, name: str, *args: str) -> None:
        port = hs.free_port()
        self.ports[name] = port
        with self.log(name).open("ab") as out:
            self.processes[name] = subprocess.Popen(
                [self.shop, *args, "--host", HOST, "--port", str(port)],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start_all(self, server: str) -> None:
        for name, args in SPLIT_SERVICES:
            self.start(name, *args, "--server", server)
        self.start("gateway", "gateway", "--server", server)
        self.gateway_port = self.ports["gateway"]

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes.values()]

    def cpu(self) -> float:
        return tree_cpu_seconds(self.pids())

    def cpu_by_name(self) -> dict[str, float]:
        """CPU seconds so far of each service's process tree (server and its workers)."""
        return {name: tree_cpu_seconds([proc.pid]) for name, proc in self.processes.items()}

    def service_ports(self) -> list[int]:
        return [port for name, port in self.ports.items() if name != "gateway"]

    def wait_ready(self, timeout_s: float) -> None:
        """Bounded: the gateway answers, the admin logs in, and /api/v1/services lists every
        module's instances healthy."""
        deadline = time.monotonic() + timeout_s
        last: Any = None
        admin: dict[str, str] | None = None
        with httpx.Client(base_url=f"http://{HOST}:{self.gateway_port}", timeout=5) as client:
            while time.monotonic() < deadline:
                for pid in self.pids():
                    self.seen.update(descendants(pid))
                dead = [n for n, p in self.processes.items() if p.poll() is not None]
                if dead:
                    raise RuntimeError(f"split: {', '.join(dead)} exited before the deployment was up")
                try:
                    if admin is None:
                        r = client.post(
                            "/api/v1/auth/token", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
                        )
                        last = f"login {r.status_code}"
                        if r.status_code == 200:
                            admin = {"Authorization": f"Bearer {r.json()['access_token']}"}
                    if admin is not None:
                        r = client.get("/api/v1/services", headers=admin)
                        last = f"services {r.status_code}"
                        if r.status_code == 200:
                            modules = r.json()["modules"]
                            healthy = {
                                m: sum(1 for i in modules.get(m, []) if i["healthy"]) for m in SPLIT_INSTANCES
                            }
                            last = f"healthy {healthy}"
                            if all(healthy[m] >= n for m, n in SPLIT_INSTANCES.items()):
                                return
                except (httpx.HTTPError, KeyError, ValueError, TypeError) as exc:
                    last = repr(exc)
                time.sleep(0.25)
        raise RuntimeError(f"split: not up within {timeout_s:.0f}s (last: {last})")

    def stop(self) -> None:
        """SIGTERM every server, a bounded wait, then SIGKILL every process of every tree and every
        worker ever seen (whether or not it left its server's process group)."""
        for pid in self.pids():
            self.seen.update(descendants(pid))
        for process in self.processes.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
        for process in self.processes.values():
            for pid in [process.pid, *descendants(process.pid)]:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        for pid in self.seen:  # none should be left; a stray one would heartbeat on
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)

    def merged_log(self, target: Path) -> Path:
        with target.open("wb") as out:
            for name in self.processes:
                with contextlib.suppress(OSError):
                    out.write(self.log(name).read_bytes())
        return target


def flush_redis_db(db: int) -> None:
    import redis  # a dependency of the shop's dramatiq transport

    client = redis.Redis.from_url(f"{REDIS_BASE}/{db}", socket_timeout=5)
    try:
        client.flushdb()
    finally:
        client.close()


def prepare_split(env: dict[str, str]) -> None:
    """`shop migrate` and the signing key, once, before any service starts (bounded)."""
    shop = str(Path(sys.executable).with_name("shop"))
    subprocess.run([shop, "migrate"], env=env, check=True, capture_output=True, timeout=120)
    make_keys = (
        "from shop.settings import Settings; from shop.security.keys import load_keys; "
        "load_keys(Settings.from_env())"
    )
    subprocess.run([sys.executable, "-c", make_keys], env=env, check=True, capture_output=True, timeout=60)


def run_split(
    args: argparse.Namespace, env: dict[str, str], work: Path, results: Path, hop_dir: Path | None
) -> tuple[Outcome, tuple[str, str], collections.Counter[str]]:
    env = {
        **env,
        "SHOP_REDIS_URL": f"{REDIS_BASE}/{args.redis_db}",
        "SHOP_TRANSPORT": "dramatiq",
        "SHOP_NAMESPACE": f"bench{os.getpid()}",
    }
    split = Split(Path(env["SHOP_DATA_DIR"]), env, str(Path(sys.executable).with_name("shop")))
    log_problems: collections.Counter[str] = collections.Counter()
    flush_redis_db(args.redis_db)
    try:
        prepare_split(env)
        split.start_all(args.server)
        try:
            split.wait_ready(args.startup_timeout)
        except Exception:
            for name in split.processes:
                tail = split.log(name).read_text(errors="replace").splitlines()[-8:]
                print(f"--- last lines of {name}'s log ---\n" + "\n".join(tail), file=sys.stderr)
            raise
        print(
            f"[split] up: gateway on :{split.gateway_port}, services "
            + ", ".join(f"{n} :{p}" for n, p in split.ports.items() if n != "gateway"),
            file=sys.stderr,
            flush=True,
        )
        load_before = hs._loadavg()
        outcome = asyncio.run(
            drive(
                args,
                split.gateway_port,
                0,
                results,
                hop_dir,
                cpu=split.cpu,
                cpu_parts=split.cpu_by_name,
                metrics_ports=split.service_ports(),
            )
        )
        load_after = hs._loadavg()
    finally:
        split.stop()
        with contextlib.suppress(Exception):
            flush_redis_db(args.redis_db)
        with contextlib.suppress(OSError):
            merged = split.merged_log(work / "orders-split.log")
            hs._keep_head(split.log("gateway"), results / "orders-split-gateway.log.head", 30)
            log_problems = problems(merged, results / f"orders-split-{args.mode}.warnings")
    return outcome, (load_before, load_after), log_problems


# -- main ----------------------------------------------------------------------------------


def problems(log: Path, keep: Path, lines: int = 200) -> collections.Counter[str]:
    """Count the shop log's warning/error lines by level and event; keep the first ones."""
    counts: collections.Counter[str] = collections.Counter()
    kept: list[str] = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            if "Traceback" in line or "Error" in line:
                counts["(not JSON) " + line.strip()[:60]] += 1
                if len(kept) < lines:
                    kept.append(line)
            continue
        level = str(entry.get("level", "")).lower() if isinstance(entry, dict) else ""
        if level in ("warning", "error", "critical", "exception"):
            key = f"{level}:{entry.get('event')}"
            if "breaker" in entry:
                key += f" ({entry['breaker']} {entry.get('old')}->{entry.get('new')})"
            elif entry.get("event") == "http.dependency_unavailable":
                key += f" ({str(entry.get('error', ''))[:60]})"
            counts[key] += 1
            if len(kept) < lines:
                kept.append(line)
    keep.write_text("".join(k + "\n" for k in kept))
    return counts


@dataclass
class Outcome:
    orders: list[Order]
    stats: Stats
    metrics: str
    unknown: collections.Counter[str]
    hops: str = ""


async def scrape_all(
    client: httpx.AsyncClient, ports: list[int]
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics of several processes (the split deployment's services), samples summed; {} if any
    of them does not answer (a partial sum would make the deltas lie)."""
    total: dict[tuple[str, tuple[tuple[str, str], ...]], float] = collections.defaultdict(float)
    for port in ports:
        try:
            response = await client.get(f"http://{HOST}:{port}/metrics", timeout=10)
        except httpx.HTTPError:
            return {}
        if response.status_code != 200:
            return {}
        for line in response.text.splitlines():
            match = _SAMPLE.match(line)
            if not match or line.startswith("#"):
                continue
            labels = tuple(sorted(_LABEL.findall(match.group(2) or "")))
            with contextlib.suppress(ValueError):
                total[(match.group(1), labels)] += float(match.group(3))
    return dict(total)


async def drive(
    args: argparse.Namespace,
    port: int,
    pgid: int,
    results: Path,
    hop_dir: Path | None,
    cpu: Any = None,
    metrics_ports: list[int] | None = None,
    cpu_parts: Any = None,
) -> Outcome:
    """`cpu()`: CPU seconds of the shop so far (default: the process group `pgid`);
    `cpu_parts()`: the same by service (split), printed beside the total;
    `metrics_ports`: the processes whose /metrics are summed (default: the shop on `port`)."""
    if cpu is None:
        cpu = lambda: group_cpu_seconds(pgid)  # noqa: E731

    async def metrics(client: httpx.AsyncClient) -> dict[Any, float]:
        if metrics_ports is None:
            return await scrape(client)
        return await scrape_all(client, metrics_ports)

    limits = httpx.Limits(max_connections=args.concurrency + args.poll_concurrency + 4)
    timeout = httpx.Timeout(30.0)
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", limits=limits, timeout=timeout) as client:
        product_ids, customers = await set_up(client, args)
        warm_ids = await warm_up(client, plan(args, args.warmup_orders, product_ids, customers), customers)
        for c in customers:
            c.pending.clear()
        orders = plan(
            argparse.Namespace(**{**vars(args), "seed": args.seed + 1}), args.orders, product_ids, customers
        )
        profiler: asyncio.subprocess.Process | None = None
        raw = results / "orders_pyspy.txt"
        if args.profile:
            spy = py_spy()
            if spy is None:
                print(
                    "[profile] py-spy not found (.venv/bin/pip install py-spy); not profiling",
                    file=sys.stderr,
                )
            else:
                profiler = await asyncio.create_subprocess_exec(
                    spy,
                    "record",
                    "--pid",
                    str(pgid),
                    "--subprocesses",
                    "--gil",
                    "--nonblocking",
                    "-r",
                    "100",
                    "-d",
                    str(int(args.timeout)),
                    "-f",
                    "raw",
                    "-o",
                    str(raw),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                await asyncio.sleep(1.0)  # py-spy attaches
        metrics_before = await metrics(client)
        if hop_dir is not None:
            await asyncio.sleep(0.5)  # the counters are written every 0.2 s
        hops_before = hop_snapshot(hop_dir)
        cpu_before = cpu()
        parts_before = cpu_parts() if cpu_parts is not None else {}
        stats = await timed_run(client, orders, customers, args)
        stats.cpu_s = cpu() - cpu_before
        if cpu_parts is not None:
            stats.cpu_parts = {k: v - parts_before.get(k, 0.0) for k, v in cpu_parts().items()}
        if hop_dir is not None:
            await asyncio.sleep(0.5)
        hops_after = hop_snapshot(hop_dir)
        metrics_after = await metrics(client)
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)  # py-spy writes what it has and exits
            try:
                await asyncio.wait_for(profiler.wait(), 30)
            except TimeoutError:
                profiler.kill()
                await asyncio.wait_for(profiler.wait(), 5)
        terminal = sum(1 for o in orders if o.status in TERMINAL)
        known = warm_ids | {o.order_id for o in orders if o.order_id}
        unknown = await reconcile(client, customers, known)
        metrics = metrics_report(metrics_before, metrics_after, terminal)
        hops = hops_report(hops_before, hops_after, terminal) if hop_dir is not None else ""
        return Outcome(orders, stats, metrics, unknown, hops)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--orders", type=int, default=400, help="orders placed in the timed run (400)")
    parser.add_argument(
        "--concurrency", type=int, default=16, help="POSTs (open) or orders (closed) in flight (16)"
    )
    parser.add_argument("--mode", choices=("open", "closed"), default="open")
    parser.add_argument("--customers", type=int, default=20, help="customers, each with an address (20)")
    parser.add_argument("--products", type=int, default=20, help="products with ample stock (20)")
    parser.add_argument("--max-items", type=int, default=3, help="lines per order: 1 to this many (3)")
    parser.add_argument(
        "--poll-interval", type=float, default=0.1, help="seconds between polls of a customer (0.1)"
    )
    parser.add_argument("--poll-concurrency", type=int, default=2, help="list polls in flight at most (2)")
    parser.add_argument("--timeout", type=float, default=120.0, help="bound on the timed run, seconds (120)")
    parser.add_argument(
        "--warmup-orders", type=int, default=10, help="orders run to the end before timing (10)"
    )
    parser.add_argument("--log-level", help="SHOP_LOG_LEVEL of the shop (default: its own, INFO)")
    parser.add_argument("--server", choices=("granian", "uvicorn"), default="granian")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--profile", action="store_true", help="record the shop with py-spy during the timed run"
    )
    parser.add_argument(
        "--count-hops",
        action="store_true",
        help="count aiosqlite thread hand-offs in the shop (bench/hopcount/sitecustomize.py)",
    )
    parser.add_argument("--startup-timeout", type=float, default=90.0, help="seconds for the shop to come up")
    parser.add_argument(
        "--split",
        action="store_true",
        help="measure the split deployment (Redis, the modules as services, the gateway) instead of shop run",
    )
    parser.add_argument(
        "--redis-db",
        type=int,
        default=11,
        help="--split: the Redis db on 127.0.0.1:6379 it uses and flushes (11)",
    )
    args = parser.parse_args()
    if (
        min(
            args.orders,
            args.concurrency,
            args.customers,
            args.products,
            args.max_items,
            args.poll_concurrency,
        )
        < 1
    ):
        parser.error(
            "--orders, --concurrency, --customers, --products, --max-items, --poll-concurrency: >= 1"
        )
    if args.split and args.profile:
        parser.error("--profile is not available with --split")
    if not 0 <= args.redis_db <= 15:
        parser.error("--redis-db: 0 to 15")

    work = Path(tempfile.mkdtemp(prefix="shop-bench-orders-"))
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    data_dir = work / "data"
    data_dir.mkdir()
    port = hs.free_port()
    env = {
        **os.environ,
        "SHOP_DATA_DIR": str(data_dir),
        "SHOP_RATE_LIMIT": RATE_LIMIT,
        "SHOP_LOGIN_RATE_LIMIT": RATE_LIMIT,
        "SHOP_AUTH_ADDRESS_RATE_LIMIT": RATE_LIMIT,
        "SHOP_HOST": HOST,
        "SHOP_ADMIN_EMAIL": ADMIN_EMAIL,
        "SHOP_ADMIN_PASSWORD": ADMIN_PASSWORD,
    }
    if args.log_level:
        env["SHOP_LOG_LEVEL"] = args.log_level
    hop_dir: Path | None = None
    if args.count_hops:
        hop_dir = work / "hops"
        hop_dir.mkdir()
        env["SHOP_BENCH_HOPCOUNT_DIR"] = str(hop_dir)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE / "hopcount"), env.get("PYTHONPATH")) if p)
    log_problems: collections.Counter[str] = collections.Counter()
    warnings_name = f"orders-{'split' if args.split else 'shop'}-{args.mode}.warnings"
    if args.split:
        try:
            outcome, (load_before, load_after), log_problems = run_split(args, env, work, results, hop_dir)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return finish(args, outcome, (load_before, load_after), log_problems, results, warnings_name)
    target = hs.Target(
        label=f"shop run / {args.server}",
        cmd=[
            sys.executable,
            "-m",
            "shop.cli",
            "run",
            "--host",
            HOST,
            "--port",
            str(port),
            "--server",
            args.server,
        ],
        env=env,
        port=port,
        log=work / "orders-shop.log",
        post=False,
    )
    proc = hs.start(target)
    try:
        try:
            hs.wait_healthy(port, proc, timeout_s=args.startup_timeout)
        except Exception:
            print(hs.log_tail(target), file=sys.stderr)
            raise
        print(f"[{target.label}] up on :{port}", file=sys.stderr, flush=True)
        load_before = hs._loadavg()
        outcome = asyncio.run(drive(args, port, proc.pid, results, hop_dir))
        load_after = hs._loadavg()
    finally:
        hs.stop(proc)
        with contextlib.suppress(OSError):
            hs._keep_head(target.log, results / "orders-shop.log.head", 30)
            log_problems = problems(target.log, results / f"orders-shop-{args.mode}.warnings")
        shutil.rmtree(work, ignore_errors=True)
    return finish(args, outcome, (load_before, load_after), log_problems, results, warnings_name)


def finish(
    args: argparse.Namespace,
    outcome: Outcome,
    loadavg: tuple[str, str],
    log_problems: collections.Counter[str],
    results: Path,
    warnings_name: str,
) -> int:
    report(outcome.orders, outcome.stats, args, loadavg)
    if log_problems:
        text = ", ".join(f"{event} {n}" for event, n in log_problems.most_common(8))
        print(f"shop log warnings/errors (bench/results/{warnings_name}): {text}")
    if outcome.unknown:
        text = ", ".join(f"{k} {v}" for k, v in outcome.unknown.most_common())
        print(
            f"WARNING: the customers have {sum(outcome.unknown.values())} orders"
            " the client never got a 202 for"
            f" (a POST that failed, e.g. 503, placed the order anyway): {text}"
        )
    else:
        print("reconciled: the customers' order lists hold exactly the orders that were answered 202")
    print(outcome.metrics)
    if outcome.hops:
        print(outcome.hops)
    raw = results / "orders_pyspy.txt"
    if args.profile and raw.exists():
        print()
        print(summarize_profile(raw))
    return 0


if __name__ == "__main__":
    sys.exit(main())
