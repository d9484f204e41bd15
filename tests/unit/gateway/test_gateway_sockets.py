"""The gateway over real sockets: instances are tiny ASGI apps on uvicorn (127.0.0.1, ephemeral
ports), the gateway itself runs on uvicorn with its lifespan; connection refused, read timeouts,
streaming and the Redis registry with a heartbeat, end to end."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shop.bus.breaker import BreakerRegistry
from shop.discovery import Instance, MemoryRegistry, RedisRegistry, Registry, heartbeat
from shop.gateway.gateway_app import build_gateway_app
from shop.gateway.proxy import ProxyConfig
from shop.gateway.ratelimit import MemoryRateLimitStore, RateLimiter
from shop.security.tokens import TokenVerifier
from shop.settings import RateLimit, Settings

Scope = MutableMapping[str, Any]
ASGI = Callable[[Scope, Any, Any], Awaitable[None]]
CATALOG = ("/api/v1/categories", "/api/v1/products")


def echo_app(name: str, *, slow_s: float = 0.0, hits: list[str] | None = None) -> ASGI:
    """An instance: answers who it is and what it was sent; `slow_s` delays every answer."""

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if hits is not None:
            hits.append(scope["method"])
        if slow_s:
            await asyncio.sleep(slow_s)
        if scope["path"].endswith("/export"):  # a large answer, chunked
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for i in range(64):
                await send({"type": "http.response.body", "body": bytes([i]) * 16384, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        payload = json.dumps(
            {
                "instance": name,
                "method": scope["method"],
                "path": scope["path"],
                "body": body.decode(),
                "headers": {k.decode(): v.decode() for k, v in scope["headers"]},
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    return app


@contextlib.asynccontextmanager
async def serve(app: Any, *, lifespan: str = "off") -> AsyncIterator[str]:
    """Serve `app` on 127.0.0.1 at an ephemeral port, on this loop; yield its base URL."""
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=0, lifespan=lifespan, log_level="warning", access_log=False
        )
    )
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 10
    while not server.started:
        if task.done():
            task.result()
        assert time.monotonic() < deadline, "uvicorn did not start"
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there now: connection refused


def public_key() -> bytes:
    return (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


@contextlib.asynccontextmanager
async def gateway_on_socket(registry: Registry, config: ProxyConfig) -> AsyncIterator[httpx.AsyncClient]:
    gateway = build_gateway_app(
        Settings(rate_limit=RateLimit.parse("1000/second")),
        registry,
        verifier=TokenVerifier(public_key()),
        limiter=RateLimiter(MemoryRateLimitStore()),
        breakers=BreakerRegistry(),
        config=config,
    )
    async with serve(gateway, lifespan="on") as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        yield client


async def register(registry: Registry, module: str, instance_id: str, url: str) -> Instance:
    instance = Instance(module=module, instance_id=instance_id, url=url, routes=CATALOG)
    await registry.register(instance)
    return instance


async def test_requests_fail_over_from_an_instance_that_refuses_connections() -> None:
    registry = MemoryRegistry()
    async with serve(echo_app("alive")) as alive:
        await register(registry, "catalog", "alive", alive)
        await register(registry, "catalog", "dead", closed_port_url())
        async with gateway_on_socket(registry, ProxyConfig(refresh_interval_s=3600)) as client:
            gets = [await client.get("/api/v1/products") for _ in range(4)]
            posts = [await client.post("/api/v1/products", json={"n": i}) for i in range(2)]

    assert [r.status_code for r in gets + posts] == [200] * 6
    assert {r.json()["instance"] for r in gets + posts} == {"alive"}  # a refused POST was never sent


async def test_a_slow_instance_times_out_a_get_fails_over_and_a_post_does_not() -> None:
    registry = MemoryRegistry()
    slow_hits: list[str] = []
    fast_hits: list[str] = []
    config = ProxyConfig(refresh_interval_s=3600, read_timeout_s=0.3)
    async with (
        serve(echo_app("slow", slow_s=1.0, hits=slow_hits)) as slow,
        serve(echo_app("fast", hits=fast_hits)) as fast,
    ):
        await register(registry, "catalog", "a-slow", slow)
        await register(registry, "catalog", "b-fast", fast)
        async with gateway_on_socket(registry, config) as client:
            gets = [await client.get("/api/v1/products") for _ in range(2)]
            fast_hits.clear()
            slow_hits.clear()
            posts = [await client.post("/api/v1/products", json={}) for _ in range(2)]

    assert [r.status_code for r in gets] == [200, 200]
    assert {r.json()["instance"] for r in gets} == {"fast"}
    # one POST went to the slow instance first: 504, and the fast one never saw it
    assert sorted(r.status_code for r in posts) == [200, 504]
    assert slow_hits == ["POST"]
    assert fast_hits == ["POST"]
    timed_out = next(r for r in posts if r.status_code == 504)
    assert timed_out.headers["content-type"] == "application/problem+json"
    assert timed_out.headers["retry-after"]


async def test_a_large_chunked_answer_streams_through() -> None:
    registry = MemoryRegistry()
    async with serve(echo_app("big")) as url:
        await register(registry, "catalog", "big", url)
        async with gateway_on_socket(registry, ProxyConfig(refresh_interval_s=3600)) as client:
            response = await client.get("/api/v1/products/export")

    assert response.status_code == 200
    assert response.content == b"".join(bytes([i]) * 16384 for i in range(64))


@pytest.mark.redis
async def test_an_instance_heartbeating_into_redis_is_routed_to_until_it_stops(redis_url: str) -> None:
    namespace = f"test-{uuid.uuid4().hex}"
    service_registry = RedisRegistry(redis_url, namespace)
    gateway_registry = RedisRegistry(redis_url, namespace)
    config = ProxyConfig(refresh_interval_s=0.05)
    try:
        async with serve(echo_app("catalog-1")) as url, gateway_on_socket(gateway_registry, config) as client:
            instance = Instance(module="catalog", instance_id="catalog-1", url=url, routes=CATALOG)
            async with heartbeat(service_registry, instance, interval_s=0.1, ttl_s=0.5):
                response = await poll(client, "/api/v1/products", 200)
                assert response.json()["instance"] == "catalog-1"
                headers = response.json()["headers"]
                assert headers["x-request-id"] == response.headers["x-request-id"]
                assert headers["traceparent"].startswith("00-")
                assert headers["x-forwarded-for"] == "127.0.0.1"

            # deregistered on exit: the gateway stops routing there within a refresh
            gone = await poll(client, "/api/v1/products", 503)
            assert gone.headers["retry-after"]
    finally:
        await service_registry.aclose()
        await gateway_registry.aclose()


async def poll(client: httpx.AsyncClient, path: str, status: int, timeout: float = 5.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        response = await client.get(path)
        if response.status_code == status:
            return response
        assert time.monotonic() < deadline, f"{path} never answered {status}: {response.status_code}"
        await asyncio.sleep(0.02)
