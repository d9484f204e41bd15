"""Operator views of the sagas (admin only): by state, past their deadline, a summary, and the
retry of a saga parked in COMPENSATION_FAILED."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from shop.bus.saga import META_KEY
from shop.bus.tables import saga_instances
from shop.db import unit_of_work

from .conftest import FINAL, Shopper

SAGAS = "/api/v1/admin/sagas"


async def failed_order(shopper: Shopper) -> str:
    """An order that failed out of stock: its place_order saga is FAILED."""
    customer = await shopper.customer()
    product = await shopper.product(stock=1)
    order_id = (await shopper.place(customer, [(product, 2)], await shopper.address(customer))).json()["id"]
    assert (await shopper.settle(customer, order_id))["status"] == "FAILED"
    return str(order_id)


def park(shopper: Shopper, saga_id: str) -> None:
    """Make the saga look like one whose compensation kept failing after its deadline passed:
    COMPENSATION_FAILED with reserve_stock still to be compensated (what the engine writes after
    max_compensation_attempts failures)."""

    async def update() -> None:
        database = shopper.shop.databases["orders"]
        async with unit_of_work(database) as uow:
            c = saga_instances.c
            row = (
                await uow.session.execute(sa.select(saga_instances).where(c.id == uuid.UUID(saga_id)))
            ).one()
            data = {**row.data, META_KEY: {"outcome": "FAILED", "failed_step": "reserve_stock"}}
            now = datetime.now(UTC)
            await uow.session.execute(
                saga_instances.update()
                .where(c.id == row.id)
                .values(
                    status="COMPENSATION_FAILED",
                    step="reserve_stock",
                    step_index=1,
                    data=data,
                    deadline=now - timedelta(minutes=1),
                    version=row.version + 1,
                    updated_at=now,
                )
            )

    shopper.client.blocking_portal.call(update)


async def ids(shopper: Shopper, **params: Any) -> list[str]:
    response = await shopper.client.get(SAGAS, params=params, headers=shopper.admin)
    assert response.status_code == 200, response.text
    return [saga["id"] for saga in response.json()["items"]]


async def summary(shopper: Shopper) -> dict[str, Any]:
    response = await shopper.client.get(f"{SAGAS}/summary", headers=shopper.admin)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def saga_gauges(shopper: Shopper) -> dict[tuple[str, str], float]:
    text = (await shopper.client.get("/metrics")).text
    return {
        (sample.name, sample.labels.get("status", "")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name in ("shop_sagas_active", "shop_sagas_overdue")
        and sample.labels.get("type") == "place_order"
    }


async def test_operators_find_parked_and_overdue_sagas_and_retry_a_parked_one(shopper: Shopper) -> None:
    order_id = await failed_order(shopper)
    assert await ids(shopper, overdue="true") == []
    assert (await summary(shopper))["overdue"] == 0
    park(shopper, order_id)

    assert await ids(shopper, status="COMPENSATION_FAILED") == [order_id]
    assert await ids(shopper, overdue="true") == [order_id]
    assert await ids(shopper, status="FAILED", overdue="true") == []
    assert await summary(shopper) == {
        "by_status": {"COMPENSATION_FAILED": 1},
        "by_type": {"place_order": {"COMPENSATION_FAILED": 1}},
        "overdue": 1,
    }
    gauges = await saga_gauges(shopper)
    assert gauges[("shop_sagas_active", "COMPENSATION_FAILED")] == 1
    assert gauges[("shop_sagas_active", "RUNNING")] == 0
    assert gauges[("shop_sagas_overdue", "")] == 1

    retried = await shopper.client.post(f"{SAGAS}/{order_id}/retry", headers=shopper.admin)
    assert retried.status_code == 202, retried.text
    assert retried.json()["id"] == order_id
    assert retried.json()["status"] in ("COMPENSATING", "FAILED")

    async def failed_again() -> bool:
        return order_id in await ids(shopper, status="FAILED")

    await shopper.until(failed_again, what="the retried saga compensated and ended FAILED")
    timeline = await shopper.client.get(f"/api/v1/orders/{order_id}/timeline", headers=shopper.admin)
    steps = [(entry["step"], entry["status"]) for entry in timeline.json()["items"]]
    assert ("place_order", "RESUMED") in steps
    assert steps[-2:] == [("reserve_stock", "COMPENSATED"), ("place_order", "FAILED")]
    assert await ids(shopper, overdue="true") == []
    assert await summary(shopper) == {
        "by_status": {"FAILED": 1},
        "by_type": {"place_order": {"FAILED": 1}},
        "overdue": 0,
    }
    gauges = await saga_gauges(shopper)
    assert gauges[("shop_sagas_active", "COMPENSATION_FAILED")] == 0
    assert gauges[("shop_sagas_overdue", "")] == 0

    again = await shopper.client.post(f"{SAGAS}/{order_id}/retry", headers=shopper.admin)
    assert again.status_code == 409
    assert again.headers["content-type"].startswith("application/problem+json")
    unknown = await shopper.client.post(f"{SAGAS}/{uuid.uuid4()}/retry", headers=shopper.admin)
    assert unknown.status_code == 404


async def test_operators_read_any_sagas_timeline_by_its_id_and_see_why_it_failed(shopper: Shopper) -> None:
    customer = await shopper.customer()
    product = await shopper.product(stock=5)
    order_id = (await shopper.place(customer, [(product, 1)], await shopper.address(customer))).json()["id"]
    assert (await shopper.settle(customer, order_id))["status"] == "COMPLETED"
    cancelled = await shopper.client.post(f"/api/v1/orders/{order_id}/cancel", headers=customer)
    assert cancelled.status_code == 202, cancelled.text

    async def cancelled_by_now() -> bool:
        return (await shopper.order(customer, order_id))["status"] == "CANCELLED"

    await shopper.until(cancelled_by_now, what="the completed order cancelled")
    failed_id = await failed_order(shopper)

    async def every_saga_final() -> list[dict[str, Any]] | None:
        response = await shopper.client.get(SAGAS, params={"limit": 100}, headers=shopper.admin)
        items: list[dict[str, Any]] = response.json()["items"]
        return items if len(items) == 3 and all(saga["status"] in FINAL for saga in items) else None

    listed = await shopper.until(every_saga_final, what="three final sagas")
    by_id = {saga["id"]: saga for saga in listed}
    assert (by_id[order_id]["type"], by_id[order_id]["status"]) == ("place_order", "COMPLETED")
    assert (by_id[failed_id]["status"], by_id[failed_id]["failure_reason"]) == ("FAILED", "OUT_OF_STOCK")
    [cancel_saga] = [saga for saga in listed if saga["id"] not in (order_id, failed_id)]
    assert cancel_saga["failure_reason"] is None

    async def steps(saga_id: str) -> list[tuple[str, str]]:
        response = await shopper.client.get(f"{SAGAS}/{saga_id}/timeline", headers=shopper.admin)
        assert response.status_code == 200, response.text
        return [(entry["step"], entry["status"]) for entry in response.json()["items"]]

    placed, cancelling = await steps(order_id), await steps(cancel_saga["id"])
    assert placed[0] == ("place_order", "STARTED")
    assert placed[-1] == ("place_order", "COMPLETED")
    assert cancelling[-1] == (cancel_saga["type"], cancel_saga["status"])
    order_timeline = await shopper.client.get(f"/api/v1/orders/{order_id}/timeline", headers=customer)
    assert [(e["step"], e["status"]) for e in order_timeline.json()["items"]] == placed + cancelling

    unknown = await shopper.client.get(f"{SAGAS}/{uuid.uuid4()}/timeline", headers=shopper.admin)
    assert unknown.status_code == 404
    assert unknown.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", SAGAS),
        ("GET", f"{SAGAS}?status=COMPENSATION_FAILED"),
        ("GET", f"{SAGAS}?overdue=true"),
        ("GET", f"{SAGAS}/summary"),
        ("POST", f"{SAGAS}/{uuid.uuid4()}/retry"),
        ("GET", f"{SAGAS}/{uuid.uuid4()}/timeline"),
    ],
)
async def test_saga_views_are_401_without_a_token_and_403_for_a_customer(
    shopper: Shopper, method: str, path: str
) -> None:
    assert (await shopper.client.request(method, path)).status_code == 401
    customer = await shopper.customer()
    assert (await shopper.client.request(method, path, headers=customer)).status_code == 403
