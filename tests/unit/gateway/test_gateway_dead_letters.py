"""Dead letters through `shop gateway`: admin only at the gateway itself (401 without a token,
403 for a customer, nothing sent upstream), the lists of every service merged, show and redrive
sent to the instance that has the entry."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shop.bus.breaker import BreakerRegistry
from shop.discovery import Instance, MemoryRegistry
from shop.gateway.gateway_app import build_gateway_app
from shop.gateway.proxy import ProxyConfig
from shop.gateway.ratelimit import MemoryRateLimitStore, RateLimiter
from shop.security.tokens import TokenIssuer, TokenVerifier
from shop.settings import RateLimit, Settings

PATH = "/api/v1/admin/dead-letters"
USERS_ENTRY = str(uuid.uuid4())
ORDERS_ENTRY = str(uuid.uuid4())
_KEY = Ed25519PrivateKey.generate()
ISSUER = TokenIssuer(
    _KEY.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
)
PUBLIC = _KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)


def bearer(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {ISSUER.issue(uuid.uuid4(), role)}"}


def entry(entry_id: str, module: str, failed_at: str) -> dict[str, object]:
    return {
        "id": entry_id,
        "module": module,
        "message_type": "Thing",
        "consumer": f"{module}.handle",
        "error": "RuntimeError: down",
        "attempts": 5,
        "failed_at": failed_at,
    }


class Services:
    """users-a holds USERS_ENTRY, orders-a ORDERS_ENTRY; each answers like a shop service."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, str | None]] = []
        self.queries: list[dict[str, str]] = []
        self.entries = {
            "users-a": entry(USERS_ENTRY, "users", "2030-01-01T10:00:00Z"),
            "orders-a": entry(ORDERS_ENTRY, "orders", "2030-01-01T09:00:00Z"),
        }

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        host, path = request.url.host, request.url.path
        self.calls.append((host, request.method, path, request.headers.get("authorization")))
        self.queries.append(dict(request.url.params))
        mine = self.entries[host]
        if path == PATH:
            return httpx.Response(200, json={"items": [mine], "next_cursor": None})
        if path == f"{PATH}/{mine['id']}" and request.method == "GET":
            return httpx.Response(200, json={**mine, "envelope": {"type": "Thing"}})
        if path == f"{PATH}/{mine['id']}/redrive" and request.method == "POST":
            return httpx.Response(202, json={"id": mine["id"], "status": "redriven"})
        return httpx.Response(404, json={"status": 404, "title": "Not Found"})


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[httpx.AsyncClient, Services]]:
    services = Services()
    registry = MemoryRegistry()
    for module in ("users", "orders"):
        routes = ("/api/v1/users",) if module == "users" else ("/api/v1/orders",)
        await registry.register(
            Instance(module=module, instance_id=f"{module}-a", url=f"http://{module}-a:8000", routes=routes)
        )
    async with httpx.AsyncClient(transport=httpx.MockTransport(services)) as upstream:
        app = build_gateway_app(
            Settings(rate_limit=RateLimit.parse("1000/second")),
            registry,
            verifier=TokenVerifier(PUBLIC),
            limiter=RateLimiter(MemoryRateLimitStore()),
            breakers=BreakerRegistry(),
            http_client=upstream,
            config=ProxyConfig(refresh_interval_s=3600),
        )
        transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 5555))
        async with app.running(), httpx.AsyncClient(transport=transport, base_url="http://gw.test") as client:
            yield client, services


ENDPOINTS = [
    ("GET", PATH),
    ("GET", f"{PATH}/{USERS_ENTRY}"),
    ("POST", f"{PATH}/{USERS_ENTRY}/redrive"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
async def test_dead_letters_at_the_gateway_are_401_without_a_token_and_403_for_a_customer(
    gateway: tuple[httpx.AsyncClient, Services], method: str, path: str
) -> None:
    client, services = gateway
    anonymous = await client.request(method, path)
    assert anonymous.status_code == 401
    assert anonymous.headers["content-type"].startswith("application/problem+json")
    assert (await client.request(method, path, headers=bearer("customer"))).status_code == 403
    assert services.calls == [], "refused at the gateway, never sent to a service"


async def test_an_admin_lists_every_service_and_shows_and_redrives_where_the_entry_is(
    gateway: tuple[httpx.AsyncClient, Services],
) -> None:
    client, services = gateway
    admin = bearer("admin")

    listing = await client.get(PATH, headers=admin)
    assert listing.status_code == 200
    assert [item["id"] for item in listing.json()["items"]] == [ORDERS_ENTRY, USERS_ENTRY]  # oldest first
    assert {auth for *_, auth in services.calls} == {admin["Authorization"]}, "the admin's token is forwarded"

    shown = await client.get(f"{PATH}/{USERS_ENTRY}", headers=admin)
    assert (shown.status_code, shown.json()["module"]) == (200, "users")
    redriven = await client.post(f"{PATH}/{ORDERS_ENTRY}/redrive", headers=admin)
    assert (redriven.status_code, redriven.json()["id"]) == (202, ORDERS_ENTRY)
    assert ("orders-a", "POST", f"{PATH}/{ORDERS_ENTRY}/redrive", admin["Authorization"]) in services.calls
    assert (await client.get(f"{PATH}/{uuid.uuid4()}", headers=admin)).status_code == 404


async def test_the_gateway_pages_dead_letters_by_the_services_keyset(
    gateway: tuple[httpx.AsyncClient, Services],
) -> None:
    client, services = gateway
    admin = bearer("admin")

    first = (await client.get(PATH, params={"limit": 1}, headers=admin)).json()
    assert [item["id"] for item in first["items"]] == [ORDERS_ENTRY]
    assert first["next_cursor"] is not None
    assert {q["limit"] for q in services.queries} == {"2"}, "each service is asked for one more than the page"

    services.queries.clear()
    await client.get(PATH, params={"limit": 1, "cursor": first["next_cursor"]}, headers=admin)
    assert {q.get("cursor") for q in services.queries} == {first["next_cursor"]}

    services.calls.clear()
    forged = await client.get(PATH, params={"cursor": "not-ours"}, headers=admin)
    assert forged.status_code == 400
    assert services.calls == [], "a forged cursor is refused at the gateway"
