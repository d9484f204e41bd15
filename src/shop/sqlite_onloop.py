"""SQLite for the async engine without a thread hand-off: stdlib sqlite3 called on the event loop.

aiosqlite hands every call (execute, fetch, commit) to a thread of its own and back, ~100 µs a
hop on this machine class, for statements that take 4 to 10 µs. This dialect is pysqlite declared
async: SQLAlchemy's asyncio layer runs it inside its greenlet as usual, and since the driver
never awaits, each statement runs to completion on the loop, in microseconds.

What could block the loop, and why it does not:
* The write lock of another *process* on the same file (a CLI command, a second `shop serve`):
  the connection a process's writers share (`shop.db.Database.writer`) has `busy_timeout=0`,
  so `BEGIN IMMEDIATE` fails at once with SQLITE_BUSY and `shop.db.unit_of_work` waits for
  the lock with asyncio sleeps (bounded by the busy timeout). Writers of one process queue on
  the database's asyncio lock and never meet SQLITE_BUSY.
* Readers never wait under WAL. Commits with `synchronous=NORMAL` do not fsync; checkpoints
  do, and run in the process's checkpoint thread (`shop.sqlite_checkpoints`), not in a commit.
See docs/adr/0018-sqlite-on-the-loop-and-fewer-transactions.md for the measurements.
"""

from __future__ import annotations

import sqlite3
from collections import deque
from typing import Any

from sqlalchemy import pool
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.engine import URL, CursorResult, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncTransaction
from sqlalchemy.util.concurrency import await_, greenlet_spawn, in_greenlet

DRIVER = "shop_onloop"


class _Cursor(sqlite3.Cursor):
    """A sqlite3 cursor that SQLAlchemy's asyncio results can "soft close": the rows are read
    at once (as an async driver's cursor does), which ends the statement and its read snapshot."""

    _rows: deque[Any] | None = None

    async def _async_soft_close(self) -> None:
        self._rows = deque(sqlite3.Cursor.fetchall(self))

    def fetchone(self) -> Any:
        rows = self._rows
        if rows is None:
            return sqlite3.Cursor.fetchone(self)
        return rows.popleft() if rows else None

    def fetchmany(self, size: int | None = None) -> list[Any]:
        rows = self._rows
        if rows is None:
            return sqlite3.Cursor.fetchmany(self, self.arraysize if size is None else size)
        count = min(self.arraysize if size is None else size, len(rows))
        return [rows.popleft() for _ in range(count)]

    def fetchall(self) -> list[Any]:
        rows = self._rows
        if rows is None:
            return sqlite3.Cursor.fetchall(self)
        self._rows = deque()
        return list(rows)


class _Connection(sqlite3.Connection):
    def cursor(self, factory: Any = _Cursor) -> Any:
        return super().cursor(factory)


class OnLoopSQLiteDialect(SQLiteDialect_pysqlite):
    """The pysqlite dialect, usable by `create_async_engine` (its calls never await)."""

    driver = DRIVER
    is_async = True
    supports_statement_cache = True

    @classmethod
    def get_pool_class(cls, url: URL) -> type[pool.Pool]:
        if cls._is_url_file_db(url):
            return pool.AsyncAdaptedQueuePool
        return pool.StaticPool

    # AsyncConnection.execute insists that a statement awaited something (it guards against a
    # sync driver by mistake); one no-op await per statement says it did (~1 µs, no loop turn).
    # A `LoopConnection` calls the sync connection directly, outside any greenlet: no await.
    def do_execute(self, cursor: Any, statement: Any, parameters: Any, context: Any = None) -> None:
        if in_greenlet():
            await_(_ready())
        cursor.execute(statement, parameters)

    def do_execute_no_params(self, cursor: Any, statement: Any, context: Any = None) -> None:
        if in_greenlet():
            await_(_ready())
        cursor.execute(statement)

    def do_executemany(self, cursor: Any, statement: Any, parameters: Any, context: Any = None) -> None:
        if in_greenlet():
            await_(_ready())
        cursor.executemany(statement, parameters)

    def create_connect_args(self, url: URL) -> Any:
        args, kwargs = super().create_connect_args(url)
        # Every call happens on the loop's thread, but the pool may be disposed from another.
        kwargs["check_same_thread"] = False
        kwargs["factory"] = _Connection
        return args, kwargs


async def _ready() -> None:
    return None


registry.register(f"sqlite.{DRIVER}", __name__, "OnLoopSQLiteDialect")


def onloop_url(url: str | URL) -> URL:
    """The same SQLite database, through this dialect."""
    return make_url(url).set(drivername=f"sqlite+{DRIVER}")


# -- a connection whose calls skip the greenlet -----------------------------------------------


class LoopConnection(AsyncConnection):
    """An AsyncConnection on this dialect that calls its sync connection directly.

    SQLAlchemy's asyncio layer runs every call (execute, begin, commit, savepoint) in a new
    greenlet so that an async driver can await inside it; this driver never awaits, so the
    greenlet is pure cost (~10 µs a call, 60 calls an order). Only calls that cannot touch the
    pool are taken directly (statements, transactions, savepoints); opening, closing and
    invalidating go through the greenlet as usual. Results are read to their end at once, as
    `AsyncConnection.execute` does, which ends the statement and its read snapshot.
    """

    @classmethod
    async def open(cls, engine: AsyncEngine) -> LoopConnection:
        sync = await greenlet_spawn(engine.sync_engine.connect)  # the pool may await
        return cls(engine, sync)

    async def execute(
        self, statement: Any, parameters: Any = None, *, execution_options: Any = None
    ) -> CursorResult[Any]:
        result = self._proxied.execute(statement, parameters, execution_options=execution_options)
        return _buffered(result)

    async def exec_driver_sql(
        self, statement: str, parameters: Any = None, execution_options: Any = None
    ) -> CursorResult[Any]:
        return _buffered(self._proxied.exec_driver_sql(statement, parameters, execution_options))

    def begin(self) -> AsyncTransaction:
        assert self._proxied
        return _LoopTransaction(self)

    def begin_nested(self) -> AsyncTransaction:
        assert self._proxied
        return _LoopTransaction(self, nested=True)

    async def commit(self) -> None:
        self._proxied.commit()

    async def rollback(self) -> None:
        self._proxied.rollback()


class _LoopTransaction(AsyncTransaction):
    """`AsyncTransaction` for a `LoopConnection`: its calls go straight to the sync one."""

    __slots__ = ()

    async def start(self, is_ctxmanager: bool = False) -> AsyncTransaction:
        sync = self.connection._proxied
        self.sync_transaction = self._assign_proxied(sync.begin_nested() if self.nested else sync.begin())
        if is_ctxmanager:
            self.sync_transaction.__enter__()
        return self

    async def commit(self) -> None:
        self._proxied.commit()

    async def rollback(self) -> None:
        self._proxied.rollback()

    async def close(self) -> None:
        self._proxied.close()

    async def __aexit__(self, type_: Any, value: Any, traceback: Any) -> None:
        self._proxied.__exit__(type_, value, traceback)


def _buffered(result: CursorResult[Any]) -> CursorResult[Any]:
    cursor = result.cursor if result._is_cursor else None
    if cursor is not None and isinstance(cursor, _Cursor):
        cursor._rows = deque(sqlite3.Cursor.fetchall(cursor))
    return result
