"""Group commit for a module's SQLite writers in one process.

The writers of a module share one connection and take turns under its asyncio lock
(`shop.db.Database.write_lock`). A commit costs ~50 µs of CPU (17 page writes and 6 file locks
in WAL), several times a unit of work's own statements. So a unit of work does not commit
alone: it runs inside a savepoint of the transaction the writer connection has open (begun by
the first unit of work that found none), releases its savepoint when it ends, and waits until
that transaction commits. The commit runs at the end of the loop turn in which the first unit
of work joined it -- every writer that ran in that turn shares it -- and never while a unit of
work is open (it holds the lock: the commit runs when it ends).

What it keeps:
* A unit of work returns only once its work is committed (durable as any commit with
  `synchronous=NORMAL`); its after-commit hooks run after that, as before.
* A unit of work that fails takes back its own work only (ROLLBACK TO its savepoint); the
  others' stays. Should SQLite roll the whole transaction back (an I/O error, a full disk), or
  the commit fail, every unit of work in it gets that error: none of it is stored.
* Later units of work of the same transaction see the earlier ones' work: they commit, or
  fail, with it.

See docs/adr/0029-sqlite-group-commit.md for the measurements.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import DBAPIError

UNIT_SAVEPOINT = "shop_unit"


class TransactionLost(sqlite3.OperationalError):
    """The shared transaction ended without committing the unit of work's work."""


class GroupCommit:
    """The open transaction of a module's SQLite writer connection and the units of work
    waiting for its commit. Every method is called on the loop with the write lock held,
    except the commit itself (a loop callback) and `unit_ended`."""

    __slots__ = ("_deferred", "_driver", "_lock", "_scheduled", "_waiters")

    def __init__(self, lock: asyncio.Lock) -> None:
        self._lock = lock
        self._driver: Any = None  # the driver's connection while its transaction is open
        self._waiters: list[asyncio.Future[None]] = []
        self._scheduled = False
        self._deferred = False  # the commit came while a unit of work was open

    def enter(self, driver: Any) -> None:
        """Begin a unit of work: in the open transaction, else a new one (BEGIN IMMEDIATE: a
        database another process is writing raises SQLITE_BUSY here), in a savepoint of its own."""
        if self._driver is None or not driver.in_transaction:
            if self._driver is not None:  # the transaction ended under us (see `lost`)
                self.lost(lambda: TransactionLost("the shared transaction ended before its commit"))
            driver.execute("BEGIN IMMEDIATE")
            driver.grouped = True  # SQLAlchemy's commits and rollbacks leave it alone
            self._driver = driver
        driver.execute(f"SAVEPOINT {UNIT_SAVEPOINT}")

    def join(self, driver: Any) -> asyncio.Future[None]:
        """The unit of work's work goes into the transaction: a future done when it commits."""
        driver.execute(f"RELEASE {UNIT_SAVEPOINT}")
        committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(committed)
        self._schedule()
        return committed

    def take_back(self, driver: Any) -> None:
        """Roll back the unit of work's work; the rest of the transaction stays (unless SQLite
        rolled it all back: then every unit of work in it fails)."""
        if not driver.in_transaction:
            self.lost(lambda: TransactionLost("SQLite rolled the shared transaction back"))
            return
        try:
            driver.execute(f"ROLLBACK TO {UNIT_SAVEPOINT}")
            driver.execute(f"RELEASE {UNIT_SAVEPOINT}")
        except sqlite3.Error as exc:
            self.lost(functools.partial(_as_sqlalchemy, f"ROLLBACK TO {UNIT_SAVEPOINT}", exc))
            raise
        self._schedule()  # nobody may join: the transaction is ended all the same

    def unit_ended(self) -> None:
        """A unit of work gave the lock back: the commit it held off can run."""
        if self._deferred:
            self._deferred = False
            self._schedule()

    def before_other_writer(self) -> None:
        """Another connection of this process is about to take SQLite's write lock, waiting for
        it in the driver, on the loop, where our commit could never run: commit now (unless a
        unit of work is open in the transaction: then it waits, as another process does)."""
        if self._driver is not None and not self._lock.locked():
            self.commit_now()

    def lost(self, error: Callable[[], BaseException]) -> None:
        """The transaction is gone (rolled back or its connection dropped): the units of work
        waiting for it fail, each with an `error()` of its own."""
        driver, self._driver = self._driver, None
        waiters, self._waiters = self._waiters, []
        if driver is not None:
            driver.grouped = False
        if driver is not None and driver.in_transaction:
            with contextlib.suppress(sqlite3.Error):  # then its owner drops the connection
                driver.rollback()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(error())

    def commit_now(self) -> None:
        """Commit what the open transaction holds (no unit of work may be open)."""
        driver = self._driver
        if driver is None:
            return
        waiters, self._waiters = self._waiters, []
        self._driver = None
        driver.grouped = False
        try:
            if waiters:
                driver.commit()
            elif driver.in_transaction:
                driver.rollback()
        except sqlite3.Error as exc:  # a deferred constraint, an I/O error, a full disk
            self._waiters = waiters
            self._driver = driver
            self.lost(functools.partial(_as_sqlalchemy, "COMMIT", exc))
            return
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._commit)

    def _commit(self) -> None:
        self._scheduled = False
        if self._lock.locked():  # a unit of work is open in the transaction
            self._deferred = True
            return
        self.commit_now()


def _as_sqlalchemy(statement: str, exc: sqlite3.Error) -> BaseException:
    """The driver's error as SQLAlchemy raises it (IntegrityError, OperationalError ...), as
    the unit of work's statements raise theirs."""
    return DBAPIError.instance(statement, None, exc, sqlite3.Error)
