"""The access line the gateway middleware writes for every answered HTTP request: one JSON
object at INFO with the request's fields and the five context keys, tokens redacted, nothing at
WARNING (it is written without structlog's processor chain, so these pin what it must keep)."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shop.gateway.middleware import GatewayMiddleware
from shop.gateway.ratelimit import MemoryRateLimitStore, RateLimiter
from shop.observability import logging as shop_logging
from shop.security.tokens import TokenVerifier
from shop.settings import RateLimit

KEYS = [
    "module",
    "method",
    "path",
    "route",
    "status",
    "duration_ms",
    "event",
    "level",
    "timestamp",
    "trace_id",
    "span_id",
    "correlation_id",
    "request_id",
]
JWT = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJlLXBhcnQ"


def verifier() -> TokenVerifier:
    key = Ed25519PrivateKey.generate().public_key()
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return TokenVerifier(pem)


async def product_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers like a matched route of the shop: 200 on a route template, else 404."""
    if scope["path"].startswith("/api/v1/products/"):
        scope["path_template"] = "/api/v1/products/{product_id:uuid}"
        status = 200
    else:
        status = 404
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    shop_logging.configure("INFO", stream=buffer)
    try:
        yield buffer
    finally:
        shop_logging.configure("INFO")


async def get(path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    middleware = GatewayMiddleware(
        product_app,
        verifier=verifier(),
        limiter=RateLimiter(MemoryRateLimitStore()),
        rate_limit=RateLimit(100, 1.0),
        service="catalog",
    )
    transport = httpx.ASGITransport(app=middleware)
    async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as client:
        return await client.get(path, headers=headers)


def lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


async def test_an_anonymous_get_writes_one_access_line_with_every_field(logs: io.StringIO) -> None:
    product = uuid.uuid4()
    before = datetime.now(UTC)

    response = await get(f"/api/v1/products/{product}", {"X-Request-ID": "access-1"})

    assert response.status_code == 200
    [line] = lines(logs)
    assert list(line) == KEYS  # the order every other line has (structlog's)
    assert line["event"] == "http.request"
    assert line["level"] == "info"
    assert line["module"] == "catalog"
    assert line["method"] == "GET"
    assert line["path"] == f"/api/v1/products/{product}"
    assert line["route"] == "/api/v1/products/{product_id:uuid}"
    assert line["status"] == 200
    assert isinstance(line["duration_ms"], float)
    assert 0 <= line["duration_ms"] < 10_000
    assert line["request_id"] == "access-1" == response.headers["x-request-id"]
    assert uuid.UUID(line["correlation_id"])
    assert len(line["trace_id"]) == 32
    assert len(line["span_id"]) == 16
    assert line["timestamp"].endswith("Z")
    stamped = datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00"))
    assert before - timedelta(seconds=1) <= stamped <= datetime.now(UTC) + timedelta(seconds=1)


async def test_a_request_without_a_request_id_gets_one_in_its_line_and_its_answer(logs: io.StringIO) -> None:
    first = await get("/nowhere")
    second = await get("/nowhere")

    first_line, second_line = lines(logs)
    assert first_line["status"] == 404
    assert first_line["route"] == "unmatched"
    assert first_line["request_id"] == first.headers["x-request-id"]
    assert second_line["request_id"] == second.headers["x-request-id"]
    assert first_line["request_id"] != second_line["request_id"]
    assert first_line["correlation_id"] != second_line["correlation_id"]


async def test_a_token_in_the_path_or_the_request_id_is_redacted_from_the_line(logs: io.StringIO) -> None:
    await get(f"/api/v1/products/{JWT}", {"X-Request-ID": JWT})

    text = logs.getvalue()
    [line] = lines(logs)
    assert JWT not in text
    assert "eyJhbGciOiJFZERTQSJ9" not in text
    assert line["path"] == "/api/v1/products/[redacted]"
    assert line["request_id"] == "[redacted]"


async def test_no_access_line_is_written_at_warning() -> None:
    buffer = io.StringIO()
    shop_logging.configure("WARNING", stream=buffer)
    try:
        response = await get(f"/api/v1/products/{uuid.uuid4()}")
    finally:
        shop_logging.configure("INFO")

    assert response.status_code == 200
    assert buffer.getvalue() == ""
