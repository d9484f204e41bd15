"""`shop run` as a real process on a free loopback port, for tests that drive it over HTTP.

Its own data dir, an admin from the settings, and whatever SHOP_* variables a test passes; the
process is stopped (SIGTERM, then SIGKILL) when the context ends, and its stderr is kept for
the failure message.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from ..ports import server_port

ROOT = Path(__file__).resolve().parents[2]
SHOP = ROOT / ".venv" / "bin" / "shop"
ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "admin-password-1"
START_DEADLINE_S = 60.0
STOP_DEADLINE_S = 20.0


@dataclass
class ServedShop:
    process: subprocess.Popen[bytes]
    base_url: str
    stderr: Path

    def tail(self) -> str:
        return self.stderr.read_text(errors="replace")[-4000:]

    def token(self, email: str, password: str) -> str:
        response = httpx.post(
            f"{self.base_url}/api/v1/auth/token", json={"email": email, "password": password}, timeout=30
        )
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])

    def customer_token(self, email: str, password: str = "customer-password-1") -> str:
        signed_up = httpx.post(
            f"{self.base_url}/api/v1/users",
            json={"email": email, "password": password, "name": "Customer"},
            timeout=30,
        )
        assert signed_up.status_code == 201, signed_up.text
        return self.token(email, password)

    def admin_token(self) -> str:
        return self.token(ADMIN_EMAIL, ADMIN_PASSWORD)


def _wait_until_healthy(shop: ServedShop) -> None:
    deadline = time.monotonic() + START_DEADLINE_S
    while time.monotonic() < deadline:
        if shop.process.poll() is not None:
            pytest.fail(f"shop run exited with {shop.process.returncode}:\n{shop.tail()}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{shop.base_url}/health", timeout=1.0).status_code == 200:
                return
        time.sleep(0.1)  # polling interval, bounded by the deadline
    pytest.fail(f"shop run did not answer /health within {START_DEADLINE_S} s:\n{shop.tail()}")


@contextlib.contextmanager
def served_shop(tmp_path: Path, **settings: str) -> Iterator[ServedShop]:
    """`shop run` on 127.0.0.1 with `settings` as SHOP_* variables (e.g. RATE_LIMIT="1000/second")."""
    port = server_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOP_")}
    env.update(
        SHOP_DATA_DIR=str(tmp_path / "data"),
        SHOP_ADMIN_EMAIL=ADMIN_EMAIL,
        SHOP_ADMIN_PASSWORD=ADMIN_PASSWORD,
        SHOP_LOG_LEVEL="WARNING",
    )
    env.update({f"SHOP_{name}": value for name, value in settings.items()})
    stderr = tmp_path / "shop.stderr.log"
    with stderr.open("wb") as err:
        process = subprocess.Popen(
            [str(SHOP), "run", "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    shop = ServedShop(process, f"http://127.0.0.1:{port}", stderr)
    try:
        _wait_until_healthy(shop)
        yield shop
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_DEADLINE_S)
