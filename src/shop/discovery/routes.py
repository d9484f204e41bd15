"""The path prefixes a module serves, derived from its Litestar controllers.

`shop serve` registers them with each instance; the gateway routes a request to the module whose
prefix is the longest match of its path. A prefix is the base path plus the first segment under
it (two under `/admin`), so `/api/v1/products/{id}/stock` belongs to `/api/v1/products`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from litestar import Controller, Router
from litestar.handlers import BaseRouteHandler

API_BASE = "/api/v1"


def handler_paths(handlers: Iterable[Any], prefix: str = "") -> list[str]:
    """Every full path of some route handlers, controllers (classes) or routers."""
    paths: list[str] = []
    for item in handlers:
        if isinstance(item, type) and issubclass(item, Controller):
            base = _join(prefix, str(getattr(item, "path", "") or ""))
            for value in vars(item).values():
                if isinstance(value, BaseRouteHandler):
                    paths.extend(_join(base, p) for p in value.paths)
        elif isinstance(item, Router):
            for route in item.routes:  # a router's routes carry its own path already
                paths.append(_join(prefix, route.path))
        elif isinstance(item, BaseRouteHandler):
            paths.extend(_join(prefix, p) for p in item.paths)
    return paths


def prefix_of(path: str, base: str = API_BASE) -> str | None:
    """The route prefix a path belongs to, or None when it is not under `base`."""
    if not path.startswith(base + "/"):
        return None
    segments = [s for s in path[len(base) + 1 :].split("/") if s]
    depth = 2 if segments[:1] == ["admin"] else 1
    taken = []
    for segment in segments[:depth]:
        if "{" in segment:
            break
        taken.append(segment)
    return f"{base}/{'/'.join(taken)}" if taken else None


def route_prefixes(handlers: Iterable[Any], base: str = API_BASE) -> tuple[str, ...]:
    """The sorted route prefixes of a module's controllers (`module.controllers`)."""
    found = {prefix_of(path, base) for path in handler_paths(handlers)}
    return tuple(sorted(p for p in found if p is not None))


def _join(left: str, right: str) -> str:
    return "/" + "/".join(s for s in (left.strip("/"), right.strip("/")) if s)
