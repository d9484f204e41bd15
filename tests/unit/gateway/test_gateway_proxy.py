"""The standalone gateway's proxy: routing by prefix, round robin, failover, breakers, 503s,
forwarded headers. The instances are fakes behind an httpx.MockTransport, told apart by host
(test_gateway_sockets.py repeats the essentials over real sockets)."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client.parser import text_string_to_metric_families

from shop.app import route_table
from shop.bus.breaker import BreakerConfig, BreakerRegistry, CircuitState
from shop.discovery import Instance, MemoryRegistry
from shop.gateway.gateway_app import Gateway, build_gateway_app
from shop.gateway.proxy import ProxyConfig
from shop.gateway.ratelimit import MemoryRateLimitStore, RateLimiter
from shop.security.tokens import TokenVerifier
from shop.settings import RateLimit, Settings

from ...asgi import call_asgi

PEER = "203.0.113.7"
CATALOG = ("/api/v1/products", "/api/v1/categories")
Behaviour = str | int | Callable[[httpx.Request], Awaitable[httpx.Response]]


def public_key() -> bytes:
    return (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


@dataclass
class Upstreams:
    """Every instance: echoes the request as JSON unless told to refuse, time out or answer a status."""

    behaviour: dict[str, Behaviour] = field(default_factory=dict)
    hits: list[str] = field(default_factory=list)
    requests: list[httpx.Request] = field(default_factory=list)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        self.hits.append(host)
        self.requests.append(request)
        behaviour = self.behaviour.get(host)
        if behaviour == "refuse":
            raise httpx.ConnectError("connection refused", request=request)
        if behaviour == "timeout":
            raise httpx.ReadTimeout("timed out", request=request)
        if behaviour == "reset":
            raise httpx.RemoteProtocolError("server disconnected", request=request)
        if isinstance(behaviour, int):
            return httpx.Response(
                behaviour,
                json={"title": "upstream says", "status": behaviour, "instance": host},
                headers={"content-type": "application/problem+json", "retry-after": "7"},
            )
        if callable(behaviour):
            return await behaviour(request)
        return httpx.Response(
            200,
            json={
                "instance": host,
                "method": request.method,
                "path": request.url.raw_path.decode(),
                "headers": [[k.decode().lower(), v.decode()] for k, v in request.headers.raw],
                "body": request.content.decode(),
            },
            headers={"x-upstream": host, "connection": "keep-alive", "keep-alive": "timeout=5"},
        )

    def hits_of(self, *hosts: str) -> list[str]:
        return [h for h in self.hits if h in hosts]


@dataclass
class Harness:
    gateway: Gateway
    registry: MemoryRegistry
    upstreams: Upstreams
    client: httpx.AsyncClient
    breakers: BreakerRegistry

    async def add(self, module: str, host: str, routes: tuple[str, ...] = CATALOG) -> Instance:
        instance = Instance(module=module, instance_id=host, url=f"http://{host}:8000", routes=routes)
        await self.registry.register(instance)
        await self.gateway.proxy.refresh()
        return instance


OpenGateway = Callable[..., contextlib.AbstractAsyncContextManager[Harness]]


@pytest.fixture
def open_gateway() -> OpenGateway:
    @contextlib.asynccontextmanager
    async def open_(
        *,
        breaker: BreakerConfig | None = None,
        config: ProxyConfig | None = None,
        rate_limit: str = "1000/second",
    ) -> AsyncIterator[Harness]:
        upstreams = Upstreams()
        registry = MemoryRegistry()
        breakers = BreakerRegistry()
        breakers.configure(
            "upstream:",
            breaker
            or BreakerConfig(
                minimum_number_of_calls=4, sliding_window_size=4, wait_duration_in_open_state=60
            ),
        )
        async with httpx.AsyncClient(transport=httpx.MockTransport(upstreams)) as upstream_client:
            gateway = build_gateway_app(
                Settings(rate_limit=RateLimit.parse(rate_limit)),
                registry,
                verifier=TokenVerifier(public_key()),
                limiter=RateLimiter(MemoryRateLimitStore()),
                breakers=breakers,
                http_client=upstream_client,
                config=config or ProxyConfig(refresh_interval_s=3600),
                known_routes=route_table(),
            )
            transport = httpx.ASGITransport(app=gateway, client=(PEER, 5555))
            async with (
                gateway.running(),
                httpx.AsyncClient(transport=transport, base_url="http://gw.test") as client,
            ):
                yield Harness(gateway, registry, upstreams, client, breakers)

    return open_


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert {"type", "title", "detail"} <= set(body)
    return body


async def test_a_request_goes_to_the_module_of_the_longest_matching_prefix(open_gateway: OpenGateway) -> None:
    async with open_gateway() as gw:
        await gw.add("catalog", "catalog-a")
        await gw.add("specials", "specials-a", ("/api/v1/products/specials",))

        routed = {
            path: (await gw.client.get(path)).json()["instance"]
            for path in (
                "/api/v1/products",
                "/api/v1/products/3f1c",
                "/api/v1/categories",
                "/api/v1/products/specials",
                "/api/v1/products/specials/today",
            )
        }

        assert routed == {
            "/api/v1/products": "catalog-a",
            "/api/v1/products/3f1c": "catalog-a",
            "/api/v1/categories": "catalog-a",
            "/api/v1/products/specials": "specials-a",
            "/api/v1/products/specials/today": "specials-a",
        }
        # a prefix matches whole segments only
        problem(await gw.client.get("/api/v1/productsx"), 404)


async def test_the_operator_saga_views_go_to_orders(open_gateway: OpenGateway) -> None:
    async with open_gateway() as gw:
        await gw.add("orders", "orders-a", route_table()["orders"])
        await gw.add("users", "users-a", route_table()["users"])
        saga = "/api/v1/admin/sagas/9c3e8a52-5d3f-4f4e-9a38-4a55a1e0a9a1"
        for method, path in [
            ("GET", "/api/v1/admin/sagas?overdue=true"),
            ("GET", "/api/v1/admin/sagas/summary"),
            ("POST", f"{saga}/retry"),
        ]:
            answer = (await gw.client.request(method, path)).json()
            assert (answer["instance"], answer["method"]) == ("orders-a", method), path


async def test_an_unknown_route_is_a_404_problem(open_gateway: OpenGateway) -> None:
    async with open_gateway() as gw:
        await gw.add("catalog", "catalog-a")

        for path in ("/api/v1/nothing-here", "/api/v2/products", "/elsewhere"):
            body = problem(await gw.client.get(path), 404)
            assert body["title"] == "Not Found"
        assert gw.upstreams.hits == []


async def test_requests_are_balanced_round_robin_across_healthy_instances(open_gateway: OpenGateway) -> None:
    async with open_gateway() as gw:
        await gw.add("catalog", "catalog-a")
        await gw.add("catalog", "catalog-b")

        for _ in range(6):
            assert (await gw.client.get("/api/v1/products")).status_code == 200

        assert gw.upstreams.hits in (["catalog-a", "catalog-b"] * 3, ["catalog-b", "catalog-a"] * 3)


async def test_an_unhealthy_instance_gets_no_traffic(open_gateway: OpenGateway) -> None:
    async with open_gateway() as gw:
        await gw.add("catalog", "catalog-a")
        lapsed = Instance(
            module="catalog", instance_id="catalog-b", url="http://catalog-b:8000", routes=CATALOG
        )
        await gw.registry.register(lapsed, ttl_s=-1)  # already past its TTL
        await gw.gateway.proxy.refresh()

        for _ in range(4):
            assert (await gw.client.get("/api/v1/products")).json()["instance"] == "catalog-a"


@pytest.mark.parametrize("failure", ["refuse", "timeout", "reset", 502, 503, 504])
async def test_a_get_fails_over_to_the_next_instance(open_gateway: OpenGateway, failure: str | int) -> None:
    async with open_gateway() as gw:
        await gw.add("catalog", "catalog-a")
        await gw.add("catalog", "catalog-b")
        gw.upstreams.behaviour["catalog-a"] = failure

        answers = [await gw.client.get("/api/v1/products") for _ in range(4)]

        assert [r.status_code for r in answers] == [200] * 4
        assert {r.json()["instance"] for r in answers} == {"catalog-b"}


@pytest.mark.parametrize(("failure", "status"), [("timeout", 504), ("reset", 502), (502, 502), (503, 503)])
async def test_a_plain_post_is_not_retried_on_another_instance(
    open_gateway: OpenGateway, failure: str | int, status: int
) -> None:
    async with open_gateway() as gw:
        await gw.add("catalog", "catalog-a")
        await gw.add("catalog", "catalog-b")
        gw.upstreams.behaviour["catalog-a"] = failure
        gw.upstreams.behaviour["catalog-b"] = "timeout"  # must not be reached after catalog-a

        responses = [await gw.client.post("/api/v1/products", json={"sku": "x"}) for _ in range(2)]

        # the round robin sends one of the two POSTs to catalog-a first: it fails, and stops there
        to_a = [r for r, host in zip(responses, gw.upstreams.hits, strict=True) if host == "catalog-a"]
        assert len(gw.upstreams.hits) == 2
        assert len(to_a) == 1
        response = to_a[0]
        assert response.status_code == status
        assert response.headers["retry-after"]
        if isinstance(failure, int):
            assert response.json()["instance"] == "catalog-a"  # the instance's own answer, relayed
        else:
            problem(response, status)


async def test_a_post_that_never_reached_an_instance_goes_to_the_next(open_gateway: OpenGateway) -> None:
    async with open_gateway() as gw:
        await gw.add("catalog", "catalog-a")
        await gw.add("catalog", "catalog-b")
        gw.upstreams.behaviour["catalog-a"] = "refuse"  # connect failed: nothing was sent

        answers = [await gw.client.post("/api/v1/products", json={"sku": "x"}) for _ in range(2)]

        assert [r.json()["instance"] for r in answers] == ["catalog-b", "catalog-b"]


async def test_a_post_with_an_idempotency_key_fails_over(open_gateway: OpenGateway) -> None:
    async with open_gateway() as gw:
        await gw.add("orders", "orders-a", ("/api/v1/orders",))
        await gw.add("orders", "orders-b", ("/api/v1/orders",))
        gw.upstreams.behaviour["orders-a"] = "timeout"

        answers = [
            await gw.client.post("/api/v1/orders", json={"items": []}, headers={"Idempotency-Key": f"k{i}"})
            for i in range(2)
        ]

        assert [r.json()["instance"] for r in answers] == ["orders-b", "orders-b"]
        assert all(r.json()["body"] == '{"items":[]}' for r in answers)


async def test_failover_tries_at_most_the_configured_number_of_further_instances(
    open_gateway: OpenGateway,
) -> None:
    async with open_gateway(config=ProxyConfig(refresh_interval_s=3600, retries=1)) as gw:
        for host in ("catalog-a", "catalog-b", "catalog-c"):
            await gw.add("catalog", host)
            gw.upstreams.behaviour[host] = "timeout"

        body = problem(await gw.client.get("/api/v1/products"), 504)

        assert len(gw.upstreams.hits) == 2
        assert "catalog" in body["detail"]


async def test_a_module_without_healthy_instances_is_503_while_others_answer(
    open_gateway: OpenGateway,
) -> None:
    async with open_gateway() as gw:
        await gw.add("catalog", "catalog-a")
        orders = await gw.add("orders", "orders-a", ("/api/v1/orders",))
        await gw.registry.deregister(orders)
        await gw.gateway.proxy.refresh()

        down = await gw.client.get("/api/v1/orders")
        up = await gw.client.get("/api/v1/products")

        body = problem(down, 503)
        assert int(down.headers["retry-after"]) >= 1
        assert "orders" in body["detail"]
        assert up.status_code == 200
        # a module never seen at all but known to the shop: 503 as well, not 404
        problem(await gw.client.get("/api/v1/deliveries"), 503)


async def test_every_instance_refusing_is_503_with_retry_after(open_gateway: OpenGateway) -> None:
    async with open_gateway() as gw:
        await gw.add("catalog", "catalog-a")
        await gw.add("catalog", "catalog-b")
        gw.upstreams.behaviour.update({"catalog-a": "refuse", "catalog-b": "refuse"})

        response = await gw.client.post("/api/v1/products", json={})

        problem(response, 503)
        assert response.headers["retry-after"] == "5"


async def test_an_instance_whose_breaker_opens_is_skipped(open_gateway: OpenGateway) -> None:
    async with open_gateway() as gw:
        await gw.add("catalog", "catalog-a")
        await gw.add("catalog", "catalog-b")
        gw.upstreams.behaviour["catalog-a"] = "refuse"

        for _ in range(8):  # catalog-a fails half of them (then they fail over to b)
            assert (await gw.client.get("/api/v1/products")).status_code == 200
        assert gw.breakers.get("upstream:catalog-a").state is CircuitState.OPEN
        assert gw.breakers.get("upstream:catalog-b").state is CircuitState.CLOSED
        tried_a = len(gw.upstreams.hits_of("catalog-a"))

        for _ in range(6):
            assert (await gw.client.get("/api/v1/products")).json()["instance"] == "catalog-b"

        assert len(gw.upstreams.hits_of("catalog-a")) == tried_a  # not tried while OPEN


async def test_each_instance_breaker_and_the_registry_are_on_the_gateway_metrics(
    open_gateway: OpenGateway,
) -> None:
    async with open_gateway() as gw:
        await gw.add("catalog", "catalog-a")
        await gw.add("catalog", "catalog-b")
        gw.upstreams.behaviour["catalog-a"] = "refuse"
        for _ in range(8):
            assert (await gw.client.get("/api/v1/products")).status_code == 200

        exposition = (await gw.client.get("/metrics")).text
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(exposition)
            for s in family.samples
        }
        assert samples[("shop_breaker_state", (("breaker", "upstream:catalog-a"),))] == 2
        assert samples[("shop_breaker_state", (("breaker", "upstream:catalog-b"),))] == 0
        assert samples[("shop_registry_instances", (("healthy", "true"), ("module", "catalog")))] == 2


async def test_every_breaker_open_is_503_without_calling_anyone(open_gateway: OpenGateway) -> None:
    async with open_gateway() as gw:
        await gw.add("catalog", "catalog-a")
        gw.breakers.get("upstream:catalog-a").force_open()

        body = problem(await gw.client.get("/api/v1/products"), 503)

        assert "breaker" in body["detail"]
        assert gw.upstreams.hits == []


async def test_502_and_504_answers_count_against_the_breaker_but_503_does_not(
    open_gateway: OpenGateway,
) -> None:
    async with open_gateway() as gw:
        await gw.add("catalog", "catalog-a")
        await gw.add("orders", "orders-a", ("/api/v1/orders",))
        gw.upstreams.behaviour.update({"catalog-a": 502, "orders-a": 503})

        for _ in range(4):
            await gw.client.get("/api/v1/products")
            await gw.client.get("/api/v1/orders")

        assert gw.breakers.get("upstream:catalog-a").state is CircuitState.OPEN
        assert gw.breakers.get("upstream:orders-a").state is CircuitState.CLOSED


async def test_request_id_trace_context_and_forwarding_headers_reach_the_instance(
    open_gateway: OpenGateway,
) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    async with open_gateway() as gw:
        await gw.add("catalog", "catalog-a")
        del gw.client.headers["accept-encoding"], gw.client.headers["user-agent"]

        response = await gw.client.post(
            "/api/v1/products/a%2Fb/stock?x=1&y=%20",
            content=b'{"delta": 5}',
            headers={
                "X-Request-ID": "client-req-7",
                "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01",
                "X-Forwarded-For": "198.51.100.1",
                "Content-Type": "application/json",
                "Connection": "keep-alive, x-secret-hop",
                "X-Secret-Hop": "not for the upstream",
                "Keep-Alive": "timeout=5",
                "TE": "trailers",
                "Authorization": "Bearer whatever",
                "Idempotency-Key": "k1",
            },
        )

        assert response.status_code == 200
        seen = response.json()
        headers = dict(seen["headers"])
        assert seen["method"] == "POST"
        assert seen["path"] == "/api/v1/products/a%2Fb/stock?x=1&y=%20"
        assert seen["body"] == '{"delta": 5}'
        assert headers["x-request-id"] == "client-req-7"
        assert re.fullmatch(rf"00-{trace_id}-[0-9a-f]{{16}}-01", headers["traceparent"])
        assert headers["traceparent"] != f"00-{trace_id}-00f067aa0ba902b7-01"  # the gateway's own span
        assert headers["x-forwarded-for"] == f"198.51.100.1, {PEER}"
        assert headers["x-forwarded-proto"] == "http"
        assert headers["x-forwarded-host"] == "gw.test"
        assert headers["authorization"] == "Bearer whatever"  # services verify again
        assert headers["idempotency-key"] == "k1"
        assert headers["content-type"] == "application/json"
        assert headers["content-length"] == "12"
        for hop in ("connection", "keep-alive", "te", "x-secret-hop", "accept-encoding", "user-agent"):
            assert hop not in headers  # nor headers the client did not send
        assert [k for k, _ in seen["headers"]].count("x-request-id") == 1
        # the answer: one X-Request-ID, the instance's own headers, no hop-by-hop ones
        assert response.headers.get_list("x-request-id") == ["client-req-7"]
        assert response.headers["x-upstream"] == "catalog-a"
        assert "keep-alive" not in response.headers


async def test_a_fresh_request_id_and_trace_are_made_when_the_client_sends_none(
    open_gateway: OpenGateway,
) -> None:
    async with open_gateway() as gw:
        await gw.add("catalog", "catalog-a")

        response = await gw.client.get("/api/v1/products")

        headers = dict(response.json()["headers"])
        assert headers["x-request-id"] == response.headers["x-request-id"]
        assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", headers["traceparent"])
        assert headers["x-forwarded-for"] == PEER


async def test_status_headers_and_body_are_relayed(open_gateway: OpenGateway) -> None:
    async def created(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            201,
            content=json.dumps({"id": "o-1"}).encode(),
            headers={"content-type": "application/json", "location": "/api/v1/orders/o-1"},
        )

    async with open_gateway() as gw:
        await gw.add("orders", "orders-a", ("/api/v1/orders",))
        gw.upstreams.behaviour["orders-a"] = created

        response = await gw.client.post("/api/v1/orders", json={})

        assert response.status_code == 201
        assert response.headers["location"] == "/api/v1/orders/o-1"
        assert response.json() == {"id": "o-1"}
        head = await gw.client.head("/api/v1/orders")
        assert head.status_code == 201
        assert head.content == b""


async def test_a_large_answer_is_streamed_through_whole(open_gateway: OpenGateway) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB, past the buffering threshold

    async def big(request: httpx.Request) -> httpx.Response:
        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(payload), 65536):
                yield payload[start : start + 65536]

        return httpx.Response(200, content=chunks(), headers={"content-type": "application/octet-stream"})

    async with open_gateway() as gw:
        await gw.add("catalog", "catalog-a")
        gw.upstreams.behaviour["catalog-a"] = big

        response = await gw.client.get("/api/v1/products/export")

        assert response.status_code == 200
        assert response.content == payload


async def test_a_request_body_over_the_limit_is_413(open_gateway: OpenGateway) -> None:
    async with open_gateway(config=ProxyConfig(refresh_interval_s=3600, max_body_bytes=1000)) as gw:
        await gw.add("catalog", "catalog-a")

        problem(await gw.client.post("/api/v1/products", content=b"x" * 1001), 413)
        assert (await gw.client.post("/api/v1/products", content=b"x" * 1000)).status_code == 200
        assert gw.upstreams.hits == ["catalog-a"]


async def test_the_route_table_follows_the_registry_in_the_background(open_gateway: OpenGateway) -> None:
    async with open_gateway(config=ProxyConfig(refresh_interval_s=0.05)) as gw:
        instance = Instance(module="catalog", instance_id="late", url="http://late:8000", routes=CATALOG)
        await gw.registry.register(instance)

        import asyncio
        import time

        deadline = time.monotonic() + 5
        while (await gw.client.get("/api/v1/products")).status_code != 200:
            assert time.monotonic() < deadline, "the gateway never routed to the new instance"
            await asyncio.sleep(0.02)


async def _asgi_post(
    app: Any, path: str, receive: Callable[[], Awaitable[dict[str, Any]]], headers: list[tuple[bytes, bytes]]
) -> tuple[int, bytes]:
    """POST straight into the gateway's ASGI app with the given `receive` (a client that sends its
    body slowly, or goes away): the status and body it answered."""
    return await call_asgi(
        app,
        "POST",
        path,
        [(b"host", b"gw.test"), (b"content-type", b"application/json"), *headers],
        receive=receive,
        client=(PEER, 5555),
        server=("gw.test", 80),
    )


async def test_a_declared_body_over_the_limit_is_413_before_it_is_read(open_gateway: OpenGateway) -> None:
    async with open_gateway(config=ProxyConfig(refresh_interval_s=3600, max_body_bytes=1000)) as gw:
        await gw.add("catalog", "catalog-a")
        reads = 0

        async def receive() -> dict[str, Any]:
            nonlocal reads
            reads += 1
            return {"type": "http.request", "body": b"x" * 10, "more_body": True}

        status, body = await _asgi_post(
            gw.gateway, "/api/v1/products", receive, [(b"content-length", b"5000000")]
        )

        assert status == 413
        assert json.loads(body)["status"] == 413
        assert reads == 0
        assert gw.upstreams.hits == []


async def test_a_slow_upload_is_408_and_nothing_is_forwarded(open_gateway: OpenGateway) -> None:
    import asyncio

    async with open_gateway(config=ProxyConfig(refresh_interval_s=3600, body_timeout_s=0.2)) as gw:
        await gw.add("catalog", "catalog-a")
        chunks = 0

        async def receive() -> dict[str, Any]:
            nonlocal chunks
            chunks += 1
            if chunks > 1:
                await asyncio.sleep(5)  # the rest of the body never comes in time
            return {"type": "http.request", "body": b'{"sku": ', "more_body": True}

        status, body = await _asgi_post(gw.gateway, "/api/v1/products", receive, [])

        assert status == 408
        assert json.loads(body)["status"] == 408
        assert gw.upstreams.hits == []


async def test_a_client_that_goes_away_mid_body_gets_nothing_forwarded(open_gateway: OpenGateway) -> None:
    async with open_gateway() as gw:
        await gw.add("catalog", "catalog-a")
        messages = iter(
            [
                {"type": "http.request", "body": b'{"sku": "A", "na', "more_body": True},
                {"type": "http.disconnect"},
            ]
        )

        async def receive() -> dict[str, Any]:
            return next(messages)

        status, _ = await _asgi_post(gw.gateway, "/api/v1/products", receive, [])

        assert status == 400
        assert gw.upstreams.hits == [], "a truncated body was forwarded"


async def test_a_refused_connection_marks_the_instance_down_and_a_fresh_registry_finds_its_replacement(
    open_gateway: OpenGateway,
) -> None:
    async with open_gateway() as gw:
        await gw.add("catalog", "catalog-a")
        gw.upstreams.behaviour["catalog-a"] = "refuse"  # killed
        # Its replacement registers; the gateway's last snapshot does not know it yet.
        replacement = Instance(
            module="catalog", instance_id="catalog-b", url="http://catalog-b:8000", routes=CATALOG
        )
        await gw.registry.register(replacement)

        first = await gw.client.get("/api/v1/products")
        second = await gw.client.post(
            "/api/v1/products", json={"sku": "A"}
        )  # not idempotent: never sent to a

        assert first.status_code == 200
        assert first.json()["instance"] == "catalog-b"
        assert second.json()["instance"] == "catalog-b"
        assert gw.upstreams.hits == ["catalog-a", "catalog-b", "catalog-b"], "the dead one was tried once"
        assert gw.breakers.get("upstream:catalog-a").state == CircuitState.OPEN
