"""The interactive API reference at `/schema`: Swagger UI over `/schema/openapi.json`, every file
served by the app (from the `swagger-ui-py` package's distribution), so it works offline.

- `shop run` / `shop serve`: `ReferenceRenderPlugin` is Litestar's OpenAPI render plugin for the
  root of `/schema`; it adds `/schema/assets/{name}` to the OpenAPI router.
- the gateway (no Litestar OpenAPI of its own: it merges the services'): `reference_handlers()`.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, Router, get
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.plugins import OpenAPIRenderPlugin
from litestar.params import FromPath

from shop.console.assets import STATIC_DIR, Assets, load, swagger_ui_dir

PATH = "/schema"


def _page() -> Assets:
    return Assets({"index.html": STATIC_DIR / "reference.html"})


def _files() -> Assets:
    swagger = swagger_ui_dir()
    return Assets(
        {
            "swagger-ui-bundle.js": swagger / "swagger-ui-bundle.js",
            "swagger-ui.css": swagger / "swagger-ui.css",
            "favicon.png": swagger / "favicon-32x32.png",
            "reference.js": STATIC_DIR / "reference.js",
            "reference.css": STATIC_DIR / "reference.css",
        }
    )


def _assets_handler(files: Assets, path: str) -> HTTPRouteHandler:
    @get(path, include_in_schema=False, sync_to_thread=False)
    def reference_file(request: Request[Any, Any, Any], name: FromPath[str]) -> Response[bytes]:
        return files.response(name, request)

    return reference_file


class ReferenceRenderPlugin(OpenAPIRenderPlugin):
    """Serves the reference page at the OpenAPI router's root and its files under `assets/`."""

    def __init__(self) -> None:
        super().__init__(path="/", favicon="", style="")
        self._page = load(STATIC_DIR / "reference.html").body
        self._files = _files()

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        # The page loads the document from /schema/openapi.json itself (reference.js).
        return self._page

    def receive_router(self, router: Router) -> None:
        router.register(_assets_handler(self._files, "/assets/{name:str}"))


def reference_handlers() -> list[HTTPRouteHandler]:
    """`GET /schema` and `GET /schema/assets/{name}`, for an app without Litestar's OpenAPI."""
    page, files = _page(), _files()

    @get(PATH, include_in_schema=False, sync_to_thread=False)
    def reference_page(request: Request[Any, Any, Any]) -> Response[bytes]:
        return page.response("index.html", request)

    return [reference_page, _assets_handler(files, f"{PATH}/assets/{{name:str}}")]
