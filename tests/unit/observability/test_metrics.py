"""/metrics shows what happened: a journey on the in-process shop moves the HTTP, bus, outbox and
saga families; a failing handler counts failed, retried and dead-lettered; a tripped breaker
reads 2; queue depths are read from the transport (in process and on Redis)."""

from __future__ import annotations

import asyncio
import io
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

from shop.app import create_app
from shop.bus.bus import Bus
from shop.bus.errors import HandlerFailed
from shop.bus.inbox import list_dead
from shop.bus.messages import Event, Query, new_envelope
from shop.bus.module import Module
from shop.bus.retry import RetryPolicy
from shop.bus.transports.inprocess import InProcessTransport
from shop.db import Database, unit_of_work
from shop.observability import logging as shop_logging
from shop.settings import RateLimit, Settings

ADMIN = {"email": "admin@example.com", "password": "adminpassword"}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def has(samples: Samples, name: str, **labels: str) -> bool:
    return (name, frozenset(labels.items())) in samples


async def scrape(client: Any) -> Samples:
    response = await client.get("/metrics")
    assert response.status_code == 200
    return parse(response.text)


async def until(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := await check()):
        assert time.monotonic() < deadline, "not within the deadline"
        await asyncio.sleep(0.02)
    return result


async def test_a_journey_moves_every_family_by_what_it_did(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {},
        data_dir=tmp_path,
        admin_email=ADMIN["email"],
        admin_password=ADMIN["password"],
        rate_limit=RateLimit(100_000, 1.0),
    )
    app = create_app(settings)
    async with AsyncTestClient(app=app, timeout=30) as client:
        admin_token = (await client.post("/api/v1/auth/token", json=ADMIN)).json()["access_token"]
        admin = {"Authorization": f"Bearer {admin_token}"}
        email = f"m-{uuid.uuid4().hex[:8]}@example.com"
        await client.post("/api/v1/users", json={"email": email, "password": "password123", "name": "M"})
        login = await client.post("/api/v1/auth/token", json={"email": email, "password": "password123"})
        customer = {"Authorization": f"Bearer {login.json()['access_token']}"}
        address = await client.post(
            "/api/v1/users/me/addresses",
            headers=customer,
            json={"recipient": "M", "line1": "Main 1", "city": "Berlin", "postal_code": "10115",
                  "country": "DE"},
        )  # fmt: skip
        product = await client.post(
            "/api/v1/products",
            headers=admin,
            json={"sku": f"M-{uuid.uuid4().hex[:6]}", "name": "Mug", "price": 900, "currency": "EUR",
                  "stock": 5},
        )  # fmt: skip
        before = await scrape(client)

        placed = await client.post(
            "/api/v1/orders",
            headers=customer,
            json={"items": [{"product_id": product.json()["id"], "quantity": 1}],
                  "address_id": address.json()["id"], "payment_token": "tok_ok"},
        )  # fmt: skip
        assert placed.status_code == 202

        async def completed() -> bool:
            order = await client.get(f"/api/v1/orders/{placed.json()['id']}", headers=customer)
            return bool(order.json()["status"] == "COMPLETED")

        await until(completed)
        after = await until(lambda: _delivered(client))

        def delta(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        orders_202 = {"method": "POST", "route": "/api/v1/orders", "status": "202"}
        assert delta("shop_http_requests_total", **orders_202) == 1
        assert delta("shop_http_request_duration_seconds_count", method="POST", route="/api/v1/orders") == 1
        for consumer, message in [
            ("orders.place_order", "orders.PlaceOrder.v1"),
            ("catalog.reserve_stock", "catalog.ReserveStock.v1"),
            ("users.get_address", "users.GetAddress.v1"),
            ("orders.when_payment_captured_complete_order", "payments.PaymentCaptured.v1"),
        ]:
            assert delta("shop_bus_messages_handled_total", consumer=consumer, type=message) == 1, consumer
            assert delta("shop_bus_handler_duration_seconds_count", consumer=consumer) >= 1, consumer
            assert delta("shop_bus_messages_failed_total", consumer=consumer, type=message) == 0
        assert delta("shop_sagas_finished_total", type="place_order", status="COMPLETED") == 1
        assert delta("shop_outbox_lag_seconds_count") >= 3  # TakePayment, PaymentCaptured, CommitStock …
        for status in ("RUNNING", "WAITING", "COMPENSATING", "COMPENSATION_FAILED"):
            assert has(after, "shop_sagas_active", type="place_order", status=status)
            assert value(after, "shop_sagas_active", type="place_order", status=status) == 0
        assert has(after, "shop_sagas_overdue", type="place_order")
        for module in ("users", "catalog", "orders", "payments", "delivery"):
            assert has(after, "shop_bus_queue_depth", queue=module)
            assert value(after, "shop_registry_instances", module=module, healthy="true") == 1
        assert value(after, "shop_breaker_state", breaker="module:catalog:queries") == 0

        # A breaker that trips shows 2 at the next scrape.
        shop = app.state["shop"]

        def trip() -> None:
            breaker = shop.breakers.get("module:delivery:commands")
            for _ in range(breaker.config.sliding_window_size):
                breaker.on_error(0.01, RuntimeError("delivery is down"))

        client.blocking_portal.call(trip)
        assert value(await scrape(client), "shop_breaker_state", breaker="module:delivery:commands") == 2


async def _delivered(client: Any) -> Samples | None:
    """The metrics once the journey's last event (delivery's OrderCompleted) is handled."""
    samples = await scrape(client)
    labels = {"consumer": "delivery.prepare_delivery", "type": "orders.OrderCompleted.v1"}
    return samples if value(samples, "shop_bus_messages_handled_total", **labels) else None


# -- a handler that always fails -----------------------------------------------------------------


class ObsSomethingHappened(Event, frozen=True, kw_only=True):
    n: int


class ObsAskBroken(Query, frozen=True, kw_only=True):
    pass


def flaky_module() -> Module:
    flaky = Module("flaky")

    @flaky.on(ObsSomethingHappened)
    async def always_fails(event: ObsSomethingHappened) -> None:
        raise RuntimeError(f"cannot handle {event.n}")

    @flaky.handles(ObsAskBroken)
    async def broken(query: ObsAskBroken) -> None:
        raise ValueError("broken")

    return flaky


async def test_a_failing_handler_is_counted_failed_retried_and_dead_lettered_and_logged_in_context(
    make_database: Callable[..., Any],
) -> None:
    from prometheus_client import REGISTRY

    def sample(name: str, consumer: str, message: str) -> float:
        return REGISTRY.get_sample_value(name, {"consumer": consumer, "type": message}) or 0.0

    names = ("failed", "retried", "dead_lettered")
    event = ("flaky.always_fails", "ObsSomethingHappened")
    query = ("flaky.broken", "ObsAskBroken")
    before = {n: sample(f"shop_bus_messages_{n}_total", *event) for n in names}
    asked_before = sample("shop_bus_messages_failed_total", *query)

    database: Database = await make_database("flaky")
    transport = InProcessTransport()
    bus = Bus(
        [flaky_module()],
        transport,
        local=["flaky"],
        databases={"flaky": database},
        retry=RetryPolicy(max_attempts=3, base_delay=0.0, max_delay=0.0),
    )
    buffer = io.StringIO()
    shop_logging.configure("INFO", stream=buffer)
    await bus.start()
    try:
        async with unit_of_work(database):
            await bus.publish(ObsSomethingHappened(n=1))
        dead = await until(lambda: list_dead(database), timeout=10)
        with pytest.raises(HandlerFailed):
            await bus.ask(ObsAskBroken())
        assert await transport.depths(["flaky", "elsewhere"]) == {"flaky": 0}
    finally:
        await bus.stop()
        shop_logging.configure("INFO")

    after = {n: sample(f"shop_bus_messages_{n}_total", *event) for n in names}
    assert {n: after[n] - before[n] for n in names} == {"failed": 3, "retried": 2, "dead_lettered": 1}
    assert sample("shop_bus_messages_failed_total", *query) - asked_before == 1
    assert [entry.attempts for entry in dead] == [3]

    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    correlation = str(dead[0].envelope.correlation_id)
    by_event: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        by_event.setdefault(line["event"], []).append(line)
    assert len(by_event["bus.retry"]) == 2
    assert len(by_event["bus.dead_lettered"]) == 1
    for line in by_event["bus.retry"] + by_event["bus.dead_lettered"] + by_event["bus.handler_failed"][:3]:
        assert line["module"] == "flaky"
        assert line["correlation_id"] == correlation
        assert None not in (line["trace_id"], line["span_id"])


class _NoHost:
    async def process(self, queue: str, envelope: Any) -> Any:
        raise AssertionError("nothing is consumed here")

    async def answer(self, queue: str, envelope: Any, message: Any = None) -> Any:
        raise AssertionError("nothing is consumed here")


async def test_the_redis_queue_depth_is_the_length_of_the_module_queue(redis_url: str) -> None:
    import redis.asyncio as aredis

    from shop.bus.transports.dramatiq import DramatiqTransport

    namespace = f"obs-{uuid.uuid4().hex[:10]}"
    transport = DramatiqTransport(redis_url, namespace=namespace, shutdown_timeout_s=1.0)
    await transport.start(_NoHost(), [])  # a producer: nobody takes from the queue
    try:
        assert await transport.depths(["obsq"]) == {"obsq": 0}
        receipts = [
            await transport.deliver("obsq", new_envelope(ObsSomethingHappened(n=n))) for n in range(3)
        ]
        await asyncio.gather(*receipts)
        assert await transport.depths(["obsq", "other"]) == {"obsq": 3, "other": 0}
    finally:
        await transport.stop()
        client = aredis.Redis.from_url(redis_url)
        keys = [key async for key in client.scan_iter(match=f"{namespace}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def test_a_method_the_client_made_up_is_labelled_other(tmp_path: Path) -> None:
    app = create_app(Settings.from_env({}, data_dir=tmp_path))
    async with AsyncTestClient(app=app) as client:
        before = await scrape(client)
        for method in ("FOOBAR", "X-" + "A" * 50, "PROPFIND"):
            response = await client.request(method, "/api/v1/products")
            assert response.status_code in (400, 405, 501), (method, response.status_code)
        after = await scrape(client)

    methods = {dict(labels).get("method") for name, labels in after if name == "shop_http_requests_total"}
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "OTHER"}, methods
    moved = value(after, "shop_http_requests_total", method="OTHER", route="unmatched", status="405") - value(
        before, "shop_http_requests_total", method="OTHER", route="unmatched", status="405"
    )
    assert moved == 3
