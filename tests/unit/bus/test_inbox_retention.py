"""Inbox rows are forgotten after SHOP_INBOX_RETENTION_S, by a periodic task, in batches."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import sqlalchemy as sa
from litestar.testing import AsyncTestClient

from shop.app import create_app
from shop.bus import inbox
from shop.bus.tables import inbox as inbox_table
from shop.db import Database, unit_of_work
from shop.settings import Settings


async def _record(database: Database, handled_at: float) -> uuid.UUID:
    message_id = uuid.uuid4()
    async with unit_of_work(database) as uow:
        await uow.session.execute(
            inbox_table.insert().values(
                consumer="users.test", message_id=message_id, reply=None, handled_at=handled_at
            )
        )
    return message_id


async def _kept(database: Database) -> set[uuid.UUID]:
    async with unit_of_work(database, write=False) as uow:
        rows = await uow.session.execute(
            sa.select(inbox_table.c.message_id).where(inbox_table.c.consumer == "users.test")
        )
        return {row[0] for row in rows}


async def test_prune_forgets_only_rows_older_than_the_cut_in_batches(tmp_path: Path) -> None:
    app = create_app(Settings.from_env({}, data_dir=tmp_path))
    async with AsyncTestClient(app=app) as client:
        on_app = client.blocking_portal.call  # the app's loop owns its databases
        database = app.state["shop"].databases["users"]
        now = time.time()
        old = [on_app(_record, database, now - 1000 - n) for n in range(7)]
        fresh = {on_app(_record, database, now - 10) for _ in range(3)}

        removed = on_app(lambda: inbox.prune(database, now - 100, batch=3))

        assert removed == len(old)
        assert on_app(_kept, database) == fresh


async def test_the_shop_prunes_its_inboxes_periodically_after_the_retention(tmp_path: Path) -> None:
    app = create_app(Settings.from_env({"SHOP_INBOX_RETENTION_S": "5"}, data_dir=tmp_path))
    async with AsyncTestClient(app=app) as client:
        on_app = client.blocking_portal.call
        database = app.state["shop"].databases["users"]
        old = on_app(_record, database, time.time() - 60)
        fresh = on_app(_record, database, time.time())

        deadline = time.monotonic() + 10  # the task runs every second for a 5 s retention
        while time.monotonic() < deadline:
            if old not in on_app(_kept, database):
                break
            await asyncio.sleep(0.2)  # polling, bounded by the deadline

        assert on_app(_kept, database) == {fresh}
