"""Fixtures for the catalog module.

- `shop_api`: `shop run`'s app (`create_app`) on a tmp data dir with an admin from the settings,
  started, with a client, the admin's headers and helpers (create a product, check a problem).
- `stock`: a Bus built directly on the catalog module and its own database (`make_database`),
  on SQLite or PostgreSQL (`backend`), with helpers to read a product's stock.
- `postgres_url` is overridden: a PostgreSQL database of this session's own, so that another
  test run dropping the shared `catalog` schema (make_database does) cannot pull it away mid-test.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy.engine import make_url

from shop.app import Shop, create_app
from shop.bus.bus import Bus
from shop.bus.module import Module
from shop.bus.transports.inprocess import InProcessTransport
from shop.contracts.catalog import CreateProduct, ProductView
from shop.db import Database
from shop.modules.catalog import models
from shop.modules.catalog import module as catalog_module
from shop.settings import Settings

ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "adminpass1"
CUSTOMER_PASSWORD = "correct horse battery"
PROBLEM_JSON = "application/problem+json"


def _run(coroutine: Coroutine[Any, Any, None]) -> None:
    # In a thread of its own: fixtures may be set up from inside a running event loop.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, coroutine).result()


async def _admin(dsn: str, *statements: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def postgres_url(postgres_url: str) -> Iterator[str]:
    """The shared server's URL, pointing at a database only this test session uses."""
    name = f"shop_test_catalog_{os.getpid()}"
    dsn = postgres_url.replace("postgresql+asyncpg://", "postgresql://")
    _run(_admin(dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"'))
    yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    _run(_admin(dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """The response is an RFC 9457 problem with this status; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    body: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail"} <= body.keys()
    assert body["status"] == status
    if status == 400:
        assert body["errors"], body
        for error in body["errors"]:
            assert {"field", "message"} <= error.keys()
    return body


class ShopApi:
    """A started shop app, a client for it, and the admin's headers."""

    def __init__(self, app: Litestar, client: AsyncTestClient[Litestar], admin: dict[str, str]) -> None:
        self.app = app
        self.client = client
        self.admin = admin

    @property
    def shop(self) -> Shop:
        shop: Shop = self.app.state["shop"]
        return shop

    @property
    def bus(self) -> Bus:
        return self.shop.bus

    problem = staticmethod(assert_problem)

    def fields(self, response: httpx.Response) -> set[str]:
        """The fields a 400 problem names."""
        return {error["field"] for error in assert_problem(response, 400)["errors"]}

    async def customer(self) -> dict[str, str]:
        """Headers of a freshly signed-up customer."""
        email = f"customer-{uuid.uuid4().hex[:10]}@example.com"
        signed_up = await self.client.post(
            "/api/v1/users", json={"email": email, "password": CUSTOMER_PASSWORD, "name": "Grace"}
        )
        assert signed_up.status_code == 201, signed_up.text
        return await _login(self.client, email, CUSTOMER_PASSWORD)

    async def create(self, **fields: Any) -> dict[str, Any]:
        """Create a product as the admin (defaults for the fields not given); returns its JSON."""
        body = {
            "sku": f"SKU-{uuid.uuid4().hex[:12]}",
            "name": "Teapot",
            "price": 1299,
            "currency": "EUR",
            "stock": 10,
            **fields,
        }
        response = await self.client.post("/api/v1/products", json=body, headers=self.admin)
        assert response.status_code == 201, response.text
        product: dict[str, Any] = response.json()
        return product


async def _login(client: AsyncTestClient[Litestar], email: str, password: str) -> dict[str, str]:
    response = await client.post("/api/v1/auth/token", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


@pytest.fixture
async def shop_api(tmp_path: Path) -> AsyncIterator[ShopApi]:
    settings = Settings.from_env(
        {}, data_dir=tmp_path, admin_email=ADMIN_EMAIL, admin_password=ADMIN_PASSWORD
    )
    app = create_app(settings)
    async with AsyncTestClient(app=app) as client:
        yield ShopApi(app, client, await _login(client, ADMIN_EMAIL, ADMIN_PASSWORD))


class Stock:
    """A bus running the catalog module alone on its own database."""

    def __init__(self, bus: Bus, database: Database) -> None:
        self.bus = bus
        self.database = database

    async def ask(self, message: Any) -> Any:
        return await self.bus.ask(message, timeout=60)

    async def product(
        self, sku: str = "", *, stock: int = 10, price: int = 500, currency: str = "EUR"
    ) -> uuid.UUID:
        sku = sku or f"SKU-{uuid.uuid4().hex[:12]}"
        view = await self.ask(
            CreateProduct(
                sku=sku,
                name=f"Product {sku}",
                price=price,
                currency=currency,
                stock=stock,
            )
        )
        assert isinstance(view, ProductView), view
        return view.id

    async def levels(self, product_id: uuid.UUID) -> tuple[int, int]:
        """(on_hand, reserved) as stored."""
        async with self.database.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(models.products.c.on_hand, models.products.c.reserved).where(
                        models.products.c.id == product_id
                    )
                )
            ).one()
        return int(row[0]), int(row[1])

    async def until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Poll a condition with a deadline (never a fixed sleep)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError("condition not met before the deadline")
            await asyncio.sleep(0.005)

    async def reservation_status(self, reservation_id: uuid.UUID) -> str | None:
        async with self.database.engine.connect() as conn:
            found = await conn.execute(
                sa.select(models.reservations.c.status).where(models.reservations.c.id == reservation_id)
            )
            status: str | None = found.scalar_one_or_none()
        return status


StockBus = Callable[..., Awaitable[Stock]]


@pytest.fixture
async def stock_bus(make_database: Any) -> AsyncIterator[StockBus]:
    """`await stock_bus(*extra_modules)`: the catalog module and `extra_modules` (each with its
    own database) on one started bus, stopped after the test."""
    started: list[Bus] = []

    async def build(*extra: Module) -> Stock:
        databases = {"catalog": await make_database("catalog", models.metadata)}
        for module in extra:
            databases[module.name] = await make_database(module.name, module.metadata)
        bus = Bus(
            [catalog_module, *extra],
            InProcessTransport(),
            local=list(databases),
            databases=databases,
        )
        await bus.start()
        started.append(bus)
        return Stock(bus, databases["catalog"])

    yield build
    for bus in started:
        await bus.stop()


@pytest.fixture
async def stock(stock_bus: StockBus) -> Stock:
    return await stock_bus()
