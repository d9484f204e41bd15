"""Shared by integration tests: serving a Shop app on the test's own event loop, and a private
PostgreSQL database with the module schemas dropped around each test."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, cast

import httpx
from litestar import Litestar
from sqlalchemy.engine import make_url

from shop.settings import MODULE_NAMES

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


def run_sync(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine to completion in a thread of its own (fixtures may be set up from inside
    a running event loop)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, coroutine).result()


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def pg_execute(url: str, *statements: str) -> None:
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(_dsn(url))
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def pg_rows(url: str, query: str, *args: Any) -> list[dict[str, Any]]:
    import asyncpg

    conn = await asyncpg.connect(_dsn(url))
    try:
        return [dict(row) for row in await conn.fetch(query, *args)]
    finally:
        await conn.close()


def drop_module_schemas() -> list[str]:
    return [f'DROP SCHEMA IF EXISTS "{module}" CASCADE' for module in MODULE_NAMES]


@contextmanager
def private_database(server_url: str, name: str) -> Iterator[str]:
    """A database of the test module's own on the server (others drop schemas in the shared one)."""
    drop = f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
    run_sync(pg_execute(server_url, drop, f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        run_sync(pg_execute(server_url, drop))
