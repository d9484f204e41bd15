"""The order saga end to end on `shop run`'s app: every outcome of API.md ends explained."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from .conftest import Shopper


async def journey(
    shopper: Shopper, *, stock: int = 5, quantity: int = 2, token: str = "tok_ok"
) -> tuple[dict[str, str], str, str, Any]:
    customer = await shopper.customer()
    address = await shopper.address(customer)
    product = await shopper.product(stock=stock, price=1250)
    response = await shopper.place(customer, [(product, quantity)], address, token=token)
    return customer, product, address, response


async def test_a_paid_order_completes_commits_stock_captures_once_and_prepares_a_delivery(
    shopper: Shopper,
) -> None:
    customer, product, _address, response = await journey(shopper, stock=5, quantity=2)
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "PENDING"
    assert response.headers["location"] == f"/api/v1/orders/{body['id']}"

    order = await shopper.settle(customer, body["id"])
    assert order["status"] == "COMPLETED"
    assert order["failure_reason"] is None
    assert order["total"] == 2500
    assert order["currency"] == "EUR"
    assert order["items"] == [
        {"product_id": product, "name": order["items"][0]["name"], "unit_price": 1250, "quantity": 2}
    ]
    assert await shopper.stock(product) == 3

    [payment] = await shopper.payments(customer, body["id"])
    assert payment["status"] == "CAPTURED"
    assert payment["amount"] == 2500

    async def prepared() -> list[dict[str, Any]]:
        return [d for d in await shopper.deliveries(customer, body["id"]) if d["status"] == "PREPARING"]

    [delivery] = await shopper.until(prepared, what="delivery PREPARING")
    assert delivery["address"]["city"] == "Berlin"

    timeline = (await shopper.client.get(f"/api/v1/orders/{body['id']}/timeline", headers=customer)).json()[
        "items"
    ]
    done = [entry["step"] for entry in timeline if entry["status"] == "DONE"]
    assert done == ["reserve_stock", "check_address", "take_payment", "complete"]
    assert all({"step", "status", "at"} <= set(entry) for entry in timeline)


async def test_ordering_more_than_the_stock_fails_out_of_stock_and_reserves_nothing(shopper: Shopper) -> None:
    customer, product, _address, response = await journey(shopper, stock=1, quantity=2)
    order = await shopper.settle(customer, response.json()["id"])
    assert (order["status"], order["failure_reason"]) == ("FAILED", "OUT_OF_STOCK")
    assert await shopper.stock(product) == 1
    assert await shopper.payments(customer, order["id"]) == []


async def test_an_unknown_product_fails_unknown_product(shopper: Shopper) -> None:
    customer = await shopper.customer()
    address = await shopper.address(customer)
    known = await shopper.product(stock=3)
    response = await shopper.place(customer, [(known, 1), (str(uuid.uuid4()), 1)], address)
    order = await shopper.settle(customer, response.json()["id"])
    assert (order["status"], order["failure_reason"]) == ("FAILED", "UNKNOWN_PRODUCT")
    assert await shopper.stock(known) == 3, "the known line was not left reserved"


async def test_another_customers_address_fails_invalid_address_and_releases_the_stock(
    shopper: Shopper,
) -> None:
    customer = await shopper.customer()
    stranger = await shopper.customer()
    strangers_address = await shopper.address(stranger)
    product = await shopper.product(stock=4)
    response = await shopper.place(customer, [(product, 3)], strangers_address)
    order = await shopper.settle(customer, response.json()["id"])
    assert (order["status"], order["failure_reason"]) == ("FAILED", "INVALID_ADDRESS")
    assert await shopper.stock(product) == 4
    timeline = (await shopper.client.get(f"/api/v1/orders/{order['id']}/timeline", headers=customer)).json()[
        "items"
    ]
    assert ("reserve_stock", "COMPENSATED") in [(e["step"], e["status"]) for e in timeline]


async def test_lines_priced_in_different_currencies_fail_mixed_currencies_charge_nothing_and_release_all(
    shopper: Shopper,
) -> None:
    customer = await shopper.customer()
    address = await shopper.address(customer)
    won = await shopper.product(stock=4, price=1000, currency="KRW")
    dollars = await shopper.product(stock=3, price=500, currency="USD")
    response = await shopper.place(customer, [(won, 1), (dollars, 2)], address)
    assert response.status_code == 202
    order = await shopper.settle(customer, response.json()["id"])
    assert (order["status"], order["failure_reason"]) == ("FAILED", "MIXED_CURRENCIES")
    assert (order["total"], order["currency"]) == (None, None), "no total across currencies"
    assert [(line["unit_price"], line["quantity"]) for line in order["items"]] == [(1000, 1), (500, 2)]
    assert await shopper.payments(customer, order["id"]) == [], "nothing was charged"
    assert (await shopper.stock(won), await shopper.stock(dollars)) == (4, 3), "every reservation released"
    assert await shopper.deliveries(customer, order["id"]) == []
    timeline = (await shopper.client.get(f"/api/v1/orders/{order['id']}/timeline", headers=customer)).json()[
        "items"
    ]
    steps = [(e["step"], e["status"]) for e in timeline]
    assert ("take_payment", "FAILED") in steps
    assert ("reserve_stock", "COMPENSATED") in steps


async def test_a_declined_payment_cancels_the_order_and_releases_the_stock(shopper: Shopper) -> None:
    customer, product, _address, response = await journey(shopper, stock=5, quantity=2, token="tok_decline")
    order = await shopper.settle(customer, response.json()["id"])
    assert (order["status"], order["failure_reason"]) == ("CANCELLED", "PAYMENT_DECLINED")
    assert await shopper.stock(product) == 5
    assert [p["status"] for p in await shopper.payments(customer, order["id"])] == ["DECLINED"]
    assert await shopper.deliveries(customer, order["id"]) == []


async def test_cancelling_a_completed_order_refunds_cancels_the_delivery_and_restocks(
    shopper: Shopper,
) -> None:
    customer, product, _address, response = await journey(shopper, stock=5, quantity=2)
    order_id = response.json()["id"]
    assert (await shopper.settle(customer, order_id))["status"] == "COMPLETED"
    await shopper.until(lambda: shopper.deliveries(customer, order_id), what="a delivery")

    cancelled = await shopper.client.post(f"/api/v1/orders/{order_id}/cancel", headers=customer)
    assert cancelled.status_code == 202

    async def cancelled_order() -> dict[str, Any] | None:
        order = await shopper.order(customer, order_id)
        return order if order["status"] == "CANCELLED" else None

    order = await shopper.until(cancelled_order, what="order CANCELLED")
    assert order["failure_reason"] == "CANCELLED_BY_CUSTOMER"
    assert [p["status"] for p in await shopper.payments(customer, order_id)] == ["REFUNDED"]
    assert [d["status"] for d in await shopper.deliveries(customer, order_id)] == ["CANCELLED"]
    assert await shopper.stock(product) == 5

    again = await shopper.client.post(f"/api/v1/orders/{order_id}/cancel", headers=customer)
    assert again.status_code == 409
    assert again.headers["content-type"].startswith("application/problem+json")


async def test_an_order_cannot_be_cancelled_once_its_delivery_has_shipped(shopper: Shopper) -> None:
    customer, product, _address, response = await journey(shopper, stock=5, quantity=1)
    order_id = response.json()["id"]
    await shopper.settle(customer, order_id)
    [delivery] = await shopper.until(lambda: shopper.deliveries(customer, order_id), what="a delivery")
    shipped = await shopper.client.post(
        f"/api/v1/deliveries/{delivery['id']}/events", headers=shopper.admin, json={"status": "SHIPPED"}
    )
    assert shipped.status_code == 200
    refused = await shopper.client.post(f"/api/v1/orders/{order_id}/cancel", headers=customer)
    assert refused.status_code == 409
    assert (await shopper.order(customer, order_id))["status"] == "COMPLETED"
    assert [p["status"] for p in await shopper.payments(customer, order_id)] == ["CAPTURED"]
    assert await shopper.stock(product) == 4


async def test_a_failed_order_cannot_be_cancelled(shopper: Shopper) -> None:
    customer, _product, _address, response = await journey(shopper, stock=1, quantity=5)
    order = await shopper.settle(customer, response.json()["id"])
    assert order["status"] == "FAILED"
    refused = await shopper.client.post(f"/api/v1/orders/{order['id']}/cancel", headers=customer)
    assert refused.status_code == 409


class TestPaymentDeadline:
    """SHOP_PAYMENT_DEADLINE_S short, so an unknown payment outcome times out quickly."""

    @pytest.fixture
    def shop_overrides(self) -> dict[str, Any]:
        return {"payment_deadline_s": 1.5}

    @pytest.mark.parametrize("token", ["tok_error", "tok_slow"])
    async def test_an_unknown_payment_outcome_ends_in_payment_timeout_with_nothing_charged(
        self, shopper: Shopper, token: str
    ) -> None:
        customer, product, _address, response = await journey(shopper, stock=5, quantity=2, token=token)
        order = await shopper.settle(customer, response.json()["id"], timeout=30)
        assert (order["status"], order["failure_reason"]) == ("CANCELLED", "PAYMENT_TIMEOUT")
        assert await shopper.stock(product) == 5
        statuses = [p["status"] for p in await shopper.payments(customer, order["id"])]
        assert "CAPTURED" not in statuses
        assert await shopper.deliveries(customer, order["id"]) == []

    async def test_the_customer_can_cancel_while_the_payment_is_pending(self, shopper: Shopper) -> None:
        customer, product, _address, response = await journey(shopper, stock=5, quantity=2, token="tok_slow")
        order_id = response.json()["id"]

        async def awaiting() -> bool:
            return (await shopper.order(customer, order_id))["status"] == "AWAITING_PAYMENT"

        await shopper.until(awaiting, what="AWAITING_PAYMENT")
        cancelled = await shopper.client.post(f"/api/v1/orders/{order_id}/cancel", headers=customer)
        assert cancelled.status_code == 202
        order = await shopper.settle(customer, order_id, timeout=30)
        assert (order["status"], order["failure_reason"]) == ("CANCELLED", "CANCELLED_BY_CUSTOMER")
        assert await shopper.stock(product) == 5


async def _kept_tokens(shopper: Shopper, order_id: str) -> tuple[str, dict[str, Any]]:
    """The payment token column of the order's row, and its saga's data."""
    import sqlalchemy as sa

    from shop.db import unit_of_work
    from shop.modules.orders.models import orders
    from shop.modules.orders.saga import OrderSagas

    async def read() -> tuple[str, dict[str, Any]]:
        database = shopper.shop.databases["orders"]
        async with unit_of_work(database, write=False) as uow:
            column = (
                await uow.session.execute(
                    sa.select(orders.c.payment_token).where(orders.c.id == uuid.UUID(order_id))
                )
            ).scalar_one()
        sagas = shopper.shop.bus.injector_for("orders").resolve(OrderSagas)
        state = await sagas.engine.get(uuid.UUID(order_id))
        return column, dict(state.data)

    return await read()


@pytest.mark.parametrize(("token", "stock", "final"), [("tok_ok", 5, "COMPLETED"), ("tok_ok", 0, "FAILED")])
async def test_the_payment_token_is_kept_only_until_the_payment_is_requested(
    shopper: Shopper, token: str, stock: int, final: str
) -> None:
    customer, _product, _address, response = await journey(shopper, stock=stock, quantity=1, token=token)
    order = await shopper.settle(customer, response.json()["id"])
    assert order["status"] == final
    column, data = await _kept_tokens(shopper, order["id"])
    assert column == ""
    assert "payment_token" not in data
    assert token not in str(data)


async def test_the_payment_token_is_dropped_once_take_payment_is_sent(shopper: Shopper) -> None:
    customer, _product, _address, response = await journey(shopper, stock=5, quantity=1, token="tok_slow")
    order_id = response.json()["id"]

    async def awaiting() -> bool:
        return (await shopper.order(customer, order_id))["status"] == "AWAITING_PAYMENT"

    await shopper.until(awaiting, what="AWAITING_PAYMENT")
    column, data = await _kept_tokens(shopper, order_id)
    assert (column, "payment_token" in data) == ("", False)
