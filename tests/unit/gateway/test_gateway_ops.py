"""The standalone gateway's own endpoints and its middleware: /api/v1/services (admin only),
/health, /ready, /metrics, the merged OpenAPI document, rate limits shared through Redis and
keyed on the peer (never on X-Forwarded-For) or the token subject."""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shop.app import route_table
from shop.bus.breaker import BreakerRegistry
from shop.discovery import Instance, InstanceView, MemoryRegistry, RegistryError
from shop.gateway.gateway_app import Gateway, build_gateway_app, merge_openapi
from shop.gateway.proxy import ProxyConfig
from shop.gateway.ratelimit import MemoryRateLimitStore, RateLimiter, RateLimitStore, RedisRateLimitStore
from shop.security.tokens import TokenIssuer, TokenVerifier
from shop.settings import RateLimit, Settings

PEER = "203.0.113.7"
CATALOG = ("/api/v1/categories", "/api/v1/products")
ORDERS = ("/api/v1/orders",)


def _pair() -> tuple[bytes, bytes]:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


PRIVATE, PUBLIC = _pair()
ISSUER = TokenIssuer(PRIVATE)


def bearer(role: str = "customer", user: uuid.UUID | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {ISSUER.issue(user or uuid.uuid4(), role)}"}


def document(path: str, schema: str) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "Shop", "version": "1.0.0"},
        "paths": {
            "/health": {"get": {"summary": "The process lives"}},
            path: {"get": {"summary": f"list {path}"}},
        },
        "components": {"schemas": {schema: {"type": "object"}, "Problem": {"type": "object"}}},
        "tags": [{"name": "operations"}, {"name": schema.lower()}],
    }


SERVICE_BREAKERS = {"module:catalog:queries": "CLOSED", "provider:simulated": "OPEN"}
SEEN_AUTHORIZATION: list[str | None] = []


async def upstream(request: httpx.Request) -> httpx.Response:
    host = request.url.host
    if request.url.path == "/api/v1/services":  # a service's own view: its breakers
        SEEN_AUTHORIZATION.append(request.headers.get("authorization"))
        if host == "catalog-a":
            return httpx.Response(200, json={"modules": {}, "breakers": SERVICE_BREAKERS})
        return httpx.Response(503, json={"status": 503, "title": "Service Unavailable"})
    if request.url.path == "/schema/openapi.json":
        if host == "orders-a":
            return httpx.Response(200, json=document("/api/v1/orders", "Order"))
        return httpx.Response(200, json=document("/api/v1/products", "Product"))
    return httpx.Response(200, json={"instance": host})


@dataclass
class Harness:
    gateway: Gateway
    registry: MemoryRegistry
    client: httpx.AsyncClient
    breakers: BreakerRegistry

    async def add(self, module: str, host: str, routes: tuple[str, ...], ttl_s: float | None = None) -> None:
        instance = Instance(module=module, instance_id=host, url=f"http://{host}:8000", routes=routes)
        await self.registry.register(instance, ttl_s)
        await self.gateway.proxy.refresh()


@contextlib.asynccontextmanager
async def open_gateway(
    *,
    rate_limit: str = "1000/second",
    store: RateLimitStore | None = None,
    registry: Any = None,
    peer: str = PEER,
) -> AsyncIterator[Harness]:
    registry = registry if registry is not None else MemoryRegistry()
    breakers = BreakerRegistry()
    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream)) as upstream_client:
        gateway = build_gateway_app(
            Settings(rate_limit=RateLimit.parse(rate_limit)),
            registry,
            verifier=TokenVerifier(PUBLIC),
            limiter=RateLimiter(store or MemoryRateLimitStore()),
            breakers=breakers,
            http_client=upstream_client,
            config=ProxyConfig(refresh_interval_s=3600),
            known_routes=route_table(),
        )
        transport = httpx.ASGITransport(app=gateway, client=(peer, 5555))
        async with (
            gateway.running(),
            httpx.AsyncClient(transport=transport, base_url="http://gw.test") as client,
        ):
            yield Harness(gateway, registry, client, breakers)


async def test_services_is_401_without_a_token_and_403_for_a_customer() -> None:
    async with open_gateway() as gw:
        anonymous = await gw.client.get("/api/v1/services")
        forged = await gw.client.get("/api/v1/services", headers={"Authorization": "Bearer not.a.token"})
        customer = await gw.client.get("/api/v1/services", headers=bearer("customer"))

        assert [anonymous.status_code, forged.status_code, customer.status_code] == [401, 401, 403]
        for response in (anonymous, forged, customer):
            assert response.headers["content-type"] == "application/problem+json"
            assert response.headers["x-request-id"]


async def test_services_lists_instances_per_module_and_the_breakers_for_an_admin() -> None:
    async with open_gateway() as gw:
        await gw.add("catalog", "catalog-a", CATALOG)
        await gw.add("catalog", "catalog-b", CATALOG, ttl_s=-1)  # lapsed: listed, unhealthy
        await gw.add("orders", "orders-a", ORDERS)
        gw.breakers.get("upstream:catalog-a")
        gw.breakers.get("upstream:orders-a").force_open()

        response = await gw.client.get("/api/v1/services", headers=bearer("admin"))

        assert response.status_code == 200
        body = response.json()
        assert set(body) == {"modules", "breakers", "services"}
        catalog = body["modules"]["catalog"]
        assert [(i["instance_id"], i["url"], i["healthy"]) for i in catalog] == [
            ("catalog-a", "http://catalog-a:8000", True),
            ("catalog-b", "http://catalog-b:8000", False),
        ]
        for item in catalog:
            assert set(item) == {"instance_id", "url", "healthy", "last_seen"}
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", item["last_seen"])
        assert [i["instance_id"] for i in body["modules"]["orders"]] == ["orders-a"]
        assert body["modules"]["payments"] == []  # known, nothing registered
        assert body["breakers"] == {"upstream:catalog-a": "CLOSED", "upstream:orders-a": "OPEN"}


async def test_services_shows_each_services_own_breakers_and_says_which_did_not_answer() -> None:
    async with open_gateway() as gw:
        await gw.add("catalog", "catalog-a", CATALOG)
        await gw.add("orders", "orders-a", ORDERS)  # answers its /api/v1/services with 503
        admin = bearer("admin")
        SEEN_AUTHORIZATION.clear()

        body = (await gw.client.get("/api/v1/services", headers=admin)).json()

        assert body["services"] == {
            "http://catalog-a:8000": {"breakers": SERVICE_BREAKERS},
            "http://orders-a:8000": {"breakers": None, "error": "answered 503"},
        }
        assert (len(SEEN_AUTHORIZATION), set(SEEN_AUTHORIZATION)) == (2, {admin["Authorization"]})


async def test_health_ready_and_metrics_answer_without_a_token() -> None:
    async with open_gateway(rate_limit="1/minute") as gw:
        for _ in range(3):  # ops endpoints are not rate limited
            health = await gw.client.get("/health")
            ready = await gw.client.get("/ready")
            assert (health.status_code, health.json()) == (200, {"status": "ok"})
            assert ready.status_code == 200
            assert ready.json()["checks"] == {"registry": "ok"}
        await gw.add("catalog", "catalog-a", CATALOG)
        await gw.client.get("/api/v1/products")

        metrics = await gw.client.get("/metrics")

        assert metrics.status_code == 200
        assert 'shop_registry_instances{healthy="true",module="catalog"} 1.0' in metrics.text
        assert 'route="/api/v1/products"' in metrics.text


class DownRegistry(MemoryRegistry):
    async def ping(self) -> None:
        raise RegistryError("redis: connection refused")

    async def instances(self, module: str | None = None) -> list[InstanceView]:
        raise RegistryError("redis: connection refused")


async def test_ready_is_503_naming_the_registry_while_it_is_down() -> None:
    async with open_gateway(registry=DownRegistry()) as gw:
        ready = await gw.client.get("/ready")
        services = await gw.client.get("/api/v1/services", headers=bearer("admin"))

        assert ready.status_code == 503
        assert "registry" in ready.json()["detail"]
        assert ready.headers["retry-after"]
        assert services.status_code == 200  # from the last snapshot (empty here), not a 500
        assert services.json()["modules"]["catalog"] == []


async def test_the_openapi_document_merges_every_module() -> None:
    async with open_gateway() as gw:
        await gw.add("catalog", "catalog-a", CATALOG)
        await gw.add("orders", "orders-a", ORDERS)

        response = await gw.client.get("/schema/openapi.json")

        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/vnd.oai.openapi+json")
        schema = response.json()
        assert schema["openapi"] == "3.1.0"
        assert set(schema["paths"]) == {"/health", "/api/v1/orders", "/api/v1/products"}
        assert set(schema["components"]["schemas"]) == {"Order", "Problem", "Product"}
        assert [t["name"] for t in schema["tags"]] == ["operations", "order", "product"]


async def test_the_openapi_document_is_503_when_no_instance_answers() -> None:
    async with open_gateway() as gw:
        response = await gw.client.get("/schema/openapi.json")

        assert response.status_code == 503
        assert response.headers["retry-after"]


def test_merge_keeps_the_first_definition_of_a_name() -> None:
    merged = merge_openapi(
        [
            {"openapi": "3.1.0", "info": {"title": "A"}, "paths": {"/x": {"get": {"summary": "a"}}}},
            {"paths": {"/x": {"get": {"summary": "b"}, "post": {"summary": "b"}}}},
        ]
    )
    assert merged["info"] == {"title": "A"}
    assert merged["paths"] == {"/x": {"get": {"summary": "a"}, "post": {"summary": "b"}}}
    assert "security" not in merged


def test_merge_keeps_how_a_bearer_token_is_sent() -> None:
    scheme = {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}
    merged = merge_openapi(
        [
            {"openapi": "3.1.0", "info": {"title": "A"}, "paths": {}},
            {"paths": {}, "components": {"securitySchemes": scheme}, "security": [{"bearer": []}, {}]},
        ]
    )
    assert merged["components"]["securitySchemes"] == scheme
    assert merged["security"] == [{"bearer": []}, {}]


async def test_x_forwarded_for_does_not_change_the_rate_limit_key() -> None:
    async with open_gateway(rate_limit="2/minute") as gw:
        await gw.add("catalog", "catalog-a", CATALOG)
        answers = [
            await gw.client.get("/api/v1/products", headers={"X-Forwarded-For": f"198.51.100.{i}"})
            for i in range(3)
        ]

        assert [r.status_code for r in answers] == [200, 200, 429]
        assert int(answers[2].headers["retry-after"]) >= 1
        assert answers[2].headers["content-type"] == "application/problem+json"


async def test_signed_in_callers_are_limited_per_subject_not_per_address() -> None:
    async with open_gateway(rate_limit="2/minute") as gw:
        await gw.add("catalog", "catalog-a", CATALOG)
        alice, bob = bearer(user=uuid.uuid4()), bearer(user=uuid.uuid4())

        statuses = [(await gw.client.get("/api/v1/products", headers=h)).status_code for h in (alice,) * 3]
        other = (await gw.client.get("/api/v1/products", headers=bob)).status_code

        assert statuses == [200, 200, 429]
        assert other == 200


@pytest.mark.redis
async def test_two_gateways_share_one_rate_limit_through_redis(redis_url: str) -> None:
    namespace = f"test-{uuid.uuid4().hex}"
    stores = [RedisRateLimitStore(redis_url, namespace), RedisRateLimitStore(redis_url, namespace)]
    try:
        async with (
            open_gateway(rate_limit="3/minute", store=stores[0]) as one,
            open_gateway(rate_limit="3/minute", store=stores[1]) as two,
        ):
            for gw in (one, two):
                await gw.add("catalog", "catalog-a", CATALOG)
            clients = [one.client, two.client, one.client, two.client]

            answers = [await client.get("/api/v1/products") for client in clients]

            assert [r.status_code for r in answers] == [200, 200, 200, 429]
            assert 1 <= int(answers[3].headers["retry-after"]) <= 60
            # another peer has a budget of its own
            async with open_gateway(rate_limit="3/minute", store=stores[0], peer="192.0.2.1") as three:
                await three.add("catalog", "catalog-a", CATALOG)
                assert (await three.client.get("/api/v1/products")).status_code == 200
    finally:
        for store in stores:
            await store.aclose()


@pytest.mark.redis
async def test_the_redis_store_counts_atomically_and_reports_the_window(redis_url: str) -> None:
    store = RedisRateLimitStore(redis_url, f"test-{uuid.uuid4().hex}")
    limit = RateLimit(5, 60.0)
    try:
        import asyncio

        results = await asyncio.gather(*(store.hit("k", limit) for _ in range(20)))
        allowed = [ok for ok, _ in results]
        assert allowed.count(True) == 5
        assert all(0 < reset <= 60.0 for _, reset in results)
        assert (await store.hit("other", limit))[0]
    finally:
        await store.aclose()


async def test_a_redis_outage_falls_back_to_per_process_counting() -> None:
    store = RedisRateLimitStore("redis://127.0.0.1:1/0", "nowhere", socket_timeout_s=0.2)
    limit = RateLimit(2, 60.0)
    try:
        assert [(await store.hit("k", limit))[0] for _ in range(3)] == [True, True, False]
    finally:
        await store.aclose()


async def test_a_window_starts_at_the_keys_first_hit_so_a_burst_is_never_split_by_the_clock() -> None:
    now = [59.9]  # just before a whole minute: a window aligned to minutes would reset at 60.0
    store = MemoryRateLimitStore(clock=lambda: now[0])
    limit = RateLimit(2, 60.0)
    answers = []
    for t in (59.9, 60.0, 60.1):
        now[0] = t
        answers.append((await store.hit("login:203.0.113.9", limit))[0])
    assert answers == [True, True, False]
    now[0] = 119.8  # still inside the window the first hit opened (it ends at 119.9)
    assert (await store.hit("login:203.0.113.9", limit))[0] is False
    now[0] = 120.0  # past one period after the first hit: a new window
    assert (await store.hit("login:203.0.113.9", limit)) == (True, 60.0)
