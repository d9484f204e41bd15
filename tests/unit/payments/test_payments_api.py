"""GET /api/v1/payments: the caller's own payments, an admin's view of all, and what nobody sees."""

from __future__ import annotations

import uuid
from typing import Any

import pytest


async def _paid(shop: Any, customer_id: uuid.UUID, amount: int = 12900) -> uuid.UUID:
    order_id = uuid.uuid4()
    await shop.send(shop.take_payment(order_id, customer_id, "tok_ok", amount=amount))
    await shop.status_becomes(order_id, "CAPTURED")
    return order_id


async def test_a_customer_sees_their_own_payments_in_the_documented_shape(open_shop: Any) -> None:
    async with open_shop() as shop:
        ada, ada_headers = await shop.customer()
        order_id = await _paid(shop, ada, 12900)

        mine = await shop.client.get("/api/v1/payments", headers=ada_headers)
        of_order = await shop.client.get(
            "/api/v1/payments", headers=ada_headers, params={"order_id": str(order_id)}
        )

        assert mine.status_code == 200
        body = mine.json()
        assert body["next_cursor"] is None
        [payment] = body["items"]
        assert set(payment) == {"id", "order_id", "amount", "currency", "status", "provider_ref"}
        assert payment["order_id"] == str(order_id)
        assert (payment["amount"], payment["currency"], payment["status"]) == (12900, "EUR", "CAPTURED")
        assert of_order.json() == body


async def test_another_customer_gets_404_for_that_order_and_an_empty_list_of_their_own(
    open_shop: Any,
) -> None:
    async with open_shop() as shop:
        ada, _ = await shop.customer()
        _, eve_headers = await shop.customer()
        order_id = await _paid(shop, ada)

        theirs = await shop.client.get(
            "/api/v1/payments", headers=eve_headers, params={"order_id": str(order_id)}
        )
        own = await shop.client.get("/api/v1/payments", headers=eve_headers)

        shop.problem(theirs, 404)
        assert str(order_id) not in theirs.text
        assert own.json() == {"items": [], "next_cursor": None}


async def test_an_order_payments_has_never_heard_of_is_an_empty_list(open_shop: Any) -> None:
    async with open_shop() as shop:
        _, headers = await shop.customer()

        response = await shop.client.get(
            "/api/v1/payments", headers=headers, params={"order_id": str(uuid.uuid4())}
        )

        assert response.json() == {"items": [], "next_cursor": None}


async def test_an_admin_sees_every_payment_and_any_order(open_shop: Any) -> None:
    async with open_shop() as shop:
        ada, _ = await shop.customer()
        eve, _ = await shop.customer()
        ada_order = await _paid(shop, ada)
        eve_order = await _paid(shop, eve)
        admin = await shop.admin()

        every = await shop.payments(admin)
        one = await shop.payments(admin, order_id=str(eve_order))

        assert {p["order_id"] for p in every} == {str(ada_order), str(eve_order)}
        assert [p["order_id"] for p in one] == [str(eve_order)]


async def test_the_list_pages_with_an_opaque_cursor(open_shop: Any) -> None:
    async with open_shop() as shop:
        ada, headers = await shop.customer()
        orders = [await _paid(shop, ada, amount) for amount in (100, 200, 300)]

        first = (await shop.client.get("/api/v1/payments", headers=headers, params={"limit": 2})).json()
        second = (
            await shop.client.get(
                "/api/v1/payments", headers=headers, params={"limit": 2, "cursor": first["next_cursor"]}
            )
        ).json()

        assert len(first["items"]) == 2
        assert first["next_cursor"]
        assert len(second["items"]) == 1
        assert second["next_cursor"] is None
        assert [p["order_id"] for p in first["items"] + second["items"]] == [str(o) for o in orders]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        pytest.param({"order_id": "not-a-uuid"}, "order_id", id="order-id"),
        pytest.param({"limit": 0}, "limit", id="limit-0"),
        pytest.param({"limit": 101}, "limit", id="limit-101"),
        pytest.param({"cursor": "garbage!"}, "cursor", id="cursor"),
    ],
)
async def test_bad_query_parameters_are_400_naming_them(
    open_shop: Any, params: dict[str, Any], field: str
) -> None:
    async with open_shop() as shop:
        _, headers = await shop.customer()

        response = await shop.client.get("/api/v1/payments", headers=headers, params=params)

        body = shop.problem(response, 400)
        assert field in {e["field"] for e in body["errors"]}


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-token"),
        pytest.param({"Authorization": "Bearer not.a.token"}, id="bad-token"),
    ],
)
async def test_payments_need_a_valid_token(open_shop: Any, headers: dict[str, str]) -> None:
    async with open_shop() as shop:
        response = await shop.client.get("/api/v1/payments", headers=headers)

        shop.problem(response, 401)
