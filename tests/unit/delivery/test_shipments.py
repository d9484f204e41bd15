"""Delivery follows the order: a shipment once it is complete, to the address it was placed with."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
import sqlalchemy as sa

from shop.contracts.delivery import (
    CancelDelivery,
    DeliveryCancellation,
    DeliveryShipped,
    DeliveryStatusChanged,
)
from shop.contracts.orders import OrderCancelled
from shop.db import unit_of_work
from shop.modules.delivery.models import shipping_instructions

from ..shopharness import ADDRESS


async def test_a_completed_order_gets_one_delivery_to_its_address(open_shop: Any) -> None:
    async with open_shop() as shop:
        customer_id = uuid.uuid4()

        order_id, delivery = await shop.paid_order(customer_id)

        assert set(delivery) == {"id", "order_id", "status", "tracking_number", "address", "updated_at"}
        assert delivery["order_id"] == str(order_id)
        assert delivery["status"] == "PREPARING"
        assert delivery["tracking_number"] is None
        assert delivery["address"] == {
            "recipient": "Ada Lovelace",
            "line1": "12 St James's Square",
            "line2": None,
            "city": "London",
            "postal_code": "SW1Y 4JH",
            "country": "GB",
        }
        assert delivery["updated_at"].endswith(("Z", "+00:00"))
        changes = shop.published.of(DeliveryStatusChanged)
        assert [(c.order_id, c.status) for c in changes] == [(order_id, "PREPARING")]


async def test_an_order_completed_without_its_address_ships_to_the_one_kept_earlier(open_shop: Any) -> None:
    """An OrderCompleted from an orders version that did not carry the address: the shipping
    instruction an earlier delivery version kept from OrderAwaitingPayment is used."""
    async with open_shop() as shop:
        order_id, customer_id = uuid.uuid4(), uuid.uuid4()
        elsewhere = {**{f: getattr(ADDRESS, f) for f in ADDRESS.__struct_fields__}, "city": "Bath"}

        async def kept_earlier() -> None:
            async with unit_of_work(shop.shop.databases["delivery"]) as uow:
                await uow.session.execute(
                    shipping_instructions.insert().values(
                        order_id=order_id, customer_id=customer_id, created_at=sa.func.now(), **elsewhere
                    )
                )

        shop.run(kept_earlier)
        await shop.send(shop.completed(order_id, customer_id, address=None))

        delivery = await shop.eventually(lambda: shop.delivery_of(order_id))
        assert delivery["status"] == "PREPARING"
        assert delivery["address"]["city"] == "Bath"


async def test_an_order_completed_with_no_address_anywhere_fails_and_prepares_nothing(open_shop: Any) -> None:
    async with open_shop() as shop:
        order_id, customer_id = uuid.uuid4(), uuid.uuid4()
        await shop.admin()  # logged in up front: the retries do not wait for argon2
        failures = shop.failed("delivery.prepare_delivery", "orders.OrderCompleted.v1")

        await shop.send(shop.completed(order_id, customer_id, address=None))

        await shop.eventually(
            lambda: shop.failed("delivery.prepare_delivery", "orders.OrderCompleted.v1") > failures
        )
        assert await shop.delivery_of(order_id) is None


async def test_a_repeated_completion_prepares_only_one_delivery(open_shop: Any) -> None:
    async with open_shop() as shop:
        customer_id = uuid.uuid4()
        order_id, delivery = await shop.paid_order(customer_id)
        before = shop.handled("delivery.prepare_delivery", "orders.OrderCompleted.v1")

        await shop.send(shop.completed(order_id, customer_id), shop.completed(order_id, customer_id))
        await shop.eventually(
            lambda: shop.handled("delivery.prepare_delivery", "orders.OrderCompleted.v1") >= before + 2
        )

        assert await shop.deliveries(await shop.admin()) == [delivery]


@pytest.mark.parametrize(("token", "status"), [("tok_decline", "DECLINED"), ("tok_ok", "CAPTURED")])
async def test_a_payment_declined_or_captured_prepares_nothing_before_the_order_completes(
    open_shop: Any, token: str, status: str
) -> None:
    async with open_shop() as shop:
        order_id, customer_id = uuid.uuid4(), uuid.uuid4()

        await shop.send(shop.awaiting_payment(order_id, customer_id))
        await shop.send(shop.take_payment(order_id, customer_id, token))
        await shop.status_becomes(order_id, status)

        assert await shop.delivery_of(order_id) is None
        assert shop.published.of(DeliveryStatusChanged) == []


async def test_cancel_delivery_cancels_a_preparing_delivery(open_shop: Any) -> None:
    async with open_shop() as shop:
        order_id, _ = await shop.paid_order(uuid.uuid4())

        reply = await shop.ask(CancelDelivery(order_id=order_id))

        assert reply == DeliveryCancellation(order_id=order_id, cancelled=True, status="CANCELLED")
        assert (await shop.delivery_of(order_id) or {})["status"] == "CANCELLED"
        assert await shop.ask(CancelDelivery(order_id=order_id)) == reply  # and again: the same answer
        assert [c.status for c in shop.published.of(DeliveryStatusChanged)] == ["PREPARING", "CANCELLED"]


async def test_cancel_delivery_refuses_once_it_has_shipped(open_shop: Any) -> None:
    async with open_shop() as shop:
        order_id, delivery = await shop.paid_order(uuid.uuid4())
        assert (await shop.move(delivery["id"], "SHIPPED")).status_code == 200

        reply = await shop.ask(CancelDelivery(order_id=order_id))

        assert reply == DeliveryCancellation(order_id=order_id, cancelled=False, status="SHIPPED")
        assert (await shop.delivery_of(order_id) or {})["status"] == "SHIPPED"


async def test_cancel_delivery_before_any_delivery_means_none_is_ever_prepared(open_shop: Any) -> None:
    async with open_shop() as shop:
        order_id, customer_id = uuid.uuid4(), uuid.uuid4()
        await shop.send(shop.awaiting_payment(order_id, customer_id))

        reply = await shop.ask(CancelDelivery(order_id=order_id))
        before = shop.handled("delivery.prepare_delivery", "orders.OrderCompleted.v1")
        await shop.send(shop.completed(order_id, customer_id))  # a completion that lands late
        await shop.eventually(
            lambda: shop.handled("delivery.prepare_delivery", "orders.OrderCompleted.v1") > before
        )

        assert reply == DeliveryCancellation(order_id=order_id, cancelled=True, status=None)
        assert await shop.delivery_of(order_id) is None


async def test_a_cancelled_order_cancels_its_preparing_delivery(open_shop: Any) -> None:
    async with open_shop() as shop:
        customer_id = uuid.uuid4()
        order_id, _ = await shop.paid_order(customer_id)

        await shop.send(
            OrderCancelled(order_id=order_id, customer_id=customer_id, reason="CANCELLED_BY_CUSTOMER")
        )

        async def cancelled() -> bool:
            return (await shop.delivery_of(order_id) or {}).get("status") == "CANCELLED"

        await shop.eventually(cancelled)


async def test_shipping_sets_a_tracking_number_and_publishes_delivery_shipped(open_shop: Any) -> None:
    async with open_shop() as shop:
        order_id, delivery = await shop.paid_order(uuid.uuid4())

        response = await shop.move(delivery["id"], "SHIPPED")

        assert response.status_code == 200, response.text
        shipped = response.json()
        assert shipped["status"] == "SHIPPED"
        assert re.fullmatch(r"SHP[A-Z0-9]{12}", shipped["tracking_number"])
        assert shipped["updated_at"] >= delivery["updated_at"]
        assert await shop.eventually(lambda: shop.published.of(DeliveryShipped)) == [
            DeliveryShipped(
                delivery_id=uuid.UUID(delivery["id"]),
                order_id=order_id,
                tracking_number=shipped["tracking_number"],
            )
        ]
