"""The operator console and the API reference in a real browser, against a real `shop run`.

Headless Chromium is Debian's (/usr/bin/chromium), driven by Playwright for Python; no browser
is ever downloaded. Every request the pages make to anywhere but the shop is refused and
recorded: the pages must work with no internet. Without Chromium or Playwright the tests skip
with the reason, except under CI=true, where that is a failure.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import msgspec
import pytest

from shop.settings import Settings

from ..ports import server_port

try:
    from playwright.sync_api import expect
except ImportError:  # the browser fixture skips (or fails under CI) with the reason
    expect = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Route

ROOT = Path(__file__).resolve().parents[2]
SHOP = ROOT / ".venv" / "bin" / "shop"
CHROMIUM = Path(os.environ.get("SHOP_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
IN_CI = os.environ.get("CI", "").lower() == "true"
ADMIN = {"email": "admin@example.com", "password": "console-admin-password"}
CUSTOMER = {"email": "carla@example.com", "password": "carla-password", "name": "Carla"}
ADDRESS = {"recipient": "Carla", "line1": "Main 1", "city": "Berlin", "postal_code": "10115", "country": "DE"}
FINAL = ("COMPLETED", "FAILED", "CANCELLED")
START_DEADLINE_S = 60.0
UI_TIMEOUT_MS = 20_000  # the console refreshes every 5 s; a change shows within two rounds

pytestmark = pytest.mark.e2e


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing browser is a failure, not a skip)")
    pytest.skip(reason)


def until(check: Callable[[], Any], *, timeout: float, what: str) -> Any:
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
        time.sleep(0.1)  # polling interval, bounded by the deadline
    raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")


@dataclass
class Shop:
    """A running `shop run`, and an HTTP client on it."""

    url: str
    data_dir: Path
    client: httpx.Client
    admin: dict[str, str] = field(default_factory=dict)

    def login(self, email: str, password: str) -> dict[str, str]:
        response = self.client.post("/api/v1/auth/token", json={"email": email, "password": password})
        assert response.status_code == 200, response.text
        return {"Authorization": f"Bearer {response.json()['access_token']}"}

    def bury_dead_letter(self, email: str) -> str:
        """A sign-up whose handling failed for the last time, in the users module's dead-letter
        store (the shop keeps running; SQLite in WAL mode takes the second writer)."""
        from shop.bus import inbox
        from shop.bus.messages import new_envelope
        from shop.contracts.users import RegisterUser
        from shop.db import Database

        async def bury() -> uuid.UUID:
            url = Settings.from_env({"SHOP_DATA_DIR": str(self.data_dir)}).database_url_for("users")
            database = Database("users", url)
            try:
                envelope = new_envelope(RegisterUser(email=email, password="redriven-password", name="Dee"))
                dead = msgspec.structs.replace(envelope, consumer="users.register_user", attempt=5)
                return await inbox.bury(database, "users", dead, "RuntimeError: the database was down")
            finally:
                await database.dispose()

        # In a thread of its own: Playwright's sync API keeps an event loop on this one.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return str(pool.submit(asyncio.run, bury()).result())


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    tmp = tmp_path_factory.mktemp("console")
    port = server_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOP_")}
    env.update(SHOP_DATA_DIR=str(tmp / "data"), SHOP_ADMIN_EMAIL=ADMIN["email"])
    env["SHOP_ADMIN_PASSWORD"] = ADMIN["password"]
    log = (tmp / "shop.log").open("wb")
    process = subprocess.Popen(
        [str(SHOP), "run", "--port", str(port)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=10.0) as client:

            def healthy() -> bool:
                if process.poll() is not None:
                    log_text = (tmp / "shop.log").read_text(errors="replace")[-4000:]
                    pytest.fail(f"shop run exited with {process.returncode}:\n{log_text}")
                return client.get("/health", timeout=1.0).status_code == 200

            until(healthy, timeout=START_DEADLINE_S, what="shop run answers /health")
            running = Shop(url, tmp / "data", client)
            running.admin = running.login(ADMIN["email"], ADMIN["password"])
            yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=20)
        log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (it is in the dev extra: make install)")
    if not CHROMIUM.exists():
        _unavailable(f"no Chromium at {CHROMIUM} (Debian: apt-get install -y chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Tab:
    """A page whose requests may reach only the shop; the others are refused and recorded, and
    so are uncaught script errors and what the page's Content-Security-Policy blocked."""

    page: Page
    elsewhere: list[str]
    errors: list[str]


@pytest.fixture
def tab(browser: Browser, shop: Shop) -> Iterator[Tab]:
    context = browser.new_context()
    elsewhere: list[str] = []
    errors: list[str] = []

    def offline(route: Route) -> None:
        if route.request.url.startswith(shop.url + "/"):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort("internetdisconnected")

    context.route("**/*", offline)
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    page.on("pageerror", lambda error: errors.append(str(error)))
    # What the pages' Content-Security-Policy refuses never reaches the network: count it too.
    page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
    try:
        yield Tab(page, elsewhere, errors)
    finally:
        context.close()
    assert elsewhere == [], "the page tried to load something from outside the shop"
    assert errors == [], "the page raised errors"


def place_orders(shop: Shop) -> dict[str, str]:
    """One order that completes (tok_ok) and one whose payment is declined (tok_decline)."""
    product = shop.client.post(
        "/api/v1/products",
        headers=shop.admin,
        json={"sku": "CONSOLE-1", "name": "Lamp", "price": 4900, "currency": "EUR", "stock": 10},
    )
    assert product.status_code == 201, product.text
    assert shop.client.post("/api/v1/users", json=CUSTOMER).status_code == 201
    customer = shop.login(CUSTOMER["email"], CUSTOMER["password"])
    address = shop.client.post("/api/v1/users/me/addresses", headers=customer, json=ADDRESS)
    assert address.status_code == 201, address.text
    orders: dict[str, str] = {}
    for token in ("tok_ok", "tok_decline"):
        placed = shop.client.post(
            "/api/v1/orders",
            headers=customer,
            json={
                "items": [{"product_id": product.json()["id"], "quantity": 1}],
                "address_id": address.json()["id"],
                "payment_token": token,
            },
        )
        assert placed.status_code == 202, placed.text
        orders[token] = placed.json()["id"]

    def final(order_id: str) -> dict[str, Any] | None:
        order: dict[str, Any] = shop.client.get(f"/api/v1/orders/{order_id}", headers=customer).json()
        return order if order["status"] in FINAL else None

    ok = until(lambda: final(orders["tok_ok"]), timeout=30, what="the tok_ok order final")
    declined = until(lambda: final(orders["tok_decline"]), timeout=30, what="the tok_decline order final")
    assert ok["status"] == "COMPLETED"
    assert (declined["status"], declined["failure_reason"]) == ("CANCELLED", "PAYMENT_DECLINED")
    return orders


def sign_in(page: Page, shop: Shop, email: str, password: str) -> None:
    page.goto(f"{shop.url}/admin")
    page.fill("#email", email)
    page.fill("#password", password)
    page.click("#sign-in-button")


def saga_row(page: Page, saga_id: str) -> Any:
    return page.locator(f'#saga-list tr[data-saga-id="{saga_id}"]')


@pytest.mark.timeout(240)
def test_an_operator_watches_sagas_and_services_and_redrives_a_dead_letter_in_the_console(
    tab: Tab, shop: Shop
) -> None:
    page = tab.page
    orders = place_orders(shop)
    sagas = {s["id"]: s for s in shop.client.get("/api/v1/admin/sagas", headers=shop.admin).json()["items"]}
    assert sagas[orders["tok_ok"]]["status"] == "COMPLETED"
    assert (sagas[orders["tok_decline"]]["status"], sagas[orders["tok_decline"]]["failure_reason"]) == (
        "CANCELLED",
        "PAYMENT_DECLINED",
    )

    sign_in(page, shop, ADMIN["email"], ADMIN["password"])
    page.wait_for_selector("#console:not([hidden])")
    assert page.inner_text("#who") == ADMIN["email"]
    assert page.evaluate("sessionStorage.getItem('shop.console.token')")

    # Services and breakers: what GET /api/v1/services says, module by module.
    services = shop.client.get("/api/v1/services", headers=shop.admin).json()
    page.wait_for_selector("#instances tr[data-module]")
    for module in services["modules"]:
        row = page.locator(f'#instances tr[data-module="{module}"]')
        assert row.count() == 1, module
        assert "healthy" in row.inner_text()
    assert services["breakers"], "the orders placed went through breakers"
    for name, state in services["breakers"].items():
        page.wait_for_selector(f'#breakers tr[data-breaker="{name}"][data-state="{state}"]')

    # Both orders' sagas, with their statuses; the declined one says why.
    completed = saga_row(page, orders["tok_ok"])
    declined = saga_row(page, orders["tok_decline"])
    completed.wait_for()
    assert completed.get_attribute("data-status") == "COMPLETED"
    assert declined.get_attribute("data-status") == "CANCELLED"
    assert "PAYMENT_DECLINED" in declined.inner_text()
    assert "place_order" in completed.inner_text()
    assert page.inner_text('#saga-summary [data-status="COMPLETED"]') == "COMPLETED 1"
    assert page.inner_text('#saga-summary [data-status="CANCELLED"]') == "CANCELLED 1"

    # Filtered by status, only that status is listed.
    page.select_option("#saga-filter", "COMPLETED")
    declined.wait_for(state="detached")
    assert completed.is_visible()
    page.select_option("#saga-filter", "")
    declined.wait_for()

    # A saga's timeline: the steps the API records, in order.
    timeline = shop.client.get(f"/api/v1/admin/sagas/{orders['tok_ok']}/timeline", headers=shop.admin).json()
    expected = [(entry["step"], entry["status"]) for entry in timeline["items"]]
    assert expected[-1] == ("place_order", "COMPLETED")
    completed.locator("button.timeline").click()
    expect(page.locator("#timeline tr[data-step]")).to_have_count(len(expected))
    assert page.inner_text("#timeline-saga") == orders["tok_ok"]
    shown = page.eval_on_selector_all(
        "#timeline tr[data-step]", "rows => rows.map(r => [r.dataset.step, r.dataset.status])"
    )
    assert [tuple(step) for step in shown] == expected

    # A dead letter appears by itself (the console refreshes), with its error; shown, then redriven.
    email = f"dee-{uuid.uuid4().hex[:8]}@example.com"
    entry_id = shop.bury_dead_letter(email)
    dead = page.locator(f'#dead-letter-list tr[data-dead-letter-id="{entry_id}"]')
    dead.wait_for()
    assert "RuntimeError: the database was down" in dead.inner_text()
    assert "RegisterUser" in dead.inner_text()
    dead.locator("button.show").click()
    expect(page.locator("#dead-letter-envelope")).to_contain_text(email)
    expect(page.locator("#dead-letter-error")).to_contain_text("RuntimeError: the database was down")

    dead.locator("button.redrive").click()
    dead.wait_for(state="detached")
    expect(page.locator("#notice")).to_contain_text(f"Dead letter {entry_id} redriven")
    assert page.is_hidden("#dead-letter")
    expect(page.locator("#dead-letter-list tr.empty")).to_contain_text("no dead letter")
    listed = shop.client.get("/api/v1/admin/dead-letters", headers=shop.admin).json()["items"]
    assert entry_id not in [item["id"] for item in listed]
    credentials = {"email": email, "password": "redriven-password"}
    until(lambda: shop.client.post("/api/v1/auth/token", json=credentials).status_code == 200,
          timeout=30, what="the redriven sign-up handled (its user can sign in)")  # fmt: skip

    page.click("#sign-out")
    page.wait_for_selector("#sign-in:not([hidden])")
    assert page.evaluate("sessionStorage.getItem('shop.console.token')") is None


def test_a_customer_is_refused_and_sees_why(tab: Tab, shop: Shop) -> None:
    page = tab.page
    email = f"cust-{uuid.uuid4().hex[:8]}@example.com"
    user = {"email": email, "password": "password123", "name": "C"}
    signed_up = shop.client.post("/api/v1/users", json=user)
    assert signed_up.status_code == 201
    customer = shop.login(email, "password123")
    assert shop.client.get("/api/v1/services", headers=customer).status_code == 403

    sign_in(page, shop, email, "wrong-password")
    page.wait_for_selector("#sign-in-error:not([hidden])")
    assert page.inner_text("#sign-in-error") == "Wrong email or password."

    sign_in(page, shop, email, "password123")
    page.wait_for_selector("#sign-in-error:not([hidden])")
    refusal = page.inner_text("#sign-in-error")
    assert "not an admin" in refusal
    assert "403" in refusal
    assert page.is_hidden("#console")
    assert page.locator("#saga-list tr[data-saga-id]").count() == 0
    assert page.evaluate("sessionStorage.getItem('shop.console.token')") is None


def test_the_api_reference_renders_every_operation_offline(tab: Tab, shop: Shop) -> None:
    page = tab.page
    document = shop.client.get("/schema/openapi.json").json()
    operations = sum(
        1 for item in document["paths"].values() for method in item if method in ("get", "post", "patch")
    )

    page.goto(f"{shop.url}/schema")

    page.wait_for_selector(".opblock")
    assert page.locator(".opblock").count() == operations
    timeline = page.locator('.opblock-summary-path[data-path="/api/v1/admin/sagas/{saga_id}/timeline"]')
    assert timeline.count() == 1
    assert page.locator(".auth-wrapper .authorize").count() == 1  # bearer tokens can be tried out
