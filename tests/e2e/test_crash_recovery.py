"""`shop run` killed with SIGKILL in the middle of a burst of orders, then started again on the
same data dir and port: every order it accepted ends final, stock is conserved and nobody is
charged twice.

Set-up over HTTP: an admin (from the environment), three products with 20 in stock each, ten
customers with an address each. Then sixty orders at once (mostly `tok_ok`, a few
`tok_decline`, one or two units of one product each), and the whole process group (`shop run`
and its server worker) is killed: right when thirty have been answered 202 (sagas still at
their first steps), or — second test — once payments have started capturing (some sagas between
a capture and their order's completion). The same command starts again and recovers: outbox
rows are swept, sagas resumed, payment deadlines (SHOP_PAYMENT_DEADLINE_S=5; their clock
survives the restart) run out. Within a deadline every accepted order — and any order stored
whose 202 was lost in the crash — is COMPLETED, FAILED or CANCELLED, no saga is parked in
COMPENSATION_FAILED, and then:

* per product: initial stock = stock_available + the quantities of the COMPLETED orders;
* per order: at most one CAPTURED payment and at most one ever charged (CAPTURED or REFUNDED);
  a COMPLETED order has exactly one CAPTURED payment and one live delivery; a FAILED or
  CANCELLED one has no CAPTURED payment and no delivery that is not CANCELLED.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..ports import server_port

ROOT = Path(__file__).resolve().parents[2]
SHOP = ROOT / ".venv" / "bin" / "shop"

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

ADMIN = {"email": "admin@example.com", "password": "admin-password"}
PASSWORD = "password123"
PRODUCTS = 3
STOCK = 20
CUSTOMERS = 10
BURST = 60
KILL_AFTER_ACCEPTED = 30
START_DEADLINE_S = 90.0
STOP_DEADLINE_S = 30.0
RECOVERY_DEADLINE_S = 120.0
CONSISTENT_DEADLINE_S = 30.0
KILL_WAIT_S = 20.0
KILL_AFTER_CAPTURED = 10
PAYMENT_DEADLINE_S = 5
OUTAGE_S = PAYMENT_DEADLINE_S + 1.0  # the payment deadlines of the sagas caught mid-payment pass
FINAL = ("COMPLETED", "FAILED", "CANCELLED")


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group, from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces, so split after its ')'
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


@dataclass
class ShopProcess:
    """One `shop run` process group (the CLI and its server worker), on loopback."""

    data_dir: Path
    logs: Path
    port: int
    runs: int = 0
    process: subprocess.Popen[bytes] | None = None
    pgids: list[int] = field(default_factory=list)
    killed: int | None = None  # the process group last killed

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHOP_")}
        env.update(
            SHOP_DATA_DIR=str(self.data_dir),
            SHOP_RATE_LIMIT="100000/second",
            SHOP_LOGIN_RATE_LIMIT="100000/minute",
            SHOP_AUTH_ADDRESS_RATE_LIMIT="100000/minute",
            SHOP_ADMIN_EMAIL=ADMIN["email"],
            SHOP_ADMIN_PASSWORD=ADMIN["password"],
            SHOP_PAYMENT_DEADLINE_S=str(PAYMENT_DEADLINE_S),
        )
        return env

    def start(self) -> None:
        self.runs += 1
        out = (self.logs / f"run{self.runs}.stdout.log").open("wb")
        err = (self.logs / f"run{self.runs}.stderr.log").open("wb")
        with out, err:
            self.process = subprocess.Popen(
                [str(SHOP), "run", "--port", str(self.port)],
                cwd=ROOT,
                env=self.environment(),
                stdout=out,
                stderr=err,
                start_new_session=True,  # its own process group: the server worker goes with it
            )
        self.pgids.append(self.process.pid)

    def stderr_tail(self) -> str:
        path = self.logs / f"run{self.runs}.stderr.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    async def wait_healthy(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_DEADLINE_S
        async with httpx.AsyncClient(base_url=self.base_url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    pytest.fail(f"shop run exited with {self.process.returncode}:\n{self.stderr_tail()}")
                try:
                    if (await client.get("/health")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)  # a polling interval, bounded by the deadline
        pytest.fail(f"shop run did not answer /health within {START_DEADLINE_S}s:\n{self.stderr_tail()}")

    def kill(self) -> None:
        """SIGKILL the whole process group at once: a crash, nothing runs its shutdown."""
        assert self.process is not None
        if self.killed == self.process.pid:
            return
        self.killed = self.process.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)

    async def wait_dead(self) -> None:
        assert self.process is not None
        pgid = self.process.pid
        deadline = time.monotonic() + STOP_DEADLINE_S
        while self.process.poll() is None or _group_members(pgid):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"process group {pgid} still alive after SIGKILL: {_group_members(pgid)}"
                )
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM (a graceful stop), then SIGKILL for whatever of its groups is left."""
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=STOP_DEADLINE_S)
        for pgid in self.pgids:
            if _group_members(pgid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
        if process is not None and process.poll() is None:
            process.wait(timeout=STOP_DEADLINE_S)


@pytest.fixture
def shop_process(tmp_path: Path) -> Iterator[ShopProcess]:
    logs = tmp_path / "logs"
    logs.mkdir()
    shop = ShopProcess(tmp_path / "data", logs, server_port())
    try:
        yield shop
    finally:
        shop.stop()


# -- the client side ------------------------------------------------------------------------


@dataclass
class Customer:
    headers: dict[str, str]
    address_id: str


async def until(check: Callable[[], Awaitable[Any]], *, timeout: float, what: Callable[[], str]) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what()}")
        await asyncio.sleep(0.25)


async def login(client: httpx.AsyncClient, email: str, password: str) -> dict[str, str]:
    response = await client.post("/api/v1/auth/token", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def make_customer(client: httpx.AsyncClient, n: int) -> Customer:
    email = f"crash{n}-{uuid.uuid4().hex[:8]}@example.com"
    response = await client.post(
        "/api/v1/users", json={"email": email, "password": PASSWORD, "name": f"C{n}"}
    )
    assert response.status_code == 201, response.text
    headers = await login(client, email, PASSWORD)
    address = await client.post(
        "/api/v1/users/me/addresses",
        headers=headers,
        json={
            "recipient": f"C{n}",
            "line1": "Main 1",
            "city": "Berlin",
            "postal_code": "10115",
            "country": "DE",
        },
    )
    assert address.status_code == 201, address.text
    return Customer(headers, str(address.json()["id"]))


async def make_product(client: httpx.AsyncClient, admin: dict[str, str], n: int) -> str:
    response = await client.post(
        "/api/v1/products",
        headers=admin,
        json={
            "sku": f"CRASH-{n}-{uuid.uuid4().hex[:8]}",
            "name": f"Crash product {n}",
            "price": 1000 + n,
            "currency": "EUR",
            "stock": STOCK,
        },
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def pages(
    client: httpx.AsyncClient, path: str, headers: dict[str, str], **query: str
) -> list[dict[str, Any]]:
    """Every item of a list endpoint, following its cursor."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(1000):
        params: dict[str, Any] = {"limit": 100, **query}
        if cursor:
            params["cursor"] = cursor
        response = await client.get(path, headers=headers, params=params)
        assert response.status_code == 200, f"{path}: {response.status_code} {response.text}"
        page = response.json()
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if not cursor:
            return items
    raise AssertionError(f"{path} never ended")


@dataclass
class Burst:
    accepted: list[str] = field(default_factory=list)  # ids answered 202, in order
    refused: list[str] = field(default_factory=list)  # any other HTTP answer
    lost: list[str] = field(default_factory=list)  # no answer: the connection died
    captured_seen: int = 0  # CAPTURED payments in the admin's list when the kill came


async def fire_burst(
    client: httpx.AsyncClient,
    shop: ShopProcess,
    admin: dict[str, str],
    customers: list[Customer],
    products: list[str],
    *,
    kill_when: str,
) -> Burst:
    """BURST orders at once; SIGKILL the shop once KILL_AFTER_ACCEPTED got their 202 and,
    with kill_when="captured", once the admin's payment list shows KILL_AFTER_CAPTURED CAPTURED
    payments (sagas are then between a capture and their order's completion)."""
    rng = random.Random(20260101)
    burst = Burst()
    enough = asyncio.Event()
    plan = [
        (
            customers[n % len(customers)],
            rng.choice(products),
            rng.choice((1, 1, 2)),
            "tok_decline" if n % 8 == 5 else "tok_ok",
        )
        for n in range(BURST)
    ]

    async def one(customer: Customer, product: str, quantity: int, token: str) -> None:
        try:
            response = await client.post(
                "/api/v1/orders",
                headers=customer.headers,
                json={
                    "items": [{"product_id": product, "quantity": quantity}],
                    "address_id": customer.address_id,
                    "payment_token": token,
                },
            )
        except httpx.TransportError as exc:
            burst.lost.append(repr(exc))
            return
        if response.status_code != 202:
            burst.refused.append(f"{response.status_code} {response.text[:200]}")
            return
        burst.accepted.append(str(response.json()["id"]))
        if len(burst.accepted) == KILL_AFTER_ACCEPTED:
            if kill_when == "accepted":
                shop.kill()  # right here: nothing else runs between the 202 and the kill
            enough.set()

    async def captured() -> int:
        try:
            response = await client.get("/api/v1/payments", headers=admin, params={"limit": 100})
        except httpx.TransportError:
            return 0
        if response.status_code != 200:
            return 0
        return sum(p["status"] == "CAPTURED" for p in response.json()["items"])

    async def killer(orders: asyncio.Future[list[None]]) -> None:
        waiter = asyncio.ensure_future(enough.wait())
        either: set[asyncio.Future[Any]] = {waiter, orders}
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if kill_when == "captured":
            deadline = time.monotonic() + KILL_WAIT_S
            while burst.captured_seen < KILL_AFTER_CAPTURED and time.monotonic() < deadline:
                burst.captured_seen = await captured()
                if burst.captured_seen < KILL_AFTER_CAPTURED:
                    await asyncio.sleep(0.02)
        shop.kill()

    orders = asyncio.gather(*(one(*order) for order in plan))
    await asyncio.gather(orders, killer(orders))
    return burst


@dataclass
class Snapshot:
    orders: dict[str, dict[str, Any]]
    stock: dict[str, int]
    payments: dict[str, list[dict[str, Any]]]
    deliveries: dict[str, list[dict[str, Any]]]
    parked: list[dict[str, Any]]  # sagas in COMPENSATION_FAILED

    def problems(self, products: list[str]) -> list[str]:
        found: list[str] = []
        for product in products:
            sold = sum(
                item["quantity"]
                for order in self.orders.values()
                if order["status"] == "COMPLETED"
                for item in order["items"]
                if item["product_id"] == product
            )
            if self.stock[product] + sold != STOCK or self.stock[product] < 0:
                found.append(
                    f"product {product}: stock_available {self.stock[product]} + sold {sold} != {STOCK}"
                )
        for order_id, order in self.orders.items():
            statuses = [p["status"] for p in self.payments.get(order_id, [])]
            shipments = [d["status"] for d in self.deliveries.get(order_id, [])]
            captured = statuses.count("CAPTURED")
            charged = captured + statuses.count("REFUNDED")
            if captured > 1 or charged > 1:
                found.append(f"order {order_id} ({order['status']}) charged more than once: {statuses}")
            if order["status"] == "COMPLETED":
                if captured != 1:
                    found.append(
                        f"order {order_id} COMPLETED without exactly one CAPTURED payment: {statuses}"
                    )
                if len(shipments) != 1 or shipments[0] == "CANCELLED":
                    found.append(f"order {order_id} COMPLETED without one live delivery: {shipments}")
            if order["status"] in ("FAILED", "CANCELLED"):
                reason = order["failure_reason"]
                if captured:
                    found.append(f"order {order_id} {order['status']} ({reason}) still CAPTURED: {statuses}")
                if any(d != "CANCELLED" for d in shipments):
                    found.append(
                        f"order {order_id} {order['status']} ({reason}) has a live delivery: {shipments}"
                    )
        strangers = (set(self.payments) | set(self.deliveries)) - set(self.orders)
        if strangers:
            found.append(f"payments or deliveries of orders nobody placed: {sorted(strangers)}")
        return found

    def describe(self, order_id: str) -> str:
        order = self.orders.get(order_id, {})
        return (
            f"order {order_id}: {order.get('status')} ({order.get('failure_reason')}), "
            f"payments {[p['status'] for p in self.payments.get(order_id, [])]}, "
            f"deliveries {[d['status'] for d in self.deliveries.get(order_id, [])]}"
        )


async def snapshot(
    client: httpx.AsyncClient, admin: dict[str, str], customers: list[Customer], products: list[str]
) -> Snapshot:
    orders: dict[str, dict[str, Any]] = {}
    for customer in customers:
        for order in await pages(client, "/api/v1/orders", customer.headers):
            orders[order["id"]] = order
    stock: dict[str, int] = {}
    for product in products:
        response = await client.get(f"/api/v1/products/{product}", headers=admin)
        assert response.status_code == 200, response.text
        stock[product] = int(response.json()["stock_available"])
    payments: dict[str, list[dict[str, Any]]] = {}
    for payment in await pages(client, "/api/v1/payments", admin):
        payments.setdefault(payment["order_id"], []).append(payment)
    deliveries: dict[str, list[dict[str, Any]]] = {}
    for delivery in await pages(client, "/api/v1/deliveries", admin):
        deliveries.setdefault(delivery["order_id"], []).append(delivery)
    parked = await pages(client, "/api/v1/admin/sagas", admin, status="COMPENSATION_FAILED")
    return Snapshot(orders, stock, payments, deliveries, parked)


async def crash_and_recover(shop: ShopProcess, *, kill_when: str, downtime: float = 0.0) -> None:
    """The whole scenario; fails with what it saw. `downtime`: how long the shop stays dead
    (an outage, not a wait for something: there is nothing to poll while it is down)."""
    shop.start()
    await shop.wait_healthy()
    limits = httpx.Limits(max_connections=BURST + 10, max_keepalive_connections=BURST + 10)
    async with httpx.AsyncClient(base_url=shop.base_url, timeout=30.0, limits=limits) as client:
        admin = await login(client, ADMIN["email"], ADMIN["password"])
        products = [await make_product(client, admin, n) for n in range(PRODUCTS)]
        # One after the other: sign-ups hash passwords (argon2id, slow) and are not under test.
        customers = [await make_customer(client, n) for n in range(CUSTOMERS)]

        burst = await fire_burst(client, shop, admin, customers, products, kill_when=kill_when)

    await shop.wait_dead()
    assert len(burst.accepted) >= KILL_AFTER_ACCEPTED, (
        f"too few orders accepted before the crash: {len(burst.accepted)}; refused {burst.refused[:5]}"
    )
    assert len(set(burst.accepted)) == len(burst.accepted)

    await asyncio.sleep(downtime)
    shop.start()
    await shop.wait_healthy()
    async with httpx.AsyncClient(base_url=shop.base_url, timeout=30.0) as client:
        # The tokens outlive the restart: the signing key lives in the data dir.
        last: list[Snapshot] = []

        def seen() -> str:
            return (
                f"accepted {len(burst.accepted)}, lost {len(burst.lost)}, kill on {kill_when}, "
                f"CAPTURED payments seen before the kill: {burst.captured_seen}, down {downtime}s"
            )

        async def all_final() -> bool:
            last[:] = [await snapshot(client, admin, customers, products)]
            now = last[0]
            if now.parked:  # parked for an operator: waiting longer changes nothing
                details = "; ".join(now.describe(s["id"]) for s in now.parked)
                pytest.fail(f"sagas parked in COMPENSATION_FAILED after the restart ({seen()}): {details}")
            return set(burst.accepted) <= set(now.orders) and all(
                o["status"] in FINAL for o in now.orders.values()
            )

        def progress() -> str:
            if not last:
                return "no snapshot yet"
            now = last[0]
            missing = set(burst.accepted) - set(now.orders)
            pending = [now.describe(i) for i, o in now.orders.items() if o["status"] not in FINAL]
            return f"{seen()}; accepted but unknown: {sorted(missing)}; not final: {pending}"

        await until(all_final, timeout=RECOVERY_DEADLINE_S, what=progress)

        # Refunds of captures that landed after their order was given up may still be under way.
        async def consistent() -> bool:
            last[:] = [await snapshot(client, admin, customers, products)]
            return not last[0].problems(products) and not last[0].parked

        try:
            await until(
                consistent, timeout=CONSISTENT_DEADLINE_S, what=lambda: "; ".join(last[0].problems(products))
            )
        except AssertionError as exc:
            pytest.fail(f"{exc} ({seen()})")

    final = last[0]
    assert len(final.orders) <= BURST
    assert "COMPLETED" in [o["status"] for o in final.orders.values()], "no order completed at all"


async def test_a_sigkill_right_after_thirty_orders_were_accepted_loses_none_and_charges_nobody_twice(
    shop_process: ShopProcess,
) -> None:
    await crash_and_recover(shop_process, kill_when="accepted")


async def test_a_sigkill_while_payments_are_being_captured_and_an_outage_past_the_payment_deadline_loses_none_and_charges_nobody_twice(  # noqa: E501
    shop_process: ShopProcess,
) -> None:
    await crash_and_recover(shop_process, kill_when="captured", downtime=OUTAGE_S)
