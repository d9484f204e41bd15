"""HTTP throughput of `shop run` on granian vs uvicorn, and of a bare Litestar app, side by side.

For each server, in one run, each in a fresh SHOP_DATA_DIR:
  GET  /health                       wrk -t1 -c64 -d10s (after a short warm-up)
  POST /api/v1/users/me/addresses    validated JSON body + bearer token (one user signed up and
                                     logged in once first: argon2 runs only there), through the
                                     bus to the users module and an insert+commit on SQLite
then `shop run` on granian once more at SHOP_LOG_LEVEL=WARNING (GET only: what the
per-request access log costs), then a bare Litestar app (bench/bare_app.py, one GET route returning msgspec) on granian, for
the reference ratio. wrk runs on the same 2 cores as the server; loopback only.

SHOP_RATE_LIMIT is set to 1000000/second for these runs (the default, 100/second per client,
would turn most of the load into 429s). SHOP_LOG_LEVEL is left at its default (INFO, one JSON
access-log line per request, to a file) unless --log-level says otherwise.

Figures are printed, never asserted. Every wait is bounded.

    .venv/bin/python bench/http_servers.py [--duration 10] [--connections 64] [--skip-post]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"
RATE_LIMIT = "1000000/second"
ADDRESS = {
    "recipient": "Ada Lovelace",
    "line1": "12 Analytical Engine Way",
    "city": "Berlin",
    "postal_code": "10115",
    "country": "DE",
}


@dataclass
class WrkResult:
    rps: float
    p50_ms: float | None
    p99_ms: float | None
    requests: int
    errors: int  # socket errors + non-2xx/3xx responses

    def cell(self) -> tuple[str, str]:
        p99 = "?" if self.p99_ms is None else f"{self.p99_ms:.2f} ms"
        flag = f" ({self.errors} err)" if self.errors else ""
        return f"{self.rps:,.0f}{flag}", p99


@dataclass
class Row:
    name: str
    get: WrkResult | None = None
    post: WrkResult | None = None
    note: str = ""


# -- processes -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_healthy(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    url = f"http://{HOST}:{port}/health"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before /health answered")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=1.0) as response:
                if response.status == 200:
                    return
        time.sleep(0.1)
    raise RuntimeError(f"/health did not answer within {timeout_s:.0f}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, a bounded wait, then SIGKILL to the server's own process group (it was started
    in a new session, so the group is just the server and its workers)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # stray workers of our own group, if any


@contextlib.contextmanager
def server(cmd: list[str], env: dict[str, str], port: int, log: Path) -> Iterator[None]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_healthy(port, proc)
            yield
        except Exception:
            out.flush()
            tail = log.read_text(errors="replace").splitlines()[-20:]
            print(f"--- last lines of {log.name} ---\n" + "\n".join(tail), file=sys.stderr)
            raise
        finally:
            stop(proc)


# -- wrk -----------------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(out: str) -> WrkResult:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not rps:
        raise RuntimeError(f"no Requests/sec in wrk output:\n{out}")
    pct = {m.group(1): _ms(m.group(2)) for m in re.finditer(r"^\s+(50|99)(?:\.0+)?%\s+(\S+)", out, re.M)}
    total = re.search(r"(\d+) requests in", out)
    errors = 0
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        errors += int(non2xx.group(1))
    return WrkResult(
        rps=float(rps.group(1)),
        p50_ms=pct.get("50"),
        p99_ms=pct.get("99"),
        requests=int(total.group(1)) if total else 0,
        errors=errors,
    )


def wrk(url: str, *, duration: float, connections: int, script: Path | None = None) -> WrkResult:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", "--timeout", "5s"]
    if script is not None:
        cmd += ["-s", str(script)]
    done = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=duration + 30, check=True)
    return parse_wrk(done.stdout)


def post_script(directory: Path, token: str) -> Path:
    script = directory / "post_address.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(json.dumps(ADDRESS))}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {token}"\n'
    )
    return script


# -- HTTP helpers --------------------------------------------------------------------------


def call(port: int, method: str, path: str, body: dict[str, object], token: str | None = None) -> dict[str, object]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        f"http://{HOST}:{port}{path}", data=json.dumps(body).encode(), headers=headers, method=method
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            data: dict[str, object] = json.loads(response.read())
            return data
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{method} {path}: {exc.code} {exc.read()[:300]!r}") from None


def sign_up_and_log_in(port: int) -> str:
    credentials = {"email": "bench@example.com", "password": "bench-password-123"}
    call(port, "POST", "/api/v1/users", {**credentials, "name": "Bench"})
    token = call(port, "POST", "/api/v1/auth/token", credentials)["access_token"]
    assert isinstance(token, str)
    call(port, "POST", "/api/v1/users/me/addresses", ADDRESS, token)  # the route works end to end
    return token


# -- the run -------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> list[Row]:
    python = sys.executable
    work = Path(tempfile.mkdtemp(prefix="shop-bench-http-"))
    keep_logs = HERE / "results"
    keep_logs.mkdir(exist_ok=True)
    rows: list[Row] = []
    variants = [("granian", args.log_level, True), ("uvicorn", args.log_level, True)]
    if not args.no_quiet_variant and (args.log_level or "INFO").upper() != "WARNING":
        variants.append(("granian", "WARNING", False))  # what the INFO access log costs
    try:
        for n, (name, log_level, with_post) in enumerate(variants):
            port = free_port()
            data_dir = work / f"{n}-{name}"
            data_dir.mkdir()
            env = {
                **os.environ,
                "SHOP_DATA_DIR": str(data_dir),
                "SHOP_RATE_LIMIT": RATE_LIMIT,
                "SHOP_HOST": HOST,
            }
            if log_level:
                env["SHOP_LOG_LEVEL"] = log_level
            cmd = [python, "-m", "shop.cli", "run", "--host", HOST, "--port", str(port), "--server", name]
            label = f"shop run / {name}" + (f", log {log_level}" if log_level else "")
            row = Row(label, note="" if with_post else "GET only")
            log_file = work / f"shop-{n}-{name}.log"
            print(f"[{label}] starting on :{port}  (load {_loadavg()})", file=sys.stderr, flush=True)
            with server(cmd, env, port, log_file):
                url = f"http://{HOST}:{port}/health"
                wrk(url, duration=args.warmup, connections=args.connections)
                row.get = wrk(url, duration=args.duration, connections=args.connections)
                print(f"[{label}] GET /health: {row.get.rps:,.0f} req/s", file=sys.stderr, flush=True)
                if with_post and not args.skip_post:
                    script = post_script(work, sign_up_and_log_in(port))
                    url = f"http://{HOST}:{port}/api/v1/users/me/addresses"
                    wrk(url, duration=args.warmup, connections=args.connections, script=script)
                    row.post = wrk(url, duration=args.duration, connections=args.connections, script=script)
                    print(f"[{label}] POST addresses: {row.post.rps:,.0f} req/s", file=sys.stderr, flush=True)
            # The head of the server's log, kept to check start-up went right.
            _keep_head(log_file, keep_logs / f"{log_file.stem}.log.head", 30)
            rows.append(row)

        port = free_port()
        row = Row("bare Litestar / granian", note="GET only")
        print(f"[bare] starting bench/bare_app.py on granian on :{port}  (load {_loadavg()})", file=sys.stderr, flush=True)
        cmd = [python, str(HERE / "bare_app.py"), "--host", HOST, "--port", str(port), "--server", "granian"]
        with server(cmd, dict(os.environ), port, work / "bare.log"):
            url = f"http://{HOST}:{port}/health"
            wrk(url, duration=args.warmup, connections=args.connections)
            row.get = wrk(url, duration=args.duration, connections=args.connections)
            print(f"[bare] GET /health: {row.get.rps:,.0f} req/s", file=sys.stderr, flush=True)
        rows.append(row)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def _keep_head(source: Path, target: Path, lines: int) -> None:
    with source.open(errors="replace") as f:
        head = [next(f, "") for _ in range(lines)]
    target.write_text("".join(head))


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def report(rows: list[Row], args: argparse.Namespace) -> None:
    print(
        f"\nHTTP, wrk -t1 -c{args.connections} -d{args.duration:g}s on the same 2 cores, loopback; "
        f"SHOP_RATE_LIMIT={RATE_LIMIT}; SHOP_LOG_LEVEL={args.log_level or 'default (INFO)'}"
    )
    header = f"{'server':<34}{'GET /health req/s':>20}{'p99':>11}{'POST address req/s':>21}{'p99':>11}"
    print(header)
    print("-" * len(header))
    for row in rows:
        get_rps, get_p99 = row.get.cell() if row.get else ("n/a", "")
        post_rps, post_p99 = row.post.cell() if row.post else ("n/a", "")
        print(f"{row.name:<34}{get_rps:>20}{get_p99:>11}{post_rps:>21}{post_p99:>11}")
    granian, uvicorn, bare = rows[0], rows[1], rows[-1]
    print()
    if granian.get and bare.get:
        ratio = granian.get.rps / bare.get.rps
        verdict = "meets" if ratio >= 0.8 else "MISSES"
        print(
            f"full stack (INFO logs) vs bare Litestar, both on granian, GET: {ratio:.2f}x (target >= 0.8x -> {verdict})\n"
            "  NOTE: the target is for a catalog read; GET /health is the stand-in until the catalog "
            "has a read endpoint\n  (it measures the gateway middleware + app, not a database read)."
        )
    quiet = next((r for r in rows[2:-1] if r.get), None)
    if quiet and quiet.get and granian.get and bare.get:
        print(
            f"  with SHOP_LOG_LEVEL=WARNING (no access-log line per request): {quiet.get.rps / bare.get.rps:.2f}x "
            f"of bare; the INFO access log costs {1 - granian.get.rps / quiet.get.rps:.0%} of GET throughput"
        )
    if granian.get and uvicorn.get:
        print(f"shop run GET  granian / uvicorn: {granian.get.rps / uvicorn.get.rps:.2f}x")
    if granian.post and uvicorn.post:
        print(f"shop run POST granian / uvicorn: {granian.post.rps / uvicorn.post.rps:.2f}x")
    if any((r.get and r.get.errors) or (r.post and r.post.errors) for r in rows):
        print("WARNING: some requests failed (socket errors or non-2xx); see the (err) counts above")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured wrk run (10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of wrk warm-up before each (2)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (64)")
    parser.add_argument("--skip-post", action="store_true", help="GET only")
    parser.add_argument("--log-level", help="SHOP_LOG_LEVEL for the shop servers (default: theirs, INFO)")
    parser.add_argument(
        "--no-quiet-variant", action="store_true", help="skip the extra granian GET run at SHOP_LOG_LEVEL=WARNING"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (bench/run.sh installs it: apt-get install -y wrk)", file=sys.stderr)
        return 2
    report(run(args), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
