"""Orders through the shop's ASGI app in this one process: no server, no load generator.

What an order costs in the shop's own Python, with nothing else on the CPU: the app is built
as `shop run` builds it (SQLite in a fresh data dir, the in-process bus; with --database-url a
fresh PostgreSQL database instead, as orders-pg), its lifespan runs on uvloop as under `shop
run`, and httpx's ASGI transport posts --orders orders (the orders_wrk mix) with --concurrency
in flight; the run ends when every order is terminal (read from the orders module's table).
Printed: process CPU per order and the floor's (same run). --profile runs the timed part
under cProfile and prints the top functions by own time and by calls, plus calls per order.

    .venv/bin/python bench/orders_inprocess.py [--orders 1000] [--concurrency 16] [--profile]
        [--database-url postgresql+asyncpg://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import floor_orders  # noqa: E402
import httpx  # noqa: E402
from orders import ADMIN_EMAIL, ADMIN_PASSWORD, RATE_LIMIT, set_up  # noqa: E402
from orders_wrk import TERMINAL, order_mix  # noqa: E402


def configure(data_dir: Path) -> None:
    os.environ.update(
        {
            "SHOP_DATA_DIR": str(data_dir),
            "SHOP_RATE_LIMIT": RATE_LIMIT,
            "SHOP_LOGIN_RATE_LIMIT": RATE_LIMIT,
            "SHOP_AUTH_ADDRESS_RATE_LIMIT": RATE_LIMIT,
            "SHOP_ADMIN_EMAIL": ADMIN_EMAIL,
            "SHOP_ADMIN_PASSWORD": ADMIN_PASSWORD,
        }
    )


async def terminal_count(orders_db: Path, pg_url: str | None = None) -> int:
    marks = ",".join("?" * len(TERMINAL))
    if pg_url:  # the shop on PostgreSQL: the orders module's schema
        import asyncpg  # the shop's own dependency

        conn = await asyncpg.connect(pg_url)
        try:
            dollars = ",".join(f"${i + 1}" for i in range(len(TERMINAL)))
            query = f"SELECT count(*) FROM orders.orders WHERE status IN ({dollars})"
            return int(await conn.fetchval(query, *TERMINAL))
        finally:
            await conn.close()
    db = sqlite3.connect(orders_db)
    try:
        return int(
            db.execute(f"SELECT count(*) FROM orders WHERE status IN ({marks})", TERMINAL).fetchone()[0]
        )
    finally:
        db.close()


async def status_counts(orders_db: Path, pg_url: str | None) -> dict[str, int]:
    if pg_url:
        import asyncpg

        conn = await asyncpg.connect(pg_url)
        try:
            rows = await conn.fetch("SELECT status, count(*) FROM orders.orders GROUP BY status")
            return {r[0]: int(r[1]) for r in rows}
        finally:
            await conn.close()
    db = sqlite3.connect(orders_db)
    try:
        return dict(db.execute("SELECT status, count(*) FROM orders GROUP BY status").fetchall())
    finally:
        db.close()


async def main_async(args: argparse.Namespace, data_dir: Path) -> None:
    from shop.app import create_app

    app = create_app()
    async with app.lifespan():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop.local", timeout=60) as client:
            product_ids, customers = await set_up(client, argparse.Namespace(products=20, customers=20))
            mix = order_mix(product_ids, customers, args.orders)
            orders_db = data_dir / "orders.db"
            before = await terminal_count(orders_db, args.pg_url)
            queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
            for customer, body in mix:
                queue.put_nowait((customer.token, json.dumps(body)))

            async def poster() -> None:
                while not queue.empty():
                    token, body = queue.get_nowait()
                    response = await client.post(
                        "/api/v1/orders",
                        content=body,
                        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                    )
                    if response.status_code != 202:
                        raise RuntimeError(f"POST /api/v1/orders: {response.status_code} {response.text}")

            profiler = cProfile.Profile() if args.profile else None
            cpu0, t0 = time.process_time(), time.monotonic()
            if profiler is not None:
                profiler.enable()
            await asyncio.gather(*(poster() for _ in range(args.concurrency)))
            while await terminal_count(orders_db, args.pg_url) - before < args.orders:
                await asyncio.sleep(0.02)
            if profiler is not None:
                profiler.disable()
            cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
            statuses = await status_counts(orders_db, args.pg_url)
    floor_cpu = floor_orders.floor()[0] if not args.no_floor else None
    print(f"orders     {args.orders} with {args.concurrency} in flight: {statuses}")
    print(f"wall       {wall:.2f} s = {args.orders / wall:.0f} orders/s (one process, no server)")
    line = f"CPU        {cpu / args.orders * 1000:.3f} ms per order"
    if floor_cpu:
        line += f" = {cpu / args.orders * 1000 / floor_cpu:.1f}x the floor ({floor_cpu:.3f} ms)"
    print(line)
    if profiler is not None:
        stats = pstats.Stats(profiler)
        total_calls = stats.total_calls  # type: ignore[attr-defined]
        print(f"calls      {total_calls / args.orders:.0f} Python function calls per order (under cProfile)")
        if args.dump:
            stats.dump_stats(args.dump)
        for key in ("tottime", "ncalls"):
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats(key).print_stats(args.top)
            print(out.getvalue())


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--orders", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--no-floor", action="store_true")
    parser.add_argument("--dump", help="with --profile: write cProfile's stats to this file")
    parser.add_argument(
        "--loop", choices=("uvloop", "asyncio"), default="uvloop", help="the event loop (uvloop, as shop run)"
    )
    parser.add_argument(
        "--database-url",
        help="run the shop on this PostgreSQL server (a fresh database shop_bench on it, as orders-pg)",
    )
    args = parser.parse_args()
    args.pg_url = None
    if args.database_url:
        from orders_wrk import create_pg_database

        args.pg_url = create_pg_database(args.database_url)
        os.environ["SHOP_DATABASE_URL"] = args.pg_url.replace("postgresql://", "postgresql+asyncpg://", 1)
    with tempfile.TemporaryDirectory(prefix="shop-bench-inproc-") as tmp:
        data_dir = Path(tmp)
        configure(data_dir)
        if args.loop == "uvloop":  # as `shop run` serves (granian's uvloop)
            import uvloop

            uvloop.run(main_async(args, data_dir))
        else:
            asyncio.run(main_async(args, data_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
