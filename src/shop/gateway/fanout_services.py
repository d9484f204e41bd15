"""Each service's breakers, gathered by the gateway for `GET /api/v1/services`.

In the split deployment a module's breakers (`module:<name>:queries|commands`) and its
providers' (`provider:*`) live in the processes that ask and serve; the gateway only has its own,
one per upstream instance. So the gateway asks one healthy instance of each service for its
`/api/v1/services` (with the admin's token, in parallel, each bounded in time) and reports each
service's breakers under its URL; a service that does not answer is reported as such, never
hidden and never failing the whole view.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from shop.gateway.fanout_deadletters import CALL_TIMEOUT_S, Instances

PATH = "/api/v1/services"


async def service_breakers(instances: Instances, authorization: str | None) -> dict[str, dict[str, Any]]:
    """`{"<service url>": {"breakers": {"<name>": "<state>"}}}`; without a token, nothing is asked."""
    if not authorization:
        return {}
    headers = [(b"accept", b"application/json"), (b"authorization", authorization.encode("latin-1"))]
    urls = list(instances.service_urls())
    answers = await asyncio.gather(*(_breakers_of(instances, url, headers) for url in urls))
    return dict(zip(urls, answers, strict=True))


async def _breakers_of(instances: Instances, url: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    try:
        async with asyncio.timeout(CALL_TIMEOUT_S):
            status, body = await instances.call(url, "GET", PATH, headers)
    except Exception as exc:  # a service that does not answer is reported, not fatal
        return {"breakers": None, "error": f"no answer: {type(exc).__name__}"}
    if status != 200:
        return {"breakers": None, "error": f"answered {status}"}
    try:
        breakers = msgspec.json.decode(body).get("breakers")
    except (msgspec.DecodeError, AttributeError):
        return {"breakers": None, "error": "answered something else than JSON"}
    if not isinstance(breakers, dict):
        return {"breakers": None, "error": "answered no breakers"}
    return {"breakers": {str(k): str(v) for k, v in breakers.items()}}
