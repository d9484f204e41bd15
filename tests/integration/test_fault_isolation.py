"""Fault isolation in `shop run`'s app: a failing or hanging payments module never blocks the
catalog or the users endpoints, and the services view shows the breakers.

Payments is made to misbehave at its two seams — the simulated provider's `authorize` (the call
every charge makes) and the processor's `take` (the TakePayment handler's whole body) — by
hanging for an hour, by raising, or by answering too late (`tok_slow`). Forty orders are placed
(eight at a time), more than payments has workers, so its queue is stuck. While it is stuck,
the product list, one product, the profile and a login each answer within a small bound,
measured. After `tok_error` payments the provider's breaker is OPEN in GET /api/v1/services,
which lists every module's instance, while the module breakers stay CLOSED.

The app and the client share this test's event loop (httpx's ASGI transport), as in `shop run`
where every module shares one loop: anything in payments that blocked the loop would show here.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from shop.app import create_app
from shop.modules.payments.service import PaymentProcessor
from shop.modules.payments.simulated import SimulatedProvider
from shop.settings import MODULE_NAMES, RateLimit, Settings

from .apphost import serving

pytestmark = pytest.mark.timeout(240, method="thread")  # a hang dumps every stack

ADMIN = {"email": "admin@example.com", "password": "adminpassword"}
PASSWORD = "password123"
ORDERS = 40  # more than the in-process transport's 16 workers per module queue
PLACING_AT_ONCE = 8
PAYMENT_WORKERS = 16
READ_BOUND_S = 1.0  # a product list, a product, the profile
LOGIN_BOUND_S = 2.0  # a login verifies an argon2id hash (deliberately slow, ~0.15 s idle)
ROUNDS = 3
HANG_S = 3600.0


# -- the app on this test's event loop ---------------------------------------------------------


async def until(check: Callable[[], Awaitable[Any]], *, timeout: float = 60.0, what: str) -> Any:
    """Poll `check` until it returns something truthy (returned), within a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s (last: {value!r})")
        await asyncio.sleep(0.05)


# -- payments misbehaving, counted ---------------------------------------------------------------


@dataclass
class Fault:
    """How payments misbehaves, and how many calls reached the faulty seam so far."""

    name: str
    token: str
    stuck_after: int  # this many calls at the seam: payments is saturated
    calls: int = 0


def _install(fault: Fault, monkeypatch: pytest.MonkeyPatch) -> None:
    original_authorize = SimulatedProvider.authorize

    async def hanging_authorize(self: SimulatedProvider, *args: Any, **kwargs: Any) -> Any:
        fault.calls += 1
        await asyncio.sleep(HANG_S)
        raise AssertionError("unreachable: the provider hangs")

    async def counted_authorize(self: SimulatedProvider, *args: Any, **kwargs: Any) -> Any:
        fault.calls += 1
        return await original_authorize(self, *args, **kwargs)

    async def hanging_take(self: PaymentProcessor, *args: Any, **kwargs: Any) -> Any:
        fault.calls += 1
        await asyncio.sleep(HANG_S)
        raise AssertionError("unreachable: the handler hangs")

    async def failing_take(self: PaymentProcessor, *args: Any, **kwargs: Any) -> Any:
        fault.calls += 1
        raise RuntimeError("the payments handler blew up")

    patches: dict[str, tuple[type[Any], str, Any]] = {
        "provider_hangs": (SimulatedProvider, "authorize", hanging_authorize),
        "provider_too_slow": (SimulatedProvider, "authorize", counted_authorize),
        "handler_hangs": (PaymentProcessor, "take", hanging_take),
        "handler_fails": (PaymentProcessor, "take", failing_take),
    }
    owner, attribute, replacement = patches[fault.name]
    monkeypatch.setattr(owner, attribute, replacement)


FAULTS = {
    # the provider never answers, and its guard's timeout is an hour: every worker is stuck
    "provider_hangs": ("tok_ok", PAYMENT_WORKERS),
    # `tok_slow` answers after the call's timeout: timeouts, retries, then an open breaker
    "provider_too_slow": ("tok_slow", 5),
    # the TakePayment handler itself never returns
    "handler_hangs": ("tok_ok", PAYMENT_WORKERS),
    # the TakePayment handler raises every time: retries, then dead letters
    "handler_fails": ("tok_ok", 2 * PAYMENT_WORKERS),
}


@pytest.fixture(params=sorted(FAULTS))
def fault(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Fault:
    token, stuck_after = FAULTS[request.param]
    found = Fault(str(request.param), token, stuck_after)
    _install(found, monkeypatch)
    return found


# -- a client with the shortcuts these tests need ------------------------------------------------


@dataclass
class Shopper:
    client: httpx.AsyncClient
    admin: dict[str, str] = field(default_factory=dict)

    async def login(self, email: str, password: str) -> dict[str, str]:
        response = await self.client.post("/api/v1/auth/token", json={"email": email, "password": password})
        assert response.status_code == 200, response.text
        return {"Authorization": f"Bearer {response.json()['access_token']}"}

    async def customer(self) -> tuple[str, dict[str, str], str]:
        """A customer's email, token headers and address id."""
        email = f"iso-{uuid.uuid4().hex[:10]}@example.com"
        response = await self.client.post(
            "/api/v1/users", json={"email": email, "password": PASSWORD, "name": "Isolated"}
        )
        assert response.status_code == 201, response.text
        headers = await self.login(email, PASSWORD)
        address = await self.client.post(
            "/api/v1/users/me/addresses",
            headers=headers,
            json={
                "recipient": "Iso",
                "line1": "Main 1",
                "city": "Berlin",
                "postal_code": "10115",
                "country": "DE",
            },
        )
        assert address.status_code == 201, address.text
        return email, headers, str(address.json()["id"])

    async def product(self, stock: int = 1000) -> str:
        response = await self.client.post(
            "/api/v1/products",
            headers=self.admin,
            json={
                "sku": f"ISO-{uuid.uuid4().hex[:10]}",
                "name": "Isolated widget",
                "price": 500,
                "currency": "EUR",
                "category": "isolation",
                "stock": stock,
            },
        )
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    async def place_many(
        self, headers: dict[str, str], product: str, address: str, token: str, count: int
    ) -> list[str]:
        """`count` orders, PLACING_AT_ONCE at a time: quick to place (payments is what is stuck),
        and gentle with the orders module's own breaker, which counts slow answers."""
        gate = asyncio.Semaphore(PLACING_AT_ONCE)

        async def one() -> str:
            async with gate:
                response = await self.client.post(
                    "/api/v1/orders",
                    headers=headers,
                    json={
                        "items": [{"product_id": product, "quantity": 1}],
                        "address_id": address,
                        "payment_token": token,
                    },
                )
            assert response.status_code == 202, response.text
            return str(response.json()["id"])

        return list(await asyncio.gather(*(one() for _ in range(count))))

    async def statuses(self, headers: dict[str, str], order_ids: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for order_id in order_ids:
            response = await self.client.get(f"/api/v1/orders/{order_id}", headers=headers)
            assert response.status_code == 200, response.text
            found[order_id] = response.json()["status"]
        return found

    async def services(self) -> dict[str, Any]:
        response = await self.client.get("/api/v1/services", headers=self.admin)
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def timed_catalog_and_users(
        self, product: str, email: str, headers: dict[str, str]
    ) -> dict[str, float]:
        """The slowest of ROUNDS answers of each catalog and users endpoint, all checked OK."""
        calls: dict[str, Callable[[], Awaitable[httpx.Response]]] = {
            "GET /api/v1/products": lambda: self.client.get("/api/v1/products"),
            "GET /api/v1/products/{id}": lambda: self.client.get(f"/api/v1/products/{product}"),
            "GET /api/v1/users/me": lambda: self.client.get("/api/v1/users/me", headers=headers),
            "POST /api/v1/auth/token": lambda: self.client.post(
                "/api/v1/auth/token", json={"email": email, "password": PASSWORD}
            ),
        }
        slowest: dict[str, float] = dict.fromkeys(calls, 0.0)
        for _ in range(ROUNDS):
            for name, call in calls.items():
                started = time.perf_counter()
                response = await call()
                elapsed = time.perf_counter() - started
                assert response.status_code == 200, f"{name}: {response.status_code} {response.text}"
                slowest[name] = max(slowest[name], elapsed)
        return slowest


def assert_within_bounds(slowest: dict[str, float], baseline: dict[str, float], context: str) -> None:
    """Each endpoint under its bound. A login's bound grows with the machine's load (twice the
    baseline login measured at the start of the test): argon2 competes for the CPU, payments
    does not; a payments module blocking the loop or a shared pool costs seconds, not this."""
    for name, elapsed in slowest.items():
        if name.startswith("POST /api/v1/auth/token"):
            bound = max(LOGIN_BOUND_S, 2 * baseline[name])
        else:
            bound = READ_BOUND_S
        assert elapsed < bound, (
            f"{name} took {elapsed:.3f}s (bound {bound:.3f}s) {context}; all: {slowest}; before: {baseline}"
        )


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {}


@pytest.fixture
async def shopper(tmp_path: Path, settings_overrides: dict[str, Any]) -> AsyncIterator[Shopper]:
    settings = Settings.from_env(
        {},
        data_dir=tmp_path,
        admin_email=ADMIN["email"],
        admin_password=ADMIN["password"],
        rate_limit=RateLimit(100_000, 1.0),
        login_rate_limit=RateLimit(100_000, 60.0),
        auth_address_rate_limit=RateLimit(100_000, 60.0),
        **settings_overrides,
    )
    async with serving(create_app(settings)) as client:
        shopper = Shopper(client)
        shopper.admin = await shopper.login(ADMIN["email"], ADMIN["password"])
        yield shopper


class TestAStuckPaymentsModule:
    @pytest.fixture
    def settings_overrides(self, fault: Fault) -> dict[str, Any]:
        # A hanging provider really hangs: its guard's per-call timeout is an hour too.
        return {"payment_provider_timeout_s": HANG_S} if fault.name == "provider_hangs" else {}

    async def test_never_slows_the_catalog_or_users_endpoints(self, shopper: Shopper, fault: Fault) -> None:
        email, customer, address = await shopper.customer()
        product = await shopper.product()
        baseline = await shopper.timed_catalog_and_users(product, email, customer)

        orders = await shopper.place_many(customer, product, address, fault.token, ORDERS)

        async def payments_stuck() -> bool:
            return fault.calls >= fault.stuck_after

        await until(payments_stuck, what=f"{fault.stuck_after} calls at the payments seam ({fault.name})")

        slowest = await shopper.timed_catalog_and_users(product, email, customer)

        assert_within_bounds(slowest, baseline, f"while payments is stuck ({fault.name})")
        statuses = await shopper.statuses(customer, orders)
        assert set(statuses.values()) <= {"AWAITING_PAYMENT", "PENDING"}, "payments really was stuck"
        assert "AWAITING_PAYMENT" in statuses.values()


async def test_failing_payments_open_the_provider_breaker_in_the_services_view(shopper: Shopper) -> None:
    email, customer, address = await shopper.customer()
    product = await shopper.product()
    baseline = await shopper.timed_catalog_and_users(product, email, customer)
    # Touch every module once, so that each has its module breaker for reads.
    assert (await shopper.client.get("/api/v1/payments", headers=customer)).status_code == 200
    assert (await shopper.client.get("/api/v1/deliveries", headers=customer)).status_code == 200
    assert (await shopper.client.get("/api/v1/orders", headers=customer)).status_code == 200
    before = await shopper.services()
    assert before["breakers"].get("provider:simulated", "CLOSED") == "CLOSED"

    await shopper.place_many(customer, product, address, "tok_error", 4)

    async def provider_open() -> dict[str, Any] | None:
        view = await shopper.services()
        return view if view["breakers"].get("provider:simulated") == "OPEN" else None

    view = await until(provider_open, what="the provider breaker OPEN in /api/v1/services")

    assert set(view["modules"]) == set(MODULE_NAMES)
    for module, instances in view["modules"].items():
        assert len(instances) == 1, (module, instances)
        [instance] = instances
        assert {"instance_id", "url", "healthy", "last_seen"} <= set(instance), instance
        assert instance["healthy"] is True, (module, instance)
    breakers = view["breakers"]
    assert set(breakers.values()) <= {"CLOSED", "OPEN", "HALF_OPEN"}
    # One breaker per module and kind of request: the reads of every module were made above.
    modules = {name: state for name, state in breakers.items() if name.startswith("module:")}
    assert {f"module:{m}:queries" for m in MODULE_NAMES} <= set(modules), breakers
    assert set(modules.values()) == {"CLOSED"}, "a provider failing must not trip any module's breaker"
    assert (await shopper.client.get("/api/v1/payments", headers=customer)).status_code == 200

    slowest = await shopper.timed_catalog_and_users(product, email, customer)
    assert_within_bounds(slowest, baseline, "with the provider breaker open")
    assert (await shopper.client.get("/api/v1/services", headers=customer)).status_code == 403
