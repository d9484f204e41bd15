"""What the gateway middleware and the ops endpoints promise around every request of `shop run`:
request ids, trace context, the API rate limit, /health, /ready, /metrics, the OpenAPI document."""

from __future__ import annotations

import io
import json
import re
from typing import Any

import pytest

from shop.observability import logging as shop_logging
from shop.settings import MODULE_NAMES, RateLimit

HEX32 = re.compile(r"^[0-9a-f]{32}$")


async def test_every_response_carries_an_x_request_id(open_shop: Any) -> None:
    async with open_shop() as api:
        _, headers = await api.customer()
        responses = {
            "success": await api.client.get("/api/v1/users/me", headers=headers),
            "created": await api.client.post(
                "/api/v1/users/me/addresses",
                json={"recipient": "A", "line1": "B", "city": "C", "postal_code": "D", "country": "FR"},
                headers=headers,
            ),
            "400": await api.client.post("/api/v1/users", json={}),
            "401": await api.client.get("/api/v1/users/me"),
            "404 unknown path": await api.client.get("/no/such/path"),
            "405": await api.client.delete("/api/v1/users/me", headers=headers),
            "health": await api.client.get("/health"),
        }

        assert [r.status_code for r in responses.values()] == [200, 201, 400, 401, 404, 405, 200]
        ids = [r.headers.get("x-request-id") for r in responses.values()]
        assert all(ids), dict(zip(responses, ids, strict=True))
        assert len(set(ids)) == len(ids)  # one per request


async def test_an_unknown_path_is_a_404_problem(open_shop: Any) -> None:
    async with open_shop() as api:
        api.problem(await api.client.get("/api/v1/nothing-here"), 404)


async def test_a_client_sent_request_id_is_echoed(open_shop: Any) -> None:
    async with open_shop() as api:
        for path in ("/health", "/api/v1/users/me", "/no/such/path"):
            response = await api.client.get(path, headers={"X-Request-ID": "client-req-42.a:b_c"})

            assert response.headers["x-request-id"] == "client-req-42.a:b_c"


@pytest.mark.parametrize(
    "absurd",
    [
        pytest.param("has spaces in it", id="spaces"),
        pytest.param("x" * 500, id="500-chars"),
        pytest.param("<script>", id="markup"),
        pytest.param("a\tb", id="tab"),
    ],
)
async def test_an_absurd_request_id_is_replaced_by_a_fresh_one(open_shop: Any, absurd: str) -> None:
    async with open_shop() as api:
        response = await api.client.get("/health", headers={"X-Request-ID": absurd})

        assert response.status_code == 200
        assert response.headers["x-request-id"] != absurd
        assert 1 <= len(response.headers["x-request-id"]) <= 128
        assert " " not in response.headers["x-request-id"]


async def test_a_w3c_traceparent_is_accepted_and_continues_the_trace_in_the_logs(open_shop: Any) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    traceparent = f"00-{trace_id}-00f067aa0ba902b7-01"
    async with open_shop() as api:
        logs = io.StringIO()
        shop_logging.configure("INFO", stream=logs)
        try:
            response = await api.client.get(
                "/health", headers={"traceparent": traceparent, "X-Request-ID": "trace-test-1"}
            )
            broken = await api.client.get(
                "/health", headers={"traceparent": "garbage", "X-Request-ID": "trace-test-2"}
            )
        finally:
            shop_logging.configure("INFO")

    assert response.status_code == 200
    assert broken.status_code == 200
    lines = [json.loads(line) for line in logs.getvalue().splitlines() if line.strip()]
    by_request = {line.get("request_id"): line for line in lines if line.get("event") == "http.request"}
    assert by_request["trace-test-1"]["trace_id"] == trace_id
    assert by_request["trace-test-1"]["span_id"] != "00f067aa0ba902b7"  # a child span of the caller's
    assert HEX32.match(by_request["trace-test-2"]["trace_id"])  # a bad one starts a new trace
    assert by_request["trace-test-2"]["trace_id"] != trace_id


async def test_the_api_rate_limit_answers_429_after_the_limit_for_one_token(open_shop: Any) -> None:
    async with open_shop(rate_limit=RateLimit(5, 60), clock=lambda: 1000.0) as api:
        _, headers = await api.customer()

        answered = [(await api.client.get("/api/v1/users/me", headers=headers)).status_code for _ in range(5)]
        limited = await api.client.get("/api/v1/users/me", headers=headers)

        assert answered == [200] * 5
        body = api.problem(limited, 429)
        assert body["status"] == 429
        assert int(limited.headers["retry-after"]) == 60  # the first hit opened [1000, 1060)
        assert limited.headers["x-request-id"]


async def test_a_spoofed_x_forwarded_for_does_not_reset_the_rate_limit(open_shop: Any) -> None:
    async with open_shop(rate_limit=RateLimit(5, 60), clock=lambda: 1000.0) as api:
        for _ in range(5):
            assert (await api.client.get("/api/v1/users/me")).status_code == 401  # counted per address

        for spoof in (
            {"X-Forwarded-For": "203.0.113.7"},
            {"X-Real-IP": "198.51.100.1"},
            {"Forwarded": "for=192.0.2.60"},
        ):
            response = await api.client.get("/api/v1/users/me", headers=spoof)
            api.problem(response, 429)
            assert "retry-after" in response.headers


async def test_the_rate_limit_of_one_token_does_not_touch_another(open_shop: Any) -> None:
    async with open_shop(rate_limit=RateLimit(5, 60), clock=lambda: 1000.0) as api:
        _, first = await api.customer()
        _, second = await api.customer()  # sign-ups and logins count against the address: 4 of 5
        for _ in range(5):
            await api.client.get("/api/v1/users/me", headers=first)

        api.problem(
            await api.client.get("/api/v1/users/me", headers={**first, "X-Forwarded-For": "10.9.9.9"}), 429
        )
        assert (await api.client.get("/api/v1/users/me", headers=second)).status_code == 200


async def test_health_ready_and_metrics_are_not_rate_limited(open_shop: Any) -> None:
    async with open_shop(rate_limit=RateLimit(2, 60), clock=lambda: 1000.0) as api:
        for _ in range(3):
            await api.client.get("/api/v1/users/me")
        api.problem(await api.client.get("/api/v1/users/me"), 429)

        for _ in range(5):
            assert (await api.client.get("/health")).status_code == 200
            assert (await api.client.get("/ready")).status_code == 200
            assert (await api.client.get("/metrics")).status_code == 200


async def test_health_is_200_ok(open_shop: Any) -> None:
    async with open_shop() as api:
        response = await api.client.get("/health")

        assert response.status_code == 200
        assert response.json() == {"status": "ok"}


async def test_ready_is_200_and_lists_each_modules_database(open_shop: Any) -> None:
    async with open_shop() as api:
        response = await api.client.get("/ready")

        assert response.status_code == 200
        checks = response.json()["checks"]
        assert {f"db:{name}" for name in MODULE_NAMES} <= set(checks)
        assert set(checks.values()) == {"ok"}


async def test_metrics_is_prometheus_text_with_the_http_request_counter(open_shop: Any) -> None:
    async with open_shop() as api:
        await api.client.get("/health")

        response = await api.client.get("/metrics")

        assert response.status_code == 200
        content_type = response.headers["content-type"]
        assert content_type.startswith("text/plain")
        assert content_type.count("charset") <= 1  # a duplicate parameter breaks strict scrapers
        assert "# TYPE shop_http_requests_total counter" in response.text
        assert re.search(r'^shop_http_requests_total\{.*route="/health".*\} \d', response.text, re.M)


async def test_the_openapi_document_is_3_1_and_describes_the_users_endpoints(open_shop: Any) -> None:
    async with open_shop() as api:
        response = await api.client.get("/schema/openapi.json")

        assert response.status_code == 200
        document = response.json()
        assert document["openapi"].startswith("3.1")
        paths = document["paths"]
        assert "post" in paths["/api/v1/users"]
        assert "post" in paths["/api/v1/auth/token"]
        assert "get" in paths["/api/v1/users/me"]
        assert {"get", "post"} <= set(paths["/api/v1/users/me/addresses"])
        assert "/health" in paths


async def test_an_open_users_breaker_answers_503_with_retry_after_not_500(open_shop: Any) -> None:
    async with open_shop() as api:
        breaker = api.shop.breakers.get("module:users:queries")  # logging in is a query (IssueToken)
        breaker.force_open()

        response = await api.client.post(
            "/api/v1/auth/token", json={"email": "ada@example.com", "password": "whatever-it-is"}
        )

        api.problem(response, 503)
        assert int(response.headers["retry-after"]) >= 1
        assert response.headers["x-request-id"]
        assert (await api.client.get("/health")).status_code == 200  # the process itself is fine
        breaker.reset()
        again = await api.client.post(
            "/api/v1/auth/token", json={"email": "ada@example.com", "password": "whatever-it-is"}
        )
        api.problem(again, 401)  # answered by the users module again
