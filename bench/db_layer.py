"""What `shop.db` adds to a statement and to a transaction on SQLite, against the bare driver.

In one process, on uvloop, a table like a saga row's (a UUID key, a version, a status, an aware
datetime, a JSON column) in a fresh file, interleaved round by round:

  update     `Prepared.execute` of a compare-and-set UPDATE (5 parameters through the bind
             processors) in an open unit of work  vs  the same SQL and already-bound
             parameters on the driver's connection
  select     `Prepared.execute(...).mappings()` of the row by id (its columns through the
             result processors)  vs  the driver's `execute(...).fetchall()`
  uow        an empty writing `unit_of_work` (write lock, BEGIN IMMEDIATE, COMMIT, hooks)  vs
             the driver's BEGIN IMMEDIATE + COMMIT

Prints µs per call (median round) and the difference: the Python the DB layer costs. An order
runs ~51 statements and ~14 units of work (`statements_replay.py` counts them).

    .venv/bin/python bench/db_layer.py [--n 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy as sa
import uvloop

from shop.db import Database, Prepared, UnitOfWork, unit_of_work

metadata = sa.MetaData()
rows = sa.Table(
    "rows",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("data", sa.JSON, nullable=False),
)
UPDATE = Prepared(
    rows.update().where(rows.c.id == sa.bindparam("b_id"), rows.c.version == sa.bindparam("b_version"))
)
SELECT = Prepared(sa.select(rows).where(rows.c.id == sa.bindparam("b_id")))


async def measure(n: int, rounds: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="shop-db-layer-") as tmp:
        db = Database("bench", f"sqlite:///{tmp}/bench.db")
        async with db.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        ids = [uuid.uuid4() for _ in range(100)]
        now = datetime.datetime.now(datetime.UTC)
        async with unit_of_work(db) as uow:
            for i in ids:
                await uow.session.execute(
                    rows.insert().values(id=i, status="A", version=0, updated_at=now, data={"n": 1})
                )
        update_keys = ("b_id", "b_version", "status", "version", "updated_at")
        compiled_update = UPDATE._compiled(db, update_keys)
        compiled_select = SELECT._compiled(db, ("b_id",))
        assert compiled_update is not None
        assert compiled_select is not None
        stamp = now.replace(tzinfo=None).isoformat(" ")

        async def timed(name: str, body: Callable[[int], Awaitable[None]]) -> None:
            started = time.perf_counter()
            for k in range(n):
                await body(k)
            results.setdefault(name, []).append((time.perf_counter() - started) / n * 1e6)

        for _ in range(rounds):
            async with unit_of_work(db) as uow:
                driver = uow.driver()

                async def update(k: int, uow: UnitOfWork = uow) -> None:
                    params = {
                        "b_id": ids[k % 100],
                        "b_version": 5,
                        "status": "B",
                        "version": 6,
                        "updated_at": now,
                    }
                    await UPDATE.execute(uow, params)

                async def update_raw(k: int, driver: Any = driver) -> None:
                    driver.execute(compiled_update.sql, ("B", 6, stamp, ids[k % 100].hex, 5)).fetchall()

                async def select(k: int, uow: UnitOfWork = uow) -> None:
                    (await SELECT.execute(uow, {"b_id": ids[k % 100]})).mappings()

                async def select_raw(k: int, driver: Any = driver) -> None:
                    driver.execute(compiled_select.sql, (ids[k % 100].hex,)).fetchall()

                await timed("update: Prepared", update)
                await timed("update: driver", update_raw)
                await timed("select: Prepared + mappings", select)
                await timed("select: driver", select_raw)

            async def empty_uow(_: int) -> None:
                async with unit_of_work(db):
                    pass

            async def begin_commit(_: int) -> None:
                raw = (await db.writer()).sync_connection.connection.driver_connection  # type: ignore[union-attr]
                raw.execute("BEGIN IMMEDIATE")
                raw.commit()

            await timed("uow: unit_of_work (empty, writing)", empty_uow)
            await timed("uow: driver BEGIN IMMEDIATE + COMMIT", begin_commit)
        await db.dispose()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=20000, help="calls per variant per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    results = uvloop.run(measure(args.n, args.rounds))
    median = {name: statistics.median(values) for name, values in results.items()}
    for name, value in median.items():
        print(f"   {name:<40} {value:7.2f} µs")
    for kind in ("update", "select", "uow"):
        ours, bare = (v for k, v in median.items() if k.startswith(kind + ":"))
        print(f"-- {kind}: the DB layer adds {ours - bare:.2f} µs a call ({ours / bare:.2f}x the driver)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
