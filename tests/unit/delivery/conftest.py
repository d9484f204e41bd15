"""Fixtures for the delivery module, driven through `shop run`'s app (every module in process).

`open_shop(**settings)` starts `create_app(Settings.from_env({}, ...))` on tmp_path with an
admin. The `Shop` harness (the shared one of tests/unit/shopharness.py, plus delivery's own
helpers) publishes what a real order causes (OrderAwaitingPayment, the saga's TakePayment, then
OrderCompleted with the address, through the orders module's outbox), reads the HTTP API, spies on
every message written to an outbox (committed ones only) and polls with a deadline, never
sleeping blindly.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from shop.contracts.catalog import Line
from shop.db import unit_of_work
from shop.modules.orders.service import OrderBook

from .. import shopharness
from ..shopharness import Published, awaiting_payment, completed, take_payment


class Shop(shopharness.Shop):
    """The shared harness, plus deliveries: an order's, a paid order's, moving one along."""

    @staticmethod
    def failed(consumer: str, message_type: str) -> float:
        """How many times the consumer has failed on this type of message (in this process)."""
        sample = REGISTRY.get_sample_value(
            "shop_bus_messages_failed_total", {"consumer": consumer, "type": message_type}
        )
        return sample or 0.0

    async def delivery_of(self, order_id: uuid.UUID) -> dict[str, Any] | None:
        """The order's one delivery as an admin sees it, or None."""
        items = await self.deliveries(await self.admin(), order_id=str(order_id))
        assert len(items) <= 1, items
        return items[0] if items else None

    async def paid_order(self, customer_id: uuid.UUID) -> tuple[uuid.UUID, dict[str, Any]]:
        """An order that awaited payment, was paid and completed: its id and its delivery,
        PREPARING."""
        order_id = uuid.uuid4()
        await self.send(awaiting_payment(order_id, customer_id))
        await self.send(take_payment(order_id, customer_id, "tok_ok"))
        await self.send(completed(order_id, customer_id))
        delivery = await self.eventually(lambda: self.delivery_of(order_id))
        return order_id, delivery

    async def pending_order(self, customer_id: uuid.UUID) -> uuid.UUID:
        """A real order in the orders module, PENDING (no saga runs it): delivery has no record."""

        async def place() -> uuid.UUID:
            async with unit_of_work(self.shop.databases["orders"]) as uow:
                order, _ = await OrderBook(uow.session).create(
                    customer_id=customer_id,
                    items=(Line(product_id=uuid.uuid4(), quantity=1),),
                    address_id=uuid.uuid4(),
                    payment_token="tok_ok",
                    idempotency_key=None,
                )
            return order.id

        return self.run(place)

    async def move(
        self, delivery_id: str, status: str, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        """POST /api/v1/deliveries/{id}/events (as the admin unless told otherwise)."""
        return await self.client.post(
            f"/api/v1/deliveries/{delivery_id}/events",
            json={"status": status},
            headers=headers if headers is not None else await self.admin(),
        )


OpenShop = Callable[..., contextlib.AbstractAsyncContextManager[Shop]]


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> Published:
    """Spy on the outbox: record each message once its unit of work has committed."""
    return shopharness.spy_on_outbox(monkeypatch)


@pytest.fixture
def open_shop(tmp_path: Path, published: Published) -> OpenShop:
    return shopharness.open_shop(tmp_path, published, Shop)
