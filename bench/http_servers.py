"""HTTP throughput of `shop run` on granian vs uvicorn, and of a bare Litestar app, side by side.

Servers, each `shop run` in a fresh SHOP_DATA_DIR:
  shop run / granian          GET /health and POST /api/v1/users/me/addresses
  shop run / uvicorn          the same
  shop run / granian, WARNING GET only, SHOP_LOG_LEVEL=WARNING: what the access log line costs
  bare Litestar / granian     bench/bare_app.py, one GET route returning msgspec: the reference

The POST carries a validated JSON address and a bearer token (one user is signed up and logged in
once first: argon2 runs only there) and goes through the bus to the users module and an
insert+commit on SQLite.

All servers are started first (idle ones cost nothing); then wrk -t1 -c64 loads one at a time:
a warm-up, then each figure's 10 s of load in 5 interleaved slices of 2 s (order reversed every
round), so background load on the machine spreads over every server alike; req/s and p99 are
the median slice's, and every slice's req/s is printed too. wrk runs on the same
2 cores as the servers; loopback only. At the end each server gets SIGTERM, a bounded wait,
then SIGKILL.

SHOP_RATE_LIMIT is set to 1000000/second for these runs (the default, 100/second per client,
would turn most of the load into 429s). SHOP_LOG_LEVEL is left at its default (INFO, one JSON
access-log line per request, to a file) unless --log-level says otherwise.

Figures are printed, never asserted. Every wait is bounded.

    .venv/bin/python bench/http_servers.py [--duration 10] [--rounds 5] [--connections 64] [--skip-post]
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
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
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


@dataclass
class Figure:
    """One (server, endpoint) measured in several interleaved slices."""

    slices: list[WrkResult] = field(default_factory=list)

    @property
    def rps(self) -> float:
        """The median slice: a burst of someone else's work on the machine moves it least."""
        return statistics.median(r.rps for r in self.slices)

    @property
    def p99_ms(self) -> float | None:
        values = [r.p99_ms for r in self.slices if r.p99_ms is not None]
        return statistics.median(values) if values else None

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.slices)

    def cells(self) -> tuple[str, str]:
        if not self.slices:
            return "n/a", ""
        p99 = "?" if self.p99_ms is None else f"{self.p99_ms:.1f} ms"
        flag = f" ({self.errors} err)" if self.errors else ""
        return f"{self.rps:,.0f}{flag}", p99

    def spread(self) -> str:
        return " / ".join(f"{r.rps:,.0f}" for r in self.slices)


@dataclass
class Target:
    label: str
    cmd: list[str]
    env: dict[str, str]
    port: int
    log: Path
    post: bool
    get: Figure = field(default_factory=Figure)
    post_figure: Figure = field(default_factory=Figure)
    script: Path | None = None


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
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1.0) as response:
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


def start(target: Target) -> subprocess.Popen[bytes]:
    out = target.log.open("wb")
    try:
        return subprocess.Popen(
            target.cmd, env=target.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    finally:
        out.close()  # the child has its own copy


def log_tail(target: Target, lines: int = 20) -> str:
    tail = target.log.read_text(errors="replace").splitlines()[-lines:]
    return f"--- last lines of {target.label}'s log ---\n" + "\n".join(tail)


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
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency", "--timeout", "5s"]
    if script is not None:
        cmd += ["-s", str(script)]
    done = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=duration + 30, check=True)
    return parse_wrk(done.stdout)


def post_script(directory: Path, port: int, token: str) -> Path:
    script = directory / f"post_address_{port}.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(json.dumps(ADDRESS))}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {token}"\n'
    )
    return script


# -- HTTP helpers --------------------------------------------------------------------------


def call(
    port: int, method: str, path: str, body: Mapping[str, object], token: str | None = None
) -> dict[str, object]:
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


def targets(args: argparse.Namespace, work: Path) -> list[Target]:
    python = sys.executable
    variants = [("granian", args.log_level, True), ("uvicorn", args.log_level, True)]
    if not args.no_quiet_variant and (args.log_level or "INFO").upper() != "WARNING":
        variants.append(("granian", "WARNING", False))  # what the INFO access log costs
    out: list[Target] = []
    for n, (name, log_level, with_post) in enumerate(variants):
        port = free_port()
        data_dir = work / f"data-{n}-{name}"
        data_dir.mkdir()
        env = {**os.environ, "SHOP_DATA_DIR": str(data_dir), "SHOP_RATE_LIMIT": RATE_LIMIT, "SHOP_HOST": HOST}
        if log_level:
            env["SHOP_LOG_LEVEL"] = log_level
        out.append(
            Target(
                label=f"shop run / {name}" + (f", log {log_level}" if log_level else ""),
                cmd=[python, "-m", "shop.cli", "run", "--host", HOST, "--port", str(port), "--server", name],
                env=env,
                port=port,
                log=work / f"shop-{n}-{name}.log",
                post=with_post and not args.skip_post,
            )
        )
    port = free_port()
    out.append(
        Target(
            label="bare Litestar / granian",
            cmd=[
                python,
                str(HERE / "bare_app.py"),
                "--host",
                HOST,
                "--port",
                str(port),
                "--server",
                "granian",
            ],
            env=dict(os.environ),
            port=port,
            log=work / "bare.log",
            post=False,
        )
    )
    return out


def run(args: argparse.Namespace) -> list[Target]:
    """Start every server (idle ones cost nothing), then load one at a time, round by round,
    reversing the order every round, so background noise spreads over all of them alike."""
    work = Path(tempfile.mkdtemp(prefix="shop-bench-http-"))
    keep_logs = HERE / "results"
    keep_logs.mkdir(exist_ok=True)
    all_targets = targets(args, work)
    procs: list[tuple[Target, subprocess.Popen[bytes]]] = []
    slice_s = slice_seconds(args)
    try:
        for target in all_targets:
            procs.append((target, start(target)))
        for target, proc in procs:
            try:
                wait_healthy(target.port, proc)
            except Exception:
                print(log_tail(target), file=sys.stderr)
                raise
            print(f"[{target.label}] up on :{target.port}", file=sys.stderr, flush=True)
        for target in all_targets:
            if target.post:
                target.script = post_script(work, target.port, sign_up_and_log_in(target.port))

        def get_url(t: Target) -> str:
            return f"http://{HOST}:{t.port}/health"

        def post_url(t: Target) -> str:
            return f"http://{HOST}:{t.port}/api/v1/users/me/addresses"

        for t in all_targets:  # warm-up
            wrk(get_url(t), duration=args.warmup, connections=args.connections)
            if t.script:
                wrk(post_url(t), duration=args.warmup, connections=args.connections, script=t.script)

        for phase in ("GET", "POST"):
            loaded = [t for t in all_targets if phase == "GET" or t.script]
            for r in range(args.rounds):
                for t in loaded if r % 2 == 0 else reversed(loaded):
                    if phase == "GET":
                        result = wrk(get_url(t), duration=slice_s, connections=args.connections)
                        t.get.slices.append(result)
                    else:
                        result = wrk(
                            post_url(t), duration=slice_s, connections=args.connections, script=t.script
                        )
                        t.post_figure.slices.append(result)
                print(
                    f"[{phase} round {r + 1}/{args.rounds} done, load average {_loadavg()}]",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        for target, proc in procs:
            stop(proc)
            with contextlib.suppress(OSError):
                _keep_head(target.log, keep_logs / f"{target.log.stem}.log.head", 30)
        shutil.rmtree(work, ignore_errors=True)
    return all_targets


def _keep_head(source: Path, target: Path, lines: int) -> None:
    with source.open(errors="replace") as f:
        head = [next(f, "") for _ in range(lines)]
    target.write_text("".join(head))


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def slice_seconds(args: argparse.Namespace) -> int:
    """wrk takes whole seconds."""
    return max(1, round(float(args.duration) / int(args.rounds)))


def report(rows: list[Target], args: argparse.Namespace) -> None:
    each = slice_seconds(args)
    print(
        f"\nHTTP: wrk -t1 -c{args.connections}, {each * args.rounds}s per figure in {args.rounds} interleaved"
        f" slices of {each}s; wrk on the same 2 cores, loopback.\n"
        f"shop servers run with SHOP_RATE_LIMIT={RATE_LIMIT} (the default 100/second per client "
        f"would answer 429s) and SHOP_LOG_LEVEL={args.log_level or 'default (INFO)'} unless labelled."
    )
    header = f"{'server':<34}{'GET /health req/s':>19}{'p99':>10}{'POST address req/s':>20}{'p99':>11}"
    print(header)
    print("-" * len(header))
    for row in rows:
        get_rps, get_p99 = row.get.cells()
        post_rps, post_p99 = row.post_figure.cells()
        print(f"{row.label:<34}{get_rps:>19}{get_p99:>10}{post_rps:>20}{post_p99:>11}")
    print("(req/s and p99: the median slice's)")
    print("per-slice req/s, GET | POST:")
    for row in rows:
        post = f" | {row.post_figure.spread()}" if row.post_figure.slices else ""
        print(f"  {row.label:<34}{row.get.spread()}{post}")
    granian, uvicorn, bare = rows[0], rows[1], rows[-1]
    print()
    if granian.get.slices and bare.get.slices:
        ratio = granian.get.rps / bare.get.rps
        verdict = "meets" if ratio >= 0.8 else "MISSES"
        print(
            f"full stack vs bare Litestar, both on granian, GET: {ratio:.2f}x (target >= 0.8x -> {verdict})\n"
            "  NOTE: the target is for a catalog read; GET /health is our stand-in until the catalog has a\n"
            "  read endpoint (it measures gateway middleware + app + access log, not a database read)."
        )
    quiet = next((r for r in rows[2:-1] if r.get.slices), None)
    if quiet and granian.get.slices and bare.get.slices:
        log_cost, of_bare = 1 - granian.get.rps / quiet.get.rps, quiet.get.rps / bare.get.rps
        print(
            f"  at SHOP_LOG_LEVEL=WARNING (no access-log line per request): {of_bare:.2f}x "
            f"of bare; the INFO access log costs {log_cost:.0%} of GET req/s"
        )
    if granian.get.slices and uvicorn.get.slices:
        print(f"shop run GET  /health    granian / uvicorn: {granian.get.rps / uvicorn.get.rps:.2f}x")
    if granian.post_figure.slices and uvicorn.post_figure.slices:
        ratio = granian.post_figure.rps / uvicorn.post_figure.rps
        print(f"shop run POST addresses  granian / uvicorn: {ratio:.2f}x")
    if any(r.get.errors or r.post_figure.errors for r in rows):
        print("WARNING: some requests failed (socket errors or non-2xx); see the (err) counts above")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per figure (10)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved slices per figure (5)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of wrk warm-up before each (2)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (64)")
    parser.add_argument("--skip-post", action="store_true", help="GET only")
    parser.add_argument("--log-level", help="SHOP_LOG_LEVEL for the shop servers (default: theirs, INFO)")
    parser.add_argument(
        "--no-quiet-variant",
        action="store_true",
        help="skip the extra granian GET run at SHOP_LOG_LEVEL=WARNING",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (bench/run.sh installs it: apt-get install -y wrk)", file=sys.stderr)
        return 2
    report(run(args), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
