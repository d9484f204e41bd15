"""Handlers of the catalog module's commands and queries.

Reads (GetProduct, ListProducts, ListCategories) are queries: each runs one SELECT in a
read-only unit of work. The saga's commands are idempotent twice over: the inbox replays the
reply to a redelivered message id, and each command is keyed by its reservation id, so the same
command sent again under a new message id changes nothing and answers the same.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from shop.bus.bus import Bus
from shop.bus.messages import Event, Rejected
from shop.bus.module import Handlers
from shop.contracts.catalog import (
    AdjustStock,
    CategoryView,
    CommitStock,
    CreateProduct,
    GetProduct,
    ListCategories,
    ListProducts,
    ProductPage,
    ProductView,
    ReleaseStock,
    ReserveStock,
    RestockItems,
    StockCommitted,
    StockReleased,
    StockReserved,
    StockRestocked,
    StockUnavailable,
    UpdateProduct,
)
from shop.db import Database
from shop.modules.catalog.service import (
    COMMITTED,
    RESTOCKED,
    BelowReserved,
    Catalog,
    ProductNotFound,
    Reserved,
    SkuTaken,
    StockLedger,
    read_product,
)

handlers = Handlers()

MAX_AMOUNT = 10**12  # prices and stock quantities; far below what BIGINT holds


def _invalid(field: str, detail: str) -> Rejected:
    return Rejected(code="INVALID", detail=f"{field}: {detail}", field=field)


def _check_product_fields(
    *,
    sku: str | None = None,
    name: str | None = None,
    price: int | None = None,
    currency: str | None = None,
    category: str | None = None,
    stock: int | None = None,
) -> Rejected | None:
    """The domain's own rules (the HTTP layer checks them first; the bus is an API too)."""
    if sku is not None and not sku.strip():
        return _invalid("sku", "must not be blank")
    if name is not None and not name.strip():
        return _invalid("name", "must not be blank")
    if price is not None and not 0 <= price <= MAX_AMOUNT:
        return _invalid("price", f"must be between 0 and {MAX_AMOUNT} (minor units)")
    if currency is not None and not (len(currency) == 3 and currency.isalpha() and currency.isupper()):
        return _invalid("currency", "must be an upper-case ISO 4217 code, e.g. EUR")
    if category is not None and not category.strip():
        return _invalid("category", "must not be blank")
    if stock is not None and not 0 <= stock <= MAX_AMOUNT:
        return _invalid("stock", f"must be between 0 and {MAX_AMOUNT}")
    return None


async def _announce(bus: Bus, event: Event) -> None:
    """Publish an event when some module subscribes to it: an outbox row is not free, and the
    saga learns each outcome from the reply anyway."""
    if bus.router.subscribers.get(type(event).type_name()):
        await bus.publish(event)


# -- products ---------------------------------------------------------------------------------


@handlers.handles(CreateProduct)
async def create_product(cmd: CreateProduct, catalog: Catalog) -> ProductView | Rejected:
    invalid = _check_product_fields(
        sku=cmd.sku,
        name=cmd.name,
        price=cmd.price,
        currency=cmd.currency,
        category=cmd.category,
        stock=cmd.stock,
    )
    if invalid is not None:
        return invalid
    try:
        return await catalog.create(
            sku=cmd.sku,
            name=cmd.name,
            description=cmd.description,
            price=cmd.price,
            currency=cmd.currency,
            category=cmd.category,
            stock=cmd.stock,
        )
    except SkuTaken:
        return Rejected(code="SKU_TAKEN", detail="a product with this SKU already exists", field="sku")


@handlers.handles(UpdateProduct)
async def update_product(cmd: UpdateProduct, catalog: Catalog) -> ProductView | Rejected:
    invalid = _check_product_fields(name=cmd.name, price=cmd.price, category=cmd.category)
    if invalid is not None:
        return invalid
    changes: dict[str, object] = {
        column: value
        for column, value in (
            ("name", cmd.name),
            ("description", cmd.description),
            ("price", cmd.price),
            ("category", cmd.category),
        )
        if value is not None
    }
    if cmd.clear_category:
        changes["category"] = None
    try:
        return await catalog.update(cmd.product_id, changes)
    except ProductNotFound:
        return Rejected(code="NOT_FOUND", detail="no such product")


@handlers.handles(AdjustStock)
async def adjust_stock(cmd: AdjustStock, catalog: Catalog) -> ProductView | Rejected:
    if not -MAX_AMOUNT <= cmd.delta <= MAX_AMOUNT:
        return _invalid("delta", f"must be between -{MAX_AMOUNT} and {MAX_AMOUNT}")
    try:
        return await catalog.adjust_stock(cmd.product_id, cmd.delta)
    except ProductNotFound:
        return Rejected(code="NOT_FOUND", detail="no such product")
    except BelowReserved:
        return Rejected(
            code="BELOW_RESERVED",
            detail="the stock on hand would go below what open orders have reserved",
            field="delta",
        )


@handlers.handles(GetProduct)
async def get_product(query: GetProduct, database: Database) -> ProductView | None:
    # No unit of work: the hot anonymous read is one SELECT (ADR 0027).
    return await read_product(database, query.product_id)


@handlers.handles(ListProducts)
async def list_products(query: ListProducts, catalog: Catalog) -> ProductPage:
    after = (datetime.fromisoformat(query.after[0]), UUID(query.after[1])) if query.after else None
    return await catalog.page(category=query.category, limit=query.limit, after=after)


@handlers.handles(ListCategories)
async def list_categories(query: ListCategories, catalog: Catalog) -> tuple[CategoryView, ...]:
    return await catalog.categories(limit=query.limit, after=query.after)


# -- the order saga's stock commands ----------------------------------------------------------


@handlers.handles(ReserveStock)
async def reserve_stock(
    cmd: ReserveStock, stock: StockLedger, bus: Bus
) -> StockReserved | StockUnavailable | Rejected:
    """All lines or none. Sent again for a reservation that exists: the same answer, nothing
    reserved again; for one released since (or released before it arrived): StockUnavailable
    with reason RELEASED, nothing reserved."""
    if any(not 0 < line.quantity <= MAX_AMOUNT for line in cmd.lines):
        return _invalid("lines", f"every quantity must be between 1 and {MAX_AMOUNT}")
    outcome = await stock.reserve(cmd.reservation_id, cmd.order_id, cmd.lines)
    if isinstance(outcome, Reserved):
        reserved = StockReserved(
            reservation_id=cmd.reservation_id, order_id=outcome.order_id, lines=outcome.lines
        )
        if not outcome.replayed:
            await _announce(bus, reserved)
        return reserved
    return StockUnavailable(
        reservation_id=cmd.reservation_id,
        order_id=outcome.order_id,
        reason=outcome.reason,
        product_ids=outcome.product_ids,
    )


@handlers.handles(ReleaseStock)
async def release_stock(cmd: ReleaseStock, stock: StockLedger, bus: Bus) -> StockReleased:
    """Gives a reservation's stock back; anything else (unknown, already released, committed,
    refused) is a no-op that answers the same. An unknown id leaves a tombstone."""
    released = StockReleased(reservation_id=cmd.reservation_id)
    if (await stock.release(cmd.reservation_id)).changed:
        await _announce(bus, released)
    return released


@handlers.handles(CommitStock)
async def commit_stock(cmd: CommitStock, stock: StockLedger, bus: Bus) -> StockCommitted | Rejected:
    transition = await stock.commit(cmd.reservation_id)
    committed = StockCommitted(reservation_id=cmd.reservation_id)
    if transition.changed:
        await _announce(bus, committed)
        return committed
    if transition.status in (COMMITTED, RESTOCKED):
        return committed
    return Rejected(
        code="NOT_RESERVED",
        detail=f"reservation {cmd.reservation_id} is {transition.status or 'unknown'}, not RESERVED",
    )


@handlers.handles(RestockItems)
async def restock_items(cmd: RestockItems, stock: StockLedger, bus: Bus) -> StockRestocked | Rejected:
    transition = await stock.restock(cmd.reservation_id)
    restocked = StockRestocked(reservation_id=cmd.reservation_id)
    if transition.changed:
        await _announce(bus, restocked)
        return restocked
    if transition.status == RESTOCKED:
        return restocked
    return Rejected(
        code="NOT_COMMITTED",
        detail=f"reservation {cmd.reservation_id} is {transition.status or 'unknown'}, not COMMITTED",
    )
