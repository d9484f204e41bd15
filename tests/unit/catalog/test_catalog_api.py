"""The catalog's HTTP API through `shop run`'s app: products, categories, stock, and their errors."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import pytest

from shop.contracts.catalog import Line, ReserveStock, StockReserved

PRODUCT_KEYS = {"id", "sku", "name", "description", "price", "currency", "category", "stock_available"}
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"


async def _reserve(api: Any, product_id: str, quantity: int) -> None:
    reply = await api.bus.ask(
        ReserveStock(
            reservation_id=uuid.uuid4(),
            order_id=uuid.uuid4(),
            lines=(Line(product_id=uuid.UUID(product_id), quantity=quantity),),
        )
    )
    assert isinstance(reply, StockReserved), reply


# -- creating ----------------------------------------------------------------------------------


async def test_an_admin_creates_a_product_201_with_its_location_and_json(shop_api: Any) -> None:
    response = await shop_api.client.post(
        "/api/v1/products",
        json={
            "sku": "TEA-1",
            "name": "Teapot",
            "description": "Holds tea",
            "price": 12900,
            "currency": "EUR",
            "category": "kitchen",
            "stock": 7,
        },
        headers=shop_api.admin,
    )

    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == PRODUCT_KEYS
    assert body == {
        "id": body["id"],
        "sku": "TEA-1",
        "name": "Teapot",
        "description": "Holds tea",
        "price": 12900,
        "currency": "EUR",
        "category": "kitchen",
        "stock_available": 7,
    }
    uuid.UUID(body["id"])
    assert response.headers["location"] == f"/api/v1/products/{body['id']}"
    fetched = await shop_api.client.get(response.headers["location"])
    assert fetched.json() == body


async def test_optional_fields_default_and_the_currency_is_upper_cased(shop_api: Any) -> None:
    response = await shop_api.client.post(
        "/api/v1/products",
        json={"sku": " MUG-1 ", "name": " Mug ", "price": 0, "currency": "usd", "stock": 0},
        headers=shop_api.admin,
    )

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["sku"] == "MUG-1"
    assert body["name"] == "Mug"
    assert body["description"] == ""
    assert body["category"] is None
    assert body["currency"] == "USD"
    assert body["price"] == 0
    assert body["stock_available"] == 0


async def test_a_duplicate_sku_is_409_and_the_first_product_stays(shop_api: Any) -> None:
    first = await shop_api.create(sku="DUP-1", name="First")

    response = await shop_api.client.post(
        "/api/v1/products",
        json={"sku": "DUP-1", "name": "Second", "price": 1, "currency": "EUR", "stock": 1},
        headers=shop_api.admin,
    )

    shop_api.problem(response, 409)
    listed = (await shop_api.client.get("/api/v1/products")).json()["items"]
    assert [p["name"] for p in listed] == ["First"]
    assert listed[0]["id"] == first["id"]


GOOD = {"sku": "OK-1", "name": "Thing", "price": 100, "currency": "EUR", "stock": 1}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        pytest.param({"price": -1}, "price", id="negative-price"),
        pytest.param({"price": 1.5}, "price", id="float-price"),
        pytest.param({"price": "a lot"}, "price", id="word-price"),
        pytest.param({"currency": "XYZ"}, "currency", id="unknown-currency"),
        pytest.param({"currency": "EURO"}, "currency", id="four-letter-currency"),
        pytest.param({"currency": "E1R"}, "currency", id="digit-currency"),
        pytest.param({"currency": ""}, "currency", id="empty-currency"),
        pytest.param({"stock": -1}, "stock", id="negative-stock"),
        pytest.param({"sku": ""}, "sku", id="empty-sku"),
        pytest.param({"sku": "   "}, "sku", id="blank-sku"),
        pytest.param({"name": ""}, "name", id="empty-name"),
        pytest.param({"name": "  "}, "name", id="blank-name"),
        pytest.param({"name": None}, "name", id="null-name"),
        pytest.param({"category": "  "}, "category", id="blank-category"),
        pytest.param({"price": 10**30}, "price", id="huge-price"),
    ],
)
async def test_a_bad_product_field_is_400_naming_it_and_nothing_is_created(
    shop_api: Any, changes: dict[str, Any], field: str
) -> None:
    response = await shop_api.client.post(
        "/api/v1/products", json={**GOOD, **changes}, headers=shop_api.admin
    )

    assert field in shop_api.fields(response)
    assert (await shop_api.client.get("/api/v1/products")).json()["items"] == []


@pytest.mark.parametrize("missing", ["sku", "name", "price", "currency", "stock"])
async def test_a_missing_required_field_is_400_naming_it(shop_api: Any, missing: str) -> None:
    body = {k: v for k, v in GOOD.items() if k != missing}

    response = await shop_api.client.post("/api/v1/products", json=body, headers=shop_api.admin)

    assert shop_api.fields(response) == {missing}


async def test_malformed_json_is_400_naming_the_body(shop_api: Any) -> None:
    response = await shop_api.client.post(
        "/api/v1/products",
        content=b'{"sku": "A", ',
        headers={**shop_api.admin, "content-type": "application/json"},
    )

    assert shop_api.fields(response) == {"body"}


# -- who may write ---------------------------------------------------------------------------


def _admin_calls(product_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        ("POST", "/api/v1/products", GOOD),
        ("PATCH", f"/api/v1/products/{product_id}", {"name": "New"}),
        ("POST", f"/api/v1/products/{product_id}/stock", {"delta": 5}),
    ]


async def test_the_admin_endpoints_are_401_without_a_token(shop_api: Any) -> None:
    product = await shop_api.create()

    for method, path, body in _admin_calls(product["id"]):
        response = await shop_api.client.request(method, path, json=body)
        shop_api.problem(response, 401)
    for method, path, body in _admin_calls(product["id"]):
        response = await shop_api.client.request(
            method, path, json=body, headers={"Authorization": "Bearer not-a-token"}
        )
        shop_api.problem(response, 401)

    assert (await shop_api.client.get(f"/api/v1/products/{product['id']}")).json() == product


async def test_the_admin_endpoints_are_403_for_a_customer(shop_api: Any) -> None:
    product = await shop_api.create()
    customer = await shop_api.customer()

    for method, path, body in _admin_calls(product["id"]):
        response = await shop_api.client.request(method, path, json=body, headers=customer)
        shop_api.problem(response, 403)

    assert (await shop_api.client.get(f"/api/v1/products/{product['id']}")).json() == product
    assert len((await shop_api.client.get("/api/v1/products")).json()["items"]) == 1


async def test_reading_needs_no_token(shop_api: Any) -> None:
    product = await shop_api.create(category="tea")

    for path in ("/api/v1/products", f"/api/v1/products/{product['id']}", "/api/v1/categories"):
        assert (await shop_api.client.get(path)).status_code == 200, path


# -- reading one -------------------------------------------------------------------------------


async def test_an_unknown_product_is_a_404_problem(shop_api: Any) -> None:
    response = await shop_api.client.get(f"/api/v1/products/{UNKNOWN_ID}")

    shop_api.problem(response, 404)


@pytest.mark.parametrize("raw", ["not-a-uuid", "123", "00000000-0000-0000-0000-00000000000Z"])
async def test_a_product_id_that_is_not_a_uuid_is_a_404_or_400_problem_never_500(
    shop_api: Any, raw: str
) -> None:
    admin = shop_api.admin
    responses = [
        await shop_api.client.get(f"/api/v1/products/{raw}"),
        await shop_api.client.patch(f"/api/v1/products/{raw}", json={"name": "x"}, headers=admin),
        await shop_api.client.post(f"/api/v1/products/{raw}/stock", json={"delta": 1}, headers=admin),
    ]

    for response in responses:
        assert response.status_code in (400, 404), response.text
        assert response.headers["content-type"].startswith("application/problem+json")


# -- listing -----------------------------------------------------------------------------------


async def test_products_are_paged_oldest_first_across_three_pages(shop_api: Any) -> None:
    created = [await shop_api.create(name=f"P{n}") for n in range(5)]

    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        response = await shop_api.client.get("/api/v1/products", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"items", "next_cursor"}
        pages.append([p["id"] for p in body["items"]])
        cursor = body["next_cursor"]
        if cursor is None:
            break

    assert pages == [
        [created[0]["id"], created[1]["id"]],
        [created[2]["id"], created[3]["id"]],
        [created[4]["id"]],
    ]
    first = (await shop_api.client.get("/api/v1/products", params={"limit": 2})).json()["items"][0]
    assert first == created[0]


async def test_an_exactly_full_last_page_has_no_next_cursor(shop_api: Any) -> None:
    for n in range(2):
        await shop_api.create(name=f"P{n}")

    body = (await shop_api.client.get("/api/v1/products", params={"limit": 2})).json()

    assert len(body["items"]) == 2
    assert body["next_cursor"] is None


async def test_the_default_page_is_twenty_products(shop_api: Any) -> None:
    for n in range(21):
        await shop_api.create(name=f"P{n}")

    body = (await shop_api.client.get("/api/v1/products")).json()

    assert len(body["items"]) == 20
    assert body["next_cursor"] is not None
    rest = (await shop_api.client.get("/api/v1/products", params={"cursor": body["next_cursor"]})).json()
    assert [p["name"] for p in rest["items"]] == ["P20"]
    assert rest["next_cursor"] is None


async def test_the_category_filter_lists_only_that_category_and_pages_within_it(shop_api: Any) -> None:
    teas = [await shop_api.create(name=f"Tea {n}", category="tea") for n in range(3)]
    await shop_api.create(name="Mug", category="cups")
    await shop_api.create(name="Loose")

    first = (await shop_api.client.get("/api/v1/products", params={"category": "tea", "limit": 2})).json()
    second = (
        await shop_api.client.get(
            "/api/v1/products", params={"category": "tea", "limit": 2, "cursor": first["next_cursor"]}
        )
    ).json()
    none = (await shop_api.client.get("/api/v1/products", params={"category": "nothing"})).json()

    assert [p["id"] for p in first["items"] + second["items"]] == [t["id"] for t in teas]
    assert second["next_cursor"] is None
    assert none == {"items": [], "next_cursor": None}


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        pytest.param("not a cursor!", id="garbage"),
        pytest.param(_b64(b"[1, 2, 3]"), id="wrong-arity"),
        pytest.param(_b64(b'["yesterday", "x"]'), id="not-a-time"),
        pytest.param(_b64(b'["2026-01-01T00:00:00+00:00", "not-a-uuid"]'), id="not-a-uuid"),
        pytest.param(_b64(b'["2026-01-01T00:00:00", "' + UNKNOWN_ID.encode() + b'"]'), id="naive-time"),
        pytest.param(
            _b64(b'["0001-01-01T00:00:00+01:00", "' + UNKNOWN_ID.encode() + b'"]'), id="before-year-1"
        ),
        pytest.param(_b64(b'["9999-12-31T23:59:59-01:00", "' + UNKNOWN_ID.encode() + b'"]'), id="after-9999"),
        pytest.param(_b64(b"[null, null]"), id="nulls"),
        pytest.param(_b64(b'{"a": 1}'), id="object"),
        pytest.param(_b64(b"\xff\xfe"), id="not-json"),
    ],
)
async def test_a_forged_cursor_is_400_naming_the_cursor(shop_api: Any, cursor: str) -> None:
    for path in ("/api/v1/products", "/api/v1/categories"):
        response = await shop_api.client.get(path, params={"cursor": cursor})
        assert "cursor" in shop_api.fields(response), path


@pytest.mark.parametrize("limit", ["0", "101", "-1", "ten"])
async def test_a_limit_outside_1_to_100_is_400_naming_the_limit(shop_api: Any, limit: str) -> None:
    for path in ("/api/v1/products", "/api/v1/categories"):
        response = await shop_api.client.get(path, params={"limit": limit})
        assert shop_api.fields(response) == {"limit"}, path


async def test_the_list_shows_what_is_available_after_reservations(shop_api: Any) -> None:
    product = await shop_api.create(stock=10)
    await _reserve(shop_api, product["id"], 4)

    listed = (await shop_api.client.get("/api/v1/products")).json()["items"]
    one = (await shop_api.client.get(f"/api/v1/products/{product['id']}")).json()

    assert listed[0]["stock_available"] == 6
    assert one["stock_available"] == 6


# -- categories --------------------------------------------------------------------------------


async def test_categories_are_the_distinct_categories_with_their_product_counts(shop_api: Any) -> None:
    for name, category in [("a", "tea"), ("b", "cups"), ("c", "tea"), ("d", None), ("e", "books")]:
        await shop_api.create(name=name, category=category)

    response = await shop_api.client.get("/api/v1/categories")

    assert response.status_code == 200
    assert response.json() == {
        "items": [
            {"name": "books", "product_count": 1},
            {"name": "cups", "product_count": 1},
            {"name": "tea", "product_count": 2},
        ],
        "next_cursor": None,
    }


async def test_no_products_no_categories(shop_api: Any) -> None:
    assert (await shop_api.client.get("/api/v1/categories")).json() == {"items": [], "next_cursor": None}


async def test_categories_are_paged(shop_api: Any) -> None:
    for category in ["e", "a", "d", "b", "c"]:
        await shop_api.create(category=category)

    names: list[list[str]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        body = (await shop_api.client.get("/api/v1/categories", params=params)).json()
        names.append([c["name"] for c in body["items"]])
        cursor = body["next_cursor"]
        if cursor is None:
            break

    assert names == [["a", "b"], ["c", "d"], ["e"]]


# -- changing ----------------------------------------------------------------------------------


async def test_patch_changes_only_the_fields_given(shop_api: Any) -> None:
    product = await shop_api.create(name="Old", description="old", price=100, category="tea")
    path = f"/api/v1/products/{product['id']}"

    renamed = await shop_api.client.patch(path, json={"name": "New"}, headers=shop_api.admin)
    repriced = await shop_api.client.patch(
        path, json={"price": 250, "description": "fresh", "category": "cups"}, headers=shop_api.admin
    )

    assert renamed.status_code == 200, renamed.text
    assert renamed.json() == {**product, "name": "New"}
    assert repriced.status_code == 200, repriced.text
    expected = {**product, "name": "New", "price": 250, "description": "fresh", "category": "cups"}
    assert repriced.json() == expected
    assert (await shop_api.client.get(path)).json() == expected


async def test_patch_with_null_category_removes_it(shop_api: Any) -> None:
    product = await shop_api.create(category="tea")

    response = await shop_api.client.patch(
        f"/api/v1/products/{product['id']}", json={"category": None}, headers=shop_api.admin
    )

    assert response.json()["category"] is None
    assert (await shop_api.client.get("/api/v1/categories")).json()["items"] == []


async def test_patch_with_an_empty_body_changes_nothing(shop_api: Any) -> None:
    product = await shop_api.create(category="tea")
    path = f"/api/v1/products/{product['id']}"

    empty_object = await shop_api.client.patch(path, json={}, headers=shop_api.admin)
    no_body = await shop_api.client.patch(path, headers=shop_api.admin)

    assert empty_object.status_code == 200, empty_object.text
    assert empty_object.json() == product
    assert no_body.status_code == 200, no_body.text
    assert no_body.json() == product


async def test_patch_of_an_unknown_product_is_404(shop_api: Any) -> None:
    for body in ({"name": "x"}, {}):
        response = await shop_api.client.patch(
            f"/api/v1/products/{UNKNOWN_ID}", json=body, headers=shop_api.admin
        )
        shop_api.problem(response, 404)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({"price": -5}, "price", id="negative-price"),
        pytest.param({"name": ""}, "name", id="empty-name"),
        pytest.param({"name": "   "}, "name", id="blank-name"),
        pytest.param({"name": None}, "name", id="null-name"),
        pytest.param({"category": ""}, "category", id="empty-category"),
        pytest.param({"description": None}, "description", id="null-description"),
    ],
)
async def test_patch_with_a_bad_value_is_400_and_changes_nothing(
    shop_api: Any, body: dict[str, Any], field: str
) -> None:
    product = await shop_api.create()
    path = f"/api/v1/products/{product['id']}"

    response = await shop_api.client.patch(
        path, json={"description": "changed", **body}, headers=shop_api.admin
    )

    assert field in shop_api.fields(response)
    assert (await shop_api.client.get(path)).json() == product


async def test_patch_refuses_fields_it_cannot_change(shop_api: Any) -> None:
    product = await shop_api.create()
    path = f"/api/v1/products/{product['id']}"

    for body in ({"sku": "OTHER"}, {"stock_available": 99}, {"currency": "USD"}):
        response = await shop_api.client.patch(path, json=body, headers=shop_api.admin)
        shop_api.problem(response, 400)

    assert (await shop_api.client.get(path)).json() == product


# -- stock -------------------------------------------------------------------------------------


async def test_restock_and_write_off_change_the_stock_available(shop_api: Any) -> None:
    product = await shop_api.create(stock=10)
    path = f"/api/v1/products/{product['id']}/stock"

    restocked = await shop_api.client.post(path, json={"delta": 5}, headers=shop_api.admin)
    written_off = await shop_api.client.post(path, json={"delta": -12}, headers=shop_api.admin)
    nothing = await shop_api.client.post(path, json={"delta": 0}, headers=shop_api.admin)

    assert restocked.status_code == 200, restocked.text
    assert restocked.json() == {**product, "stock_available": 15}
    assert written_off.status_code == 200, written_off.text
    assert written_off.json()["stock_available"] == 3
    assert nothing.status_code == 200
    assert nothing.json()["stock_available"] == 3


async def test_a_write_off_below_what_is_reserved_is_409_and_changes_nothing(shop_api: Any) -> None:
    product = await shop_api.create(stock=10)
    await _reserve(shop_api, product["id"], 6)
    path = f"/api/v1/products/{product['id']}/stock"

    too_much = await shop_api.client.post(path, json={"delta": -5}, headers=shop_api.admin)

    body = shop_api.problem(too_much, 409)
    assert "reserved" in body["detail"]
    assert (await shop_api.client.get(f"/api/v1/products/{product['id']}")).json()["stock_available"] == 4
    # exactly down to what is reserved is allowed
    exact = await shop_api.client.post(path, json={"delta": -4}, headers=shop_api.admin)
    assert exact.status_code == 200, exact.text
    assert exact.json()["stock_available"] == 0


async def test_a_write_off_below_zero_is_409(shop_api: Any) -> None:
    product = await shop_api.create(stock=3)
    path = f"/api/v1/products/{product['id']}/stock"

    response = await shop_api.client.post(path, json={"delta": -4}, headers=shop_api.admin)

    shop_api.problem(response, 409)
    assert (await shop_api.client.get(f"/api/v1/products/{product['id']}")).json() == product


async def test_stock_of_an_unknown_product_is_404(shop_api: Any) -> None:
    for delta in (5, -5):
        response = await shop_api.client.post(
            f"/api/v1/products/{UNKNOWN_ID}/stock", json={"delta": delta}, headers=shop_api.admin
        )
        shop_api.problem(response, 404)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({}, id="missing"),
        pytest.param({"delta": 1.5}, id="float"),
        pytest.param({"delta": None}, id="null"),
        pytest.param({"delta": 10**30}, id="huge"),
    ],
)
async def test_a_bad_delta_is_400_naming_it(shop_api: Any, body: dict[str, Any]) -> None:
    product = await shop_api.create()

    response = await shop_api.client.post(
        f"/api/v1/products/{product['id']}/stock", json=body, headers=shop_api.admin
    )

    assert shop_api.fields(response) == {"delta"}


async def test_the_openapi_document_describes_the_catalog(shop_api: Any) -> None:
    paths = (await shop_api.client.get("/schema/openapi.json")).json()["paths"]

    assert {"/api/v1/products", "/api/v1/products/{product_id}", "/api/v1/categories"} <= set(paths)
    assert {"get", "patch"} <= set(paths["/api/v1/products/{product_id}"])
    assert "/api/v1/products/{product_id}/stock" in paths
