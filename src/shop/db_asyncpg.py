"""PostgreSQL (asyncpg) specifics of `shop.db`: prepared statements run by asyncpg itself, a
check-out that costs no round trip, and the commit or rollback of a writer's transaction on
SQLAlchemy's adapter directly (`commit`, `rollback`; writers keep their connections between units
of work, and `usable` / `idle` say which may be kept: ADR 0026).

Measured in bench/orders_wrk.py on PostgreSQL (docs/adr/0026-postgresql-round-trips.md): the
shop's process is CPU-bound, and through SQLAlchemy each statement pays for a greenlet hop, an
execution context and its result machinery on top of asyncpg's own work. `Prepared` (most of an
order's statements) skips that here: the statement is compiled once with the asyncpg dialect,
its parameters go through SQLAlchemy's bind processors, and it runs as a prepared statement
from the same per-connection cache, in the same transaction, that SQLAlchemy's cursor uses. The
values in and out and the errors raised (IntegrityError ...) are SQLAlchemy's.

`pool_pre_ping` was three round trips per check-out (BEGIN, a ping, ROLLBACK); `reject_closed`
drops a pooled connection whose socket the server has closed (a restart, a terminated backend)
from what asyncpg already knows, and the pool checks out another.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

_T = TypeVar("_T")
_ROWCOUNT = re.compile(r"(?:SELECT|UPDATE|DELETE|INSERT \d+) (\d+)")


async def fetch(
    session: AsyncConnection, sql: str, args: list[Any]
) -> tuple[list[Any], int, tuple[int, ...]]:
    """Run the driver's SQL (`$n` parameters) in the session's transaction: (rows, rowcount,
    the result columns' type OIDs).

    Uses the SQLAlchemy asyncpg adapter's transaction start and statement cache (the same
    statements SQLAlchemy's cursor prepares), so both paths can be mixed in one transaction."""
    expired: float = session.dialect._invalidate_schema_cache_asof  # type: ignore[attr-defined]

    async def run(adapted: Any) -> tuple[list[Any], str | None, Any]:
        statement, attributes = await adapted._prepare(sql, expired)
        return await statement.fetch(*args), statement.get_statusmsg(), attributes

    rows, status, attributes = await _on_adapter(session, sql, args, run)
    found = _ROWCOUNT.match(status or "")
    return rows, int(found.group(1)) if found else -1, tuple(a.type.oid for a in attributes)


async def fetch_many(session: AsyncConnection, sql: str, rows: list[list[Any]]) -> None:
    """Run the driver's SQL once per row of parameters in the session's transaction, as
    asyncpg's `executemany` of the prepared statement (the rows pipelined in one round trip);
    the results are discarded. Same transaction start, statement cache and errors as `fetch`."""
    expired: float = session.dialect._invalidate_schema_cache_asof  # type: ignore[attr-defined]

    async def run(adapted: Any) -> None:
        statement, _attributes = await adapted._prepare(sql, expired)
        await statement.executemany(rows)

    await _on_adapter(session, sql, rows, run)


async def simple(session: AsyncConnection, sql: str) -> None:
    """Run a statement without parameters (SAVEPOINT, RELEASE, ROLLBACK TO) in the session's
    transaction on the adapter's asyncpg connection: SQLAlchemy's nested transaction object
    costs a greenlet hop, a compilation and its events a statement."""

    async def run(adapted: Any) -> None:
        await adapted._connection.execute(sql)

    await _on_adapter(session, sql, [], run)


async def _on_adapter(
    session: AsyncConnection, sql: str, args: list[Any], run: Callable[[Any], Awaitable[_T]]
) -> _T:
    """`run(adapted)` on SQLAlchemy's asyncpg adapter under `session`, under the adapter's mutex
    and in its transaction (begun here first, as the adapter's cursor does); a driver error is
    raised as SQLAlchemy's for `sql` and `args`."""
    # SQLAlchemy's asyncpg adapter (private API of sqlalchemy.dialects.postgresql.asyncpg,
    # tests/unit/test_db_postgres.py holds it to SQLAlchemy's own path).
    adapted: Any = session.sync_connection.connection.dbapi_connection  # type: ignore[union-attr]
    try:
        async with adapted._execute_mutex:
            if adapted._transaction is None:
                await adapted._start_transaction()  # BEGIN
            return await run(adapted)
    except Exception as exc:
        raise _sqlalchemy_error(session, adapted, sql, args, exc) from exc


def _sqlalchemy_error(
    session: AsyncConnection, adapted: Any, sql: str, args: list[Any], exc: Exception
) -> Exception:
    """The exception SQLAlchemy's path raises for this driver error (IntegrityError ...)."""
    dbapi = session.dialect.dbapi
    if dbapi is None or isinstance(exc, DBAPIError):
        return exc
    try:
        adapted._handle_exception(exc)  # raises the DB-API form of asyncpg's error
    except dbapi.Error as translated:
        return DBAPIError.instance(
            sql,
            args,
            translated,
            dbapi.Error,
            connection_invalidated=session.dialect.is_disconnect(translated, adapted, None),
        )
    except Exception as other:  # anything else is raised as it is
        return other
    return exc  # pragma: no cover - _handle_exception always raises


async def commit(session: AsyncConnection) -> None:
    """Commit the asyncpg transaction SQLAlchemy's adapter began under `session` (if any) on
    the adapter itself: what SQLAlchemy's commit does, without its transaction object and its
    greenlet hop. Errors are raised as SQLAlchemy's."""
    await _end(session, "commit")


async def rollback(session: AsyncConnection) -> None:
    """Roll back the adapter's asyncpg transaction under `session` (if any), as `commit`."""
    await _end(session, "rollback")


async def _end(session: AsyncConnection, how: str) -> None:
    adapted: Any = session.sync_connection.connection.dbapi_connection  # type: ignore[union-attr]
    transaction = adapted._transaction
    if transaction is None:
        return
    try:
        # the adapter's own way: the transaction is forgotten whether or not it went through
        await adapted._call_and_discard(getattr(transaction, how))
    except Exception as exc:
        raise _sqlalchemy_error(session, adapted, how.upper(), [], exc) from exc


def usable(connection: AsyncConnection) -> bool:
    """A connection still worth using: not closed or invalidated, its socket open."""
    if connection.closed or connection.invalidated:
        return False
    raw: Any = connection.sync_connection.connection.driver_connection  # type: ignore[union-attr]
    return raw is not None and not raw.is_closed()


def idle(connection: AsyncConnection) -> bool:
    """Usable, and in no transaction (SQLAlchemy's, the adapter's or the server's)."""
    if not usable(connection) or connection.in_transaction():
        return False
    adapted: Any = connection.sync_connection.connection.dbapi_connection  # type: ignore[union-attr]
    return adapted._transaction is None and not adapted._connection.is_in_transaction()


def reject_closed(_dbapi: Any, record: ConnectionPoolEntry, _proxy: PoolProxiedConnection) -> None:
    """Pool check-out: a connection the server closed is dropped (the pool retries another)."""
    driver = record.driver_connection
    if driver is not None and driver.is_closed():
        raise DisconnectionError("the server closed this pooled connection")
