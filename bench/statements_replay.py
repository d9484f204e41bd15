"""What the shop's own SQL costs an order with no framework at all: its statements replayed.

`orders_wrk.py` compares the shop's CPU per order with a hand-written floor. This splits that
multiple in two: the part the statements the shop runs cost by themselves (its schema, its
indexes, its outbox/inbox/timeline rows, its transactions), and the part that is Python around
them (HTTP, bus, saga engine, handlers, binding). In one process:

  1. record  `shop run`'s app (`create_app`, all modules, SQLite in a fresh data dir), driven
             in-process through its ASGI interface (httpx), takes --orders orders (the
             orders_wrk mix: 1-3 lines, 20 products, 20 customers, tok_ok, 16 in flight) to
             COMPLETED, with every statement, executemany, COMMIT and ROLLBACK its connections
             run on the loop recorded, parameters included (the driver's own calls, as
             `shop.sqlite_onloop` makes them); its CPU per order is timed too (in-process: no
             server, no wrk; the client's share included)
  2. replay  a data dir migrated afresh (`shop migrate`) gets the setup's statements, then the
             timed ones are run again in the same order with stdlib sqlite3 (one connection a
             file, its statement cache), CPU timed: the statements' own cost
  3. floor   bench/floor_orders.py in the same run

and prints the three per order, with the replay and the shop as multiples of the floor. The
replay's multiple is what the storage design costs before any Python; of the target (6x the
floor) the rest is left for everything else. The in-process shop figure includes the
client's share (httpx in the same process); `orders_wrk.py` measures the shop alone.

    .venv/bin/python bench/statements_replay.py [--orders 1000] [--replays 3]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import floor_orders
import httpx
import uvloop
from orders import ADMIN_EMAIL, ADMIN_PASSWORD, RATE_LIMIT, set_up
from orders_wrk import order_mix

from shop.sqlite_checkpoints import AUTOCHECKPOINT_PAGES

# driver calls between two checkpoints: ~0.2 s of orders at ~300 orders/s (57 calls an order),
# as often as the shop's checkpoint thread runs (shop.sqlite_checkpoints.INTERVAL_S)
CHECKPOINT_EVERY = 3_000

Op = tuple[str, str, str, Any]  # (file, "x" execute | "m" executemany, sql, parameters)


class Recorder:
    """Records the driver calls of the shop's SQLite connections made on this thread."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        # by id(), the connection kept with its name: a closed one's id could be another's later
        self._names: dict[int, tuple[str, sqlite3.Connection]] = {}
        self._thread = threading.current_thread()

    def _file(self, conn: sqlite3.Connection) -> str:
        known = self._names.get(id(conn))
        if known is not None:
            return known[0]
        rows = sqlite3.Connection.execute(conn, "PRAGMA database_list").fetchall()
        name = next((Path(r[2]).name for r in rows if r[1] == "main" and r[2]), ":memory:")
        self._names[id(conn)] = (name, conn)
        return name

    def _keep(self, conn: sqlite3.Connection, kind: str, sql: str, params: Any) -> None:
        if threading.current_thread() is self._thread:
            self.ops.append((self._file(conn), kind, sql, _plain(params)))

    def install(self) -> None:
        from shop import sqlite_onloop

        recorder, conn_cls, cursor_cls = self, sqlite_onloop._Connection, sqlite_onloop._Cursor
        c_execute, c_many, c_commit, c_rollback = (
            conn_cls.execute,
            conn_cls.executemany,
            conn_cls.commit,
            conn_cls.rollback,
        )
        k_execute, k_many = cursor_cls.execute, cursor_cls.executemany

        def execute(self: Any, sql: str, *params: Any) -> Any:
            recorder._keep(self, "x", sql, params[0] if params else ())
            return c_execute(self, sql, *params)

        def executemany(self: Any, sql: str, rows: Any) -> Any:
            rows = list(rows)
            recorder._keep(self, "m", sql, rows)
            return c_many(self, sql, rows)

        def commit(self: Any) -> Any:
            if self.in_transaction:
                recorder._keep(self, "x", "COMMIT", ())
            return c_commit(self)

        def rollback(self: Any) -> Any:
            if self.in_transaction:
                recorder._keep(self, "x", "ROLLBACK", ())
            return c_rollback(self)

        def cursor_execute(self: Any, sql: str, *params: Any) -> Any:
            recorder._keep(self.connection, "x", sql, params[0] if params else ())
            return k_execute(self, sql, *params)

        def cursor_executemany(self: Any, sql: str, rows: Any) -> Any:
            rows = list(rows)
            recorder._keep(self.connection, "m", sql, rows)
            return k_many(self, sql, rows)

        class RecordingCursor(sqlite3.Cursor):
            """`shop.db` runs its prepared statements, executemany and BEGIN on the driver's
            own cursor class: this one records them."""

            def execute(self, sql: str, *params: Any) -> Any:
                recorder._keep(self.connection, "x", sql, params[0] if params else ())
                return super().execute(sql, *params)

            def executemany(self, sql: str, rows: Any) -> Any:
                rows = list(rows)
                recorder._keep(self.connection, "m", sql, rows)
                return super().executemany(sql, rows)

        from shop import db as shop_db

        shop_db._SQLiteCursor = RecordingCursor  # type: ignore[misc]
        conn_cls.execute, conn_cls.executemany = execute, executemany  # type: ignore[method-assign]
        conn_cls.commit, conn_cls.rollback = commit, rollback  # type: ignore[method-assign]
        cursor_cls.execute, cursor_cls.executemany = cursor_execute, cursor_executemany  # type: ignore[method-assign]


def _plain(value: Any) -> Any:
    """Parameters as values of their own (a memoryview the driver was given becomes bytes)."""
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


async def record(data_dir: Path, orders: int) -> tuple[list[Op], int, float]:
    """Run the shop in-process through `orders` orders: (ops, index where the timed ones
    start, the shop's CPU ms per order)."""
    os.environ.update(
        SHOP_DATA_DIR=str(data_dir),
        SHOP_RATE_LIMIT=RATE_LIMIT,
        SHOP_LOGIN_RATE_LIMIT=RATE_LIMIT,
        SHOP_ADMIN_EMAIL=ADMIN_EMAIL,
        SHOP_ADMIN_PASSWORD=ADMIN_PASSWORD,
        SHOP_LOG_LEVEL=os.environ.get("SHOP_LOG_LEVEL", "WARNING"),
    )
    recorder = Recorder()
    recorder.install()
    from shop.app import create_app

    app = create_app()
    async with app.lifespan():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop", timeout=30) as client:
            products, customers = await set_up(client, argparse.Namespace(products=20, customers=20))
            mix = order_mix(products, customers, 400)
            slots = asyncio.Semaphore(16)

            async def place(n: int) -> tuple[str, dict[str, str]]:
                c, body = mix[n % len(mix)]
                async with slots:
                    r = await client.post("/api/v1/orders", json=body, headers=c.headers)
                if r.status_code != 202:
                    raise SystemExit(f"POST /api/v1/orders: {r.status_code} {r.text}")
                return str(r.json()["id"]), c.headers

            async def finish(placed: list[tuple[str, dict[str, str]]]) -> None:
                pending, deadline = dict(placed), time.monotonic() + 120
                while pending and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                    for order_id, headers in list(pending.items()):
                        r = await client.get(f"/api/v1/orders/{order_id}", headers=headers)
                        if r.json()["status"] in ("COMPLETED", "FAILED", "CANCELLED"):
                            del pending[order_id]
                if pending:
                    raise SystemExit(f"{len(pending)} orders did not end within 120 s")

            await finish(await asyncio.gather(*[place(n) for n in range(100)]))  # warm-up
            start, cpu = len(recorder.ops), time.process_time()
            await finish(await asyncio.gather(*[place(n) for n in range(orders)]))
            cpu = time.process_time() - cpu
    return recorder.ops, start, cpu / orders * 1e3


def replay(
    ops: list[Op], start: int, orders: int, by_kind: dict[tuple[str, str], float] | None = None
) -> tuple[float, int]:
    """(CPU ms per order of the timed ops replayed, statements that failed in the replay).
    With `by_kind`, each call is timed on its own too (wall µs per order, by file and first
    word of its SQL), which slows the replay a little: its total is not the one returned."""
    with tempfile.TemporaryDirectory(prefix="shop-replay-") as tmp:
        env = {**os.environ, "SHOP_DATA_DIR": tmp}
        subprocess.run(
            [sys.executable, "-m", "shop.cli", "migrate"], env=env, check=True, capture_output=True
        )
        conns: dict[str, sqlite3.Connection] = {}

        def run(part: list[Op]) -> int:
            failed = 0
            for name, kind, sql, params in part:
                conn = conns.get(name)
                if conn is None:
                    path = ":memory:" if name == ":memory:" else str(Path(tmp) / name)
                    conn = conns[name] = sqlite3.connect(path, isolation_level=None)
                    # as the shop's connections (shop.db): else every COMMIT also syncs the WAL,
                    # and the commit that fills the WAL runs a checkpoint in it
                    conn.execute("PRAGMA synchronous=NORMAL")
                    conn.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}")
                done = next(calls)
                if done and done % CHECKPOINT_EVERY == 0:
                    checkpoint()
                began = time.perf_counter() if timing else 0.0
                try:
                    if kind == "m":
                        conn.executemany(sql, params)
                    elif sql != "COMMIT" or conn.in_transaction:
                        conn.execute(sql, params).fetchall()
                except sqlite3.Error:
                    failed += 1
                if timing and by_kind is not None:
                    key = (name, ("executemany " if kind == "m" else "") + sql.split(None, 1)[0].upper())
                    by_kind[key] = by_kind.get(key, 0.0) + (time.perf_counter() - began) * 1e6 / orders
            return failed

        calls = itertools.count()  # driver calls replayed so far, setup included

        def checkpoint() -> None:
            """What the shop's checkpoint thread does (shop.sqlite_checkpoints), timed here as
            part of the replay: a PASSIVE checkpoint of each file, so that the WAL is written
            over from its start again instead of growing (writes that extend a file cost more)."""
            began = time.perf_counter()
            for conn in conns.values():
                if not conn.in_transaction:  # the thread's own connections never are
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            if timing and by_kind is not None:
                key = ("(all)", "checkpoint")
                by_kind[key] = by_kind.get(key, 0.0) + (time.perf_counter() - began) * 1e6 / orders

        timing = False
        run(ops[:start])  # the setup (its migrations' statements fail: already migrated)
        timing = by_kind is not None
        cpu = time.process_time()
        failed = run(ops[start:])
        checkpoint()
        cpu = time.process_time() - cpu
        for conn in conns.values():
            conn.close()
    return cpu / orders * 1e3, failed


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--orders", type=int, default=1000)
    parser.add_argument("--replays", type=int, default=3, help="replays of the recording (median printed)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="shop-record-") as tmp:
        ops, start, shop_ms = uvloop.run(record(Path(tmp) / "data", args.orders))
    timed = ops[start:]
    commits = sum(1 for op in timed if op[2] == "COMMIT")
    print(
        f"-- recorded {args.orders} orders in-process: {len(timed) / args.orders:.1f} driver calls"
        f" and {commits / args.orders:.1f} commits an order"
    )
    runs = [replay(ops, start, args.orders) for _ in range(args.replays)]
    by_kind: dict[tuple[str, str], float] = {}
    replay(ops, start, args.orders, by_kind)
    replay_ms = statistics.median(r[0] for r in runs)
    floor_ms, _ = floor_orders.floor(3000)
    print(f"   floor      {floor_ms:.3f} ms CPU an order (bench/floor_orders.py, median of 5 rounds)")
    print(
        f"   replay     {replay_ms:.3f} ms CPU an order = {replay_ms / floor_ms:.2f}x the floor"
        f" (median of {args.replays}; {runs[0][1]} statements failed in the replay)"
    )
    print(
        f"   shop       {shop_ms:.3f} ms CPU an order = {shop_ms / floor_ms:.2f}x the floor"
        " (in-process: the httpx client's share included)"
    )
    print("   where the replay's time goes (wall µs an order, each call timed on its own):")
    for (name, kind), us in sorted(by_kind.items(), key=lambda item: -item[1])[:15]:
        print(f"     {us:7.1f}  {name:<12} {kind}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
