"""A signed-in request is answered in its own task: nothing its handler's parameters need starts
another (Litestar resolves two or more dependencies of a handler in an anyio task group, a task
each; the caller is Litestar's `request.user` instead, so `bus` is a handler's one dependency)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator, Iterator
from contextlib import contextmanager
from typing import Any

from ...asgi import call_asgi
from .conftest import Shopper


@contextmanager
def counting_tasks() -> Iterator[list[str]]:
    """The names of the tasks the running loop creates meanwhile."""
    loop = asyncio.get_running_loop()
    created: list[str] = []
    previous = loop.get_task_factory()

    def factory(
        loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, Any] | Generator[Any, None, Any],
        **kwargs: Any,
    ) -> asyncio.Task[Any]:
        created.append(getattr(coro, "__qualname__", repr(coro)))
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(factory)  # type: ignore[arg-type]
    try:
        yield created
    finally:
        loop.set_task_factory(previous)


async def call(shopper: Shopper, path: str, headers: dict[str, str], query: str = "") -> int:
    """GET `path` from the app itself (no test client, whose transport has tasks of its own)."""
    encoded = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    status, _ = await call_asgi(shopper.app, "GET", path, encoded, query=query)
    return status


async def test_a_signed_in_request_starts_no_task_for_its_parameters(shopper: Shopper) -> None:
    customer = await shopper.customer()
    assert await call(shopper, "/api/v1/orders", customer, "limit=5") == 200  # warm
    with counting_tasks() as created:
        for path in ("/api/v1/orders", "/api/v1/users/me", "/api/v1/users/me/addresses", "/api/v1/payments"):
            assert await call(shopper, path, customer) == 200, path
    assert created == []


async def test_the_caller_a_handler_sees_is_the_one_the_token_names(shopper: Shopper) -> None:
    first, second = await shopper.customer(), await shopper.customer()
    me_first = (await shopper.client.get("/api/v1/users/me", headers=first)).json()
    me_second = (await shopper.client.get("/api/v1/users/me", headers=second)).json()
    assert me_first["id"] != me_second["id"]
    assert me_first["email"] != me_second["email"]
    # without a token the guard answers before the handler would read request.user
    response = await shopper.client.get("/api/v1/users/me")
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")
