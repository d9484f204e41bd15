"""The order saga end to end on PostgreSQL: `shop run`'s app with every module in its own schema.

Each test starts the app on a database of this module's own on the test server (other test
runs drop and recreate module schemas in the shared test database), with the five module
schemas dropped before and after; the app migrates them on start. Then, over HTTP: a paid order
completes (stock committed, payment captured, delivery preparing), an order beyond the stock
fails OUT_OF_STOCK, a declined card cancels PAYMENT_DECLINED, and cancelling a completed order
refunds, restocks and cancels the delivery. The rows are checked in PostgreSQL itself too.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from shop.app import create_app
from shop.settings import RateLimit, Settings

from .apphost import drop_module_schemas, pg_execute, pg_rows, private_database, serving

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(240)]

ADMIN = {"email": "admin@example.com", "password": "adminpassword"}
FINAL = ("COMPLETED", "FAILED", "CANCELLED")
SETTLE_TIMEOUT_S = 60.0
PRICE = 1250


# -- PostgreSQL: a database of this module's own, its module schemas dropped around each test --


@pytest.fixture(scope="module")
def private_postgres_url(postgres_url: str) -> Iterator[str]:
    with private_database(postgres_url, f"shop_test_order_saga_{os.getpid()}") as url:
        yield url


@pytest.fixture
async def database_url(private_postgres_url: str) -> AsyncIterator[str]:
    await pg_execute(private_postgres_url, *drop_module_schemas())
    try:
        yield private_postgres_url
    finally:
        await pg_execute(private_postgres_url, *drop_module_schemas())


# -- the app on this test's event loop, and a client with the order journey's shortcuts ------


async def until(check: Callable[[], Awaitable[Any]], *, timeout: float = SETTLE_TIMEOUT_S, what: str) -> Any:
    """Poll `check` until it returns something truthy (returned), within a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s (last: {value!r})")
        await asyncio.sleep(0.05)


@dataclass
class Shopper:
    client: httpx.AsyncClient
    database_url: str
    admin: dict[str, str] = field(default_factory=dict)

    async def login(self, email: str, password: str) -> dict[str, str]:
        response = await self.client.post("/api/v1/auth/token", json={"email": email, "password": password})
        assert response.status_code == 200, response.text
        return {"Authorization": f"Bearer {response.json()['access_token']}"}

    async def customer(self) -> tuple[dict[str, str], str]:
        """A signed-in customer and an address of theirs."""
        email = f"pg-{uuid.uuid4().hex[:10]}@example.com"
        response = await self.client.post(
            "/api/v1/users", json={"email": email, "password": "password123", "name": "Pg Customer"}
        )
        assert response.status_code == 201, response.text
        headers = await self.login(email, "password123")
        address = await self.client.post(
            "/api/v1/users/me/addresses",
            headers=headers,
            json={
                "recipient": "Pg Customer",
                "line1": "Main 1",
                "city": "Berlin",
                "postal_code": "10115",
                "country": "DE",
            },
        )
        assert address.status_code == 201, address.text
        return headers, str(address.json()["id"])

    async def product(self, stock: int) -> str:
        response = await self.client.post(
            "/api/v1/products",
            headers=self.admin,
            json={
                "sku": f"PG-{uuid.uuid4().hex[:10]}",
                "name": "Postgres widget",
                "price": PRICE,
                "currency": "EUR",
                "category": "pg",
                "stock": stock,
            },
        )
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    async def stock(self, product_id: str) -> int:
        response = await self.client.get(f"/api/v1/products/{product_id}")
        assert response.status_code == 200, response.text
        return int(response.json()["stock_available"])

    async def place(
        self, headers: dict[str, str], product_id: str, quantity: int, address_id: str, token: str
    ) -> str:
        response = await self.client.post(
            "/api/v1/orders",
            headers=headers,
            json={
                "items": [{"product_id": product_id, "quantity": quantity}],
                "address_id": address_id,
                "payment_token": token,
            },
        )
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "PENDING"
        return str(response.json()["id"])

    async def order(self, headers: dict[str, str], order_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/api/v1/orders/{order_id}", headers=headers)
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def settle(self, headers: dict[str, str], order_id: str) -> dict[str, Any]:
        async def final() -> dict[str, Any] | None:
            order = await self.order(headers, order_id)
            return order if order["status"] in FINAL else None

        result: dict[str, Any] = await until(final, what=f"order {order_id} final")
        return result

    async def payments(self, headers: dict[str, str], order_id: str) -> list[dict[str, Any]]:
        response = await self.client.get("/api/v1/payments", params={"order_id": order_id}, headers=headers)
        assert response.status_code == 200, response.text
        return list(response.json()["items"])

    async def deliveries(self, headers: dict[str, str], order_id: str) -> list[dict[str, Any]]:
        response = await self.client.get("/api/v1/deliveries", params={"order_id": order_id}, headers=headers)
        assert response.status_code == 200, response.text
        return list(response.json()["items"])

    async def timeline(self, headers: dict[str, str], order_id: str) -> list[tuple[str, str]]:
        response = await self.client.get(f"/api/v1/orders/{order_id}/timeline", headers=headers)
        assert response.status_code == 200, response.text
        return [(e["step"], e["status"]) for e in response.json()["items"]]

    async def rows(self, query: str, *args: Any) -> list[dict[str, Any]]:
        """Straight from PostgreSQL: proof the data lives in the module schemas there."""
        return await pg_rows(self.database_url, query, *args)


@pytest.fixture
async def shopper(tmp_path: Path, database_url: str) -> AsyncIterator[Shopper]:
    settings = Settings.from_env(
        {},
        data_dir=tmp_path,
        database_url=database_url,
        admin_email=ADMIN["email"],
        admin_password=ADMIN["password"],
        rate_limit=RateLimit(100_000, 1.0),
        login_rate_limit=RateLimit(100_000, 60.0),
        auth_address_rate_limit=RateLimit(100_000, 60.0),
    )
    async with serving(create_app(settings)) as client:
        shopper = Shopper(client, database_url)
        shopper.admin = await shopper.login(ADMIN["email"], ADMIN["password"])
        yield shopper
    sqlite_files = await asyncio.to_thread(lambda: list(tmp_path.glob("*.db")))
    assert not sqlite_files, "a module fell back to SQLite instead of PostgreSQL"


async def test_a_paid_order_on_postgresql_completes_commits_stock_captures_and_prepares_a_delivery(
    shopper: Shopper,
) -> None:
    customer, address = await shopper.customer()
    product = await shopper.product(stock=5)

    order_id = await shopper.place(customer, product, 2, address, "tok_ok")
    order = await shopper.settle(customer, order_id)

    assert (order["status"], order["failure_reason"]) == ("COMPLETED", None)
    assert (order["total"], order["currency"]) == (2 * PRICE, "EUR")
    assert [(i["product_id"], i["unit_price"], i["quantity"]) for i in order["items"]] == [
        (product, PRICE, 2)
    ]
    assert await shopper.stock(product) == 3
    payments = await shopper.payments(customer, order_id)
    assert [(p["status"], p["amount"]) for p in payments] == [("CAPTURED", 2 * PRICE)]

    async def preparing() -> list[dict[str, Any]]:
        return [d for d in await shopper.deliveries(customer, order_id) if d["status"] == "PREPARING"]

    [delivery] = await until(preparing, what="a PREPARING delivery")
    assert delivery["address"]["city"] == "Berlin"
    done = [step for step, status in await shopper.timeline(customer, order_id) if status == "DONE"]
    assert done == ["reserve_stock", "check_address", "take_payment", "complete"]

    async def committed() -> list[dict[str, Any]]:  # CommitStock travels through the outbox
        rows = await shopper.rows(
            "SELECT on_hand, reserved FROM catalog.products WHERE id = $1", uuid.UUID(product)
        )
        return rows if rows and (rows[0]["on_hand"], rows[0]["reserved"]) == (3, 0) else []

    await until(committed, what="stock committed in catalog.products (on_hand 3, reserved 0)")
    assert await shopper.rows("SELECT status FROM orders.orders WHERE id = $1", uuid.UUID(order_id)) == [
        {"status": "COMPLETED"}
    ]
    assert await shopper.rows(
        "SELECT status, amount FROM payments.payments WHERE order_id = $1", uuid.UUID(order_id)
    ) == [{"status": "CAPTURED", "amount": 2 * PRICE}]


async def test_an_order_beyond_the_stock_on_postgresql_fails_out_of_stock_and_charges_nothing(
    shopper: Shopper,
) -> None:
    customer, address = await shopper.customer()
    product = await shopper.product(stock=1)

    order = await shopper.settle(customer, await shopper.place(customer, product, 2, address, "tok_ok"))

    assert (order["status"], order["failure_reason"]) == ("FAILED", "OUT_OF_STOCK")
    assert await shopper.stock(product) == 1
    assert await shopper.payments(customer, order["id"]) == []
    assert await shopper.deliveries(customer, order["id"]) == []
    assert await shopper.rows(
        "SELECT status, failure_reason FROM orders.orders WHERE id = $1", uuid.UUID(order["id"])
    ) == [{"status": "FAILED", "failure_reason": "OUT_OF_STOCK"}]


async def test_a_declined_card_on_postgresql_cancels_payment_declined_and_releases_the_stock(
    shopper: Shopper,
) -> None:
    customer, address = await shopper.customer()
    product = await shopper.product(stock=5)

    order = await shopper.settle(customer, await shopper.place(customer, product, 2, address, "tok_decline"))

    assert (order["status"], order["failure_reason"]) == ("CANCELLED", "PAYMENT_DECLINED")
    assert await shopper.stock(product) == 5
    assert [p["status"] for p in await shopper.payments(customer, order["id"])] == ["DECLINED"]
    assert await shopper.deliveries(customer, order["id"]) == []
    assert ("reserve_stock", "COMPENSATED") in await shopper.timeline(customer, order["id"])


async def test_cancelling_a_completed_order_on_postgresql_refunds_restocks_and_cancels_the_delivery(
    shopper: Shopper,
) -> None:
    customer, address = await shopper.customer()
    product = await shopper.product(stock=5)
    order_id = await shopper.place(customer, product, 2, address, "tok_ok")
    assert (await shopper.settle(customer, order_id))["status"] == "COMPLETED"
    await until(lambda: shopper.deliveries(customer, order_id), what="a delivery")

    cancelled = await shopper.client.post(f"/api/v1/orders/{order_id}/cancel", headers=customer)
    assert cancelled.status_code == 202, cancelled.text

    async def cancelled_order() -> dict[str, Any] | None:
        order = await shopper.order(customer, order_id)
        return order if order["status"] == "CANCELLED" else None

    order = await until(cancelled_order, what="order CANCELLED")
    assert order["failure_reason"] == "CANCELLED_BY_CUSTOMER"
    assert [p["status"] for p in await shopper.payments(customer, order_id)] == ["REFUNDED"]
    assert [d["status"] for d in await shopper.deliveries(customer, order_id)] == ["CANCELLED"]
    assert await shopper.stock(product) == 5
    assert await shopper.rows(
        "SELECT status, refunded, amount FROM payments.payments WHERE order_id = $1", uuid.UUID(order_id)
    ) == [{"status": "REFUNDED", "refunded": 2 * PRICE, "amount": 2 * PRICE}]

    again = await shopper.client.post(f"/api/v1/orders/{order_id}/cancel", headers=customer)
    assert again.status_code == 409


async def test_a_customers_orders_on_postgresql_page_newest_first_by_their_cursor_and_not_to_others(
    shopper: Shopper,
) -> None:
    customer, address = await shopper.customer()
    stranger, _ = await shopper.customer()
    product = await shopper.product(stock=10)
    placed = [await shopper.place(customer, product, 1, address, "tok_ok") for _ in range(3)]

    first = await shopper.client.get("/api/v1/orders", params={"limit": 2}, headers=customer)
    assert first.status_code == 200, first.text
    rest = await shopper.client.get(
        "/api/v1/orders", params={"limit": 2, "cursor": first.json()["next_cursor"]}, headers=customer
    )
    theirs = await shopper.client.get("/api/v1/orders", headers=stranger)

    listed = [o["id"] for o in first.json()["items"]] + [o["id"] for o in rest.json()["items"]]
    assert listed == placed[::-1]
    assert rest.json()["next_cursor"] is None
    assert theirs.json() == {"items": [], "next_cursor": None}
