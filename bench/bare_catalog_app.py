"""The reference for the catalog-read ratio: a bare Litestar app doing the catalog's read by hand.

`GET /products/{id}` runs the same single SELECT by primary key that the catalog module runs for
`GET /api/v1/products/{id}` (the same columns, `catalog.service._VIEW_COLUMNS`, the same `Uuid`
binding) with async SQLAlchemy Core + aiosqlite on the SAME `catalog.db` file, opened read-only
(`mode=ro`), and answers the same JSON fields, encoded by msgspec, as the shop does; 404 when
there is no such row. What it leaves out is what the full stack adds: the gateway middleware
(request id, tracing, rate limit, access log, metrics), the bus `ask`, the unit of work (an
AsyncSession with BEGIN ... COMMIT) and the problem-details machinery.

Engine: `create_async_engine("sqlite+aiosqlite:///file:<path>?mode=ro&uri=true")` with the
default pool, like the shop's engine; one `engine.connect()` per request, one `execute`.

With `--db-layer shop` (a diagnostic, not the reference) the route reads through the shop's own
database layer instead: `shop.db.Database` (its engine, pragmas and BEGIN listener),
`unit_of_work(write=False)` and `Catalog.get`, what the catalog's GetProduct handler ran until ADR 0027
(it now runs the same prepared SELECT without the unit of work, `shop.db.read`),
but without the gateway middleware and the bus. It splits the full stack's cost into the database
layer's share and the HTTP + bus share.

Served by `shop.cli.serve` (the very server configuration `shop run` uses: granian, one worker,
uvloop, logs off), so the ratio compares apps, not server settings. The database path comes
from `--db` (handed to the server's worker as BARE_CATALOG_DB, since it imports the factory).

    .venv/bin/python bench/bare_catalog_app.py --db /path/to/data/catalog.db --port 8101 [--db-layer shop]
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from pathlib import Path

import msgspec
import sqlalchemy as sa
from litestar import Litestar, get
from litestar.datastructures import State
from litestar.exceptions import NotFoundException
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

ENV_DB = "BARE_CATALOG_DB"
ENV_LAYER = "BARE_CATALOG_DB_LAYER"
DB_LAYERS = ("stdlib", "core", "shop")

# The catalog's table as it is in catalog.db (on SQLite the `catalog` schema is translated away).
products = sa.Table(
    "products",
    sa.MetaData(),
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("sku", sa.String(64)),
    sa.Column("name", sa.String(200)),
    sa.Column("description", sa.Text),
    sa.Column("price", sa.BigInteger),
    sa.Column("currency", sa.String(3)),
    sa.Column("category", sa.String(100)),
    sa.Column("on_hand", sa.BigInteger),
    sa.Column("reserved", sa.BigInteger),
    sa.Column("created_at", sa.DateTime(timezone=True)),
)
# The same columns, in the same order, as the catalog module's read.
SELECT_ONE = sa.select(
    products.c.id,
    products.c.sku,
    products.c.name,
    products.c.description,
    products.c.price,
    products.c.currency,
    products.c.category,
    products.c.on_hand,
    products.c.reserved,
    products.c.created_at,
).where(products.c.id == sa.bindparam("product_id", type_=sa.Uuid))


class Product(msgspec.Struct):
    """The same fields, in the same order, as the shop's answer."""

    id: str
    sku: str
    name: str
    description: str
    price: int
    currency: str
    category: str | None
    stock_available: int


@get("/products/{product_id:uuid}")
async def product(product_id: uuid.UUID, state: State) -> Product:
    engine: AsyncEngine = state.engine
    async with engine.connect() as conn:
        row = (await conn.execute(SELECT_ONE, {"product_id": product_id})).first()
    if row is None:
        raise NotFoundException(detail="no such product")
    return Product(
        str(row.id),
        row.sku,
        row.name,
        row.description,
        int(row.price),
        row.currency,
        row.category,
        int(row.on_hand) - int(row.reserved),
    )


# The fastest driver use found (the reference): stdlib sqlite3 on the event loop, the row by
# primary key (SQLAlchemy's Uuid stores 32 hex digits on SQLite), no SQLAlchemy at all.
STDLIB_SELECT = (
    "SELECT id, sku, name, description, price, currency, category, on_hand, reserved"
    " FROM products WHERE id = ?"
)


@get("/products/{product_id:uuid}")
async def product_stdlib(product_id: uuid.UUID, state: State) -> Product:
    row = state.conn.execute(STDLIB_SELECT, (product_id.hex,)).fetchone()
    if row is None:
        raise NotFoundException(detail="no such product")
    return Product(str(uuid.UUID(row[0])), row[1], row[2], row[3], row[4], row[5], row[6], row[7] - row[8])


@get("/products/{product_id:uuid}")
async def product_via_shop_db(product_id: uuid.UUID, state: State) -> Product:
    """The diagnostic variant: the catalog handler's own read, without gateway and bus."""
    async with state.unit_of_work(state.database, write=False) as uow:
        view = await state.catalog(uow.session).get(product_id)
    if view is None:
        raise NotFoundException(detail="no such product")
    return Product(
        str(view.id),
        view.sku,
        view.name,
        view.description,
        view.price,
        view.currency,
        view.category,
        view.stock_available,
    )


def create_app() -> Litestar:
    path = os.environ.get(ENV_DB)
    if not path:
        raise RuntimeError(f"{ENV_DB} is not set: the path of the catalog.db to read")
    url = f"sqlite+aiosqlite:///file:{Path(path).resolve()}?mode=ro&uri=true"
    layer = os.environ.get(ENV_LAYER, "stdlib")
    if layer == "stdlib":
        import sqlite3

        conn = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True, check_same_thread=False)

        async def close() -> None:
            conn.close()

        return Litestar(
            route_handlers=[product_stdlib],
            state=State({"conn": conn}),
            on_shutdown=[close],
            debug=False,
            logging_config=None,
            openapi_config=None,
        )
    if layer == "shop":
        from shop.db import Database, unit_of_work
        from shop.modules.catalog.service import Catalog

        database = Database("catalog", url)
        engine, handler = database.engine, product_via_shop_db
        state = State({"database": database, "unit_of_work": unit_of_work, "catalog": Catalog})
    elif layer == "core":
        engine, handler = create_async_engine(url), product
        state = State({"engine": engine})
    else:
        raise RuntimeError(f"{ENV_LAYER}={layer!r}: expected one of {', '.join(DB_LAYERS)}")

    async def dispose() -> None:
        await engine.dispose()

    return Litestar(
        route_handlers=[handler],
        state=state,
        on_shutdown=[dispose],
        debug=False,
        logging_config=None,
        openapi_config=None,
    )


def main() -> int:
    from shop.cli import SERVERS, serve
    from shop.settings import Settings

    parser = argparse.ArgumentParser(description="bare Litestar catalog read (reference app)")
    parser.add_argument("--db", required=True, help="the catalog.db to read (read-only)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8101)
    parser.add_argument("--server", choices=SERVERS, default="granian")
    parser.add_argument(
        "--db-layer",
        choices=DB_LAYERS,
        default="stdlib",
        help="stdlib: sqlite3 on the event loop (the reference, the fastest driver use found); "
        "core: SQLAlchemy Core + aiosqlite on a plain engine; shop: the shop's Database, "
        "unit_of_work and Catalog.get (a diagnostic)",
    )
    args = parser.parse_args()
    if not Path(args.db).is_file():
        parser.error(f"--db {args.db}: no such file")
    os.environ[ENV_DB] = str(Path(args.db).resolve())
    os.environ[ENV_LAYER] = args.db_layer
    # The server imports "bare_catalog_app:create_app" in its worker: make this directory importable.
    here = str(Path(__file__).resolve().parent)
    sys.path.insert(0, here)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    serve(Settings(host=args.host, port=args.port), "bare_catalog_app:create_app", server=args.server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
