"""Logs of a whole journey on the in-process shop, at DEBUG: one JSON object per line, each with
the five context keys, and no password, token or Authorization header anywhere."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

from litestar.testing import AsyncTestClient

from shop.app import create_app
from shop.observability import logging as shop_logging
from shop.settings import RateLimit, Settings

ADMIN = {"email": "admin@example.com", "password": "admin-secret-passphrase"}
PASSWORD = "customer-secret-passphrase-42"
CARD_TOKEN = "tok_ok"
CONTEXT_KEYS = ("module", "trace_id", "span_id", "correlation_id", "request_id")


async def test_a_journey_logs_json_lines_with_context_and_no_secrets(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {},
        data_dir=tmp_path,
        admin_email=ADMIN["email"],
        admin_password=ADMIN["password"],
        rate_limit=RateLimit(100_000, 1.0),
        log_level="DEBUG",
    )
    app = create_app(settings)
    buffer = io.StringIO()
    shop_logging.configure("DEBUG", stream=buffer)
    secrets: list[str] = [PASSWORD, ADMIN["password"]]
    try:
        async with AsyncTestClient(app=app, timeout=30) as client:
            admin_token = (await client.post("/api/v1/auth/token", json=ADMIN)).json()["access_token"]
            admin = {"Authorization": f"Bearer {admin_token}"}
            signed_up = await client.post(
                "/api/v1/users", json={"email": "ann@example.com", "password": PASSWORD, "name": "Ann"}
            )
            assert signed_up.status_code == 201, signed_up.text
            login = await client.post(
                "/api/v1/auth/token", json={"email": "ann@example.com", "password": PASSWORD}
            )
            assert login.status_code == 200, login.text
            token = login.json()["access_token"]
            customer = {"Authorization": f"Bearer {token}"}
            secrets += [token, admin_token, customer["Authorization"], admin["Authorization"]]
            assert (await client.get("/api/v1/users/me", headers=customer)).status_code == 200
            wrong = await client.post(
                "/api/v1/auth/token", json={"email": "ann@example.com", "password": PASSWORD + "x"}
            )
            assert wrong.status_code == 401
            address = await client.post(
                "/api/v1/users/me/addresses",
                headers=customer,
                json={"recipient": "Ann", "line1": "Main 1", "city": "Berlin", "postal_code": "10115",
                      "country": "DE"},
            )  # fmt: skip
            assert address.status_code == 201, address.text
            product = await client.post(
                "/api/v1/products",
                headers=admin,
                json={"sku": "LOG-1", "name": "Mug", "price": 900, "currency": "EUR", "stock": 5},
            )
            assert product.status_code == 201, product.text
            placed = await client.post(
                "/api/v1/orders",
                headers=customer,
                json={"items": [{"product_id": product.json()["id"], "quantity": 1}],
                      "address_id": address.json()["id"], "payment_token": CARD_TOKEN},
            )  # fmt: skip
            assert placed.status_code == 202, placed.text
            order_id = placed.json()["id"]
            deadline = time.monotonic() + 15
            while (order := (await client.get(f"/api/v1/orders/{order_id}", headers=customer)).json())[
                "status"
            ] != "COMPLETED":
                assert time.monotonic() < deadline, order
            timeline = await client.get(f"/api/v1/orders/{order_id}/timeline", headers=customer)
            assert timeline.status_code == 200
    finally:
        shop_logging.configure("INFO")

    text = buffer.getvalue()
    lines = text.splitlines()
    assert len(lines) > 20
    events: list[dict[str, Any]] = []
    for line in lines:
        event = json.loads(line)
        assert isinstance(event, dict), line
        missing = [key for key in CONTEXT_KEYS if key not in event]
        assert not missing, f"{missing} missing in {line}"
        events.append(event)
    names = {e.get("event") for e in events}
    assert {"http.request", "bus.handled", "saga.started", "saga.finished"} <= names, names
    for secret in secrets:
        assert secret not in text
    for jwt in (token, admin_token):
        for start in range(len(jwt) - 20):
            assert jwt[start : start + 21] not in text, "a piece of a token was logged"
    assert CARD_TOKEN not in text, "the payment token was logged"
    # Everything the order caused, in every module, carries the request's ids.
    placing = next(e for e in events if e["event"] == "http.request" and e["route"] == "/api/v1/orders")
    caused = [e for e in events if e["correlation_id"] == placing["correlation_id"]]
    assert {e["module"] for e in caused} >= {"orders", "catalog", "users", "payments", "delivery"}
    assert all(e["request_id"] == placing["request_id"] for e in caused)
    assert all(e["trace_id"] == placing["trace_id"] for e in caused)
