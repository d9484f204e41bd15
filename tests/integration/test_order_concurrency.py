"""Many simultaneous orders on scarce stock, through `shop run`'s app, on SQLite and PostgreSQL.

Thirty customers each order one of a product with five in stock, all at the same moment. The
conditional reservation lets exactly five through: five orders complete with one captured
payment each, twenty-five fail OUT_OF_STOCK with nothing charged, and `stock_available` —
sampled the whole time the sagas run — never goes below zero and ends at zero.

On PostgreSQL the app runs on a database of this module's own on the test server (other test
runs drop and recreate module schemas in the shared test database); its five module schemas
are dropped before and after each run, and the app migrates them on start.
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

from .apphost import drop_module_schemas, pg_execute, private_database, serving

pytestmark = [
    pytest.mark.parametrize(
        "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
    ),
    pytest.mark.timeout(300),
]

ADMIN = {"email": "admin@example.com", "password": "adminpassword"}
FINAL = ("COMPLETED", "FAILED", "CANCELLED")
SETTLE_TIMEOUT_S = 120.0
STOCK = 5
CUSTOMERS = 30


# -- PostgreSQL: a database of this module's own, its module schemas dropped around each run --


@pytest.fixture(scope="module")
def private_postgres_url(postgres_url: str) -> Iterator[str]:
    with private_database(postgres_url, f"shop_test_order_race_{os.getpid()}") as url:
        yield url


@pytest.fixture
async def database_url(backend: str, request: pytest.FixtureRequest) -> AsyncIterator[str | None]:
    """None (the embedded SQLite files) or a PostgreSQL URL with the module schemas dropped."""
    if backend != "postgres":
        yield None
        return
    url = str(request.getfixturevalue("private_postgres_url"))
    await pg_execute(url, *drop_module_schemas())
    try:
        yield url
    finally:
        await pg_execute(url, *drop_module_schemas())


# -- a client with the shortcuts an order journey needs --------------------------------------


@dataclass
class Customer:
    headers: dict[str, str]
    address_id: str


@dataclass
class ShopClient:
    client: httpx.AsyncClient
    admin: dict[str, str] = field(default_factory=dict)

    async def login(self, email: str, password: str) -> dict[str, str]:
        response = await self.client.post("/api/v1/auth/token", json={"email": email, "password": password})
        assert response.status_code == 200, response.text
        return {"Authorization": f"Bearer {response.json()['access_token']}"}

    async def customer(self, n: int) -> Customer:
        email = f"racer{n}-{uuid.uuid4().hex[:8]}@example.com"
        response = await self.client.post(
            "/api/v1/users", json={"email": email, "password": "password123", "name": f"Racer {n}"}
        )
        assert response.status_code == 201, response.text
        headers = await self.login(email, "password123")
        address = await self.client.post(
            "/api/v1/users/me/addresses",
            headers=headers,
            json={
                "recipient": f"Racer {n}",
                "line1": "Main 1",
                "city": "Berlin",
                "postal_code": "10115",
                "country": "DE",
            },
        )
        assert address.status_code == 201, address.text
        return Customer(headers, str(address.json()["id"]))

    async def customers(self, count: int) -> list[Customer]:
        """`count` customers with an address each, one after the other: sign-ups are not what
        this test races (and on SQLite concurrent sign-ups queue on the users write lock)."""
        return [await self.customer(n) for n in range(count)]

    async def product(self, stock: int, price: int = 1999) -> str:
        response = await self.client.post(
            "/api/v1/products",
            headers=self.admin,
            json={
                "sku": f"RACE-{uuid.uuid4().hex[:10]}",
                "name": "Scarce widget",
                "price": price,
                "currency": "EUR",
                "category": "race",
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
        self, customer: Customer, product_id: str, quantity: int = 1, token: str = "tok_ok"
    ) -> Any:
        return await self.client.post(
            "/api/v1/orders",
            headers=customer.headers,
            json={
                "items": [{"product_id": product_id, "quantity": quantity}],
                "address_id": customer.address_id,
                "payment_token": token,
            },
        )

    async def order(self, order_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/api/v1/orders/{order_id}", headers=self.admin)
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def settle_all(
        self, order_ids: list[str], timeout: float = SETTLE_TIMEOUT_S
    ) -> dict[str, dict[str, Any]]:
        """Poll (with a deadline) until every order is final; the final orders by id."""
        final: dict[str, dict[str, Any]] = {}

        async def all_final() -> bool:
            for order_id in order_ids:
                if order_id not in final:
                    order = await self.order(order_id)
                    if order["status"] in FINAL:
                        final[order_id] = order
            return len(final) == len(order_ids)

        await until(all_final, timeout=timeout, what=lambda: f"{len(final)}/{len(order_ids)} orders final")
        return final

    async def all_payments(self) -> list[dict[str, Any]]:
        """Every payment (the admin sees all), following the cursor."""
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(1000):
            params: dict[str, Any] = {"limit": 100}
            if cursor:
                params["cursor"] = cursor
            response = await self.client.get("/api/v1/payments", headers=self.admin, params=params)
            assert response.status_code == 200, response.text
            page = response.json()
            items.extend(page["items"])
            cursor = page["next_cursor"]
            if not cursor:
                return items
        raise AssertionError("the payments list never ended")


async def until(
    check: Callable[[], Awaitable[bool]], *, timeout: float, what: Callable[[], str], pause: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what()}")
        await asyncio.sleep(pause)


@pytest.fixture
async def shop(tmp_path: Path, database_url: str | None) -> AsyncIterator[ShopClient]:
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
    app = create_app(settings)
    async with serving(app) as client:
        shop = ShopClient(client)
        shop.admin = await shop.login(ADMIN["email"], ADMIN["password"])
        yield shop


async def test_thirty_simultaneous_orders_for_five_in_stock_complete_five_and_fail_the_rest_out_of_stock(
    shop: ShopClient,
) -> None:
    product = await shop.product(stock=STOCK)
    customers = await shop.customers(CUSTOMERS)

    samples: list[int] = []
    done = asyncio.Event()

    async def sample_stock() -> None:
        while not done.is_set():
            samples.append(await shop.stock(product))
            await asyncio.sleep(0.01)

    sampler = asyncio.create_task(sample_stock())
    try:
        responses = await asyncio.gather(*(shop.place(c, product) for c in customers))
        assert [r.status_code for r in responses] == [202] * CUSTOMERS, [r.text for r in responses]
        order_ids = [str(r.json()["id"]) for r in responses]
        assert len(set(order_ids)) == CUSTOMERS
        orders = await shop.settle_all(order_ids)
    finally:
        done.set()
        await asyncio.wait_for(sampler, 30)

    by_status: dict[str, list[dict[str, Any]]] = {}
    for order in orders.values():
        by_status.setdefault(order["status"], []).append(order)
    assert {s: len(o) for s, o in by_status.items()} == {"COMPLETED": STOCK, "FAILED": CUSTOMERS - STOCK}
    assert {o["failure_reason"] for o in by_status["FAILED"]} == {"OUT_OF_STOCK"}
    assert all(o["failure_reason"] is None and o["total"] == 1999 for o in by_status["COMPLETED"])

    assert len(samples) >= 3, "stock_available was sampled while the orders ran"
    assert min(samples) >= 0, f"stock_available went negative: {min(samples)}"
    assert await shop.stock(product) == 0

    payments = [p for p in await shop.all_payments() if p["order_id"] in orders]
    captured = [p for p in payments if p["status"] == "CAPTURED"]
    assert len(captured) == STOCK, payments
    for order in by_status["COMPLETED"]:
        mine = [p for p in payments if p["order_id"] == order["id"]]
        assert [(p["status"], p["amount"], p["currency"]) for p in mine] == [("CAPTURED", 1999, "EUR")]
    failed_ids = {o["id"] for o in by_status["FAILED"]}
    assert [p for p in payments if p["order_id"] in failed_ids] == [], "a failed order was charged"
