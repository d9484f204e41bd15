"""Fixtures for the users module and the gateway, driven in process through `shop run`'s app.

`open_shop(**overrides)` builds the app with `create_app(Settings.from_env({}, ...))` on a data
dir under tmp_path and runs its lifespan; `Api` wraps the client with the few calls every test
needs (sign up, log in, bearer headers) and a check of the problem+json shape.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from shop.app import Shop, build_app, build_shop, create_app
from shop.gateway.ratelimit import MemoryRateLimitStore
from shop.security.keys import PRIVATE_FILE
from shop.security.tokens import TokenIssuer
from shop.settings import Settings

PASSWORD = "correct horse battery"
PROBLEM_JSON = "application/problem+json"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """The response is an RFC 9457 problem with this status; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    body: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail"} <= body.keys()
    assert body["status"] == status
    for key in ("type", "title", "detail"):
        assert isinstance(body[key], str), body
        assert body[key], body
    if status == 400:
        assert body["errors"], body
        for error in body["errors"]:
            assert {"field", "message"} <= error.keys()
    return body


def error_fields(response: httpx.Response) -> set[str]:
    """The fields a 400 problem names."""
    return {error["field"] for error in assert_problem(response, 400)["errors"]}


class Api:
    """A running shop app and a client for it."""

    def __init__(self, app: Litestar, client: AsyncTestClient[Litestar], data_dir: Path) -> None:
        self.app = app
        self.client = client
        self.data_dir = data_dir

    @property
    def shop(self) -> Shop:
        shop: Shop = self.app.state["shop"]
        return shop

    async def sign_up(
        self, email: str | None = None, password: str = PASSWORD, name: str = "Ada Lovelace", **extra: Any
    ) -> dict[str, Any]:
        email = email or f"user-{uuid.uuid4().hex[:10]}@example.com"
        response = await self.client.post(
            "/api/v1/users", json={"email": email, "password": password, "name": name, **extra}
        )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    async def login(self, email: str, password: str = PASSWORD) -> str:
        response = await self.client.post("/api/v1/auth/token", json={"email": email, "password": password})
        assert response.status_code == 200, response.text
        token: str = response.json()["access_token"]
        return token

    async def customer(self, email: str | None = None) -> tuple[dict[str, Any], dict[str, str]]:
        """A new customer and the headers that authenticate as them."""
        user = await self.sign_up(email)
        return user, bearer(await self.login(user["email"]))

    def signed_token_headers(self, role: str = "customer") -> dict[str, str]:
        """Headers with a genuine token (the app's own key) for a user id nobody signed up with.

        Cheap (no argon2): for requests that must be refused before any user is looked up.
        """
        issuer = TokenIssuer((self.data_dir / PRIVATE_FILE).read_bytes())
        return bearer(issuer.issue(uuid.uuid4(), role))

    # the module-level helpers, reachable from test modules (conftest is not importable)
    bearer = staticmethod(bearer)
    problem = staticmethod(assert_problem)
    fields = staticmethod(error_fields)


OpenShop = Callable[..., contextlib.AbstractAsyncContextManager[Api]]


@pytest.fixture
def open_shop(tmp_path: Path) -> OpenShop:
    """`async with open_shop(**settings_overrides) as api:` a started app on tmp_path/"data".

    `data_dir=` picks another data dir, `env=` is the SHOP_* mapping read by Settings.from_env,
    `clock=` freezes the rate limiter's clock (the app is then built from build_shop/build_app,
    exactly as create_app does, with that store). `behind_gateway=True` builds it as a service
    behind `shop gateway` (no API rate limit; the client's address is X-Forwarded-For's last).
    """

    @contextlib.asynccontextmanager
    async def open_(
        *,
        env: dict[str, str] | None = None,
        clock: Callable[[], float] | None = None,
        behind_gateway: bool = False,
        **overrides: Any,
    ) -> AsyncIterator[Api]:
        overrides.setdefault("data_dir", tmp_path / "data")
        settings = Settings.from_env(env or {}, **overrides)
        if clock is None and not behind_gateway:
            app = create_app(settings)
        else:
            store = MemoryRateLimitStore(clock=clock or (lambda: 1000.0))
            shop = build_shop(settings, rate_limit_store=store, migrate_on_start=True)
            app = build_app(shop, rate_limit=not behind_gateway)
        async with AsyncTestClient(app=app) as client:
            yield Api(app, client, settings.data_dir)

    return open_
