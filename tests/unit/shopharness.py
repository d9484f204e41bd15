"""The in-process shop harness the delivery and payments tests share (their conftests extend it).

`open_shop(tmp_path, published, shop_class)` starts `create_app(Settings.from_env({}, ...))` on
tmp_path with an admin and a tiny provider timeout. The `Shop` harness sends what the order saga
would send (through the orders module's outbox), asks modules directly, reads the HTTP API, spies
on every message written to an outbox (committed ones only, see `spy_on_outbox`) and polls with a
deadline, never sleeping blindly.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY

from shop import app as shop_app
from shop.bus import bus as bus_module
from shop.bus.inbox import DeadLetter, list_dead
from shop.bus.messages import Envelope, Event, Message, decode_body
from shop.contracts.delivery import AddressSnapshot
from shop.contracts.orders import OrderAwaitingPayment, OrderCompleted
from shop.contracts.payments import TakePayment
from shop.db import UnitOfWork, unit_of_work
from shop.modules.payments.provider import PaymentProvider
from shop.modules.payments.simulated import SimulatedProvider
from shop.settings import Settings

ADMIN_EMAIL = "admin@example.com"
PASSWORD = "correct horse battery"
PROVIDER_TIMEOUT_S = 0.05
PROVIDER_BREAKER_WAIT_S = 0.2  # a message that met the open breaker comes back this soon
M = TypeVar("M", bound=Message)
T = TypeVar("T")

ADDRESS = AddressSnapshot(
    recipient="Ada Lovelace",
    line1="12 St James's Square",
    line2=None,
    city="London",
    postal_code="SW1Y 4JH",
    country="GB",
)


class Published:
    """Every message a committed unit of work wrote to an outbox, in commit order."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    def of(self, kind: type[M]) -> list[M]:
        return [m for m in self.messages if isinstance(m, kind)]


def take_payment(
    order_id: uuid.UUID, customer_id: uuid.UUID, token: str = "tok_ok", *, amount: int = 12900, **extra: Any
) -> TakePayment:
    return TakePayment(
        payment_id=extra.pop("payment_id", uuid.uuid4()),
        order_id=order_id,
        customer_id=customer_id,
        amount=amount,
        currency="EUR",
        payment_token=token,
        **extra,
    )


def awaiting_payment(
    order_id: uuid.UUID, customer_id: uuid.UUID, amount: int = 12900
) -> OrderAwaitingPayment:
    return OrderAwaitingPayment(
        order_id=order_id,
        customer_id=customer_id,
        address_id=uuid.uuid4(),
        address=ADDRESS,
        total=amount,
        currency="EUR",
    )


def completed(
    order_id: uuid.UUID, customer_id: uuid.UUID, address: AddressSnapshot | None = ADDRESS
) -> OrderCompleted:
    """What orders publishes once an order is paid and complete (address None: as orders
    versions before it carried the address published it)."""
    return OrderCompleted(order_id=order_id, customer_id=customer_id, address=address)


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """The response is an RFC 9457 problem with this status; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert {"type", "title", "status", "detail"} <= body.keys()
    return body


class Shop:
    """A started app, a client for it, and the bus the way the order saga uses it."""

    def __init__(self, app: Litestar, client: AsyncTestClient[Litestar], published: Published) -> None:
        self.app = app
        self.client = client
        self.published = published
        self._admin: dict[str, str] | None = None

    # the module-level helpers, reachable from test modules through the fixture
    problem = staticmethod(problem)
    take_payment = staticmethod(take_payment)
    awaiting_payment = staticmethod(awaiting_payment)
    completed = staticmethod(completed)
    address = ADDRESS

    @property
    def shop(self) -> shop_app.Shop:
        shop: shop_app.Shop = self.app.state["shop"]
        return shop

    @property
    def provider(self) -> SimulatedProvider:
        provider = self.shop.bus.injector_for("payments").resolve(PaymentProvider)
        assert isinstance(provider, SimulatedProvider)
        return provider

    # -- the bus, as the order saga uses it --------------------------------------------------
    # The app (its lifespan, its bus, every request) lives on the test client's portal: its own
    # event loop in its own thread. Whatever touches the bus runs there too.

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run `fn(*args)` on the app's event loop and return its result."""
        return self.client.blocking_portal.call(fn, *args)

    async def send(self, *messages: Message) -> None:
        """Send commands / publish events from the orders module's outbox, in one transaction."""

        async def send() -> None:
            async with unit_of_work(self.shop.databases["orders"]):
                for message in messages:
                    if isinstance(message, Event):
                        await self.shop.bus.publish(message)
                    else:
                        await self.shop.bus.send(message)  # type: ignore[arg-type]

        self.run(send)

    async def ask(self, message: Message) -> Any:
        return self.run(self.shop.bus.ask, message)

    async def dead_letters(self, module: str) -> list[DeadLetter]:
        return self.run(list_dead, self.shop.databases[module])

    @staticmethod
    def handled(consumer: str, message_type: str) -> float:
        """How many messages of this type the consumer has handled (in this process, so far)."""
        sample = REGISTRY.get_sample_value(
            "shop_bus_messages_handled_total", {"consumer": consumer, "type": message_type}
        )
        return sample or 0.0

    # -- HTTP ----------------------------------------------------------------------------------

    async def login(self, email: str, password: str = PASSWORD) -> dict[str, str]:
        response = await self.client.post("/api/v1/auth/token", json={"email": email, "password": password})
        assert response.status_code == 200, response.text
        return {"Authorization": f"Bearer {response.json()['access_token']}"}

    async def customer(self) -> tuple[uuid.UUID, dict[str, str]]:
        """A new customer's id and the headers that authenticate as them."""
        email = f"user-{uuid.uuid4().hex[:10]}@example.com"
        response = await self.client.post(
            "/api/v1/users", json={"email": email, "password": PASSWORD, "name": "Ada Lovelace"}
        )
        assert response.status_code == 201, response.text
        return uuid.UUID(response.json()["id"]), await self.login(email)

    async def admin(self) -> dict[str, str]:
        if self._admin is None:  # once: logins are rate limited per email
            self._admin = await self.login(ADMIN_EMAIL)
        return self._admin

    async def payments(self, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
        response = await self.client.get("/api/v1/payments", headers=headers, params=params)
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    async def payment_of(self, order_id: uuid.UUID) -> dict[str, Any] | None:
        """The order's one payment as an admin sees it, or None."""
        items = await self.payments(await self.admin(), order_id=str(order_id))
        assert len(items) <= 1, items
        return items[0] if items else None

    async def deliveries(self, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
        response = await self.client.get("/api/v1/deliveries", headers=headers, params=params)
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    # -- waiting -------------------------------------------------------------------------------

    async def eventually(self, check: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Poll `check` (sync or async) until it returns something truthy; fail after `timeout` s."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            value = check()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                pytest.fail(f"not within {timeout}s: {getattr(check, '__name__', check)} (last: {value!r})")
            await asyncio.sleep(0.01)

    async def status_becomes(self, order_id: uuid.UUID, status: str) -> dict[str, Any]:
        async def payment_in_status() -> dict[str, Any] | None:
            payment = await self.payment_of(order_id)
            return payment if payment is not None and payment["status"] == status else None

        payment: dict[str, Any] = await self.eventually(payment_in_status)
        return payment


S = TypeVar("S", bound=Shop)


def spy_on_outbox(monkeypatch: pytest.MonkeyPatch) -> Published:
    """Spy on the outbox: record each message once its unit of work has committed."""
    spy = Published()
    original = bus_module.write_outbox  # type: ignore[attr-defined]  # the bus's own import

    async def write(uow: UnitOfWork, envelope: Envelope, relay: Any) -> None:
        await original(uow, envelope, relay)
        message = decode_body(envelope.type, envelope.body)

        async def record() -> None:
            spy.messages.append(message)

        uow.after_commit(record)

    monkeypatch.setattr(bus_module, "write_outbox", write)
    return spy


def open_shop(
    tmp_path: Path, published: Published, shop_class: type[S]
) -> Callable[..., contextlib.AbstractAsyncContextManager[S]]:
    """`open_(**settings)`: the app started on tmp_path, as a `shop_class` harness."""

    @contextlib.asynccontextmanager
    async def open_(**overrides: Any) -> AsyncIterator[S]:
        overrides.setdefault("data_dir", tmp_path / "data")
        overrides.setdefault("payment_provider_timeout_s", PROVIDER_TIMEOUT_S)
        overrides.setdefault("payment_provider_breaker_wait_s", PROVIDER_BREAKER_WAIT_S)
        settings = Settings.from_env({}, admin_email=ADMIN_EMAIL, admin_password=PASSWORD, **overrides)
        app = shop_app.create_app(settings)
        async with AsyncTestClient(app=app) as client:
            yield shop_class(app, client, published)

    return open_
