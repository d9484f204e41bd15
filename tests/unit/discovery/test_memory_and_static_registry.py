"""The in-process and static registries, the service-URL parser and the route prefixes."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from shop.discovery import (
    DEFAULT_ROUTES,
    Instance,
    MemoryRegistry,
    Registry,
    StaticRegistry,
    advertised_url,
    new_instance_id,
    parse_service_urls,
    registry_for,
)
from shop.discovery.redis_registry import RedisRegistry
from shop.discovery.routes import prefix_of, route_prefixes
from shop.settings import Settings


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def catalog(instance_id: str = "c1", url: str = "http://catalog-1:8000") -> Instance:
    return Instance(
        module="catalog", instance_id=instance_id, url=url, routes=("/api/v1/products", "/api/v1/categories")
    )


async def test_a_registered_instance_is_listed_healthy_with_its_last_seen() -> None:
    clock = FakeClock()
    registry = MemoryRegistry(clock=clock)
    assert isinstance(registry, Registry)

    await registry.register(catalog(), ttl_s=10)
    [view] = await registry.instances()

    assert (view.module, view.instance_id, view.url, view.healthy) == (
        "catalog",
        "c1",
        "http://catalog-1:8000",
        True,
    )
    assert view.last_seen.timestamp() == clock.now
    assert view.public() == {
        "instance_id": "c1",
        "url": "http://catalog-1:8000",
        "healthy": True,
        "last_seen": view.last_seen.isoformat().replace("+00:00", "Z"),
    }
    assert view.public()["last_seen"].endswith("Z")  # type: ignore[union-attr]


async def test_an_instance_past_its_ttl_is_unhealthy_for_the_grace_period_then_gone() -> None:
    clock = FakeClock()
    registry = MemoryRegistry(clock=clock, grace_s=30)
    await registry.register(catalog(), ttl_s=10)

    clock.now += 10
    [view] = await registry.instances()
    assert not view.healthy

    clock.now += 29.9
    assert [v.healthy for v in await registry.instances()] == [False]
    clock.now += 0.2
    assert await registry.instances() == []


async def test_a_heartbeat_extends_the_ttl_and_updates_last_seen() -> None:
    clock = FakeClock()
    registry = MemoryRegistry(clock=clock)
    await registry.register(catalog(), ttl_s=10)
    clock.now += 8
    await registry.heartbeat(catalog(), ttl_s=10)
    clock.now += 8

    [view] = await registry.instances()
    assert view.healthy
    assert view.last_seen.timestamp() == clock.now - 8


async def test_deregister_removes_at_once_and_a_ttl_of_none_never_lapses() -> None:
    clock = FakeClock()
    registry = MemoryRegistry(clock=clock)
    await registry.register(catalog("c1"))
    await registry.register(catalog("c2"), ttl_s=1)
    clock.now += 10_000
    assert [(v.instance_id, v.healthy) for v in await registry.instances()] == [("c1", True)]

    await registry.deregister(catalog("c1"))
    assert await registry.instances() == []


async def test_instances_filter_by_module_and_routes_unite_the_prefixes() -> None:
    registry = MemoryRegistry()
    await registry.register(catalog("c2"))
    await registry.register(catalog("c1"))
    await registry.register(
        Instance(module="orders", instance_id="o1", url="http://o:1", routes=("/api/v1/orders",))
    )

    assert [v.instance_id for v in await registry.instances("catalog")] == ["c1", "c2"]
    assert [v.module for v in await registry.instances()] == ["catalog", "catalog", "orders"]
    assert await registry.routes() == {
        "catalog": ["/api/v1/categories", "/api/v1/products"],
        "orders": ["/api/v1/orders"],
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"url": "catalog:8000"}, "http", id="no-scheme"),
        pytest.param({"routes": ("api/v1/x",)}, "start", id="relative-route"),
        pytest.param({"instance_id": ""}, "instance_id", id="no-id"),
    ],
)
def test_an_instance_is_validated(kwargs: dict[str, object], message: str) -> None:
    values: dict[str, object] = {"module": "catalog", "instance_id": "c1", "url": "http://c:1"} | kwargs
    with pytest.raises(ValueError, match=message):
        Instance(**values)  # type: ignore[arg-type]


def test_service_urls_parse_into_modules_and_urls() -> None:
    parsed = parse_service_urls(
        "catalog=http://catalog:8000, orders=http://orders-a:8000|http://orders-b:8000/ orders=http://orders-c:8000"
    )

    assert parsed == {
        "catalog": ["http://catalog:8000"],
        "orders": ["http://orders-a:8000", "http://orders-b:8000", "http://orders-c:8000"],
    }
    assert parse_service_urls("") == {}


@pytest.mark.parametrize("bad", ["catalog", "catalog=", "=http://x:1", "catalog=ftp://x", "catalog=http://"])
def test_bad_service_urls_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="expected"):
        parse_service_urls(bad)


async def test_a_static_registry_lists_every_url_healthy_with_the_known_routes() -> None:
    registry = StaticRegistry("catalog=http://catalog:8000,orders=http://orders:8000|http://orders-2:8000")

    views = await registry.instances()

    assert [(v.module, v.instance_id, v.url, v.healthy) for v in views] == [
        ("catalog", "catalog@catalog:8000", "http://catalog:8000", True),
        ("orders", "orders@orders-2:8000", "http://orders-2:8000", True),
        ("orders", "orders@orders:8000", "http://orders:8000", True),
    ]
    assert views[0].routes == DEFAULT_ROUTES["catalog"]
    assert [v.url for v in await registry.instances("catalog")] == ["http://catalog:8000"]
    # registration is the platform's business: no-ops
    await registry.register(catalog(), 5)
    await registry.deregister(views[0])  # type: ignore[arg-type]
    assert len(await registry.instances()) == 3
    await registry.aclose()


async def test_a_static_registry_probes_ready_at_most_once_per_interval() -> None:
    calls: list[str] = []

    async def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.host)
        if request.url.host == "down":
            raise httpx.ConnectError("refused", request=request)
        if request.url.host == "unready":
            return httpx.Response(503)
        assert request.url.path == "/ready"
        return httpx.Response(200, json={"status": "ready"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        registry = StaticRegistry(
            {"catalog": ["http://up:1", "http://down:1", "http://unready:1"]},
            probe_interval_s=60,
            http_client=client,
        )
        first = {v.url: v.healthy for v in await registry.instances()}
        second = {v.url: v.healthy for v in await registry.instances()}
        await registry.aclose()  # not its client: left open

        assert first == second == {"http://up:1": True, "http://down:1": False, "http://unready:1": False}
        assert sorted(calls) == ["down", "unready", "up"]  # probed once within the interval
        assert not client.is_closed


def test_route_prefixes_of_a_path() -> None:
    assert prefix_of("/api/v1/products/{product_id:uuid}/stock") == "/api/v1/products"
    assert prefix_of("/api/v1/admin/sagas") == "/api/v1/admin/sagas"
    assert prefix_of("/api/v1/admin/{x:str}") == "/api/v1/admin"
    assert prefix_of("/api/v1/{id:uuid}") is None
    assert prefix_of("/health") is None


@pytest.mark.parametrize("module", sorted(DEFAULT_ROUTES))
def test_the_known_routes_are_what_each_modules_controllers_serve(module: str) -> None:
    from shop.app import load_module, served_controllers

    assert route_prefixes(served_controllers(load_module(module))) == DEFAULT_ROUTES[module]


def test_instance_ids_are_unique_and_urls_advertise_a_reachable_host() -> None:
    assert new_instance_id() != new_instance_id()
    assert advertised_url("10.0.0.5", 8001) == "http://10.0.0.5:8001"
    assert advertised_url("::1", 8001) == "http://[::1]:8001"
    assert "0.0.0.0" not in advertised_url("0.0.0.0", 8001)


def test_the_registry_is_static_when_service_urls_are_given_else_redis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SHOP_SERVICE_URLS", raising=False)
    settings = Settings(data_dir=tmp_path, redis_url=f"redis://127.0.0.1:1/{uuid.uuid4().int % 16}")
    assert isinstance(registry_for(settings, "catalog=http://c:1"), StaticRegistry)
    assert isinstance(registry_for(settings, ""), RedisRegistry)
    monkeypatch.setenv("SHOP_SERVICE_URLS", "orders=http://o:1")
    assert isinstance(registry_for(settings), StaticRegistry)
