"""A shop on its embedded default, driven over HTTP like a client would."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from shop.app import create_app
from shop.settings import RateLimit, Settings

ADMIN = {"email": "admin@example.com", "password": "adminpassword"}
FINAL = ("COMPLETED", "FAILED", "CANCELLED")


@dataclass
class Shopper:
    """A test client with the shortcuts an order journey needs."""

    client: AsyncTestClient  # type: ignore[type-arg]
    app: Litestar
    admin: dict[str, str] = field(default_factory=dict)
    _seq: int = 0

    @property
    def shop(self) -> Any:
        return self.app.state["shop"]

    async def login(self, email: str, password: str) -> dict[str, str]:
        response = await self.client.post("/api/v1/auth/token", json={"email": email, "password": password})
        assert response.status_code == 200, response.text
        return {"Authorization": f"Bearer {response.json()['access_token']}"}

    async def customer(self) -> dict[str, str]:
        self._seq += 1
        email = f"customer{self._seq}-{uuid.uuid4().hex[:6]}@example.com"
        response = await self.client.post(
            "/api/v1/users", json={"email": email, "password": "password123", "name": f"Customer {self._seq}"}
        )
        assert response.status_code == 201, response.text
        return await self.login(email, "password123")

    async def address(self, headers: dict[str, str]) -> str:
        response = await self.client.post(
            "/api/v1/users/me/addresses",
            headers=headers,
            json={
                "recipient": "R",
                "line1": "Main 1",
                "city": "Berlin",
                "postal_code": "10115",
                "country": "DE",
            },
        )
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    async def product(self, stock: int = 10, price: int = 1250, currency: str = "EUR") -> str:
        self._seq += 1
        response = await self.client.post(
            "/api/v1/products",
            headers=self.admin,
            json={
                "sku": f"SKU-{self._seq}-{uuid.uuid4().hex[:6]}",
                "name": f"Product {self._seq}",
                "price": price,
                "currency": currency,
                "category": "tests",
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
        self,
        headers: dict[str, str],
        items: list[tuple[str, int]],
        address_id: str,
        token: str = "tok_ok",
        key: str | None = None,
    ) -> Any:
        extra = {"Idempotency-Key": key} if key else {}
        return await self.client.post(
            "/api/v1/orders",
            headers={**headers, **extra},
            json={
                "items": [{"product_id": p, "quantity": q} for p, q in items],
                "address_id": address_id,
                "payment_token": token,
            },
        )

    async def order(self, headers: dict[str, str], order_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/api/v1/orders/{order_id}", headers=headers)
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def until(self, check: Callable[[], Any], *, timeout: float = 15.0, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = await check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not met within {timeout}s (last: {value!r})")
            await _pause()

    async def settle(self, headers: dict[str, str], order_id: str, timeout: float = 15.0) -> dict[str, Any]:
        """Wait until the order is final."""

        async def final() -> dict[str, Any] | None:
            order = await self.order(headers, order_id)
            return order if order["status"] in FINAL else None

        result: dict[str, Any] = await self.until(final, timeout=timeout, what=f"order {order_id} final")
        return result

    async def payments(self, headers: dict[str, str], order_id: str) -> list[dict[str, Any]]:
        response = await self.client.get("/api/v1/payments", params={"order_id": order_id}, headers=headers)
        assert response.status_code == 200, response.text
        return list(response.json()["items"])

    async def deliveries(self, headers: dict[str, str], order_id: str) -> list[dict[str, Any]]:
        response = await self.client.get("/api/v1/deliveries", params={"order_id": order_id}, headers=headers)
        assert response.status_code == 200, response.text
        return list(response.json()["items"])


async def _pause() -> None:
    import asyncio

    await asyncio.sleep(0.02)


def shop_settings(tmp_path: Path, **overrides: Any) -> Settings:
    overrides.setdefault("rate_limit", RateLimit(100_000, 1.0))
    return Settings.from_env(
        {}, data_dir=tmp_path, admin_email=ADMIN["email"], admin_password=ADMIN["password"], **overrides
    )


@pytest.fixture
def shop_overrides() -> dict[str, Any]:
    """Settings a test module wants (override the fixture)."""
    return {}


@pytest.fixture
async def shopper(tmp_path: Path, shop_overrides: dict[str, Any]) -> AsyncIterator[Shopper]:
    app = create_app(shop_settings(tmp_path, **shop_overrides))
    async with AsyncTestClient(app=app, timeout=30) as client:
        shopper = Shopper(client, app)
        shopper.admin = await shopper.login(ADMIN["email"], ADMIN["password"])
        yield shopper
