"""The catalog read in one process: `shop run`'s ASGI app and the bare reference app called in a
loop, no server and no load generator (what ADR 0025 and 0027 used to split a request's cost).

Both apps get the same `GET /{prefix}/products/{id}` as an ASGI call (a scope, an empty body, a
`send` that keeps the status), on uvloop, one request at a time, interleaved round by round so
that drift hits both alike; the heap made at start-up is frozen, as in a server worker. Prints
µs per request (median round) and the ratio of requests per second (bare µs / shop µs: what
`catalog_read.py` measures under wrk, without the server's and wrk's share); `--profile` writes
a cProfile of the shop's requests (top 25 by tottime to stderr, the listing to bench/results/).

    .venv/bin/python bench/catalog_inprocess.py [--rounds 10] [--n 2000] [--log-level INFO] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import os
import pstats
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import uvloop

RESULTS = Path(__file__).resolve().parent / "results"
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Message, Receive, Send], Awaitable[None]]


def _scope(path: str) -> Message:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1"), (b"accept", b"*/*")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def _get(app: App, path: str) -> int:
    status = 0

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(_scope(path), receive, send)
    return status


async def _round(app: App, paths: list[str], n: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        await _get(app, paths[i % len(paths)])
    return (time.perf_counter() - started) / n


async def main_async(args: argparse.Namespace) -> int:
    data = Path(tempfile.mkdtemp(prefix="shop-catalog-inproc-"))
    os.environ.update(
        SHOP_DATA_DIR=str(data),
        SHOP_LOG_LEVEL=args.log_level,
        SHOP_RATE_LIMIT="1000000/second",
        SHOP_ADMIN_EMAIL="admin@example.com",
        SHOP_ADMIN_PASSWORD="bench-admin-1",
    )
    from litestar.testing import AsyncTestClient

    from shop.app import create_app

    shop = create_app()
    ids: list[str] = []
    async with AsyncTestClient(shop) as client:
        token = (
            await client.post(
                "/api/v1/auth/token", json={"email": "admin@example.com", "password": "bench-admin-1"}
            )
        ).json()["access_token"]
        for i in range(20):
            reply = await client.post(
                "/api/v1/products",
                json={"sku": f"B{i}", "name": f"Bench {i}", "price": 100 + i, "currency": "EUR", "stock": 5},
                headers={"Authorization": f"Bearer {token}"},
            )
            ids.append(reply.json()["id"])
        os.environ["BARE_CATALOG_DB"] = str(data / "catalog.db")
        os.environ["BARE_CATALOG_DB_LAYER"] = "stdlib"
        sys.path.insert(0, str(RESULTS.parent))
        import bare_catalog_app

        bare = bare_catalog_app.create_app()
        async with bare.lifespan():
            shop_paths = [f"/api/v1/products/{i}" for i in ids]
            bare_paths = [f"/products/{i}" for i in ids]
            assert await _get(shop, shop_paths[0]) == 200
            assert await _get(bare, bare_paths[0]) == 200
            assert await _get(shop, f"/api/v1/products/{uuid.uuid4()}") == 404
            for app, paths in ((shop, shop_paths), (bare, bare_paths)):
                await _round(app, paths, 500)
            gc.collect()
            gc.freeze()  # as server workers do after start-up (shop.process.freeze_heap_after_start)
            rounds: dict[str, list[float]] = {"shop": [], "bare": []}
            for r in range(args.rounds):
                order = [("shop", shop, shop_paths), ("bare", bare, bare_paths)]
                for name, app, paths in order if r % 2 == 0 else reversed(order):
                    rounds[name].append(await _round(app, paths, args.n))
            shop_us = statistics.median(rounds["shop"]) * 1e6
            bare_us = statistics.median(rounds["bare"]) * 1e6
            print(f"in-process catalog GET, {args.rounds} rounds x {args.n}, SHOP_LOG_LEVEL={args.log_level}")
            print(f"  shop run app   {shop_us:8.1f} us/request (median round)")
            print(f"  bare Litestar  {bare_us:8.1f} us/request")
            print(f"  ratio (req/s)  {bare_us / shop_us:8.2f}x")
            if args.profile:
                profiler = cProfile.Profile()
                profiler.enable()
                await _round(shop, shop_paths, args.n * 2)
                profiler.disable()
                out = io.StringIO()
                stats = pstats.Stats(profiler, stream=out).sort_stats("tottime")
                stats.print_stats(25)
                print(out.getvalue(), file=sys.stderr)
                RESULTS.mkdir(exist_ok=True)
                full = io.StringIO()
                pstats.Stats(profiler, stream=full).sort_stats("cumulative").print_stats()
                (RESULTS / "catalog_inprocess_profile.txt").write_text(full.getvalue())
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--n", type=int, default=2000, help="requests per app per round")
    parser.add_argument("--log-level", default="WARNING", help="SHOP_LOG_LEVEL (INFO writes an access line)")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    return uvloop.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
