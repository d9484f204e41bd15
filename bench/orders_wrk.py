"""Completed orders per second on `shop run` under a compiled load generator, against the floor.

One run, side by side:
  floor      bench/floor_orders.py: the same durable writes of an order by hand (stdlib sqlite3)
  quiet      wrk -t1 -c16 posts orders (1-3 lines of 20 products, 20 customers taking turns,
             tok_ok) for --duration seconds; then the orders are followed to their end
  polling    the same, while a second wrk (-c2) has the customers list their orders
             (GET /api/v1/orders?limit=20) the whole time, --poll-delay ms between two polls of
             a connection

Printed per phase: accepted (202) and completed orders/s (completed: orders COMPLETED / from the
first POST to the last order's terminal updated_at, as the server stamped it), the saga latency
(updated_at - created_at, p50/p99/max), the statuses, the shop's CPU per order (every process of
`shop run`, from the first POST until every order is terminal) and its multiple of the floor's,
polls/s; then the RSS of `shop run`. With --database-url the shop runs on that PostgreSQL
(a fresh database `shop_bench` is created and dropped on it); the floor stays SQLite.

    .venv/bin/python bench/orders_wrk.py [--duration 10] [--poll-delay 10]
        [--database-url postgresql://postgres@127.0.0.1:5432/postgres] [--no-polling]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import floor_orders
import http_servers as hs
import httpx
from catalog_read import group_cpu_seconds, group_cpu_split, thread_cpu_seconds
from orders import ADMIN_EMAIL, ADMIN_PASSWORD, RATE_LIMIT, Customer, py_spy, set_up, summarize_profile

HOST = hs.HOST
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED")


def lua_orders(directory: Path, bodies: list[tuple[str, str]]) -> Path:
    """A wrk script that posts the given (token, body) orders in turn, forever."""
    script = directory / "post_orders.lua"
    entries = ",\n".join(f"{{{json.dumps(t)}, {json.dumps(b)}}}" for t, b in bodies)
    script.write_text(
        f"local orders = {{\n{entries}\n}}\n"
        "local n = 0\n"
        "request = function()\n"
        "  n = n % #orders + 1\n"
        "  local o = orders[n]\n"
        '  return wrk.format("POST", "/api/v1/orders", {["Content-Type"] = "application/json",'
        ' ["Authorization"] = "Bearer " .. o[1]}, o[2])\n'
        "end\n"
        "done = function(summary, latency, requests)\n"
        '  io.write(string.format("STATUS non2xx=%d\\n", summary.errors.status))\n'
        "end\n"
    )
    return script


def lua_polls(directory: Path, tokens: list[str], delay_ms: int) -> Path:
    script = directory / "poll_orders.lua"
    entries = ", ".join(json.dumps(t) for t in tokens)
    script.write_text(
        f"local tokens = {{{entries}}}\n"
        "local n = 0\n"
        "request = function()\n"
        "  n = n % #tokens + 1\n"
        '  return wrk.format("GET", "/api/v1/orders?limit=20", {["Authorization"] = "Bearer " .. tokens[n]})\n'
        "end\n"
        f"delay = function() return {delay_ms} end\n"
    )
    return script


def wrk(url: str, script: Path, duration: int, connections: int) -> subprocess.Popen[str]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "10s", "-s"]
    return subprocess.Popen([*cmd, str(script), url], stdout=subprocess.PIPE, text=True)


async def all_orders(client: httpx.AsyncClient, customers: list[Customer]) -> list[dict[str, Any]]:
    """Every order of every customer (newest first per customer, paged)."""
    found: list[dict[str, Any]] = []
    for c in customers:
        cursor: str | None = None
        while True:
            params = {"limit": "100", **({"cursor": cursor} if cursor else {})}
            r = await client.get("/api/v1/orders", params=params, headers=c.headers)
            r.raise_for_status()
            page = r.json()
            found.extend(page["items"])
            cursor = page["next_cursor"]
            if not cursor:
                break
    return found


async def wait_terminal(
    client: httpx.AsyncClient, customers: list[Customer], known: set[str], timeout_s: float
) -> list[dict[str, Any]]:
    """The orders not in `known`, once all are terminal (or at the timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        orders = [o for o in await all_orders(client, customers) if o["id"] not in known]
        if all(o["status"] in TERMINAL for o in orders) or time.monotonic() > deadline:
            return orders
        await asyncio.sleep(0.2)


def _stamp(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def rss_mb(pgid: int) -> tuple[float, float, float]:
    """(largest process, whole group) resident set in MB, and the group's proportional set
    (PSS: a page shared by the server's master and the worker it forked counted once)."""
    sizes, pss = [], 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            if int(stat[stat.rindex(")") + 2 :].split()[2]) != pgid:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    sizes.append(int(line.split()[1]) / 1024)
            for line in (entry / "smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1]) / 1024
    return (max(sizes, default=0.0), sum(sizes), pss)


async def phase(
    name: str,
    args: argparse.Namespace,
    client: httpx.AsyncClient,
    customers: list[Customer],
    post_script: Path,
    poll_script: Path | None,
    pgid: int,
    floor_ms: float,
) -> dict[str, float]:
    known = {o["id"] for o in await all_orders(client, customers)}
    url = f"http://{HOST}:{client.base_url.port}"
    spy = None
    if args.profile and poll_script is None and py_spy():
        raw = work_dir(args) / "pyspy.txt"
        spy = subprocess.Popen(
            [str(py_spy()), "record", "--pid", str(pgid), "--subprocesses", "--gil", "--nonblocking",
             "-r", str(args.profile_rate), "-d", str(args.duration), "-f", "raw", "-o", str(raw)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)
    cpu0, t0 = group_cpu_seconds(pgid), time.time()
    threads0, split0 = thread_cpu_seconds(pgid), group_cpu_split(pgid)
    poller = wrk(url, poll_script, args.duration, 2) if poll_script else None
    poster = wrk(url, post_script, args.duration, 16)
    post_out, _ = poster.communicate(timeout=args.duration + 60)
    poll_out = poller.communicate(timeout=args.duration + 60)[0] if poller else ""
    orders = await wait_terminal(client, customers, known, args.timeout)
    cpu = group_cpu_seconds(pgid) - cpu0
    threads, split = thread_cpu_seconds(pgid), group_cpu_split(pgid)
    if spy is not None:
        spy.wait(timeout=60)
    posted = hs.parse_wrk(post_out)
    completed = [o for o in orders if o["status"] == "COMPLETED"]
    end = max((_stamp(o["updated_at"]) for o in orders), default=t0)
    latency = [(_stamp(o["updated_at"]) - _stamp(o["created_at"])) * 1e3 for o in orders]
    statuses: dict[str, int] = {}
    for o in orders:
        statuses[o["status"]] = statuses.get(o["status"], 0) + 1
    per_order = cpu / len(orders) * 1e3 if orders else float("nan")
    rate = len(completed) / (end - t0) if orders else 0.0
    print(f"-- {name}: wrk -t1 -c16 POST /api/v1/orders for {args.duration}s" + (", + wrk -c2 polling" if poller else ""))
    print(f"   accepted   {len(orders)} orders (202) = {len(orders) / args.duration:.0f}/s;"
          f" POST p50 {posted.p50_ms} ms, p99 {posted.p99_ms} ms; wrk errors {posted.errors}")
    print(f"   completed  {len(completed)} in {end - t0:.2f}s = {rate:.0f} orders/s")
    print(f"   saga       created -> terminal p50 {pct(latency, .5):.0f} ms  p99 {pct(latency, .99):.0f} ms"
          f"  max {max(latency, default=float('nan')):.0f} ms")
    print(f"   statuses   {statuses}")
    print(f"   CPU        {cpu:.2f} s in the shop = {per_order:.2f} ms per order"
          f" = {per_order / floor_ms:.1f}x the floor ({floor_ms:.3f} ms)")
    if orders:
        spent = sorted(((t - threads0.get(n, 0.0), n) for n, t in threads.items()), reverse=True)
        user, system = ((split[i] - split0[i]) / len(orders) * 1e3 for i in (0, 1))
        print(f"   user/sys   {user:.2f} ms user, {system:.2f} ms system per order")
        busiest = ", ".join(f"{n} {s / len(orders) * 1e3:.2f}" for s, n in spent[:6] if s > 0.005)
        print(f"   by thread  {busiest} ms per order (name/thread id, the six busiest)")
    if poller:
        polled = hs.parse_wrk(poll_out)
        print(f"   polls      {polled.rps:.0f}/s, p50 {polled.p50_ms} ms, p99 {polled.p99_ms} ms, errors {polled.errors}")
    if spy is not None:
        print(summarize_profile(work_dir(args) / "pyspy.txt", top=40))
        if args.profile_out:
            shutil.copy(work_dir(args) / "pyspy.txt", args.profile_out)
            print(f"   py-spy raw stacks kept in {args.profile_out}")
    return {"rate": rate, "cpu_ms": per_order, "p99": pct(latency, 0.99), "orders": len(orders)}


def order_mix(
    product_ids: list[str], customers: list[Customer], count: int
) -> list[tuple[Customer, dict[str, Any]]]:
    """The benchmark's orders: 1-3 distinct products, 1-3 of each, tok_ok, customers in turn."""
    rng = random.Random(1)
    mix = []
    for n in range(count):
        c = customers[n % len(customers)]
        lines = rng.sample(product_ids, rng.randint(1, 3))
        items = [{"product_id": p, "quantity": rng.randint(1, 3)} for p in lines]
        mix.append((c, {"items": items, "address_id": c.address_id, "payment_token": "tok_ok"}))
    return mix


def work_dir(args: argparse.Namespace) -> Path:
    return Path(args.work)


async def drive(args: argparse.Namespace, port: int, pgid: int, work: Path, floor_ms: float) -> None:
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", limits=limits, timeout=30) as client:
        setup_args = argparse.Namespace(products=20, customers=20)
        product_ids, customers = await set_up(client, setup_args)
        bodies = [(c.token, json.dumps(body)) for c, body in order_mix(product_ids, customers, 400)]
        post_script = lua_orders(work, bodies)
        poll_script = lua_polls(work, [c.token for c in customers], args.poll_delay)
        # warm-up: a short burst through the whole saga, not counted
        warm = wrk(f"http://{HOST}:{port}", post_script, 2, 4)
        warm.communicate(timeout=60)
        await wait_terminal(client, customers, set(), 60)
        quiet = await phase("quiet", args, client, customers, post_script, None, pgid, floor_ms)
        if not args.no_polling:
            busy = await phase("polling", args, client, customers, post_script, poll_script, pgid, floor_ms)
            print(f"-- polling vs quiet: completed orders/s {busy['rate'] / quiet['rate']:.2f}x")
        largest, total, pss = rss_mb(pgid)
        print(
            f"-- RSS of shop run after the run: {largest:.0f} MB (largest process), {total:.0f} MB (all);"
            f" PSS of all: {pss:.0f} MB"
        )


def create_pg_database(url: str) -> str:
    import asyncpg  # the shop's own dependency

    async def go() -> None:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            await conn.execute("DROP DATABASE IF EXISTS shop_bench WITH (FORCE)")
            await conn.execute("CREATE DATABASE shop_bench")
        finally:
            await conn.close()

    asyncio.run(go())
    # the same server, database shop_bench (a query such as ?host=/var/run/postgresql is kept)
    return url.replace("postgresql+asyncpg://", "postgresql://").split("?")[0].rsplit("/", 1)[0] + "/shop_bench" + (
        "?" + url.split("?", 1)[1] if "?" in url else ""
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds of posting per phase (10)")
    parser.add_argument("--poll-delay", type=int, default=10, help="ms between two polls of a connection (10)")
    parser.add_argument("--timeout", type=float, default=120.0, help="bound on waiting for the orders' end")
    parser.add_argument("--database-url", help="run the shop on this PostgreSQL server (database shop_bench)")
    parser.add_argument("--no-polling", action="store_true", help="skip the phase with polling customers")
    parser.add_argument("--floor-orders", type=int, default=3000)
    parser.add_argument("--server", choices=("granian", "uvicorn"), default="granian", help="shop run's HTTP server (granian)")
    parser.add_argument("--profile", action="store_true", help="py-spy the shop during the quiet phase")
    parser.add_argument("--profile-rate", type=int, default=200, help="with --profile: py-spy samples per second (200)")
    parser.add_argument("--profile-out", help="with --profile: keep py-spy's raw (collapsed) stacks in this file")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("bench: wrk not found (bench/run.sh installs it)", file=sys.stderr)
        return 2
    floor_cpu, floor_wall = floor_orders.floor(args.floor_orders)
    print(f"-- floor: one order's durable writes by hand (stdlib sqlite3, WAL, synchronous=NORMAL):"
          f" {floor_cpu:.3f} ms CPU, {floor_wall:.3f} ms wall per order")
    syscall_us, call_ns = floor_orders.machine()
    print(f"-- machine: a system call {syscall_us:.2f} µs (os.getpid), a Python function call {call_ns:.0f} ns"
          " (compare absolute figures of two machines next to these)")
    work = Path(tempfile.mkdtemp(prefix="shop-bench-wrk-"))
    args.work = str(work)
    env = {
        **os.environ,
        "SHOP_DATA_DIR": str(work / "data"),
        "SHOP_RATE_LIMIT": RATE_LIMIT,
        "SHOP_LOGIN_RATE_LIMIT": RATE_LIMIT,
        "SHOP_ADMIN_EMAIL": ADMIN_EMAIL,
        "SHOP_ADMIN_PASSWORD": ADMIN_PASSWORD,
    }
    pg_admin_url = args.database_url
    if pg_admin_url:
        env["SHOP_DATABASE_URL"] = create_pg_database(pg_admin_url)
        subprocess.run([sys.executable, "-m", "shop.cli", "migrate"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
    port = hs.free_port()
    target = hs.Target(
        label="shop run",
        cmd=[sys.executable, "-m", "shop.cli", "run", "--host", HOST, "--port", str(port), "--server", args.server],
        env=env,
        port=port,
        log=work / "shop.log",
        post=False,
    )
    proc = hs.start(target)
    try:
        hs.wait_healthy(port, proc, timeout_s=90)
        print(f"-- shop run on {'PostgreSQL' if pg_admin_url else 'SQLite'}, {args.server}, :{port}")
        asyncio.run(drive(args, port, proc.pid, work, floor_cpu))
    except Exception:
        print(hs.log_tail(target), file=sys.stderr)
        raise
    finally:
        hs.stop(proc)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
