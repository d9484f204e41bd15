"""Cursors a client forged are refused at the edge (400 naming `cursor`), never raised inside a
handler: no 500, and no failure counted against the orders module's breakers."""

from __future__ import annotations

import base64
import uuid

import pytest

from shop.web.pagination import encode_cursor

from .conftest import Shopper

PROBLEM_JSON = "application/problem+json"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


KEYSET_FORGERIES = [
    pytest.param(encode_cursor("not-a-date", str(uuid.uuid4())), id="bad-date"),
    pytest.param(encode_cursor("2026-01-01T00:00:00+00:00", "not-a-uuid"), id="bad-id"),
    pytest.param(encode_cursor("0001-01-01T00:00:00+01:00", str(uuid.uuid4())), id="before-year-1-in-utc"),
    pytest.param(encode_cursor("2026-01-01T00:00:00", str(uuid.uuid4())), id="naive-date"),
    pytest.param(encode_cursor(1, 2), id="numbers"),
    pytest.param(encode_cursor(None, None), id="nulls"),
    pytest.param(encode_cursor(["x"], {"y": 1}), id="containers"),
    pytest.param(encode_cursor("only-one"), id="wrong-arity"),
    pytest.param(_b64(b"\xff\xfe"), id="not-json"),
    pytest.param("%%%", id="not-base64"),
]
OFFSET_FORGERIES = [
    pytest.param(encode_cursor("ten"), id="word"),
    pytest.param(encode_cursor(-5), id="negative"),
    pytest.param(encode_cursor(1.5), id="float"),
    pytest.param(encode_cursor(True), id="bool"),
    pytest.param(encode_cursor(10**30), id="huge"),
]
ID_FORGERIES = [
    pytest.param(encode_cursor("not-a-uuid"), id="bad-id"),
    pytest.param(encode_cursor(7), id="number"),
]


def _refused(response: object) -> None:
    status = getattr(response, "status_code", None)
    assert status == 400, getattr(response, "text", response)
    assert response.headers["content-type"].startswith(PROBLEM_JSON)  # type: ignore[attr-defined]
    assert "cursor" in {e["field"] for e in response.json()["errors"]}  # type: ignore[attr-defined]


@pytest.mark.parametrize("cursor", KEYSET_FORGERIES)
async def test_a_forged_orders_cursor_is_400_naming_the_cursor(shopper: Shopper, cursor: str) -> None:
    customer = await shopper.customer()
    _refused(await shopper.client.get("/api/v1/orders", params={"cursor": cursor}, headers=customer))


@pytest.mark.parametrize("cursor", OFFSET_FORGERIES)
async def test_a_forged_timeline_cursor_is_400_naming_the_cursor(shopper: Shopper, cursor: str) -> None:
    customer = await shopper.customer()
    address = await shopper.address(customer)
    product = await shopper.product()
    order_id = (await shopper.place(customer, [(product, 1)], address)).json()["id"]
    response = await shopper.client.get(
        f"/api/v1/orders/{order_id}/timeline", params={"cursor": cursor}, headers=customer
    )
    _refused(response)


@pytest.mark.parametrize("cursor", ID_FORGERIES + OFFSET_FORGERIES[:1])
async def test_a_forged_saga_list_cursor_is_400_naming_the_cursor(shopper: Shopper, cursor: str) -> None:
    _refused(
        await shopper.client.get("/api/v1/admin/sagas", params={"cursor": cursor}, headers=shopper.admin)
    )


async def test_a_flood_of_forged_cursors_leaves_the_orders_breakers_closed_and_orders_readable(
    shopper: Shopper,
) -> None:
    customer = await shopper.customer()
    forged = encode_cursor("not-a-date", "not-a-uuid")
    for _ in range(60):  # more than the module breakers' minimum number of calls (20)
        _refused(await shopper.client.get("/api/v1/orders", params={"cursor": forged}, headers=customer))

    listed = await shopper.client.get("/api/v1/orders", headers=customer)
    assert listed.status_code == 200, listed.text
    services = (await shopper.client.get("/api/v1/services", headers=shopper.admin)).json()
    opened = {name: state for name, state in services["breakers"].items() if state != "CLOSED"}
    assert opened == {}


async def test_a_cursor_of_ours_still_pages_the_orders(shopper: Shopper) -> None:
    customer = await shopper.customer()
    address = await shopper.address(customer)
    product = await shopper.product(stock=10)
    placed = [(await shopper.place(customer, [(product, 1)], address)).json()["id"] for _ in range(3)]

    first = (await shopper.client.get("/api/v1/orders", params={"limit": 2}, headers=customer)).json()
    rest = (
        await shopper.client.get(
            "/api/v1/orders", params={"limit": 2, "cursor": first["next_cursor"]}, headers=customer
        )
    ).json()

    assert [o["id"] for o in first["items"] + rest["items"]] == list(reversed(placed))
    assert rest["next_cursor"] is None
