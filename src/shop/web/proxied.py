"""Which paths the gateway of the split deployment proxies to a module's instances.

Everything under `/api/` is forwarded to the module that registered its prefix, except the
services view and the dead letters, which the gateway answers itself (the dead letters by
asking every service). A proxied request may be answered by the gateway alone: 503 when the
module has no healthy instance, 502 when its instances failed, 504 when they did not answer in
time (see docs/api.md and :mod:`shop.gateway.proxy`); the OpenAPI document states those
statuses on these paths (:mod:`shop.web.openapi`).
"""

from __future__ import annotations

from typing import Final

#: `GET /api/v1/services`: the gateway's own registry and breakers.
SERVICES_PATHS: Final = frozenset({"/api/v1/services", "/api/v1/services/"})
#: The operators' dead letters: the gateway asks every service and merges the answers.
DEAD_LETTERS: Final = "/api/v1/admin/dead-letters"


def proxied(path: str) -> bool:
    """Whether the gateway forwards a request for `path` (a concrete path or a template)."""
    return path.startswith("/api/") and path not in SERVICES_PATHS and not path.startswith(DEAD_LETTERS)
