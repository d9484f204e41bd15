"""The browser pages every entry point serves: the API reference at /schema (`shop run`, `shop
serve`, the gateway) and the operator console at /admin (`shop run`, the gateway). Each loads
only files the same server answers for (no CDN: they work offline)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shop.app import build_app, build_shop, create_app
from shop.bus.breaker import BreakerRegistry
from shop.discovery import Instance, MemoryRegistry
from shop.gateway.gateway_app import build_gateway_app
from shop.gateway.proxy import ProxyConfig
from shop.security.tokens import TokenVerifier
from shop.settings import Settings

Client = httpx.AsyncClient
Opener = Callable[[Path], contextlib.AbstractAsyncContextManager[Client]]
SPEC = {"openapi": "3.1.0", "info": {"title": "Shop", "version": "1.0.0"}, "paths": {}}


class Links(HTMLParser):
    """Every URL the page makes the browser load: scripts, style sheets, icons, images."""

    def __init__(self) -> None:
        super().__init__()
        self.loaded: list[str] = []
        self.spec_url: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag in ("script", "img") and found.get("src"):
            self.loaded.append(str(found["src"]))
        if tag == "link" and found.get("href"):
            self.loaded.append(str(found["href"]))
        if found.get("data-spec-url"):
            self.spec_url = found["data-spec-url"]


def links(html: str) -> Links:
    parser = Links()
    parser.feed(html)
    return parser


def public_pem() -> str:
    key = Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


@contextlib.asynccontextmanager
async def shop_run(tmp_path: Path) -> AsyncIterator[Client]:
    app = create_app(Settings.from_env({"SHOP_DATA_DIR": str(tmp_path)}))
    async with Client(transport=httpx.ASGITransport(app=app), base_url="http://shop.test") as client:
        yield client


@contextlib.asynccontextmanager
async def shop_serve(tmp_path: Path) -> AsyncIterator[Client]:
    """What `shop serve catalog` builds (without its registry heartbeat)."""
    settings = Settings.from_env({"SHOP_DATA_DIR": str(tmp_path), "SHOP_JWT_PUBLIC_KEY": public_pem()})
    app = build_app(build_shop(settings, local=["catalog"]), rate_limit=False)
    async with Client(transport=httpx.ASGITransport(app=app), base_url="http://catalog.test") as client:
        yield client


async def upstream(request: httpx.Request) -> httpx.Response:
    if request.url.path == "/schema/openapi.json":
        return httpx.Response(200, json=SPEC)
    return httpx.Response(404)


@contextlib.asynccontextmanager
async def gateway(_tmp_path: Path) -> AsyncIterator[Client]:
    registry = MemoryRegistry()
    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream)) as upstream_client:
        app = build_gateway_app(
            Settings(),
            registry,
            verifier=TokenVerifier(public_pem().encode()),
            limiter=None,
            breakers=BreakerRegistry(),
            http_client=upstream_client,
            config=ProxyConfig(refresh_interval_s=3600),
        )
        instance = Instance(module="catalog", instance_id="c1", url="http://c1:8000", routes=("/api/v1/x",))
        await registry.register(instance, None)
        transport = httpx.ASGITransport(app=app)
        async with app.running(), Client(transport=transport, base_url="http://gw.test") as client:
            await app.proxy.refresh()
            yield client


SCHEMA_SERVERS = [pytest.param(shop_run, id="shop-run"), pytest.param(shop_serve, id="shop-serve"),
                  pytest.param(gateway, id="gateway")]  # fmt: skip
CONSOLE_SERVERS = [pytest.param(shop_run, id="shop-run"), pytest.param(gateway, id="gateway")]


async def assert_every_file_is_served_here(client: Client, html: str) -> list[str]:
    loaded = links(html).loaded
    assert loaded, "the page loads no file at all"
    for url in loaded:
        assert url.startswith("/"), f"{url} is not on this server"
        assert not url.startswith("//"), f"{url} is not on this server"
        response = await client.get(url)
        assert response.status_code == 200, url
        assert response.content, url
        assert response.headers["x-content-type-options"] == "nosniff"
        expected = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}[Path(url).suffix]
        assert response.headers["content-type"].startswith(expected), url
    return loaded


@pytest.mark.parametrize("opened", SCHEMA_SERVERS)
async def test_the_api_reference_loads_swagger_ui_and_the_document_from_this_server(
    tmp_path: Path, opened: Opener
) -> None:
    async with opened(tmp_path) as client:
        page = await client.get("/schema")

        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        loaded = await assert_every_file_is_served_here(client, page.text)
        assert {"/schema/assets/swagger-ui-bundle.js", "/schema/assets/swagger-ui.css"} <= set(loaded)
        spec_url = links(page.text).spec_url
        assert spec_url == "/schema/openapi.json"
        document = await client.get(spec_url)
        assert document.status_code == 200
        assert document.json()["openapi"] == "3.1.0"


@pytest.mark.parametrize("opened", CONSOLE_SERVERS)
async def test_the_console_page_loads_only_its_own_script_and_style_sheet(
    tmp_path: Path, opened: Opener
) -> None:
    async with opened(tmp_path) as client:
        page = await client.get("/admin")

        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy
        assert "connect-src 'self'" in policy
        assert "frame-ancestors 'none'" in policy
        loaded = await assert_every_file_is_served_here(client, page.text)
        assert set(loaded) == {"/admin/static/console.js", "/admin/static/console.css"}


@pytest.mark.parametrize("opened", CONSOLE_SERVERS)
async def test_a_file_outside_the_pages_list_is_a_404_problem(tmp_path: Path, opened: Opener) -> None:
    async with opened(tmp_path) as client:
        for path in ("/admin/static/console.html", "/admin/static/nothing.js", "/schema/assets/LICENSE",
                     "/schema/assets/swagger-editor-bundle.js"):  # fmt: skip
            response = await client.get(path)
            assert response.status_code == 404, path
            assert response.headers["content-type"] == "application/problem+json", path


async def test_a_browser_with_a_current_copy_gets_304(tmp_path: Path) -> None:
    async with shop_run(tmp_path) as client:
        first = await client.get("/admin/static/console.js")
        etag = first.headers["etag"]
        assert first.headers["cache-control"] == "no-cache"

        again = await client.get("/admin/static/console.js", headers={"If-None-Match": etag})
        stale = await client.get("/admin/static/console.js", headers={"If-None-Match": '"old"'})

        assert (again.status_code, again.content) == (304, b"")
        assert stale.status_code == 200
        assert stale.content == first.content


async def test_shop_serve_has_no_console(tmp_path: Path) -> None:
    async with shop_serve(tmp_path) as client:
        assert (await client.get("/admin")).status_code == 404
        assert (await client.get("/admin/static/console.js")).status_code == 404


async def test_the_document_lets_swagger_send_a_bearer_token_without_requiring_one(tmp_path: Path) -> None:
    async with shop_run(tmp_path) as client:
        document: dict[str, Any] = (await client.get("/schema/openapi.json")).json()

    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
    }
    assert document["security"] == [{"bearer": []}, {}]
