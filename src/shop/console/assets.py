"""Files a page needs, read once when the app is built and served from memory.

Each is served under a fixed name from an allow-list (never a path from the request), with an
ETag (`If-None-Match` gets a 304) and `Cache-Control: no-cache`: browsers keep a copy and
revalidate it, so a new release's files are picked up at once.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from litestar import Request, Response
from litestar.exceptions import NotFoundException

STATIC_DIR = Path(__file__).resolve().parent / "static"
# By suffix, not from the host's mime.types (served with `nosniff`, the type must be right).
MEDIA_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".png": "image/png"}
SECURITY_HEADERS = {"x-content-type-options": "nosniff", "referrer-policy": "no-referrer"}


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


@functools.cache
def load(path: Path) -> Asset:
    """One file's bytes, type and ETag (once per process: the files do not change under it)."""
    body = path.read_bytes()
    media_type = MEDIA_TYPES[path.suffix]  # Litestar adds `charset=utf-8` to text/*
    return Asset(body, media_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')


class Assets:
    """The files a page may load, by the name it asks for."""

    def __init__(self, files: Mapping[str, Path]) -> None:
        self._files = {name: load(path) for name, path in files.items()}

    def response(
        self,
        name: str,
        request: Request[Any, Any, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response[bytes]:
        """The file, a 304 when the client's copy is current, or a 404 problem."""
        asset = self._files.get(name)
        if asset is None:
            raise NotFoundException(detail=f"no such file: {name}")
        common = {**SECURITY_HEADERS, "cache-control": "no-cache", "etag": asset.etag, **(headers or {})}
        if request is not None and asset.etag in request.headers.get("if-none-match", ""):
            return Response(b"", status_code=304, headers=common)
        return Response(asset.body, media_type=asset.media_type, headers=common)


def swagger_ui_dir() -> Path:
    """The Swagger UI distribution shipped by the `swagger-ui-py` package (its static/ folder;
    the package itself is never imported: its framework integrations are not used)."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the swagger-ui-py package (a dependency of shop) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "static"
