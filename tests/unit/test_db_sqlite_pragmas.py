"""What every SQLite connection of a module is set up with."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from shop.db import SQLITE_BUSY_TIMEOUT_MS, SQLITE_CACHE_KIB, Database

from .sqlitedb import sqlite_database


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    async with sqlite_database(tmp_path, "things", sa.MetaData()) as db:
        yield db


def _driver(connection: Any) -> Any:
    return connection.sync_connection.connection.driver_connection


async def test_the_writer_and_the_reader_keep_a_small_page_cache_in_wal_mode(database: Database) -> None:
    for connection in (_driver(await database.writer()), _driver(await database.reader())):
        assert connection.execute("PRAGMA cache_size").fetchone() == (-SQLITE_CACHE_KIB,)
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_the_writer_never_waits_in_the_driver_and_the_others_do(database: Database) -> None:
    writer, reader = _driver(await database.writer()), _driver(await database.reader())
    assert writer.execute("PRAGMA busy_timeout").fetchone() == (0,)
    assert reader.execute("PRAGMA busy_timeout").fetchone() == (SQLITE_BUSY_TIMEOUT_MS,)
