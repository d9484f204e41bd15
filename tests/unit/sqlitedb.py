"""A module's database in a fresh SQLite file, with a test's own tables (no kernel tables)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import sqlalchemy as sa

from shop.db import Database


@asynccontextmanager
async def sqlite_database(directory: Path, module: str, metadata: sa.MetaData) -> AsyncIterator[Database]:
    """`<directory>/<module>.db` with `metadata`'s tables, as the shop opens it; disposed after."""
    db = Database(module, f"sqlite:///{directory / f'{module}.db'}")
    async with db.engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    try:
        yield db
    finally:
        await db.dispose()
