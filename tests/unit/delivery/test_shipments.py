"""Delivery follows the order: the address when it awaits payment, a shipment once it is paid."""

from __future__ import annotations

import re
import uuid
from typing import Any

from shop.contracts.delivery import (
    CancelDelivery,
    DeliveryCancellation,
    DeliveryShipped,
    DeliveryStatusChanged,
)
from shop.contracts.orders import OrderCancelled
from shop.contracts.payments import PaymentCaptured


def _captured(order_id: uuid.UUID, customer_id: uuid.UUID) -> PaymentCaptured:
    return PaymentCaptured(
        payment_id=uuid.uuid4(),
        order_id=order_id,
        customer_id=customer_id,
        amount=12900,
        currency="EUR",
        provider_ref="sim_auth_test",
    )


async def test_a_captured_payment_prepares_one_delivery_to_the_orders_address(open_shop: Any) -> None:
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


async def test_a_declined_payment_prepares_no_delivery(open_shop: Any) -> None:
    async with open_shop() as shop:
        order_id, customer_id = uuid.uuid4(), uuid.uuid4()

        await shop.send(shop.awaiting_payment(order_id, customer_id))
        await shop.send(shop.take_payment(order_id, customer_id, "tok_decline"))
        await shop.status_becomes(order_id, "DECLINED")

        assert await shop.delivery_of(order_id) is None
        assert shop.published.of(DeliveryStatusChanged) == []


async def test_a_capture_heard_before_the_address_is_retried_until_the_address_arrives(
    open_shop: Any,
) -> None:
    async with open_shop() as shop:
        order_id, customer_id = uuid.uuid4(), uuid.uuid4()
        await shop.admin()  # logged in up front: the retries do not wait for argon2
        before = shop.handled("delivery.keep_shipping_address", "orders.OrderAwaitingPayment.v1")

        failures = shop.failed("delivery.prepare_delivery", "payments.PaymentCaptured.v1")
        await shop.send(_captured(order_id, customer_id))
        await shop.eventually(
            lambda: shop.failed("delivery.prepare_delivery", "payments.PaymentCaptured.v1") > failures
        )
        assert await shop.delivery_of(order_id) is None
        await shop.send(shop.awaiting_payment(order_id, customer_id))

        delivery = await shop.eventually(lambda: shop.delivery_of(order_id))
        assert delivery["status"] == "PREPARING"
        assert shop.handled("delivery.keep_shipping_address", "orders.OrderAwaitingPayment.v1") == before + 1


async def test_a_repeated_capture_prepares_only_one_delivery(open_shop: Any) -> None:
    async with open_shop() as shop:
        customer_id = uuid.uuid4()
        order_id, delivery = await shop.paid_order(customer_id)
        before = shop.handled("delivery.prepare_delivery", "payments.PaymentCaptured.v1")

        await shop.send(_captured(order_id, customer_id), _captured(order_id, customer_id))
        await shop.eventually(
            lambda: shop.handled("delivery.prepare_delivery", "payments.PaymentCaptured.v1") >= before + 2
        )

        assert await shop.deliveries(await shop.admin()) == [delivery]


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
        before = shop.handled("delivery.prepare_delivery", "payments.PaymentCaptured.v1")
        await shop.send(_captured(order_id, customer_id))  # a capture that lands late
        await shop.eventually(
            lambda: shop.handled("delivery.prepare_delivery", "payments.PaymentCaptured.v1") > before
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
