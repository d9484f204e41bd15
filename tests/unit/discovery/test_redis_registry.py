"""The Redis registry on a real Redis: TTL keys, heartbeats, expiry, grace, deregistration.

Each test has a namespace of its own; short TTLs are polled with deadlines, never slept out.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from shop.discovery import (
    Instance,
    InstanceView,
    MemoryRegistry,
    RedisRegistry,
    Registry,
    RegistryError,
    heartbeat,
)

pytestmark = pytest.mark.redis


@pytest.fixture
def namespace() -> str:
    return f"test-{uuid.uuid4().hex}"


@pytest.fixture
async def registry(redis_url: str, namespace: str) -> AsyncIterator[RedisRegistry]:
    registry = RedisRegistry(redis_url, namespace, grace_s=0.6)
    yield registry
    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{namespace}:*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
    await registry.aclose()


def instance(module: str = "catalog", instance_id: str = "c1", port: int = 8001) -> Instance:
    return Instance(
        module=module,
        instance_id=instance_id,
        url=f"http://10.0.0.1:{port}",
        routes=("/api/v1/categories", "/api/v1/products"),
    )


async def until(
    probe: Callable[[], Awaitable[list[InstanceView]]],
    accept: Callable[[list[InstanceView]], bool],
    timeout: float = 5.0,
) -> list[InstanceView]:
    deadline = time.monotonic() + timeout
    while True:
        views = await probe()
        if accept(views):
            return views
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout}s: {views}")
        await asyncio.sleep(0.02)


async def test_register_lists_the_instance_healthy_with_routes_and_last_seen(registry: RedisRegistry) -> None:
    assert isinstance(registry, Registry)
    before = time.time()
    await registry.register(instance(), ttl_s=10)

    [view] = await registry.instances()

    assert (view.module, view.instance_id, view.url, view.routes, view.healthy) == (
        "catalog",
        "c1",
        "http://10.0.0.1:8001",
        ("/api/v1/categories", "/api/v1/products"),
        True,
    )
    assert before - 1 <= view.last_seen.timestamp() <= time.time() + 1
    assert await registry.routes() == {"catalog": ["/api/v1/categories", "/api/v1/products"]}


async def test_an_expired_instance_is_unhealthy_during_the_grace_then_gone(registry: RedisRegistry) -> None:
    await registry.register(instance(), ttl_s=0.2)
    await registry.register(instance("orders", "o1", 8002), ttl_s=30)

    lapsed = await until(registry.instances, lambda vs: [v.healthy for v in vs] == [False, True])
    assert lapsed[0].instance_id == "c1"

    gone = await until(registry.instances, lambda vs: len(vs) == 1)
    assert [(v.instance_id, v.healthy) for v in gone] == [("o1", True)]


async def test_a_heartbeat_keeps_an_instance_alive_past_its_ttl(registry: RedisRegistry) -> None:
    await registry.register(instance(), ttl_s=0.3)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:  # three TTLs' worth of beats
        await registry.heartbeat(instance(), ttl_s=0.3)
        [view] = await registry.instances()
        assert view.healthy
        await asyncio.sleep(0.1)


async def test_a_heartbeat_brings_back_an_instance_whose_key_lapsed(registry: RedisRegistry) -> None:
    await registry.register(instance(), ttl_s=0.1)
    await until(registry.instances, lambda vs: [v.healthy for v in vs] == [False])

    await registry.heartbeat(instance(), ttl_s=10)

    assert [v.healthy for v in await registry.instances()] == [True]


async def test_deregister_removes_the_instance_at_once(registry: RedisRegistry) -> None:
    await registry.register(instance("catalog", "c1"), ttl_s=30)
    await registry.register(instance("catalog", "c2"), ttl_s=30)

    await registry.deregister(instance("catalog", "c1"))

    assert [v.instance_id for v in await registry.instances()] == ["c2"]
    assert await registry.instances("orders") == []
    assert [v.instance_id for v in await registry.instances("catalog")] == ["c2"]


async def test_namespaces_do_not_see_each_other(registry: RedisRegistry, redis_url: str) -> None:
    other = RedisRegistry(redis_url, f"test-{uuid.uuid4().hex}")
    try:
        await registry.register(instance(), ttl_s=30)
        assert await other.instances() == []
    finally:
        await other.aclose()


async def test_the_heartbeat_helper_registers_beats_and_deregisters(registry: RedisRegistry) -> None:
    one = instance("catalog", "p1")
    two = instance("orders", "p1")

    async with heartbeat(registry, [one, two], interval_s=0.05, ttl_s=0.25):
        views = await registry.instances()
        assert [(v.module, v.healthy) for v in views] == [("catalog", True), ("orders", True)]
        # still healthy well past one TTL: the beats refresh the keys
        deadline = time.monotonic() + 0.8
        while time.monotonic() < deadline:
            assert all(v.healthy for v in await registry.instances())
            await asyncio.sleep(0.05)

    assert await registry.instances() == []


async def test_an_unreachable_redis_is_a_registry_error() -> None:
    registry = RedisRegistry("redis://127.0.0.1:1/0", "nowhere", socket_timeout_s=0.2)
    try:
        with pytest.raises(RegistryError):
            await registry.ping()
        with pytest.raises(RegistryError):
            await registry.instances()
        with pytest.raises(RegistryError):
            await registry.register(instance(), ttl_s=1)
        with pytest.raises(RegistryError):
            async with heartbeat(registry, instance(), interval_s=0.1, ttl_s=0.3):
                pass  # pragma: no cover - registration fails first
    finally:
        await registry.aclose()


async def test_heartbeat_needs_an_interval_shorter_than_the_ttl() -> None:
    with pytest.raises(ValueError, match="interval"):
        async with heartbeat(MemoryRegistry(), instance(), interval_s=5, ttl_s=5):
            pass  # pragma: no cover - refused before entering
