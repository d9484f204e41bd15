"""The order saga with SHOP_PAYMENT_PROVIDER=stripe: `shop run`'s app takes its payments from a
local fake of Stripe (real HTTP on loopback), and the money on the fake's ledger is what the
orders say."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ..fakestripe import API_KEY, APPROVE, DECLINE, FakeStripe
from .conftest import Shopper

INTENTS = "/v1/payment_intents"


@pytest.fixture
def fake() -> Iterator[FakeStripe]:
    with FakeStripe() as fake:
        yield fake


@pytest.fixture
def shop_overrides(fake: FakeStripe) -> dict[str, Any]:
    return {"payment_provider": "stripe", "stripe_api_key": API_KEY, "stripe_api_base": fake.url}


async def place(shopper: Shopper, token: str) -> tuple[dict[str, str], str, str]:
    customer = await shopper.customer()
    address = await shopper.address(customer)
    product = await shopper.product(stock=5, price=1250)
    response = await shopper.place(customer, [(product, 2)], address, token=token)
    assert response.status_code == 202, response.text
    return customer, product, response.json()["id"]


async def test_an_order_paid_through_stripe_completes_with_its_total_captured_once(
    shopper: Shopper, fake: FakeStripe
) -> None:
    customer, product, order_id = await place(shopper, APPROVE)

    order = await shopper.settle(customer, order_id)

    assert (order["status"], order["failure_reason"]) == ("COMPLETED", None)
    assert await shopper.stock(product) == 3
    [payment] = await shopper.payments(customer, order_id)
    assert payment["status"] == "CAPTURED"
    [intent] = fake.intents.values()
    assert payment["provider_ref"] == intent["id"]
    assert (intent["amount"], intent["currency"], intent["status"]) == (2500, "eur", "succeeded")
    assert fake.captured_total == 2500
    [create] = fake.requests_to("POST", INTENTS)
    assert create.idempotency_key == f"shop:{payment['id']}:authorize:payment_intent.create"
    assert shopper.shop.breakers.states()["provider:stripe"] == "CLOSED"


async def test_a_card_stripe_declines_cancels_the_order_and_releases_the_stock(
    shopper: Shopper, fake: FakeStripe
) -> None:
    customer, product, order_id = await place(shopper, DECLINE)

    order = await shopper.settle(customer, order_id)

    assert (order["status"], order["failure_reason"]) == ("CANCELLED", "PAYMENT_DECLINED")
    assert await shopper.stock(product) == 5
    assert [p["status"] for p in await shopper.payments(customer, order_id)] == ["DECLINED"]
    assert (fake.authorized_total, fake.captured_total) == (0, 0)


async def test_cancelling_an_order_paid_through_stripe_refunds_it_at_stripe(
    shopper: Shopper, fake: FakeStripe
) -> None:
    customer, _product, order_id = await place(shopper, APPROVE)
    assert (await shopper.settle(customer, order_id))["status"] == "COMPLETED"
    await shopper.until(lambda: shopper.deliveries(customer, order_id), what="a delivery")

    cancelled = await shopper.client.post(f"/api/v1/orders/{order_id}/cancel", headers=customer)
    assert cancelled.status_code == 202

    async def refunded() -> bool:
        return [p["status"] for p in await shopper.payments(customer, order_id)] == ["REFUNDED"]

    await shopper.until(refunded, what="payment REFUNDED")
    assert (fake.captured_total, fake.refunded_total) == (2500, 2500)


async def test_an_authorization_whose_answer_is_lost_still_completes_the_order_charging_once(
    shopper: Shopper, fake: FakeStripe
) -> None:
    fake.drop(path=INTENTS)  # Stripe authorizes, the answer never arrives

    customer, _product, order_id = await place(shopper, APPROVE)

    assert (await shopper.settle(customer, order_id))["status"] == "COMPLETED"
    assert len(fake.requests_to("POST", INTENTS)) == 2  # the retry, with the same key
    assert len(fake.intents) == 1
    assert fake.captured_total == 2500
