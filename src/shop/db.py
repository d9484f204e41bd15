"""One engine per module, and the unit of work every request and handler runs in.

On SQLite (the embedded default) each module has its own file; the `<module>` schema of its
tables is translated away. On PostgreSQL each module lives in the schema named after it; the
kernel's tables (outbox, inbox, dead letters, sagas) are declared without a schema and land in
the module's schema by translation.
"""

from __future__ import annotations

import asyncio
import datetime
import operator
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import structlog
from sqlalchemy import event
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncTransaction, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from shop import db_asyncpg
from shop.sqlite_checkpoints import AUTOCHECKPOINT_PAGES, CHECKPOINTS
from shop.sqlite_onloop import LoopConnection, onloop_url

log = structlog.get_logger("shop.db")

SQLITE_BUSY_TIMEOUT_MS = 10_000
# SQLite's own page cache of each connection (a module has a writer, a reader and pooled ones),
# in KiB: the file's pages stay in the OS's cache either way. SQLite's default, 2,000 KiB a
# connection, filled up to ~5 MB more of `shop run`'s memory after the orders benchmark with
# no change in its orders/s (bench/README.md, seventh round).
SQLITE_CACHE_KIB = 1024
# PostgreSQL on asyncpg: at most this many writing units of work of a module at once, each on
# a connection kept open between units of work (of a pool of 10 + 10 overflow, the rest of which
# readers have): see Database.kept_writer and ADR 0026.
PG_WRITER_SLOTS = 8
# PostgreSQL on asyncpg: up to this many readers' connections are kept open (in autocommit)
# between units of work, as the writers' are: a pool check-out and its return cost ~0.25 ms of
# CPU a read (bench/README.md, seventh round).
PG_KEPT_READERS = 4


class Database:
    """A module's engine and session factory."""

    def __init__(self, module: str, url: str, *, echo: bool = False) -> None:
        self.module = module
        self.url = url
        self.is_sqlite = make_url(url).get_backend_name() == "sqlite"
        self.schema: str | None = None if self.is_sqlite else module
        translate = {module: None} if self.is_sqlite else {None: module}
        # JSON columns through msgspec (a few times faster than the stdlib's json, same JSON).
        kwargs: dict[str, Any] = {
            "echo": echo,
            "json_serializer": _json_text,
            "json_deserializer": msgspec.json.decode,
        }
        engine_url: Any = url
        if self.is_sqlite:
            database = make_url(url).database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            # stdlib sqlite3 on the event loop (no thread hand-off per call). The writer
            # connection never waits inside the driver (see `writer`); others keep SQLite's
            # busy timeout (ad-hoc connections of tools and tests; readers never wait in WAL).
            engine_url = onloop_url(url)
            kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
            # Keep connections (each with its own PRAGMAs): the default pool closes every
            # connection above 5 when it is returned, so bursts kept opening new ones.
            kwargs.update(pool_size=20, max_overflow=20)
        else:
            # No pool_pre_ping (3 round trips per check-out on asyncpg): see shop.db_asyncpg.
            kwargs.update(pool_size=10, max_overflow=10)
        self.engine: AsyncEngine = create_async_engine(engine_url, **kwargs).execution_options(
            schema_translate_map=translate
        )
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
            # pysqlite's own transaction handling defers BEGIN; take the write lock up front
            # so that concurrent writers queue on the busy timeout instead of deadlocking.
            event.listen(self.engine.sync_engine, "begin", _sqlite_begin_immediate)
        else:  # PostgreSQL: a connection the server closed is not checked out
            event.listen(self.engine.sync_engine.pool, "checkout", db_asyncpg.reject_closed)
        # Prepared statements run as the driver's SQL (SQLite, asyncpg); off when SQL is traced.
        self.driver_sql = self.is_sqlite or make_url(url).get_driver_name() == "asyncpg"
        # SQLite has one writer at a time. Writers of this process queue here, in order, and
        # share one connection kept open (no pool check-out and reset per transaction). On
        # asyncpg, PG_WRITER_SLOTS writers at a time, each on a kept connection.
        self.write_lock: asyncio.Lock | asyncio.Semaphore | None = (
            asyncio.Lock()
            if self.is_sqlite
            else asyncio.Semaphore(PG_WRITER_SLOTS)
            if self.driver_sql
            else None
        )
        self._writer: AsyncConnection | None = None
        self.writer_driver: Any = None  # SQLite: the writers' sqlite3 connection (see `writer`)
        self.reader_driver: Any = None  # SQLite: the readers' (see `reader`)
        self._reader: AsyncConnection | None = None
        self._kept: list[AsyncConnection] = []  # PostgreSQL writers' idle connections
        self._kept_readers: list[AsyncConnection] = []  # and its readers' (autocommit)
        self._checkpointed: str | None = None  # the SQLite file the checkpoint thread keeps

    async def writer(self) -> AsyncConnection:
        """The connection of this process's SQLite writers (under `write_lock`)."""
        if self._writer is None or self._writer.closed or self._writer.invalidated:
            writer = await LoopConnection.open(self.engine)
            # Never wait in the driver (on the loop): unit_of_work waits for another process's
            # write lock with asyncio sleeps instead.
            raw = await writer.get_raw_connection()
            raw.driver_connection.execute("PRAGMA busy_timeout=0")  # type: ignore[union-attr]
            self._writer = writer
            self.writer_driver = raw.driver_connection  # its sqlite3 connection, for UnitOfWork
            path = self.engine.url.database
            if self._checkpointed is None and path and path != ":memory:":
                # watched from this process, which writes it (never before a fork: see there)
                self._checkpointed = path
                CHECKPOINTS.add(path)
        return self._writer

    async def reader(self) -> AsyncConnection:
        """The connection this process's SQLite readers share: no transaction (each statement
        reads a committed state under WAL and runs to its end on the loop), no pool check-out."""
        if self._reader is None or self._reader.closed or self._reader.invalidated:
            reader = await LoopConnection.open(self.engine)
            await reader.execution_options(shop_write=False)
            self._reader = reader
            self.reader_driver = (await reader.get_raw_connection()).driver_connection
        return self._reader

    async def drop_writer(self) -> None:
        """Close the writers' connection (the next writer opens a new one)."""
        writer, self._writer, self.writer_driver = self._writer, None, None
        if writer is not None:
            await writer.invalidate()
            await writer.close()

    async def kept_writer(self) -> AsyncConnection:
        """A connection for a PostgreSQL writer (which holds one of `write_lock`'s slots): one
        an earlier unit of work left (no pool check-out, ~0.2 ms of CPU less a unit of work, see
        ADR 0026), else a new check-out. A kept one whose socket the server has closed is
        dropped, as `reject_closed` does at check-out, and the next one tried."""
        return await _reuse(self._kept) or await self.engine.connect()

    async def keep(self, connection: AsyncConnection, clean: bool) -> None:
        """Take back a PostgreSQL writer's connection: kept if its unit of work ended cleanly
        (committed or rolled back) and it is idle, up to PG_WRITER_SLOTS (the writers at once,
        so kept connections never take more of the pool than the slots: readers have the rest);
        else back to the pool, or invalidated when broken."""
        await _keep_or_discard(self._kept, PG_WRITER_SLOTS, connection, clean)

    async def kept_reader(self) -> AsyncConnection:
        """A connection for a PostgreSQL reader, in autocommit (no BEGIN/COMMIT round trips;
        READ COMMITTED gives each statement its own snapshot either way): one an earlier reader
        left, else a new check-out. A kept one the server has closed is dropped, as for writers."""
        return await _reuse(self._kept_readers) or await _autocommit_reader(self.engine)

    async def keep_reader(self, connection: AsyncConnection, clean: bool) -> None:
        """Take back a PostgreSQL reader's connection: kept if its unit of work ended without
        an error and it is idle, up to PG_KEPT_READERS; else back to the pool."""
        if clean and connection.in_transaction():
            await connection.rollback()  # SQLAlchemy's object only: autocommit sent no BEGIN
        await _keep_or_discard(self._kept_readers, PG_KEPT_READERS, connection, clean)

    @property
    def kept_connections(self) -> int:
        """How many of the pool's connections this process keeps for its writers and readers
        (checked out for good, held by no unit of work in particular)."""
        kept = [self._writer, self._reader, *self._kept, *self._kept_readers]
        return sum(1 for c in kept if c is not None and not c.closed)

    async def dispose(self) -> None:
        if self._checkpointed is not None:
            CHECKPOINTS.remove(self._checkpointed)
            self._checkpointed = None
        kept, self._kept, self._kept_readers = [*self._kept, *self._kept_readers], [], []
        for connection in (self._writer, self._reader, *kept):
            if connection is not None:
                await connection.close()
        self._writer = self._reader = self.writer_driver = self.reader_driver = None
        await self.engine.dispose()

    async def ping(self) -> None:
        """Raise if the database does not answer."""
        async with self.engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")


def _json_text(value: Any) -> str:
    return msgspec.json.encode(value).decode()


async def _reuse(kept: list[AsyncConnection]) -> AsyncConnection | None:
    """The last kept connection that is still usable (those the server closed are discarded)."""
    while kept:
        connection = kept.pop()
        if db_asyncpg.usable(connection):
            return connection
        await _discard(connection)
    return None


async def _keep_or_discard(
    kept: list[AsyncConnection], limit: int, connection: AsyncConnection, clean: bool
) -> None:
    """Keep a connection whose unit of work ended cleanly and that is idle, up to `limit`;
    else give it back to the pool (invalidated when broken)."""
    if clean and len(kept) < limit and db_asyncpg.idle(connection):
        kept.append(connection)
    else:
        await _discard(connection)


async def _autocommit_reader(engine: AsyncEngine) -> AsyncConnection:
    """A pooled connection for PostgreSQL reads: autocommit, no BEGIN/COMMIT round trips (the
    default READ COMMITTED gives each statement its own snapshot either way)."""
    connection = await engine.connect()
    await connection.execution_options(shop_write=False, isolation_level="AUTOCOMMIT")
    return connection


async def _discard(connection: AsyncConnection) -> None:
    """Give a connection back to the pool, or invalidate it there when it is broken."""
    try:
        if not connection.closed and not db_asyncpg.usable(connection):
            await connection.invalidate()
        await connection.close()
    except Exception as exc:  # a connection that fails to close is gone either way
        log.warning("db.connection_discard_failed", error=repr(exc))


def _sqlite_pragmas(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
    cursor = dbapi_connection.cursor()
    for pragma in (
        "PRAGMA journal_mode=WAL",
        "PRAGMA foreign_keys=ON",
        f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",
        "PRAGMA synchronous=NORMAL",
        f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}",
        # the process's checkpoint thread checkpoints (shop.sqlite_checkpoints), off the loop
        f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}",
    ):
        cursor.execute(pragma)
    cursor.close()


def _sqlite_begin_immediate(conn: Any) -> None:
    # A read-only unit of work runs without an explicit transaction (each SELECT is atomic
    # under WAL): no BEGIN/COMMIT statements.
    if conn.get_execution_options().get("shop_write", True):
        # Straight to the driver (SQLAlchemy's own execution of it costs ~30 µs); a busy
        # database raises the driver's OperationalError (see _is_busy). A unit of work that
        # began the transaction on the driver itself (UnitOfWork, SQLite writers) has it open.
        driver = conn.connection.driver_connection
        if not driver.in_transaction:
            driver.execute("BEGIN IMMEDIATE")


AfterCommit = Callable[[], Awaitable[None]]


class UnitOfWork:
    """One transaction on one module's database, with hooks that run after it commits.

    `session` is the transaction's connection (SQLAlchemy Core: `execute`, `begin_nested`)."""

    def __init__(
        self, database: Database, connection: AsyncConnection, shared: bool, transactional: bool = True
    ) -> None:
        self.database = database
        self.session: AsyncConnection = connection
        self.items: dict[str, Any] = {}
        self._shared = shared  # a SQLite writer's or reader's connection: kept open afterwards
        self._transactional = transactional  # False: SQLite readers (autocommit statements)
        self._transaction: AsyncTransaction | None = None
        self._after_commit: list[AfterCommit] = []
        # SQLite: the sqlite3 connection under the writers' or readers' connection, which the
        # database keeps with it (no walk through SQLAlchemy's proxies); else found when asked
        self._driver: Any = (
            (database.writer_driver if transactional else database.reader_driver)
            if shared and database.is_sqlite
            else None
        )
        # SQLite writers begin and commit on the driver: SQLAlchemy's transaction objects and
        # events cost ~35 µs a unit of work. A statement run through SQLAlchemy still autobegins
        # its own transaction object (on the open one, see _sqlite_begin_immediate), which then
        # commits or rolls back the driver's transaction as usual.
        self.on_driver = shared and transactional and database.is_sqlite and database.driver_sql
        # PostgreSQL writers on a kept connection: asyncpg begins at the first statement (as
        # SQLAlchemy's adapter always does), and the unit of work commits or rolls back on the
        # adapter directly, without SQLAlchemy's transaction object and its greenlet hops.
        self.pg_driver = shared and transactional and not database.is_sqlite
        # PostgreSQL readers on a kept connection (asyncpg, autocommit): kept again if clean
        self.pg_reader = shared and not transactional and not database.is_sqlite
        # ended by a commit (or, on PostgreSQL, a rollback) that went through; PostgreSQL
        # readers: no error
        self._clean = False
        self.savepoints = 0  # PostgreSQL writers: savepoints taken (each named after its number)

    def after_commit(self, hook: AfterCommit) -> None:
        self._after_commit.append(hook)

    def driver(self) -> Any:
        """The driver's own connection under this transaction (for `Prepared`)."""
        if self._driver is None:
            self._driver = self.session.sync_connection.connection.driver_connection  # type: ignore[union-attr]
        return self._driver

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        """A savepoint in this transaction (see `savepoint`) which, when rolled back, also takes
        back what was arranged meanwhile for after the commit: hooks added, and items added to
        `items` or to its lists (the outbox messages to relay)."""
        hooks = len(self._after_commit)
        items = dict(self.items)
        lengths = {key: len(value) for key, value in items.items() if isinstance(value, list)}
        try:
            async with savepoint(self.session):
                yield
        except BaseException:
            del self._after_commit[hooks:]
            self.items = items
            for key, length in lengths.items():
                del items[key][length:]
            raise

    async def run_after_commit(self) -> None:
        hooks, self._after_commit = self._after_commit, []
        for hook in hooks:
            await hook()

    async def begin(self) -> None:
        if self.on_driver:  # the driver's own cursor (see Prepared.execute)
            _new_cursor(self.driver(), _SQLiteCursor).execute("BEGIN IMMEDIATE")
        elif self.pg_driver:
            pass  # asyncpg's BEGIN goes with the first statement (see pg_driver)
        elif self._transactional:
            self._transaction = await self.session.begin()

    async def commit(self) -> None:
        if self.on_driver:
            if self.session.in_transaction():  # SQLAlchemy's object over the driver's transaction
                await self.session.commit()
            else:
                self.driver().commit()
            self._clean = True
        elif self.pg_driver:
            if self.session.in_transaction():  # a statement through SQLAlchemy autobegan it
                await self.session.commit()
            else:
                await db_asyncpg.commit(self.session)
            self._clean = True
        elif self._transaction is not None:
            await self._transaction.commit()
        elif self.pg_reader:
            self._clean = True

    async def rollback(self) -> None:
        if self.on_driver:
            await self._roll_back_direct()
        elif self.pg_driver:
            if self.session.in_transaction():
                await self.session.rollback()
            await db_asyncpg.rollback(self.session)
            self._clean = True
        elif self._transaction is not None and self._transaction.is_active:
            await self._transaction.rollback()
        elif not self._transactional and self.session.in_transaction():
            await self.session.rollback()  # after an error: a clean state for the next reader

    async def _roll_back_direct(self) -> None:
        if self.session.in_transaction():
            await self.session.rollback()
        if self.driver().in_transaction:
            self.driver().rollback()

    async def release(self) -> None:
        if self.pg_driver:
            await self.database.keep(self.session, self._clean)
        elif self.pg_reader:
            await self.database.keep_reader(self.session, self._clean)
        elif not self._shared:
            await self.session.close()
        elif self.on_driver:
            if not self._clean:
                await self._roll_back_direct()  # a failed commit: leave it clean
        elif self._transactional and self.session.in_transaction():
            await self.session.rollback()  # a failed commit or begin: leave it clean


_current: ContextVar[UnitOfWork | None] = ContextVar("shop_unit_of_work", default=None)


def current_unit_of_work() -> UnitOfWork | None:
    """The unit of work the running code is inside, if any."""
    return _current.get()


def unit_of_work(database: Database, *, write: bool = True) -> UnitOfWorkScope:
    """Open a transaction; commit on success, roll back on error; then run after-commit hooks
    (`async with unit_of_work(database) as uow:`).

    On SQLite a writing unit of work takes this process's write lock, then SQLite's at BEGIN
    (IMMEDIATE); another process holding SQLite's is waited for with asyncio sleeps, never in
    the driver. A read-only one (`write=False`) begins deferred and never blocks writers (WAL).
    On PostgreSQL (asyncpg) a writing unit of work takes one of the module's PG_WRITER_SLOTS
    and the connection kept for it; reads take neither. Either wait is bounded by the busy
    timeout (`DatabaseBusy`).
    """
    return UnitOfWorkScope(database, write)


class UnitOfWorkScope:
    """What `unit_of_work` returns: an async context manager written out as a class (a
    generator-based one costs a generator, its wrapper and two resumptions a unit of work;
    ~14 of them an order, see bench/db_layer.py)."""

    __slots__ = ("_lock", "_token", "_uow", "database", "write")

    def __init__(self, database: Database, write: bool) -> None:
        self.database = database
        self.write = write

    async def __aenter__(self) -> UnitOfWork:
        database = self.database
        lock = self._lock = database.write_lock if self.write else None
        deadline = asyncio.get_running_loop().time() + SQLITE_BUSY_TIMEOUT_MS / 1000
        if lock is not None:
            if lock.locked() or getattr(lock, "_waiters", None):  # queue, bounded by the timeout
                try:
                    async with asyncio.timeout_at(deadline):
                        await lock.acquire()
                except TimeoutError:
                    raise DatabaseBusy(f"{database.module}: no write slot within the busy timeout") from None
            else:  # free and nobody queued: taken at once, no timer to arm
                await lock.acquire()
        try:
            uow = self._uow = await _begin(database, self.write, deadline)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        self._token = _current.set(uow)
        return uow

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        uow = self._uow
        try:
            try:
                if exc_type is None:
                    await uow.commit()
                else:
                    await uow.rollback()
            finally:
                _current.reset(self._token)
                await uow.release()
        finally:
            if self._lock is not None:
                self._lock.release()
        if exc_type is None:
            await uow.run_after_commit()


async def _begin(database: Database, write: bool, deadline: float) -> UnitOfWork:
    """A unit of work whose transaction has begun; SQLite's write lock held by another process
    is waited for here, with backoff, until `deadline` (loop time)."""
    delay = 0.001
    loop = asyncio.get_running_loop()
    while True:
        if database.is_sqlite:  # the process's writer or reader connection, kept open
            connection = await (database.writer() if write else database.reader())
            uow = UnitOfWork(database, connection, shared=True, transactional=write)
        elif database.driver_sql:  # PostgreSQL on asyncpg: a kept connection
            connection = await (database.kept_writer() if write else database.kept_reader())
            uow = UnitOfWork(database, connection, shared=True, transactional=write)
        else:  # PostgreSQL with SQL traced: pooled connections
            connection = await (database.engine.connect() if write else _autocommit_reader(database.engine))
            uow = UnitOfWork(database, connection, shared=False, transactional=write)
        try:
            await uow.begin()
            return uow
        except (OperationalError, sqlite3.OperationalError) as exc:
            if database.is_sqlite and write:
                await database.drop_writer()  # a begin that failed half-way: start afresh
            else:
                await uow.release()
            if not (database.is_sqlite and _is_busy(exc)):
                raise
            if loop.time() + delay > deadline:
                raise DatabaseBusy(f"{database.module}: the database stayed locked") from exc
        except BaseException:
            await uow.release()
            raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


def _is_busy(exc: OperationalError | sqlite3.OperationalError) -> bool:
    message = str(exc.orig if isinstance(exc, OperationalError) else exc).lower()
    return "database is locked" in message or "database is busy" in message


@asynccontextmanager
async def savepoint(session: AsyncConnection) -> AsyncIterator[None]:
    """A savepoint in the current transaction: rolled back (and re-raised) on error.

    On SQLite in the current unit of work it is the driver's SAVEPOINT/RELEASE (2 µs each, where
    SQLAlchemy's nested transaction costs ~50 µs a statement); in a PostgreSQL writer's unit of
    work the same statements on asyncpg (`_pg_savepoint`); elsewhere `begin_nested()`."""
    uow = _unit_of_work_on(session)
    if uow is not None and uow.pg_driver:
        async with _pg_savepoint(uow):
            yield
        return
    if uow is None or not uow.on_driver:
        async with session.begin_nested():
            yield
        return
    driver = uow.driver()
    driver.execute("SAVEPOINT shop_savepoint")
    try:
        yield
    except BaseException:
        driver.execute("ROLLBACK TO shop_savepoint")
        driver.execute("RELEASE shop_savepoint")
        raise
    driver.execute("RELEASE shop_savepoint")


@asynccontextmanager
async def _pg_savepoint(uow: UnitOfWork) -> AsyncIterator[None]:
    """`savepoint` in a PostgreSQL writer's unit of work (asyncpg): the statements on the
    adapter's connection (`db_asyncpg.simple`), as SQLite's go to its driver. Each savepoint of
    the transaction has a name of its own and is never released: a RELEASE is a round trip that
    changes nothing the transaction's commit or rollback would not, and with distinct names a
    ROLLBACK TO always finds its own savepoint, however the savepoints nest."""
    uow.savepoints += 1
    name = f"shop_savepoint_{uow.savepoints}"
    await db_asyncpg.simple(uow.session, f"SAVEPOINT {name}")
    try:
        yield
    except BaseException:
        await db_asyncpg.simple(uow.session, f"ROLLBACK TO SAVEPOINT {name}")
        raise


class DatabaseBusy(TimeoutError):
    """No write slot on the module's database within the busy timeout."""


# -- statements run as the driver's SQL -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    keys: tuple[str, ...]  # the result columns
    converts: tuple[tuple[int, Callable[[Any], Any]], ...]  # (column, result processor)
    # the parameters in the order the SQL takes them, taken in one call; then the bind
    # processors by position
    take: Callable[[Mapping[str, Any]], list[Any]]
    processed: tuple[tuple[int, Callable[[Any], Any]], ...]
    # PostgreSQL: the result columns' types; their processors depend on the driver's column
    # types too, known once asyncpg has prepared the statement (kept per those types' OIDs).
    types: tuple[Any, ...] = ()
    by_oids: dict[tuple[int, ...], tuple[tuple[int, Callable[[Any], Any]], ...]] = field(default_factory=dict)

    def arguments(self, values: Mapping[str, Any]) -> list[Any]:
        """The driver's parameters for `values` (by name), bind processors applied."""
        args = self.take(values)
        for i, process in self.processed:
            args[i] = process(args[i])
        return args


@dataclass(slots=True)
class Rows:
    """What a prepared statement gave: its rows (converted as SQLAlchemy would) and rowcount."""

    keys: tuple[str, ...]
    rows: list[tuple[Any, ...]]
    rowcount: int

    def first(self) -> tuple[Any, ...] | None:
        return self.rows[0] if self.rows else None

    def scalar(self) -> Any:
        return self.rows[0][0] if self.rows else None

    def mappings(self) -> list[dict[str, Any]]:
        return [dict(zip(self.keys, row, strict=True)) for row in self.rows]


class Prepared:
    """A Core statement compiled once per database and run as the driver's SQL.

    SQLAlchemy spends ~40 µs running a statement it has cached (cache key, execution context,
    result machinery) where stdlib sqlite3 spends ~2 µs. On SQLite (on the loop, see
    `shop.sqlite_onloop`) a prepared statement is compiled once, then its parameters are
    converted by SQLAlchemy's own bind processors and handed to the driver, and its rows are
    converted by SQLAlchemy's result processors: the same values in and out as through
    SQLAlchemy, and driver errors raised as SQLAlchemy's (IntegrityError ...). On PostgreSQL
    it runs as asyncpg's prepared statement the same way (`shop.db_asyncpg`). With SQL tracing
    on (`Database.driver_sql` false), or for parameters the compiled form does not cover, it
    runs through SQLAlchemy as usual. Parameters by name; for an INSERT or an
    UPDATE without `.values()`, the names that are columns are the columns written.
    """

    __slots__ = ("_cache", "statement")

    def __init__(self, statement: Any) -> None:
        self.statement = statement
        self._cache: dict[tuple[str, bool, tuple[str, ...]], _Compiled | None] = {}

    async def execute(
        self, target: UnitOfWork | AsyncConnection, params: Mapping[str, Any] | None = None
    ) -> Rows:
        """Run in a unit of work, or on a connection (the driver's SQL when it is the current
        unit of work's)."""
        values = params or _NO_VALUES
        uow = target if target.__class__ is UnitOfWork else _unit_of_work_of(target)
        compiled = None
        if uow is not None:
            database = uow.database
            if database.driver_sql:
                compiled = self._compiled(database, tuple(values))
        if uow is None or compiled is None:
            session = target.session if isinstance(target, UnitOfWork) else target
            result = await session.execute(self.statement, dict(values))
            if result.returns_rows:
                return Rows(tuple(result.keys()), [tuple(r) for r in result.all()], result.rowcount)
            return Rows((), [], result.rowcount)
        args = compiled.arguments(values)
        if not database.is_sqlite:  # PostgreSQL: asyncpg's prepared statement
            return await _asyncpg_rows(uow, compiled, args)
        # The driver's own cursor class (the connection's `cursor()` gives the soft-closing one
        # of shop.sqlite_onloop, whose methods are Python); the results are read at once.
        cursor = _new_cursor(uow.driver(), _SQLiteCursor)
        try:
            raw = cursor.execute(compiled.sql, args).fetchall()
        except sqlite3.Error as exc:
            raise DBAPIError.instance(compiled.sql, args, exc, sqlite3.Error) from exc
        cursor.close()
        if raw and compiled.converts:
            raw = [_converted(row, compiled.converts) for row in raw]
        return Rows(compiled.keys, raw, cursor.rowcount)

    async def execute_many(
        self, target: UnitOfWork | AsyncConnection, rows: Sequence[Mapping[str, Any]]
    ) -> None:
        """Run the statement once per row of parameters (all rows with the same names): on
        SQLite as the driver's ``executemany`` (one call), on asyncpg as its prepared
        statement's ``executemany`` (the rows pipelined in one round trip), elsewhere through
        SQLAlchemy's."""
        if not rows:
            return
        uow = target if isinstance(target, UnitOfWork) else _unit_of_work_on(target)
        compiled = None
        if uow is not None and uow.database.driver_sql:
            compiled = self._compiled(uow.database, tuple(rows[0]))
        if uow is None or compiled is None:
            session = target.session if isinstance(target, UnitOfWork) else target
            await session.execute(self.statement, [dict(row) for row in rows])
            return
        args = [compiled.arguments(row) for row in rows]
        if not uow.database.is_sqlite:  # PostgreSQL: asyncpg's executemany, one round trip
            await db_asyncpg.fetch_many(uow.session, compiled.sql, args)
            return
        cursor = _new_cursor(uow.driver(), _SQLiteCursor)  # the driver's own (see execute)
        try:
            cursor.executemany(compiled.sql, args)
        except sqlite3.Error as exc:
            raise DBAPIError.instance(compiled.sql, args, exc, sqlite3.Error) from exc
        cursor.close()

    def _compiled(self, database: Database, keys: tuple[str, ...]) -> _Compiled | None:
        """The driver's SQL for these parameter names, or None for SQLAlchemy's path."""
        cache_key = (database.module, database.is_sqlite, keys)  # a module on either backend (tests)
        try:
            return self._cache[cache_key]
        except KeyError:
            pass
        dialect = database.engine.dialect
        translate = database.engine.get_execution_options().get("schema_translate_map")
        compiled = self.statement.compile(
            dialect=dialect, column_keys=list(keys), schema_translate_map=translate
        )
        names = tuple(compiled.positiontup or ())
        found: _Compiled | None = None
        # Else a default it would fill in, or an expanding IN list: SQLAlchemy's path.
        if set(names) <= set(keys) and not compiled.post_compile_params:
            sql = compiled.string
            if translate:
                sql = compiled.preparer._render_schema_translates(sql, translate)
            processors = dict(compiled._bind_processors)
            if database.is_sqlite:  # SQLAlchemy's DATETIME formats through a dict: ~2x slower
                for name in names:
                    if _is_default_sqlite_datetime(compiled.binds[name].type, dialect):
                        processors[name] = _sqlite_datetime
            columns = compiled._result_columns or []
            # PostgreSQL's depend on the driver's column types: see _asyncpg_rows
            results = tuple(
                c.type._cached_result_processor(dialect, None) if database.is_sqlite else None
                for c in columns
            )
            binds = tuple(processors.get(name) for name in names)
            found = _Compiled(
                sql=sql,
                take=_taker(names),
                processed=tuple((i, bind) for i, bind in enumerate(binds) if bind is not None),
                keys=tuple(c.keyname for c in columns),
                converts=tuple((i, p) for i, p in enumerate(results) if p is not None),
                types=tuple(c.type for c in columns),
            )
        self._cache[cache_key] = found
        return found


async def _asyncpg_rows(uow: UnitOfWork, compiled: _Compiled, args: list[Any]) -> Rows:
    raw, rowcount, oids = await db_asyncpg.fetch(uow.session, compiled.sql, args)
    try:
        converts = compiled.by_oids[oids]
    except KeyError:
        dialect = uow.database.engine.dialect
        results = (
            t._cached_result_processor(dialect, oid) for t, oid in zip(compiled.types, oids, strict=True)
        )
        converts = compiled.by_oids[oids] = tuple((i, p) for i, p in enumerate(results) if p is not None)
    rows = [_converted(row, converts) for row in raw] if converts else [tuple(row) for row in raw]
    return Rows(compiled.keys, rows, rowcount)


def _taker(names: tuple[str, ...]) -> Callable[[Mapping[str, Any]], list[Any]]:
    """A function giving the values of `names` from a mapping, as a new list, in one C call."""
    if not names:
        return lambda _values: []
    if len(names) == 1:
        name = names[0]
        return lambda values: [values[name]]
    get = operator.itemgetter(*names)
    return lambda values: list(get(values))


def _is_default_sqlite_datetime(type_: Any, dialect: Any) -> bool:
    impl = type_.dialect_impl(dialect)
    return (
        isinstance(impl, sqlite_dialect.DATETIME)
        and impl._storage_format == sqlite_dialect.DATETIME._storage_format
        and getattr(impl, "_reg", None) is None
    )


def _sqlite_datetime(value: Any) -> Any:
    """SQLAlchemy's SQLite DATETIME bind (``YYYY-MM-DD HH:MM:SS.ffffff``, the time zone
    dropped), for a datetime by `isoformat`; anything else by SQLAlchemy's own.

    The last datetime's text is kept: a unit of work binds the same ``now`` to several
    columns and rows (created_at and updated_at, a saga's timeline lines), ~50 binds an order."""
    global _last_datetime
    if value.__class__ is datetime.datetime:
        last, text = _last_datetime  # one immutable pair: threads never see a mixed one
        if value == last and value.tzinfo is last.tzinfo:
            return text
        text = (value.replace(tzinfo=None) if value.tzinfo is not None else value).isoformat(
            " ", "microseconds"
        )
        _last_datetime = (value, text)
        return text
    return _SQLITE_DATETIME(value)


_last_datetime: tuple[datetime.datetime, str] = (datetime.datetime.min, "0001-01-01 00:00:00.000000")


_SQLITE_DATETIME: Callable[[Any], Any] = sqlite_dialect.DATETIME().bind_processor(sqlite_dialect.dialect())  # type: ignore[assignment,no-untyped-call]


def _converted(
    row: tuple[Any, ...], converts: tuple[tuple[int, Callable[[Any], Any]], ...]
) -> tuple[Any, ...]:
    values = list(row)
    for i, process in converts:
        values[i] = process(values[i])
    return tuple(values)


def _unit_of_work_of(target: UnitOfWork | AsyncConnection) -> UnitOfWork | None:
    """`target` itself if it is a unit of work, else the current one if it runs on `target`."""
    return target if isinstance(target, UnitOfWork) else _unit_of_work_on(target)


_SQLiteCursor = sqlite3.Cursor
# `sqlite3.Connection.cursor` itself, called on the driver's connection: a cursor of the given
# class without the connection's Python override. Not `sqlite3.Cursor(connection)`: the
# connection keeps a weak reference to each of its cursors and drops the dead ones only when
# a cursor comes from `cursor()` (CPython 3.11), so constructed ones were kept, ~90 bytes each.
_new_cursor = sqlite3.Connection.cursor
_NO_VALUES: Mapping[str, Any] = {}


def _unit_of_work_on(connection: AsyncConnection) -> UnitOfWork | None:
    uow = _current.get()
    return uow if uow is not None and uow.session is connection else None


async def read(database: Database, statement: Prepared, params: Mapping[str, Any] | None = None) -> Rows:
    """One prepared read on its own (ADR 0027): what `unit_of_work(write=False)` around one
    `statement.execute` gives, without the context manager. On SQLite a read-only unit of work
    is the readers' shared connection with no transaction, so the statement runs there directly;
    elsewhere, or with SQL traced, it runs in a read-only unit of work as usual."""
    if database.is_sqlite and database.driver_sql:
        reader = UnitOfWork(database, await database.reader(), shared=True, transactional=False)
        return await statement.execute(reader, params)
    async with unit_of_work(database, write=False) as uow:
        return await statement.execute(uow, params)
