"""Before a command starts work: does each database and Redis it needs answer?

A server process that cannot reach them would fail inside its worker, where the failure is
easy to miss; these checks turn it into one line before anything starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from shop.commands.failures import CommandFailed, reason, safe_url
from shop.db import Database
from shop.settings import Settings

CHECK_TIMEOUT_S = 10.0


async def database_answers(settings: Settings, module: str) -> None:
    """Raise CommandFailed naming the module and its database unless that database answers."""
    url = settings.database_url_for(module)
    database = Database(module, url)
    try:
        await asyncio.wait_for(database.ping(), CHECK_TIMEOUT_S)
    except Exception as exc:  # whatever the driver raises, the database is not usable
        raise CommandFailed(
            f"the {module} database at {safe_url(url)} does not answer: {reason(exc)}"
        ) from exc
    finally:
        await database.dispose()


async def databases_answer(settings: Settings, modules: Iterable[str]) -> None:
    for module in modules:
        await database_answers(settings, module)


async def redis_answers(url: str) -> None:
    """Raise CommandFailed naming Redis unless it answers a PING."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url, socket_connect_timeout=3.0, socket_timeout=3.0)
    try:
        await asyncio.wait_for(client.ping(), CHECK_TIMEOUT_S)
    except Exception as exc:  # connection refused, unknown host, auth: Redis is not usable
        raise CommandFailed(f"Redis at {safe_url(url)} does not answer: {reason(exc)}") from exc
    finally:
        await client.aclose()


async def databases_migrated(settings: Settings, modules: Iterable[str]) -> None:
    """Raise CommandFailed for a module whose database is not migrated or behind its head.

    A revision this code does not know (a newer release migrated it: a rolling deploy) passes."""
    from alembic.script import ScriptDirectory

    from shop import migrate

    for module in modules:
        current = (await migrate.current(settings, [module]))[module]
        head = migrate.heads(module)
        if set(current) == set(head):
            continue
        known = {
            s.revision for s in ScriptDirectory.from_config(migrate.alembic_config(module)).walk_revisions()
        }
        if current and not set(current) <= known:
            continue
        at = ", ".join(current) or "base (not migrated)"
        raise CommandFailed(
            f"the {module} database is at {at}, its head is {', '.join(head)}: run `shop migrate`"
        )
