"""`shop run`, `shop serve`, `shop gateway` log where they listen: one JSON line, event
`shop.listening`, with the URL that then answers."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from shop.security.keys import load_keys
from shop.settings import Settings

from .clitools import RunShop, StartServer, closed_port


def _listening(line: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(line)
    assert event["event"] == "shop.listening"
    assert event["level"] == "info"
    return event


def _health(url: str) -> int:
    return httpx.get(f"{url}/health", timeout=30).status_code


@pytest.mark.parametrize("server", ["granian", "uvicorn"])
def test_run_logs_the_url_it_listens_on_and_answers_there(start_server: StartServer, server: str) -> None:
    port = closed_port()
    shop = start_server("run", "--port", str(port), "--server", server)

    event = _listening(shop.wait_for('"shop.listening"'))

    assert event["url"] == f"http://127.0.0.1:{port}"
    assert event["role"] == "run"
    assert event["server"] == server
    assert event["module"] == "shop"
    assert _health(event["url"]) == 200


def test_gateway_logs_the_url_it_listens_on(start_server: StartServer, shop_env: dict[str, str]) -> None:
    load_keys(Settings.from_env({"SHOP_DATA_DIR": shop_env["SHOP_DATA_DIR"]}), generate=True)
    port = closed_port()
    env = {
        "SHOP_SERVICE_URLS": f"catalog=http://127.0.0.1:{closed_port()}",  # static: Redis not needed
        "SHOP_REDIS_URL": f"redis://127.0.0.1:{closed_port()}/0",
    }
    gateway = start_server("gateway", "--port", str(port), env=env)

    event = _listening(gateway.wait_for('"shop.listening"'))

    assert event["url"] == f"http://127.0.0.1:{port}"
    assert event["role"] == "gateway"
    assert event["module"] == "gateway"
    assert _health(event["url"]) == 200


@pytest.mark.redis
def test_serve_logs_the_url_and_modules_it_serves(
    start_server: StartServer, run_shop: RunShop, redis_url: str
) -> None:
    assert run_shop("migrate", "users").returncode == 0
    port = closed_port()
    service = start_server("serve", "users", "--port", str(port), env={"SHOP_REDIS_URL": redis_url})

    event = _listening(service.wait_for('"shop.listening"'))

    assert event["url"] == f"http://127.0.0.1:{port}"
    assert event["role"] == "serve"
    assert event["modules"] == ["users"]
    assert event["module"] == "users"
