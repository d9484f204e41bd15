"""The split deployment as real processes: Redis, the five modules as services (catalog twice),
and `shop gateway` in front — the same API as `shop run`, and faults isolated per module."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from ..ports import server_port

ROOT = Path(__file__).resolve().parents[2]
SHOP = str(ROOT / ".venv" / "bin" / "shop")
ADDRESS = {"recipient": "R", "line1": "Main 1", "city": "Berlin", "postal_code": "10115", "country": "DE"}
ADMIN = {"email": "admin@example.com", "password": "adminpassword"}
FINAL = ("COMPLETED", "FAILED", "CANCELLED")
START_DEADLINE_S = 90.0

pytestmark = pytest.mark.e2e


def free_port() -> int:
    """A free port for a server that is not granian (it is free now, not kept)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def until(check: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (granian's workers do not stay in the server's process group)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(process: subprocess.Popen[bytes]) -> None:
    """A crash: SIGKILL a server and all its workers at once."""
    for pid in [process.pid, *descendants(process.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait(timeout=10)


@dataclass
class Deployment:
    """Processes by name, and how to start, kill and restart them."""

    data_dir: Path
    env: dict[str, str]
    gateway_port: int
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    commands: dict[str, list[str]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def start(self, name: str, *args: str, port: int | None = None) -> None:
        port = port or self.ports.get(name) or server_port()
        self.ports[name] = port
        command = [SHOP, *args, "--port", str(port)]
        self.commands[name] = command
        log = (self.data_dir / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            command, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
        )

    def restart(self, name: str) -> None:
        log = (self.data_dir / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            self.commands[name],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )

    def kill(self, name: str) -> None:
        """A crash: the service's whole process tree (server and worker) dies at once."""
        process = self.processes[name]
        kill_tree(process)

    def stop_all(self) -> None:
        workers = [pid for process in self.processes.values() for pid in descendants(process.pid)]
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                kill_tree(process)
        for pid in workers:  # none should be left; a stray one would heartbeat on
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def services(self, client: httpx.Client, admin: dict[str, str]) -> dict[str, Any]:
        response = client.get("/api/v1/services", headers=admin)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def breakers_of(self, name: str, admin: dict[str, str]) -> dict[str, str]:
        """One process's breakers, from its own GET /api/v1/services (the gateway's view shows
        the gateway's breakers; a service's shows those of its bus and its providers)."""
        port = self.gateway_port if name == "gateway" else self.ports[name]
        response = httpx.get(f"http://127.0.0.1:{port}/api/v1/services", headers=admin, timeout=10)
        assert response.status_code == 200, response.text
        return dict(response.json()["breakers"])

    def healthy_instances(
        self, client: httpx.Client, admin: dict[str, str], module: str
    ) -> list[dict[str, Any]]:
        return [i for i in self.services(client, admin)["modules"].get(module, []) if i["healthy"]]

    def metrics(self, name: str) -> Samples:
        """One process's /metrics, parsed."""
        port = self.gateway_port if name == "gateway" else self.ports[name]
        response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert response.status_code == 200, response.text
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        }


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metric(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def _pg(url: str, *statements: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite"])
def split_backend(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """The database URL of the split deployment: None for SQLite files; a private PostgreSQL
    database (one schema per module) when parametrized with "postgres"."""
    if request.param != "postgres":
        yield None
        return
    server: str = request.getfixturevalue("postgres_url")
    name = f"shop_e2e_split_{os.getpid()}"
    drop = f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
    asyncio.run(_pg(server, drop, f'CREATE DATABASE "{name}"'))
    try:
        yield server.rsplit("/", 1)[0] + f"/{name}"
    finally:
        asyncio.run(_pg(server, drop))


@pytest.fixture
def split_env() -> dict[str, str]:
    """Settings of every process of the deployment on top of the defaults below."""
    return {}


@pytest.fixture
def split(
    tmp_path: Path, redis_url: str, split_backend: str | None, split_env: dict[str, str]
) -> Iterator[Deployment]:
    namespace = f"e2e{uuid.uuid4().hex[:8]}"
    base = redis_url.rsplit("/", 1)[0]
    env = {
        **os.environ,
        "SHOP_DATA_DIR": str(tmp_path),
        "SHOP_REDIS_URL": f"{base}/14",
        "SHOP_TRANSPORT": "dramatiq",
        "SHOP_ADMIN_EMAIL": ADMIN["email"],
        "SHOP_ADMIN_PASSWORD": ADMIN["password"],
        "SHOP_RATE_LIMIT": "100000/second",
        "SHOP_PAYMENT_DEADLINE_S": "300",
        "SHOP_LOG_LEVEL": "INFO",
        "SHOP_NAMESPACE": namespace,
        **split_env,
    }
    if split_backend is not None:
        env["SHOP_DATABASE_URL"] = split_backend
    redis.Redis.from_url(f"{base}/14").flushdb()
    subprocess.run([SHOP, "migrate"], env=env, cwd=ROOT, check=True, capture_output=True, timeout=120)
    make_keys = "from shop.settings import Settings; from shop.security.keys import load_keys; " + (
        "load_keys(Settings.from_env())"
    )
    python = str(ROOT / ".venv/bin/python")
    subprocess.run([python, "-c", make_keys], env=env, cwd=ROOT, check=True, timeout=60)
    deployment = Deployment(tmp_path, env, server_port())
    try:
        deployment.start("users", "serve", "users")
        deployment.start("catalog-1", "serve", "catalog")
        deployment.start("catalog-2", "serve", "catalog")
        deployment.start("orders", "serve", "orders")
        deployment.start("payments", "serve", "payments")
        deployment.start("delivery", "serve", "delivery")
        deployment.start("gateway", "gateway", port=deployment.gateway_port)
        with httpx.Client(base_url=deployment.url, timeout=10) as client:
            until(
                lambda: client.get("/health").status_code == 200, timeout=START_DEADLINE_S, what="gateway up"
            )
            admin = until(lambda: login(client, ADMIN["email"], ADMIN["password"]), timeout=START_DEADLINE_S,
                          what="users service up")  # fmt: skip

            def all_registered() -> bool:
                modules = deployment.services(client, admin)["modules"]
                counts = {m: len([i for i in modules.get(m, []) if i["healthy"]]) for m in
                          ("users", "catalog", "orders", "payments", "delivery")}  # fmt: skip
                return all(
                    counts[m] >= n
                    for m, n in {"users": 1, "catalog": 2, "orders": 1, "payments": 1, "delivery": 1}.items()
                )

            until(all_registered, timeout=START_DEADLINE_S, what="every instance registered")
        yield deployment
    finally:
        deployment.stop_all()
        redis.Redis.from_url(f"{base}/14").flushdb()


def login(client: httpx.Client, email: str, password: str) -> dict[str, str] | None:
    response = client.post("/api/v1/auth/token", json={"email": email, "password": password})
    if response.status_code != 200:
        return None
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


@dataclass
class Journey:
    client: httpx.Client
    admin: dict[str, str]

    def customer(self) -> dict[str, str]:
        email = f"c-{uuid.uuid4().hex[:10]}@example.com"
        assert (
            self.client.post(
                "/api/v1/users", json={"email": email, "password": "password123", "name": "C"}
            ).status_code
            == 201
        )
        headers = login(self.client, email, "password123")
        assert headers is not None
        return headers

    def address(self, headers: dict[str, str]) -> str:
        response = self.client.post(
            "/api/v1/users/me/addresses",
            headers=headers,
            json=ADDRESS,
        )
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def product(self, stock: int) -> str:
        response = self.client.post(
            "/api/v1/products", headers=self.admin,
            json={"sku": f"E2E-{uuid.uuid4().hex[:8]}", "name": "Mug", "price": 900, "currency": "EUR",
                  "stock": stock},
        )  # fmt: skip
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def place(
        self, headers: dict[str, str], product: str, quantity: int, address: str, token: str = "tok_ok"
    ) -> str:
        response = self.client.post(
            "/api/v1/orders", headers=headers,
            json={"items": [{"product_id": product, "quantity": quantity}], "address_id": address,
                  "payment_token": token},
        )  # fmt: skip
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    def order(self, headers: dict[str, str], order_id: str) -> dict[str, Any]:
        response = self.client.get(f"/api/v1/orders/{order_id}", headers=headers)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def list(self, path: str, order_id: str, headers: dict[str, str]) -> list[dict[str, Any]]:
        return list(self.client.get(path, params={"order_id": order_id}, headers=headers).json()["items"])

    def settle(self, headers: dict[str, str], order_id: str, timeout: float = 60) -> dict[str, Any]:
        return dict(
            until(
                lambda: (o := self.order(headers, order_id))["status"] in FINAL and o,
                timeout=timeout,
                what=f"order {order_id} final",
            )
        )


@pytest.fixture
def journey(split: Deployment) -> Iterator[Journey]:
    with httpx.Client(base_url=split.url, timeout=15) as client:
        admin = login(client, ADMIN["email"], ADMIN["password"])
        assert admin is not None
        yield Journey(client, admin)


@pytest.mark.parametrize("split_backend", ["sqlite", "postgres"], indirect=True)
def test_the_whole_journey_through_the_gateway(split: Deployment, journey: Journey) -> None:
    customer = journey.customer()
    address = journey.address(customer)
    product = journey.product(stock=5)
    order_id = journey.place(customer, product, 2, address)
    order = journey.settle(customer, order_id)
    assert (order["status"], order["total"]) == ("COMPLETED", 1800)
    payments = journey.client.get("/api/v1/payments", params={"order_id": order_id}, headers=customer).json()
    assert [p["status"] for p in payments["items"]] == ["CAPTURED"]
    deliveries = until(
        lambda: journey.list("/api/v1/deliveries", order_id, customer),
        timeout=20, what="a delivery",
    )  # fmt: skip
    assert deliveries[0]["status"] == "PREPARING"
    assert journey.client.get(f"/api/v1/products/{product}").json()["stock_available"] == 3
    refused = journey.client.post("/api/v1/users", json={"email": "x", "password": "short", "name": ""})
    assert refused.status_code == 400
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.headers["x-request-id"]

    # Every process's /metrics shows its part of the journey (each process is new: exact counts).
    placed = {"method": "POST", "route": "/api/v1/orders", "status": "202"}
    gateway = split.metrics("gateway")
    assert metric(gateway, "shop_http_requests_total", **placed) == 1
    assert metric(gateway, "shop_registry_instances", module="catalog", healthy="true") == 2
    assert {v for (name, _), v in gateway.items() if name == "shop_breaker_state"} == {0.0}
    orders = until(
        lambda: (m := split.metrics("orders"))
        and metric(m, "shop_sagas_finished_total", type="place_order", status="COMPLETED") == 1
        and m,
        timeout=20, what="the saga counted finished",
    )  # fmt: skip
    assert metric(orders, "shop_http_requests_total", **placed) == 1
    placing = {"consumer": "orders.place_order", "type": "orders.PlaceOrder.v1"}
    assert metric(orders, "shop_bus_messages_handled_total", **placing) == 1
    assert metric(orders, "shop_sagas_active", type="place_order", status="WAITING") == 0
    assert ("shop_bus_queue_depth", frozenset({("queue", "orders")})) in orders
    reserved = {"consumer": "catalog.reserve_stock", "type": "catalog.ReserveStock.v1"}
    catalogs = [split.metrics(name) for name in ("catalog-1", "catalog-2")]
    assert sum(metric(m, "shop_bus_messages_handled_total", **reserved) for m in catalogs) == 1
    assert metric(split.metrics("delivery"), "shop_bus_messages_handled_total",
                  consumer="delivery.prepare_delivery", type="orders.OrderCompleted.v1") == 1  # fmt: skip

    # Operators, through the gateway: the saga's timeline by its id, the console and the reference.
    saga = journey.client.get(f"/api/v1/admin/sagas/{order_id}/timeline", headers=journey.admin)
    assert saga.status_code == 200, saga.text
    timeline = journey.client.get(f"/api/v1/orders/{order_id}/timeline", headers=customer).json()
    assert saga.json()["items"] == timeline["items"]
    assert journey.client.get(f"/api/v1/admin/sagas/{order_id}/timeline", headers=customer).status_code == 403
    document = journey.client.get("/schema/openapi.json").json()
    assert "/api/v1/admin/sagas/{saga_id}/timeline" in document["paths"]
    for page, files in {
        "/schema": ["/schema/assets/swagger-ui-bundle.js", "/schema/assets/reference.js"],
        "/admin": ["/admin/static/console.js", "/admin/static/console.css"],
    }.items():
        html = journey.client.get(page)
        assert html.status_code == 200
        for file in files:
            assert f'"{file}"' in html.text
            assert journey.client.get(file).status_code == 200, file


def test_payments_down_mid_saga_keeps_the_rest_serving_and_the_order_completes_once_it_is_back(
    split: Deployment, journey: Journey
) -> None:
    customer = journey.customer()
    address = journey.address(customer)
    product = journey.product(stock=5)
    split.kill("payments")
    order_id = journey.place(customer, product, 1, address)
    started = time.monotonic()
    # catalog and users keep answering while payments is gone
    assert journey.client.get(f"/api/v1/products/{product}").status_code == 200
    assert journey.client.get("/api/v1/users/me", headers=customer).status_code == 200
    assert time.monotonic() - started < 10
    until(lambda: journey.order(customer, order_id)["status"] == "AWAITING_PAYMENT", timeout=30,
          what="order waits for payment")  # fmt: skip
    assert (
        journey.client.get("/api/v1/payments", params={"order_id": order_id}, headers=customer).status_code
        == 503
    )
    split.restart("payments")
    order = journey.settle(customer, order_id, timeout=90)
    assert order["status"] == "COMPLETED"
    payments = until(
        lambda: journey.list("/api/v1/payments", order_id, customer),
        timeout=30, what="payments answering",
    )  # fmt: skip
    assert [p["status"] for p in payments] == ["CAPTURED"], "charged exactly once"


class TestAPaymentProviderOutage:
    """The provider fails every call (`tok_error`): its breaker opens in the payments process,
    and nothing else does -- payments and orders keep answering their customers, and the orders
    end as a payment outage ends (API.md: `CANCELLED`/`PAYMENT_TIMEOUT`), their stock released."""

    @pytest.fixture
    def split_env(self) -> dict[str, str]:
        # A short payment deadline, and a provider breaker that stays open for the whole test.
        return {"SHOP_PAYMENT_DEADLINE_S": "8", "SHOP_PAYMENT_PROVIDER_BREAKER_WAIT_S": "300"}

    def test_opens_only_the_provider_breaker_and_payments_and_orders_reads_stay_up(
        self, split: Deployment, journey: Journey
    ) -> None:
        started = time.monotonic()
        customer = journey.customer()
        address = journey.address(customer)
        product = journey.product(stock=5)
        bystander = journey.customer()
        orders = [journey.place(customer, product, 1, address, token="tok_error") for _ in range(3)]

        until(lambda: split.breakers_of("payments", journey.admin).get("provider:simulated") == "OPEN",
              timeout=30, what="the provider breaker OPEN in the payments process")  # fmt: skip

        def reads_answer() -> None:
            for headers in (customer, bystander):
                for path in ("/api/v1/payments", "/api/v1/orders"):
                    response = journey.client.get(path, headers=headers)
                    assert response.status_code == 200, (path, response.status_code, response.text)
            for order_id in orders:
                assert journey.order(customer, order_id)["id"] == order_id
                listed = journey.client.get("/api/v1/payments", params={"order_id": order_id},
                                            headers=customer)  # fmt: skip
                assert listed.status_code == 200, listed.text

        def module_breakers_closed() -> set[str]:
            """Every process's `module:payments:*` breakers, all CLOSED, and the gateway's too."""
            seen: set[str] = set()
            for name in ("orders", "payments", "catalog-1", "catalog-2", "users", "delivery"):
                for breaker, state in split.breakers_of(name, journey.admin).items():
                    if breaker.startswith("module:payments:"):
                        assert state == "CLOSED", (name, breaker, state)
                        seen.add(breaker)
            assert set(split.breakers_of("gateway", journey.admin).values()) <= {"CLOSED"}
            return seen

        for _ in range(5):  # while the provider's breaker is open
            reads_answer()
        assert "module:payments:queries" in module_breakers_closed()

        settled = [journey.settle(customer, order_id, timeout=40) for order_id in orders]
        assert {(o["status"], o["failure_reason"]) for o in settled} == {("CANCELLED", "PAYMENT_TIMEOUT")}
        until(lambda: journey.client.get(f"/api/v1/products/{product}").json()["stock_available"] == 5,
              timeout=20, what="the orders' stock released")  # fmt: skip
        for order_id in orders:
            statuses = [p["status"] for p in journey.list("/api/v1/payments", order_id, customer)]
            assert statuses, order_id
            assert "CAPTURED" not in statuses, statuses

        # The sagas voided their payments by asking payments (through `module:payments:commands`
        # in the orders process) while the provider's breaker was still open.
        assert split.breakers_of("payments", journey.admin)["provider:simulated"] == "OPEN"
        assert {"module:payments:queries", "module:payments:commands"} <= module_breakers_closed()
        # The operator sees the same through the gateway: each service's own breakers.
        seen = split.services(journey.client, journey.admin)["services"]
        payments_url = f"http://127.0.0.1:{split.ports['payments']}"
        assert seen[payments_url]["breakers"]["provider:simulated"] == "OPEN"
        assert all(
            state == "CLOSED"
            for view in seen.values()
            for name, state in (view["breakers"] or {}).items()
            if name.startswith("module:")
        )
        reads_answer()
        assert time.monotonic() - started < 60


def test_one_catalog_instance_killed_reads_fail_over_and_its_entry_leaves_the_registry(
    split: Deployment, journey: Journey
) -> None:
    product = journey.product(stock=3)
    split.kill("catalog-1")
    for _ in range(10):
        assert journey.client.get(f"/api/v1/products/{product}").status_code == 200
    until(lambda: len(split.healthy_instances(journey.client, journey.admin, "catalog")) == 1, timeout=30,
          what="the dead instance no longer healthy")  # fmt: skip


def test_with_no_delivery_instance_only_delivery_answers_503(split: Deployment, journey: Journey) -> None:
    customer = journey.customer()
    split.kill("delivery")
    until(lambda: not split.healthy_instances(journey.client, journey.admin, "delivery"), timeout=30,
          what="delivery gone from the registry")  # fmt: skip
    response = journey.client.get("/api/v1/deliveries", headers=customer)
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) >= 1
    assert response.headers["content-type"].startswith("application/problem+json")
    assert journey.client.get("/api/v1/products").status_code == 200
    assert journey.client.get("/api/v1/users/me", headers=customer).status_code == 200
    assert journey.client.get("/api/v1/orders", headers=customer).status_code == 200


def test_operators_see_and_redrive_every_services_dead_letters_through_the_gateway(
    split: Deployment, journey: Journey
) -> None:
    from shop.bus import inbox
    from shop.bus.messages import new_envelope
    from shop.contracts.users import RegisterUser
    from shop.db import Database

    email = f"dead-{uuid.uuid4().hex[:8]}@example.com"
    envelope = new_envelope(RegisterUser(email=email, password="longenough1", name="Dee"))

    async def bury() -> uuid.UUID:
        database = Database("users", f"sqlite+aiosqlite:///{split.data_dir / 'users.db'}")
        try:
            dead = msgspec.structs.replace(envelope, consumer="users.register_user", attempt=5)
            return await inbox.bury(database, "users", dead, "RuntimeError: the database was down")
        finally:
            await database.dispose()

    entry_id = asyncio.run(bury())
    listing = journey.client.get("/api/v1/admin/dead-letters", headers=journey.admin)
    assert listing.status_code == 200, listing.text
    assert [item["id"] for item in listing.json()["items"]] == [str(entry_id)]
    shown = journey.client.get(f"/api/v1/admin/dead-letters/{entry_id}", headers=journey.admin)
    assert shown.status_code == 200
    assert shown.json()["envelope"]["body"]["email"] == email
    customer = journey.customer()
    for method, path in [
        ("GET", "/api/v1/admin/dead-letters"),
        ("GET", f"/api/v1/admin/dead-letters/{entry_id}"),
        ("POST", f"/api/v1/admin/dead-letters/{entry_id}/redrive"),
    ]:
        assert journey.client.request(method, path).status_code == 401, path
        assert journey.client.request(method, path, headers=customer).status_code == 403, path

    redriven = journey.client.post(f"/api/v1/admin/dead-letters/{entry_id}/redrive", headers=journey.admin)
    assert redriven.status_code == 202
    until(lambda: login(journey.client, email, "longenough1"), timeout=30, what="redriven sign-up handled")
    assert journey.client.get("/api/v1/admin/dead-letters", headers=journey.admin).json()["items"] == []
    again = journey.client.post(f"/api/v1/admin/dead-letters/{entry_id}/redrive", headers=journey.admin)
    assert again.status_code == 404
