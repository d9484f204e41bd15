"""Shared fixtures: real databases (SQLite files, PostgreSQL schemas) and servers.

PostgreSQL and Redis are real servers. When one does not answer, the fixture tries to start
it; if it still cannot, the test is skipped with the reason — except under CI=true, where a
missing server is a failure.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from shop.bus.tables import kernel_metadata
from shop.db import Database

PG_URL = os.environ.get("SHOP_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("SHOP_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
IN_CI = os.environ.get("CI", "").lower() == "true"


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing server is a failure, not a skip)")
    pytest.skip(reason)


async def _pg_answers(url: str) -> bool:
    import asyncpg

    dsn = url.replace("postgresql+asyncpg://", "postgresql://")
    try:
        conn = await asyncio.wait_for(asyncpg.connect(dsn), 3)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


def _try_start_postgres() -> None:
    versions = sorted(Path("/etc/postgresql").glob("*")) if Path("/etc/postgresql").exists() else []
    if versions and shutil.which("pg_ctlcluster"):
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1].name, "main", "start"],
            check=False,
            capture_output=True,
            timeout=60,
        )


def _pg_answers_sync(url: str) -> bool:
    # In a thread of its own: this may be called from inside a running event loop.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, _pg_answers(url)).result()


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The URL of a live PostgreSQL (started if it was down)."""
    if not _pg_answers_sync(PG_URL):
        _try_start_postgres()
        if not _pg_answers_sync(PG_URL):
            _unavailable(f"PostgreSQL does not answer at {PG_URL}")
    return PG_URL


def _redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=2).ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The URL of a live Redis (started if it was down), on a database the tests own."""
    if not _redis_answers(REDIS_URL):
        if shutil.which("redis-server"):
            subprocess.run(
                [
                    "redis-server",
                    "--daemonize",
                    "yes",
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    "6379",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ],
                check=False,
                capture_output=True,
                timeout=30,
            )
        if not _redis_answers(REDIS_URL):
            _unavailable(f"Redis does not answer at {REDIS_URL}")
    return REDIS_URL


MakeDatabase = Callable[..., Awaitable[Database]]


@pytest.fixture(params=["sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    """Which database backend a test runs on; parametrize indirectly to add "postgres"."""
    return str(request.param)


@pytest.fixture
async def make_database(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> AsyncIterator[MakeDatabase]:
    """Build a module's database with the kernel tables and `metadata`'s, fresh for this test.

    On PostgreSQL the module's schema is dropped and created again.
    """
    created: list[Database] = []

    async def make(module: str, metadata: sa.MetaData | None = None) -> Database:
        if backend == "postgres":
            url = request.getfixturevalue("postgres_url")
            database = Database(module, url)
            async with database.engine.begin() as conn:
                await conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{module}" CASCADE')
                await conn.exec_driver_sql(f'CREATE SCHEMA "{module}"')
        else:
            database = Database(module, f"sqlite+aiosqlite:///{tmp_path / f'{module}.db'}")
        async with database.engine.begin() as conn:
            await conn.run_sync(kernel_metadata.create_all)
            if metadata is not None:
                await conn.run_sync(metadata.create_all)
        created.append(database)
        return database

    yield make
    for database in created:
        await database.dispose()
