"""GET /api/v1/deliveries and POST /api/v1/deliveries/{id}/events: who sees what, what may follow what."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from shop.contracts.delivery import DeliveryStatusChanged
from shop.contracts.orders import GetOrderOwner

ROUTES = {
    "PREPARING": [],
    "SHIPPED": ["SHIPPED"],
    "IN_TRANSIT": ["SHIPPED", "IN_TRANSIT"],
    "DELIVERED": ["SHIPPED", "IN_TRANSIT", "DELIVERED"],
    "CANCELLED": ["CANCELLED"],
}


async def _delivery_in(shop: Any, status: str) -> dict[str, Any]:
    delivery: dict[str, Any]
    _, delivery = await shop.paid_order(uuid.uuid4())
    for step in ROUTES[status]:
        response = await shop.move(delivery["id"], step)
        assert response.status_code == 200, response.text
        delivery = response.json()
    return delivery


async def test_a_delivery_goes_preparing_shipped_in_transit_delivered(open_shop: Any) -> None:
    async with open_shop() as shop:
        order_id, delivery = await shop.paid_order(uuid.uuid4())

        answers = [await shop.move(delivery["id"], s) for s in ("SHIPPED", "IN_TRANSIT", "DELIVERED")]

        assert [a.status_code for a in answers] == [200, 200, 200]
        bodies = [a.json() for a in answers]
        assert [b["status"] for b in bodies] == ["SHIPPED", "IN_TRANSIT", "DELIVERED"]
        assert len({b["tracking_number"] for b in bodies}) == 1  # set once, at SHIPPED, and kept
        assert await shop.delivery_of(order_id) == bodies[-1]
        statuses = [c.status for c in await shop.eventually(lambda: shop.published.of(DeliveryStatusChanged))]
        assert statuses == ["PREPARING", "SHIPPED", "IN_TRANSIT", "DELIVERED"]


async def test_a_preparing_delivery_may_be_cancelled_by_an_admin(open_shop: Any) -> None:
    async with open_shop() as shop:
        delivery = await _delivery_in(shop, "PREPARING")

        response = await shop.move(delivery["id"], "cancelled")  # any case

        assert response.status_code == 200
        assert response.json()["status"] == "CANCELLED"
        assert response.json()["tracking_number"] is None


ILLEGAL = {
    "PREPARING": ("IN_TRANSIT", "DELIVERED", "PREPARING"),
    "SHIPPED": ("CANCELLED", "SHIPPED", "PREPARING"),
    "IN_TRANSIT": ("CANCELLED", "SHIPPED", "IN_TRANSIT"),
    "DELIVERED": ("CANCELLED", "IN_TRANSIT", "DELIVERED"),
    "CANCELLED": ("SHIPPED", "PREPARING", "CANCELLED"),
}


async def test_every_illegal_transition_is_409_and_changes_nothing(open_shop: Any) -> None:
    async with open_shop() as shop:
        for current, targets in ILLEGAL.items():
            delivery = await _delivery_in(shop, current)
            for target in targets:
                response = await shop.move(delivery["id"], target)

                shop.problem(response, 409)
                assert await shop.delivery_of(uuid.UUID(delivery["order_id"])) == delivery, (current, target)


async def test_an_event_for_an_unknown_delivery_is_404(open_shop: Any) -> None:
    async with open_shop() as shop:
        response = await shop.move(str(uuid.uuid4()), "SHIPPED")

        shop.problem(response, 404)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"status": "LOST_AT_SEA"}, id="unknown-status"),
        pytest.param({"status": 3}, id="not-a-string"),
        pytest.param({}, id="missing"),
    ],
)
async def test_an_unknown_status_value_is_400_naming_the_field(open_shop: Any, body: dict[str, Any]) -> None:
    async with open_shop() as shop:
        delivery = await _delivery_in(shop, "PREPARING")

        response = await shop.client.post(
            f"/api/v1/deliveries/{delivery['id']}/events", json=body, headers=await shop.admin()
        )

        problem = shop.problem(response, 400)
        assert "status" in {e["field"] for e in problem["errors"]}


async def test_only_an_admin_records_delivery_events(open_shop: Any) -> None:
    async with open_shop() as shop:
        customer_id, headers = await shop.customer()
        order_id, delivery = await shop.paid_order(customer_id)

        as_owner = await shop.move(delivery["id"], "SHIPPED", headers=headers)
        anonymous = await shop.move(delivery["id"], "SHIPPED", headers={})

        shop.problem(as_owner, 403)
        shop.problem(anonymous, 401)
        assert (await shop.delivery_of(order_id) or {})["status"] == "PREPARING"


async def test_a_customer_sees_their_own_deliveries(open_shop: Any) -> None:
    async with open_shop() as shop:
        ada, headers = await shop.customer()
        order_id, delivery = await shop.paid_order(ada)

        mine = await shop.client.get("/api/v1/deliveries", headers=headers)
        of_order = await shop.client.get(
            "/api/v1/deliveries", headers=headers, params={"order_id": str(order_id)}
        )

        assert mine.json() == {"items": [delivery], "next_cursor": None}
        assert of_order.json() == mine.json()


async def test_another_customer_gets_404_for_that_order_and_an_empty_list_of_their_own(
    open_shop: Any,
) -> None:
    async with open_shop() as shop:
        ada, ada_headers = await shop.customer()
        _, eve = await shop.customer()
        order_id, _ = await shop.paid_order(ada)
        # an order delivery has no record of yet (not complete): orders says whose it is
        unpaid = await shop.pending_order(ada)

        paid = await shop.client.get("/api/v1/deliveries", headers=eve, params={"order_id": str(order_id)})
        not_yet = await shop.client.get("/api/v1/deliveries", headers=eve, params={"order_id": str(unpaid)})
        own = await shop.client.get("/api/v1/deliveries", headers=eve)
        owners_view = await shop.client.get(
            "/api/v1/deliveries", headers=ada_headers, params={"order_id": str(unpaid)}
        )

        shop.problem(paid, 404)
        shop.problem(not_yet, 404)
        assert own.json() == {"items": [], "next_cursor": None}
        assert owners_view.json() == {"items": [], "next_cursor": None}


async def test_an_admin_sees_every_delivery(open_shop: Any) -> None:
    async with open_shop() as shop:
        ada, _ = await shop.customer()
        eve, _ = await shop.customer()
        ada_order, _ = await shop.paid_order(ada)
        eve_order, _ = await shop.paid_order(eve)

        every = await shop.deliveries(await shop.admin())
        page = (
            await shop.client.get("/api/v1/deliveries", headers=await shop.admin(), params={"limit": 1})
        ).json()
        rest = (
            await shop.client.get(
                "/api/v1/deliveries",
                headers=await shop.admin(),
                params={"limit": 1, "cursor": page["next_cursor"]},
            )
        ).json()

        assert [d["order_id"] for d in every] == [str(ada_order), str(eve_order)]
        assert page["items"] + rest["items"] == every
        assert rest["next_cursor"] is None


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-token"),
        pytest.param({"Authorization": "Bearer not.a.token"}, id="bad-token"),
    ],
)
async def test_deliveries_need_a_valid_token(open_shop: Any, headers: dict[str, str]) -> None:
    async with open_shop() as shop:
        listing = await shop.client.get("/api/v1/deliveries", headers=headers)
        event = await shop.move(str(uuid.uuid4()), "SHIPPED", headers=headers)

        shop.problem(listing, 401)
        shop.problem(event, 401)


async def test_when_orders_cannot_say_whose_order_it_is_the_list_is_what_delivery_knows(
    open_shop: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Orders unreachable (its breaker open, a timeout): an order delivery has no record of
    lists as empty, as an order that does not exist does; nothing about it leaks, no 5xx."""
    async with open_shop() as shop:
        ada, _ = await shop.customer()
        _, eve = await shop.customer()
        unpaid = await shop.pending_order(ada)
        bus = shop.shop.bus
        ask = bus.ask

        async def orders_away(message: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(message, GetOrderOwner):
                raise TimeoutError("orders did not answer")
            return await ask(message, *args, **kwargs)

        monkeypatch.setattr(bus, "ask", orders_away)
        response = await shop.client.get("/api/v1/deliveries", headers=eve, params={"order_id": str(unpaid)})

        assert response.status_code == 200, response.text
        assert response.json() == {"items": [], "next_cursor": None}
