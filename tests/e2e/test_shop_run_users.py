"""`shop run` as a real process: sign up, log in, read the profile and add an address over HTTP;
each module has its own SQLite file; logs are JSON lines with request ids; SIGTERM stops it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from shop.settings import MODULE_NAMES

from ..ports import server_port

ROOT = Path(__file__).resolve().parents[2]
SHOP = ROOT / ".venv" / "bin" / "shop"
START_DEADLINE_S = 60.0
STOP_DEADLINE_S = 20.0

pytestmark = pytest.mark.e2e


@dataclass
class RunningShop:
    process: subprocess.Popen[bytes]
    base_url: str
    data_dir: Path
    stdout: Path
    stderr: Path

    def log_lines(self) -> list[str]:
        return [
            line
            for path in (self.stdout, self.stderr)
            for line in path.read_text(errors="replace").splitlines()
            if line.strip()
        ]


def _wait_until_healthy(shop: RunningShop) -> None:
    deadline = time.monotonic() + START_DEADLINE_S
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if shop.process.poll() is not None:
            pytest.fail(
                f"shop run exited with {shop.process.returncode} before answering /health:\n"
                + shop.stderr.read_text(errors="replace")[-4000:]
            )
        try:
            if httpx.get(f"{shop.base_url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError as exc:
            last_error = exc
        time.sleep(0.1)  # polling interval, bounded by the deadline
    pytest.fail(f"shop run did not answer /health within {START_DEADLINE_S} s ({last_error!r})")


def _stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait(timeout=STOP_DEADLINE_S)
    return process.returncode


@pytest.fixture
def running_shop(tmp_path: Path) -> Iterator[RunningShop]:
    port = server_port()
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOP_")}
    env["SHOP_DATA_DIR"] = str(data_dir)
    stdout, stderr = tmp_path / "stdout.log", tmp_path / "stderr.log"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            [str(SHOP), "run", "--port", str(port)], cwd=ROOT, env=env, stdout=out, stderr=err
        )
    shop = RunningShop(process, f"http://127.0.0.1:{port}", data_dir, stdout, stderr)
    try:
        _wait_until_healthy(shop)
        yield shop
    finally:
        _stop(process)


def test_sign_up_log_in_profile_and_address_over_real_http(running_shop: RunningShop) -> None:
    with httpx.Client(base_url=running_shop.base_url, timeout=10.0) as client:
        signed_up = client.post(
            "/api/v1/users",
            json={"email": "e2e@example.com", "password": "e2e-password", "name": "End To End"},
            headers={"X-Request-ID": "e2e-signup"},
        )
        assert signed_up.status_code == 201, signed_up.text
        assert signed_up.headers["x-request-id"] == "e2e-signup"
        user = signed_up.json()
        assert user["role"] == "customer"

        login = client.post(
            "/api/v1/auth/token", json={"email": "e2e@example.com", "password": "e2e-password"}
        )
        assert login.status_code == 200, login.text
        assert login.json()["token_type"] == "bearer"
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}

        me = client.get("/api/v1/users/me", headers=headers)
        assert me.status_code == 200
        assert me.json() == user

        address = client.post(
            "/api/v1/users/me/addresses",
            json={
                "recipient": "E2E",
                "line1": "1 Test Street",
                "city": "Oslo",
                "postal_code": "0150",
                "country": "no",
            },
            headers=headers,
        )
        assert address.status_code == 201, address.text
        assert address.json()["country"] == "NO"

        listed = client.get("/api/v1/users/me/addresses", headers=headers)
        assert listed.json() == {"items": [address.json()], "next_cursor": None}

        duplicate = client.post(
            "/api/v1/users", json={"email": "E2E@example.com", "password": "other-password", "name": "X"}
        )
        assert duplicate.status_code == 409
        assert duplicate.headers["content-type"].startswith("application/problem+json")

        unauthenticated = client.get("/api/v1/users/me")
        assert unauthenticated.status_code == 401
        assert unauthenticated.headers["x-request-id"]

        ready = client.get("/ready")
        assert ready.status_code == 200
        assert "shop_http_requests_total" in client.get("/metrics").text


def test_each_module_has_its_own_sqlite_file_in_the_data_dir(running_shop: RunningShop) -> None:
    assert httpx.get(f"{running_shop.base_url}/ready", timeout=5.0).status_code == 200

    for module in MODULE_NAMES:
        database = running_shop.data_dir / f"{module}.db"
        assert database.is_file(), f"{database} is missing"
        assert database.read_bytes()[:16] == b"SQLite format 3\x00"
    assert (running_shop.data_dir / "jwt-private.pem").stat().st_mode & 0o077 == 0


def test_log_lines_are_json_with_the_request_id_and_sigterm_stops_the_process(
    running_shop: RunningShop,
) -> None:
    response = httpx.get(
        f"{running_shop.base_url}/health", headers={"X-Request-ID": "e2e-log-check"}, timeout=5
    )
    assert response.status_code == 200
    httpx.get(f"{running_shop.base_url}/no/such/path", headers={"X-Request-ID": "e2e-404"}, timeout=5)

    code = _stop(running_shop.process)

    assert code == 0, running_shop.stderr.read_text(errors="replace")[-4000:]
    records = []
    for line in running_shop.log_lines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"a log line is not JSON: {line!r}")
    requests = {r.get("request_id"): r for r in records if r.get("event") == "http.request"}
    assert requests["e2e-log-check"]["path"] == "/health"
    assert requests["e2e-log-check"]["status"] == 200
    assert requests["e2e-404"]["status"] == 404
    for record in requests.values():
        assert record["request_id"]
        assert record["trace_id"]
    events = [r.get("event") for r in records]
    assert "shop.started" in events
    assert "shop.stopped" in events  # the lifespan ran to its end: a graceful stop
