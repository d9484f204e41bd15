"""Dead letters across every service, at the gateway (admin only).

Each service keeps the dead letters of its own modules; the gateway lists them from one healthy
instance per service URL and merges them, and sends show/redrive to the instances until one
knows the entry — so operators get the same endpoints through `shop gateway` as on `shop run`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import urlencode

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.exceptions import NotFoundException, ServiceUnavailableException
from litestar.params import FromPath

from shop.security.guards import admin_only
from shop.web.pagination import Cursor, Limit, encode_cursor, keyset_cursor
from shop.web.proxied import DEAD_LETTERS

PATH = DEAD_LETTERS
CALL_TIMEOUT_S = 3.0


class Instances(Protocol):
    def service_urls(self) -> Sequence[str]: ...

    async def call(
        self, url: str, method: str, path: str, headers: list[tuple[bytes, bytes]]
    ) -> tuple[int, bytes]: ...


def _auth(request: Request[Any, Any, Any]) -> list[tuple[bytes, bytes]]:
    headers = [(b"accept", b"application/json")]
    authorization = request.headers.get("authorization")
    if authorization:
        headers.append((b"authorization", authorization.encode("latin-1")))
    return headers


async def each_service(
    instances: Instances,
    method: str,
    path: str,
    headers: list[tuple[bytes, bytes]],
    urls: Sequence[str] | None = None,
) -> list[tuple[int, bytes] | None]:
    """One request to each service (`urls`, else one healthy instance per service), in parallel,
    each bounded by CALL_TIMEOUT_S: its (status, body), or None when it did not answer."""

    async def one(url: str) -> tuple[int, bytes] | None:
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                return await instances.call(url, method, path, headers)
        except Exception:  # an instance that does not answer contributes nothing
            return None

    targets = instances.service_urls() if urls is None else urls
    return list(await asyncio.gather(*(one(url) for url in targets)))


class FanOutDeadLetterController(Controller):
    path = PATH
    tags = ["operations"]
    guards = [admin_only]

    @get("/", summary="Dead letters of every service, oldest first")
    async def list_all(
        self, request: Request[Any, Any, Any], state: State, limit: Limit = 20, cursor: Cursor = None
    ) -> dict[str, Any]:
        """The services page by the same keyset (failed_at, id): each is asked for its `limit + 1`
        entries after the cursor, and the first `limit` of them all are the page."""
        keyset_cursor(cursor)  # a cursor we did not make is refused here, not by every service
        instances: Instances = state["instances"]
        query = urlencode({"limit": min(limit + 1, 100), **({"cursor": cursor} if cursor else {})})
        answers = await each_service(instances, "GET", f"{PATH}?{query}", _auth(request))
        if answers and all(a is None for a in answers):
            raise ServiceUnavailableException(detail="no service answered", headers={"Retry-After": "5"})
        items: list[dict[str, Any]] = []
        beyond = False  # a service has more than it sent (it sends at most 100)
        for answer in answers:
            if answer is not None and answer[0] == 200:
                page = msgspec.json.decode(answer[1])
                items.extend(page.get("items", []))
                beyond = beyond or bool(page.get("next_cursor"))
        items.sort(key=lambda item: (datetime.fromisoformat(str(item["failed_at"])), str(item["id"])))
        window = items[:limit]
        more = (len(items) > limit or beyond) and bool(window)
        last = window[-1] if window else None
        next_cursor = encode_cursor(last["failed_at"], last["id"]) if more and last else None
        return {"items": window, "next_cursor": next_cursor}

    @get("/{entry_id:uuid}", summary="One dead letter with its envelope")
    async def show(
        self, request: Request[Any, Any, Any], state: State, entry_id: FromPath[uuid.UUID]
    ) -> Response[Any]:
        return await _first(state["instances"], "GET", f"{PATH}/{entry_id}", _auth(request), 200)

    @post("/{entry_id:uuid}/redrive", summary="Deliver a dead letter again", status_code=202)
    async def redrive(
        self, request: Request[Any, Any, Any], state: State, entry_id: FromPath[uuid.UUID]
    ) -> Response[Any]:
        return await _first(state["instances"], "POST", f"{PATH}/{entry_id}/redrive", _auth(request), 202)


async def _first(
    instances: Instances, method: str, path: str, headers: list[tuple[bytes, bytes]], ok: int
) -> Response[Any]:
    for answer in await each_service(instances, method, path, headers):
        if answer is not None and answer[0] == ok:
            return Response(msgspec.json.decode(answer[1]), status_code=ok)
    raise NotFoundException(detail="no such dead letter")
