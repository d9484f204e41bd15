"""The operator console at `/admin`: one static page (HTML, a plain JS file, CSS) over the admin
API. The page is public; everything it shows comes from admin-only endpoints, called with the
token the operator got by signing in (kept in the tab's sessionStorage).

    app = Litestar(route_handlers=[..., console_router()])
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, Router, get
from litestar.params import FromPath

from shop.console.assets import STATIC_DIR, Assets

PATH = "/admin"
# The page runs only its own script and talks only to its own origin; nobody may frame it.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {"content-security-policy": CONTENT_SECURITY_POLICY, "x-frame-options": "DENY"}


def console_router() -> Router:
    """`GET /admin` (the page) and `GET /admin/static/{name}` (its script and style sheet)."""
    page = Assets({"index.html": STATIC_DIR / "console.html"})
    files = Assets({"console.js": STATIC_DIR / "console.js", "console.css": STATIC_DIR / "console.css"})

    @get("/", include_in_schema=False, sync_to_thread=False)
    def console_page(request: Request[Any, Any, Any]) -> Response[bytes]:
        return page.response("index.html", request, PAGE_HEADERS)

    @get("/static/{name:str}", include_in_schema=False, sync_to_thread=False)
    def console_file(request: Request[Any, Any, Any], name: FromPath[str]) -> Response[bytes]:
        return files.response(name, request)

    return Router(PATH, route_handlers=[console_page, console_file])
