"""Each service's breakers, gathered by the gateway for `GET /api/v1/services`.

In the split deployment a module's breakers (`module:<name>:queries|commands`) and its
providers' (`provider:*`) live in the processes that ask and serve; the gateway only has its own,
one per upstream instance. So the gateway asks one healthy instance of each service for its
`/api/v1/services` (with the admin's token, in parallel, each bounded in time: the dead letters'
fan-out) and reports each service's breakers under its URL; a service that does not answer is
reported as such, never hidden and never failing the whole view.
"""

from __future__ import annotations

from typing import Any

import msgspec

from shop.gateway.fanout_deadletters import Instances, each_service

PATH = "/api/v1/services"


async def service_breakers(instances: Instances, authorization: str | None) -> dict[str, dict[str, Any]]:
    """`{"<service url>": {"breakers": {"<name>": "<state>"}}}`; without a token, nothing is asked."""
    if not authorization:
        return {}
    headers = [(b"accept", b"application/json"), (b"authorization", authorization.encode("latin-1"))]
    urls = list(instances.service_urls())
    answers = await each_service(instances, "GET", PATH, headers, urls)
    return {url: _breakers(answer) for url, answer in zip(urls, answers, strict=True)}


def _breakers(answer: tuple[int, bytes] | None) -> dict[str, Any]:
    if answer is None:
        return {"breakers": None, "error": "no answer"}
    status, body = answer
    if status != 200:
        return {"breakers": None, "error": f"answered {status}"}
    try:
        breakers = msgspec.json.decode(body).get("breakers")
    except (msgspec.DecodeError, AttributeError):
        return {"breakers": None, "error": "answered something else than JSON"}
    if not isinstance(breakers, dict):
        return {"breakers": None, "error": "answered no breakers"}
    return {"breakers": {str(k): str(v) for k, v in breakers.items()}}
