"""A catalog read through the full `shop run` stack vs the same query in a bare Litestar app.

bench/README.md's target: `GET /api/v1/products/{id}` through `shop run` at >= 0.8x the req/s of
the same SELECT in a bare Litestar app, measured side by side in one run.

Servers (all on granian, one worker, uvloop, via `shop.cli.serve`):
  shop run                    SHOP_LOG_LEVEL default (INFO: one JSON access-log line per request)
  shop run, WARNING           SHOP_LOG_LEVEL=WARNING: no access-log line; shows what it costs
  bare + shop db layer        a diagnostic (--no-decompose skips it): bench/bare_catalog_app.py
                              --db-layer shop, the catalog handler's own read (shop.db.Database,
                              unit_of_work(write=False), Catalog.get) without gateway and bus
  bare Litestar catalog       bench/bare_catalog_app.py: GET /products/{id}, one SELECT by primary
                              key with async SQLAlchemy Core + aiosqlite, msgspec answer: the
                              reference every ratio is taken against
Both shops share one temporary SHOP_DATA_DIR (the second starts once the first has migrated and
created the admin), and the bare app opens that very catalog.db read-only: all three read the same
rows of the same file. SHOP_RATE_LIMIT=1000000/second (the default 100/second per client would
answer 429s); the admin comes from SHOP_ADMIN_EMAIL/SHOP_ADMIN_PASSWORD and creates --products
products through the API before any load. Before the load the script checks that the shop and
the bare app answer the same JSON for one product.

Load: wrk -t1 -c64 --latency, one server at a time, with a Lua script that cycles through every
product id (--fixed-id: always the first product, a plain wrk request without Lua). A warm-up,
then each figure's --duration seconds of load in --rounds interleaved slices (order reversed
every round), so background load on the machine spreads over every server alike; req/s, p50 and
p99 are the median slice's. The CPU time the server's processes used during their slices
(utime+stime from /proc of the server's process group) gives CPU µs per request: less swayed by
other work on the machine than req/s is. wrk runs on the same cores; loopback only.

Figures are printed, never asserted. Every wait is bounded.

    .venv/bin/python bench/catalog_read.py [--duration 10] [--rounds 5] [--connections 64]
        [--products 100] [--fixed-id] [--no-quiet-variant] [--no-decompose]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import http_servers as hs

HERE = Path(__file__).resolve().parent
HOST = hs.HOST
RATE_LIMIT = hs.RATE_LIMIT
ADMIN_EMAIL = "bench-admin@example.com"
ADMIN_PASSWORD = "bench-admin-password-1"
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    label: str
    cmd: list[str]
    env: dict[str, str]
    port: int
    log: Path
    path_prefix: str  # "/api/v1/products/" or "/products/"
    kind: str = "shop"  # "shop", "diag" (bare app on the shop's db layer) or "bare" (the reference)
    figure: hs.Figure = field(default_factory=hs.Figure)
    cpu_s: float = 0.0  # CPU seconds of the server's processes during its timed slices
    proc: subprocess.Popen[bytes] | None = None
    script: Path | None = None

    def url(self, product_id: str) -> str:
        return f"http://{HOST}:{self.port}{self.path_prefix}{product_id}"

    def as_target(self) -> hs.Target:
        return hs.Target(self.label, self.cmd, self.env, self.port, self.log, post=False)

    @property
    def p50_ms(self) -> float | None:
        values = [r.p50_ms for r in self.figure.slices if r.p50_ms is not None]
        return statistics.median(values) if values else None

    @property
    def cpu_us_per_request(self) -> float | None:
        requests = sum(r.requests for r in self.figure.slices)
        return self.cpu_s / requests * 1e6 if requests else None


# -- processes -----------------------------------------------------------------------------


def _stat(path: Path) -> tuple[str, list[str]] | None:
    """(comm, the fields after it) of a /proc stat file; None when it is gone. Field 5 (index
    2 here) is the process group, fields 14 and 15 (11 and 12) utime and stime."""
    try:
        stat = (path / "stat").read_text()
    except OSError:
        return None
    return stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()


def _group(pgid: int) -> list[Path]:
    """The /proc directories of the live processes of a process group."""
    found = []
    for entry in Path("/proc").iterdir():
        stat = _stat(entry) if entry.name.isdigit() else None
        if stat is not None and int(stat[1][2]) == pgid:
            found.append(entry)
    return found


def thread_cpu_seconds(pgid: int) -> dict[str, float]:
    """utime + stime of the live threads of a process group, by thread name and id (Python's
    threads are named after their process's command)."""
    by_name: dict[str, float] = {}
    for entry in _group(pgid):
        with contextlib.suppress(OSError):
            for task in (entry / "task").iterdir():
                stat = _stat(task)
                if stat is not None:
                    name, fields = stat
                    by_name[f"{name}/{task.name}"] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return by_name


def group_cpu_split(pgid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of every live process in a process group."""
    user = system = 0
    for entry in _group(pgid):
        stat = _stat(entry)
        if stat is not None:
            user, system = user + int(stat[1][11]), system + int(stat[1][12])
    return user / CLK_TCK, system / CLK_TCK


def group_cpu_seconds(pgid: int) -> float:
    """utime + stime of every live process in a process group (the server and its workers)."""
    return sum(group_cpu_split(pgid))


def start(server: Server) -> None:
    server.proc = hs.start(server.as_target())


def wait_up(server: Server, timeout_s: float) -> None:
    assert server.proc is not None
    try:
        hs.wait_healthy(server.port, server.proc, timeout_s=timeout_s)
    except Exception:
        print(hs.log_tail(server.as_target()), file=sys.stderr)
        raise
    print(f"[{server.label}] up on :{server.port}", file=sys.stderr, flush=True)


def wait_route(server: Server, product_id: str, timeout_s: float = 30.0) -> None:
    """The bare app has no /health: wait for its product route to answer 200."""
    assert server.proc is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            print(hs.log_tail(server.as_target()), file=sys.stderr)
            raise RuntimeError(f"{server.label} exited with {server.proc.returncode}")
        with contextlib.suppress(OSError), urllib.request.urlopen(server.url(product_id), timeout=2) as r:
            if r.status == 200:
                print(f"[{server.label}] up on :{server.port}", file=sys.stderr, flush=True)
                return
        time.sleep(0.1)
    print(hs.log_tail(server.as_target()), file=sys.stderr)
    raise RuntimeError(f"{server.label}: {server.url(product_id)} did not answer 200 within {timeout_s:.0f}s")


# -- setup through the API -----------------------------------------------------------------


def create_products(port: int, count: int) -> list[str]:
    token = hs.call(port, "POST", "/api/v1/auth/token", {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})[
        "access_token"
    ]
    assert isinstance(token, str)
    ids: list[str] = []
    for n in range(count):
        product = hs.call(
            port,
            "POST",
            "/api/v1/products",
            {
                "sku": f"BENCH-{n:04d}",
                "name": f"Bench product {n}",
                "description": f"A product for the catalog read benchmark, number {n}.",
                "price": 1000 + n,
                "currency": "EUR",
                "category": f"category-{n % 5}",
                "stock": 1000 + n,
            },
            token,
        )
        ids.append(str(product["id"]))
    return ids


def get_json(url: str) -> object:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"GET {url}: {exc.code} {exc.read()[:300]!r}") from None


def lua_script(directory: Path, server: Server, ids: list[str]) -> Path:
    script = directory / f"catalog_{server.port}.lua"
    table = ",\n".join(f'  "{server.path_prefix}{i}"' for i in ids)
    script.write_text(
        "-- cycles through the product ids, one request each\n"
        f"local paths = {{\n{table}\n}}\n"
        "local n = 0\n"
        "request = function()\n"
        "  n = n % #paths + 1\n"
        '  return wrk.format("GET", paths[n])\n'
        "end\n"
    )
    return script


def load(server: Server, first_id: str, args: argparse.Namespace, duration: float) -> hs.WrkResult:
    url = server.url(first_id)
    script = None if args.fixed_id else server.script
    return hs.wrk(url, duration=duration, connections=args.connections, script=script)


# -- the run -------------------------------------------------------------------------------


def servers(args: argparse.Namespace, work: Path, data_dir: Path) -> list[Server]:
    python = sys.executable
    base = {
        **os.environ,
        "SHOP_DATA_DIR": str(data_dir),
        "SHOP_RATE_LIMIT": RATE_LIMIT,
        "SHOP_LOGIN_RATE_LIMIT": RATE_LIMIT,
        "SHOP_AUTH_ADDRESS_RATE_LIMIT": RATE_LIMIT,
        "SHOP_HOST": HOST,
        "SHOP_ADMIN_EMAIL": ADMIN_EMAIL,
        "SHOP_ADMIN_PASSWORD": ADMIN_PASSWORD,
    }
    variants: list[tuple[str, str | None]] = [("shop run", args.log_level)]
    if not args.no_quiet_variant and (args.log_level or "INFO").upper() != "WARNING":
        variants.append(("shop run", "WARNING"))
    out: list[Server] = []
    for n, (name, level) in enumerate(variants):
        port = hs.free_port()
        env = dict(base)
        if level:
            env["SHOP_LOG_LEVEL"] = level
        else:
            env.pop("SHOP_LOG_LEVEL", None)
        out.append(
            Server(
                label=f"{name}, log {level or 'INFO'}",
                cmd=[
                    python,
                    "-m",
                    "shop.cli",
                    "run",
                    "--host",
                    HOST,
                    "--port",
                    str(port),
                    "--server",
                    "granian",
                ],
                env=env,
                port=port,
                log=work / f"catalog-shop-{n}.log",
                path_prefix="/api/v1/products/",
            )
        )
    layers = [("shop", "bare Litestar + shop db layer", "diag")] if args.decompose else []
    layers.append(("core", "bare Litestar + SQLAlchemy/aiosqlite", "diag"))
    layers.append(("stdlib", "bare Litestar + sqlite3 on the loop", "bare"))
    for layer, label, kind in layers:
        port = hs.free_port()
        out.append(
            Server(
                label=label,
                cmd=[
                    python,
                    str(HERE / "bare_catalog_app.py"),
                    "--db",
                    str(data_dir / "catalog.db"),
                    "--db-layer",
                    layer,
                    "--host",
                    HOST,
                    "--port",
                    str(port),
                    "--server",
                    "granian",
                ],
                env=dict(os.environ),
                port=port,
                log=work / f"catalog-bare-{layer}.log",
                path_prefix="/products/",
                kind=kind,
            )
        )
    return out


def run(args: argparse.Namespace) -> tuple[list[Server], int]:
    work = Path(tempfile.mkdtemp(prefix="shop-bench-catalog-"))
    data_dir = work / "data"
    data_dir.mkdir()
    keep_logs = HERE / "results"
    keep_logs.mkdir(exist_ok=True)
    rows = servers(args, work, data_dir)
    shops = [r for r in rows if r.kind == "shop"]
    bares = [r for r in rows if r.kind != "shop"]
    slice_s = hs.slice_seconds(args)
    try:
        # The first shop migrates the data dir and creates the admin; only then the others start.
        start(shops[0])
        wait_up(shops[0], args.startup_timeout)
        started = time.monotonic()
        ids = create_products(shops[0].port, args.products)
        print(
            f"[setup] {len(ids)} products created through the API in {time.monotonic() - started:.1f}s",
            file=sys.stderr,
            flush=True,
        )
        for server in rows[1:]:
            start(server)
        for server in shops[1:]:
            wait_up(server, args.startup_timeout)
        for server in bares:
            wait_route(server, ids[0], args.startup_timeout)

        reference = get_json(shops[0].url(ids[0]))
        for server in rows[1:]:
            answer = get_json(server.url(ids[0]))
            if answer != reference:
                raise RuntimeError(f"{server.label} answers {answer!r}, the shop {reference!r}")
        print(f"[check] every server answers the same JSON for {ids[0]}: {reference}", file=sys.stderr)

        for server in rows:
            server.script = lua_script(work, server, ids)
            load(server, ids[0], args, args.warmup)  # warm-up: pools, caches, JIT of the Lua

        for r in range(args.rounds):
            for server in rows if r % 2 == 0 else list(reversed(rows)):
                assert server.proc is not None
                before = group_cpu_seconds(server.proc.pid)
                server.figure.slices.append(load(server, ids[0], args, slice_s))
                server.cpu_s += group_cpu_seconds(server.proc.pid) - before
            print(
                f"[round {r + 1}/{args.rounds} done, load average {hs._loadavg()}]",
                file=sys.stderr,
                flush=True,
            )
    finally:
        for server in rows:
            if server.proc is not None:
                hs.stop(server.proc)
            with contextlib.suppress(OSError):
                hs._keep_head(server.log, keep_logs / f"{server.log.stem}.log.head", 30)
        shutil.rmtree(work, ignore_errors=True)
    return rows, len(ids)


def report(rows: list[Server], products: int, args: argparse.Namespace) -> None:
    each = hs.slice_seconds(args)
    what = "always the first product (no Lua)" if args.fixed_id else f"cycling through {products} product ids"
    print(
        f"\nCatalog read: GET product by id, {what}; wrk -t1 -c{args.connections}, {each * args.rounds}s per"
        f" server in {args.rounds} interleaved slices of {each}s; wrk on the same cores, loopback.\n"
        f"All on granian (1 worker, uvloop); one catalog.db read by all. shop: GET /api/v1/products/{{id}},"
        f" SHOP_RATE_LIMIT={RATE_LIMIT}; bare: GET /products/{{id}}."
    )
    header = f"{'server':<30}{'req/s':>10}{'p50':>10}{'p99':>10}{'CPU µs/req':>12}{'errors':>8}"
    print(header)
    print("-" * len(header))
    for row in rows:
        p50 = "?" if row.p50_ms is None else f"{row.p50_ms:.1f} ms"
        p99 = "?" if row.figure.p99_ms is None else f"{row.figure.p99_ms:.1f} ms"
        cpu = "?" if row.cpu_us_per_request is None else f"{row.cpu_us_per_request:,.0f}"
        print(f"{row.label:<30}{row.figure.rps:>10,.0f}{p50:>10}{p99:>10}{cpu:>12}{row.figure.errors:>8}")
    print("(req/s, p50, p99: the median slice's; CPU: the server's processes over all its slices)")
    print("per-slice req/s:")
    for row in rows:
        print(f"  {row.label:<30}{row.figure.spread()}")
    bare = rows[-1]
    print()
    for n, row in enumerate(rows[:-1]):
        ratio = row.figure.rps / bare.figure.rps
        verdict = "meets the 0.8x stretch" if ratio >= 0.8 else "meets" if ratio >= 0.5 else "MISSES"
        cpu = ""
        if row.cpu_us_per_request and bare.cpu_us_per_request:
            cpu = f"; CPU per request {row.cpu_us_per_request / bare.cpu_us_per_request:.2f}x the bare app's"
        target = f" (target >= 0.5x, stretch 0.8x -> {verdict})" if n == 0 else ""
        print(f"{row.label} vs bare, req/s: {ratio:.2f}x{target}{cpu}")
    shops = [r for r in rows if r.kind == "shop"]
    if len(shops) == 2:
        info, quiet = shops
        print(f"  the INFO access log costs {1 - info.figure.rps / quiet.figure.rps:.0%} of req/s")
    diag = next((r for r in rows if r.kind == "diag"), None)
    if diag is not None and diag.cpu_us_per_request and bare.cpu_us_per_request:
        full = shops[-1]  # the quietest shop: no access log
        if full.cpu_us_per_request:
            db_share = diag.cpu_us_per_request - bare.cpu_us_per_request
            rest = full.cpu_us_per_request - diag.cpu_us_per_request
            print(
                f"  where the extra CPU per request goes ({full.label} vs bare): shop db layer"
                f" (Database + unit_of_work + Catalog.get vs one Core execute) {db_share:+,.0f} µs;"
                f" gateway middleware + bus ask + the rest {rest:+,.0f} µs"
            )
    if any(r.figure.errors for r in rows):
        print("WARNING: some requests failed (socket errors or non-2xx); see the errors column")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per server (10)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved slices per server (5)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of wrk warm-up per server (2)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (64)")
    parser.add_argument("--products", type=int, default=100, help="products created and cycled through (100)")
    parser.add_argument("--fixed-id", action="store_true", help="always read the first product (no Lua)")
    parser.add_argument("--log-level", help="SHOP_LOG_LEVEL of the first shop (default: theirs, INFO)")
    parser.add_argument(
        "--no-quiet-variant", action="store_true", help="skip the SHOP_LOG_LEVEL=WARNING shop"
    )
    parser.add_argument(
        "--no-decompose",
        dest="decompose",
        action="store_false",
        help="skip the diagnostic bare app that reads through the shop's own db layer",
    )
    parser.add_argument("--startup-timeout", type=float, default=90.0, help="seconds for a server to come up")
    args = parser.parse_args()
    if args.products < 1 or args.rounds < 1:
        parser.error("--products and --rounds must be at least 1")
    if shutil.which("wrk") is None:
        print("wrk is not installed (bench/run.sh installs it: apt-get install -y wrk)", file=sys.stderr)
        return 2
    rows, products = run(args)
    report(rows, products, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
