"""The orders API: validation, idempotency keys, listing and who may see what."""

from __future__ import annotations

import uuid

import pytest

from .conftest import Shopper


async def test_placing_an_order_needs_a_token(shopper: Shopper) -> None:
    response = await shopper.client.post("/api/v1/orders", json={})
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("items", "field"),
    [
        ([], "items"),
        ([{"product_id": str(uuid.uuid4()), "quantity": 1}] * 101, "items"),
        ([{"product_id": str(uuid.uuid4()), "quantity": 0}], "quantity"),
        ([{"product_id": str(uuid.uuid4()), "quantity": 1001}], "quantity"),
        ([{"product_id": "not-a-uuid", "quantity": 1}], "product_id"),
        ([{"quantity": 1}], "product_id"),
    ],
)
async def test_an_invalid_order_is_400_with_the_field_named(
    shopper: Shopper, items: list[object], field: str
) -> None:
    customer = await shopper.customer()
    address = await shopper.address(customer)
    response = await shopper.client.post(
        "/api/v1/orders",
        headers=customer,
        json={"items": items, "address_id": address, "payment_token": "tok_ok"},
    )
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert any(field in error["field"] for error in response.json()["errors"])


async def test_malformed_json_is_400_not_500(shopper: Shopper) -> None:
    customer = await shopper.customer()
    response = await shopper.client.post(
        "/api/v1/orders", headers={**customer, "content-type": "application/json"}, content=b'{"items": ['
    )
    assert response.status_code == 400


async def test_the_same_idempotency_key_and_body_returns_the_first_order(shopper: Shopper) -> None:
    customer = await shopper.customer()
    address = await shopper.address(customer)
    product = await shopper.product(stock=10)
    first = await shopper.place(customer, [(product, 1)], address, key="key-1")
    second = await shopper.place(customer, [(product, 1)], address, key="key-1")
    assert first.status_code == 202
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    conflict = await shopper.place(customer, [(product, 2)], address, key="key-1")
    assert conflict.status_code == 409
    await shopper.settle(customer, first.json()["id"])
    assert await shopper.stock(product) == 9, "one order, not two"


async def test_an_idempotency_key_belongs_to_its_customer(shopper: Shopper) -> None:
    product = await shopper.product(stock=10)
    ann, bob = await shopper.customer(), await shopper.customer()
    anns = await shopper.place(ann, [(product, 1)], await shopper.address(ann), key="shared")
    bobs = await shopper.place(bob, [(product, 1)], await shopper.address(bob), key="shared")
    assert anns.status_code == bobs.status_code == 202
    assert anns.json()["id"] != bobs.json()["id"]


async def test_orders_list_the_callers_own_newest_first_with_pagination(shopper: Shopper) -> None:
    customer = await shopper.customer()
    address = await shopper.address(customer)
    product = await shopper.product(stock=10)
    placed = [(await shopper.place(customer, [(product, 1)], address)).json()["id"] for _ in range(3)]
    other = await shopper.customer()
    await shopper.place(other, [(product, 1)], await shopper.address(other))

    page1 = (await shopper.client.get("/api/v1/orders", params={"limit": 2}, headers=customer)).json()
    assert [o["id"] for o in page1["items"]] == placed[::-1][:2]
    page2 = (
        await shopper.client.get(
            "/api/v1/orders", params={"limit": 2, "cursor": page1["next_cursor"]}, headers=customer
        )
    ).json()
    assert [o["id"] for o in page2["items"]] == [placed[0]]
    assert page2["next_cursor"] is None


async def test_another_customer_gets_404_for_every_order_endpoint_while_an_admin_sees_it(
    shopper: Shopper,
) -> None:
    owner = await shopper.customer()
    product = await shopper.product(stock=10)
    order_id = (await shopper.place(owner, [(product, 1)], await shopper.address(owner))).json()["id"]
    await shopper.settle(owner, order_id)
    stranger = await shopper.customer()
    for method, path in (
        ("GET", f"/api/v1/orders/{order_id}"),
        ("GET", f"/api/v1/orders/{order_id}/timeline"),
        ("POST", f"/api/v1/orders/{order_id}/cancel"),
        ("GET", f"/api/v1/payments?order_id={order_id}"),
        ("GET", f"/api/v1/deliveries?order_id={order_id}"),
    ):
        response = await shopper.client.request(method, path, headers=stranger)
        assert response.status_code == 404, (method, path, response.status_code)
    assert (await shopper.client.get(f"/api/v1/orders/{order_id}", headers=shopper.admin)).status_code == 200
    assert (
        await shopper.client.get(f"/api/v1/orders/{order_id}/timeline", headers=shopper.admin)
    ).status_code == 200
    assert (await shopper.client.get(f"/api/v1/orders/{uuid.uuid4()}", headers=owner)).status_code == 404


async def test_operators_list_sagas_by_state(shopper: Shopper) -> None:
    customer = await shopper.customer()
    product = await shopper.product(stock=1)
    order_id = (await shopper.place(customer, [(product, 2)], await shopper.address(customer))).json()["id"]
    await shopper.settle(customer, order_id)
    failed = await shopper.client.get(
        "/api/v1/admin/sagas", params={"status": "FAILED"}, headers=shopper.admin
    )
    assert failed.status_code == 200
    assert order_id in [s["id"] for s in failed.json()["items"]]
    assert all(s["status"] == "FAILED" for s in failed.json()["items"])
    assert (await shopper.client.get("/api/v1/admin/sagas", headers=customer)).status_code == 403
