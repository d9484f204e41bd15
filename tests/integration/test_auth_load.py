"""A flood of logins and sign-ups with unknown emails against a served `shop run` (loopback,
bounded): argon2 runs on its own small executor, so `/health` keeps answering fast and the
memory of the process stays bounded. The figures are printed.

The per-address limits are lifted here: this is the worst case, many clients from many
addresses, where every request reaches the hashing. An answer is 201, 401, or -- when no hashing
slot came free soon enough -- 503 with Retry-After; never a 500, and the users module's breakers
stay closed (a full hashing queue is shed, not a failure of the module).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest

from .served import served_shop

pytestmark = pytest.mark.e2e

LOGINS = 120
SIGN_UPS = 120
HEALTH_EVERY_S = 0.02
HEALTH_P99_BOUND_S = 1.0
RSS_GROWTH_BOUND_MIB = 256  # two argon2 hashes (64 MiB each) at a time, plus their callers
FLOOD_DEADLINE_S = 120.0


def _tree_rss_kib(root: int) -> int:
    """Resident memory of `root` and its descendants (granian serves in a worker process)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    total = 0
    for pid in tree:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@pytest.mark.timeout(300)
async def test_a_flood_of_logins_and_sign_ups_keeps_health_fast_and_memory_bounded(tmp_path: Path) -> None:
    lifted = "100000/minute"
    with served_shop(
        tmp_path, RATE_LIMIT="100000/second", LOGIN_RATE_LIMIT=lifted, AUTH_ADDRESS_RATE_LIMIT=lifted
    ) as shop:
        limits = httpx.Limits(max_connections=LOGINS + SIGN_UPS + 10, max_keepalive_connections=20)
        async with httpx.AsyncClient(base_url=shop.base_url, timeout=60.0, limits=limits) as client:
            assert (await client.get("/health")).status_code == 200
            baseline_kib = _tree_rss_kib(shop.process.pid)
            health: list[float] = []
            peak_kib = baseline_kib
            flooding = True

            async def watch() -> None:
                nonlocal peak_kib
                while flooding:
                    started = time.perf_counter()
                    response = await client.get("/health")
                    health.append(time.perf_counter() - started)
                    assert response.status_code == 200
                    peak_kib = max(peak_kib, _tree_rss_kib(shop.process.pid))
                    await asyncio.sleep(HEALTH_EVERY_S)

            async def login() -> httpx.Response:
                return await client.post(
                    "/api/v1/auth/token",
                    json={"email": f"nobody-{uuid.uuid4().hex}@example.com", "password": "guess-guess"},
                )

            async def sign_up() -> httpx.Response:
                return await client.post(
                    "/api/v1/users",
                    json={
                        "email": f"new-{uuid.uuid4().hex}@example.com",
                        "password": "a-good-password",
                        "name": "Flood",
                    },
                )

            admin = {"Authorization": f"Bearer {shop.admin_token()}"}
            watcher = asyncio.create_task(watch())
            started = time.monotonic()
            try:
                answers = await asyncio.wait_for(
                    asyncio.gather(*(login() for _ in range(LOGINS)), *(sign_up() for _ in range(SIGN_UPS))),
                    FLOOD_DEADLINE_S,
                )
            finally:
                flooding = False
                await watcher
            elapsed = time.monotonic() - started
            breakers = (await client.get("/api/v1/services", headers=admin)).json()["breakers"]
            me = await client.get("/api/v1/users/me", headers=admin)

    statuses = Counter(response.status_code for response in answers)
    p50, p99 = _percentile(health, 0.50), _percentile(health, 0.99)
    growth_mib = (peak_kib - baseline_kib) / 1024
    print(
        f"\n{LOGINS} logins + {SIGN_UPS} sign-ups with unknown emails, all at once, in {elapsed:.1f} s: "
        f"statuses {dict(sorted(statuses.items()))}\n"
        f"/health during the flood: {len(health)} probes, p50 {p50 * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms, max {max(health) * 1000:.1f} ms\n"
        f"memory (process tree RSS): baseline {baseline_kib / 1024:.0f} MiB, "
        f"peak {peak_kib / 1024:.0f} MiB (+{growth_mib:.0f} MiB)"
    )
    assert set(statuses) <= {200, 201, 401, 503}, statuses
    assert statuses[201] + statuses[401] > 0, "nothing got through the hashing"
    for response in answers:
        if response.status_code == 503:
            assert response.headers["retry-after"]
    assert len(health) >= 10, "too few /health probes to judge"
    assert {name: state for name, state in breakers.items() if name.startswith("module:users")} == {
        "module:users:commands": "CLOSED",
        "module:users:queries": "CLOSED",
    }
    assert me.status_code == 200
    assert p99 < HEALTH_P99_BOUND_S, f"/health p99 {p99:.3f} s during the flood"
    assert growth_mib < RSS_GROWTH_BOUND_MIB, f"RSS grew {growth_mib:.0f} MiB during the flood"
