"""Serving a Shop app to a test on the test's own event loop (shared by integration tests)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import httpx
from litestar import Litestar

LIFESPAN_TIMEOUT_S = 60.0


@asynccontextmanager
async def serving(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    """The app's lifespan and its requests on this test's event loop, so that requests sent
    together really run together. (litestar's AsyncTestClient would not do: it hands each
    request synchronously to a portal thread, so an asyncio.gather over it runs them one by
    one.) The lifespan is held by a task of its own: it must be entered and left by one task."""
    started, stop = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        async with app.lifespan():
            started.set()
            await stop.wait()

    holder = asyncio.create_task(hold(), name="app-lifespan")
    ready = asyncio.create_task(started.wait())
    await asyncio.wait({holder, ready}, timeout=LIFESPAN_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
    if not started.is_set():
        ready.cancel()
        if holder.done():
            holder.result()  # the start-up error
        holder.cancel()
        raise AssertionError(f"the app did not start within {LIFESPAN_TIMEOUT_S}s")
    try:
        transport = httpx.ASGITransport(app=cast(Any, app), client=("127.0.0.1", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://shop.test", timeout=60) as client:
            yield client
    finally:
        stop.set()
        await asyncio.wait_for(holder, LIFESPAN_TIMEOUT_S)
