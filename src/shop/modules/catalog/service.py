"""The catalog domain over one session: products (`Catalog`) and stock reservations (`StockLedger`).

Stock never oversells, on SQLite or PostgreSQL, because every change is one conditional UPDATE
whose WHERE clause states the invariant (`on_hand - reserved >= :q`, `on_hand + :delta >=
reserved`) and whose result says whether it applied; nothing is read first and written later.
A reservation takes its lines in product-id order (so two of them never wait on each other's
rows in opposite orders) inside a savepoint that is rolled back when any line fails: all or none.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from shop.bus.clock import as_utc
from shop.contracts.catalog import CategoryView, Line, PricedLine, ProductPage, ProductView
from shop.db import Database, Prepared, read, savepoint
from shop.db_tables import InsertIfAbsent
from shop.modules.catalog.models import products, reservation_lines, reservations

# reservation statuses
RESERVED = "RESERVED"
RELEASED = "RELEASED"
COMMITTED = "COMMITTED"
RESTOCKED = "RESTOCKED"
REJECTED = "REJECTED"

# StockUnavailable reasons
OUT_OF_STOCK = "OUT_OF_STOCK"
UNKNOWN_PRODUCT = "UNKNOWN_PRODUCT"
ALREADY_RELEASED = "RELEASED"


class SkuTaken(Exception):
    """Another product already has this SKU."""


class ProductNotFound(Exception):
    """No product has this id."""


class BelowReserved(Exception):
    """The change would leave less stock on hand than is reserved."""


def _now() -> datetime:
    return datetime.now(UTC)


_VIEW_COLUMNS = (
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
)


def _product(m: Mapping[Any, Any]) -> ProductView:
    on_hand, reserved = int(m["on_hand"]), int(m["reserved"])
    return ProductView(
        id=m["id"],
        sku=m["sku"],
        name=m["name"],
        description=m["description"],
        price=int(m["price"]),
        currency=m["currency"],
        category=m["category"],
        stock_available=on_hand - reserved,
        on_hand=on_hand,
        reserved=reserved,
        created_at=as_utc(m["created_at"]),
    )


def _product_of_row(row: Sequence[Any]) -> ProductView:
    """`_product` of a row of `_VIEW_COLUMNS`, by position (the hot read: no mapping built)."""
    id_, sku, name, description, price, currency, category, on_hand, reserved, created_at = row
    return ProductView(
        id=id_,
        sku=sku,
        name=name,
        description=description,
        price=int(price),
        currency=currency,
        category=category,
        stock_available=int(on_hand) - int(reserved),
        on_hand=int(on_hand),
        reserved=int(reserved),
        created_at=as_utc(created_at),
    )


class Catalog:
    """Products: create, change, adjust stock, read."""

    def __init__(self, session: AsyncConnection) -> None:
        self.session = session

    async def create(
        self,
        *,
        sku: str,
        name: str,
        description: str,
        price: int,
        currency: str,
        category: str | None,
        stock: int,
    ) -> ProductView:
        now = _now()
        values = {
            "id": uuid.uuid4(),
            "sku": sku,
            "name": name,
            "description": description,
            "price": price,
            "currency": currency,
            "category": category,
            "on_hand": stock,
            "reserved": 0,
            "created_at": now,
            "updated_at": now,
        }
        if await self._sku_exists(sku):
            raise SkuTaken(sku)
        try:
            async with savepoint(self.session):
                await self.session.execute(products.insert().values(**values))
        except IntegrityError:
            if await self._sku_exists(sku):  # a concurrent create won the race
                raise SkuTaken(sku) from None
            raise
        return _product(values)

    async def _sku_exists(self, sku: str) -> bool:
        found = await self.session.execute(sa.select(products.c.id).where(products.c.sku == sku))
        return found.first() is not None

    async def update(self, product_id: uuid.UUID, changes: Mapping[str, Any]) -> ProductView:
        """Apply the given column changes (none: just read it); ProductNotFound if unknown."""
        if not changes:
            found = await self.get(product_id)
            if found is None:
                raise ProductNotFound(product_id)
            return found
        row = (
            await self.session.execute(
                products.update()
                .where(products.c.id == product_id)
                .values(**changes, updated_at=_now())
                .returning(*_VIEW_COLUMNS)
            )
        ).first()
        if row is None:
            raise ProductNotFound(product_id)
        return _product(row._mapping)

    async def adjust_stock(self, product_id: uuid.UUID, delta: int) -> ProductView:
        """Restock (delta > 0) or write off (delta < 0), never below what is reserved (nor 0)."""
        new_on_hand = products.c.on_hand + delta
        row = (
            await self.session.execute(
                products.update()
                .where(products.c.id == product_id, new_on_hand >= products.c.reserved, new_on_hand >= 0)
                .values(on_hand=new_on_hand, updated_at=_now())
                .returning(*_VIEW_COLUMNS)
            )
        ).first()
        if row is not None:
            return _product(row._mapping)
        if await self.get(product_id) is None:
            raise ProductNotFound(product_id)
        raise BelowReserved(product_id)

    async def get(self, product_id: uuid.UUID) -> ProductView | None:
        row = (await _GET.execute(self.session, {"b_id": product_id})).first()
        return None if row is None else _product_of_row(row)

    async def page(
        self, *, category: str | None, limit: int, after: tuple[datetime, uuid.UUID] | None
    ) -> ProductPage:
        """Products oldest first, keyset-paginated on (created_at, id)."""
        query = sa.select(*_VIEW_COLUMNS)
        if category is not None:
            query = query.where(products.c.category == category)
        if after is not None:
            query = query.where(sa.tuple_(products.c.created_at, products.c.id) > sa.tuple_(*after))
        query = query.order_by(products.c.created_at, products.c.id).limit(limit + 1)
        rows = [_product(r._mapping) for r in await self.session.execute(query)]
        return ProductPage(items=tuple(rows[:limit]), has_more=len(rows) > limit)

    async def categories(self, *, limit: int | None, after: str | None) -> tuple[CategoryView, ...]:
        """The distinct categories of products, by name, with how many products each has."""
        count = sa.func.count().label("product_count")
        query = sa.select(products.c.category, count).where(products.c.category.is_not(None))
        if after is not None:
            query = query.where(products.c.category > after)
        query = query.group_by(products.c.category).order_by(products.c.category)
        if limit is not None:
            query = query.limit(limit)
        rows = await self.session.execute(query)
        return tuple(CategoryView(name=r[0], product_count=int(r[1])) for r in rows)


# -- reservations ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reservation:
    """What is stored under one reservation id."""

    id: uuid.UUID
    order_id: uuid.UUID | None
    status: str
    reason: str | None
    product_ids: tuple[uuid.UUID, ...]
    lines: tuple[PricedLine, ...]


@dataclass(frozen=True, slots=True)
class Reserved:
    """The outcome of a reservation that holds its lines."""

    order_id: uuid.UUID
    lines: tuple[PricedLine, ...]
    replayed: bool = False  # True: an earlier command made it; this one changed nothing


@dataclass(frozen=True, slots=True)
class Unavailable:
    """The outcome of a reservation that holds nothing, and why."""

    order_id: uuid.UUID
    reason: str
    product_ids: tuple[uuid.UUID, ...]
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class Transition:
    """Where a reservation ended (None: unknown) and whether this call moved it there."""

    status: str | None
    changed: bool


# The hot statements, prepared once (shop.db.Prepared).
_GET = Prepared(sa.select(*_VIEW_COLUMNS).where(products.c.id == sa.bindparam("b_id")))
_QUANTITY = sa.bindparam("b_quantity", type_=sa.Integer)
_RESERVE_LINE = Prepared(
    products.update()
    .where(products.c.id == sa.bindparam("b_id"), products.c.on_hand - products.c.reserved >= _QUANTITY)
    .values(
        reserved=products.c.reserved + _QUANTITY,
        updated_at=sa.bindparam("b_now", type_=products.c.updated_at.type),
    )
    .returning(products.c.name, products.c.price, products.c.currency)
)
_TRANSITION = Prepared(
    reservations.update().where(
        reservations.c.id == sa.bindparam("b_id"), reservations.c.status == sa.bindparam("b_status")
    )
)
_NOW = sa.bindparam("b_now", type_=products.c.updated_at.type)
_STOCK_RELEASED = Prepared(
    products.update()
    .where(products.c.id == sa.bindparam("b_id"))
    .values(reserved=products.c.reserved - _QUANTITY, updated_at=_NOW)
)
_STOCK_COMMITTED = Prepared(
    products.update()
    .where(products.c.id == sa.bindparam("b_id"))
    .values(
        on_hand=products.c.on_hand - _QUANTITY,
        reserved=products.c.reserved - _QUANTITY,
        updated_at=_NOW,
    )
)
_STOCK_RESTOCKED = Prepared(
    products.update()
    .where(products.c.id == sa.bindparam("b_id"))
    .values(on_hand=products.c.on_hand + _QUANTITY, updated_at=_NOW)
)
_INSERT_LINE = Prepared(reservation_lines.insert())
_CLAIM = InsertIfAbsent(reservations)
_LINES = Prepared(
    sa.select(reservation_lines.c.product_id, reservation_lines.c.quantity)
    .where(reservation_lines.c.reservation_id == sa.bindparam("b_id"))
    .order_by(reservation_lines.c.product_id)
)


def merge_lines(lines: Iterable[Line]) -> dict[uuid.UUID, int]:
    """Quantities per product, duplicates added up, in the order products first appear."""
    merged: dict[uuid.UUID, int] = {}
    for line in lines:
        merged[line.product_id] = merged.get(line.product_id, 0) + line.quantity
    return merged


class _LinesUnavailable(Exception):
    """Some wanted products are short or unknown: the reservation's savepoint is rolled back."""

    def __init__(self, products: list[uuid.UUID]) -> None:
        super().__init__(products)
        self.products = products


class StockLedger:
    """Reservations of stock for orders; every operation is idempotent by reservation id."""

    def __init__(self, session: AsyncConnection) -> None:
        self.session = session

    async def _claim(self, reservation_id: uuid.UUID, order_id: uuid.UUID | None, status: str) -> bool:
        """Insert the reservation's row; False if it exists already (then it is left alone).

        On PostgreSQL a concurrent, uncommitted claim of the same id makes this wait for that
        transaction and then report False, so one key is acted on once."""
        now = _now()
        return await _CLAIM.execute(
            self.session,
            {
                "id": reservation_id,
                "order_id": order_id,
                "status": status,
                "created_at": now,
                "updated_at": now,
            },
        )

    async def find(self, reservation_id: uuid.UUID) -> Reservation | None:
        row = (
            await self.session.execute(sa.select(reservations).where(reservations.c.id == reservation_id))
        ).first()
        if row is None:
            return None
        m = row._mapping
        lines = await self.session.execute(
            sa.select(reservation_lines)
            .where(reservation_lines.c.reservation_id == reservation_id)
            .order_by(reservation_lines.c.position)
        )
        return Reservation(
            id=m["id"],
            order_id=m["order_id"],
            status=m["status"],
            reason=m["reason"],
            product_ids=tuple(uuid.UUID(p) for p in m["unavailable"] or ()),
            lines=tuple(
                PricedLine(
                    product_id=line.product_id,
                    name=line.name,
                    unit_price=int(line.unit_price),
                    currency=line.currency,
                    quantity=int(line.quantity),
                )
                for line in lines
            ),
        )

    async def reserve(
        self, reservation_id: uuid.UUID, order_id: uuid.UUID, lines: Sequence[Line]
    ) -> Reserved | Unavailable:
        """Reserve every line or none; a second call for the same id reserves nothing more and
        answers what the first did (or, when the reservation was released since, Unavailable
        with reason RELEASED)."""
        if not await self._claim(reservation_id, order_id, RESERVED):
            existing = await self.find(reservation_id)
            if existing is None:  # a claim is never deleted
                raise RuntimeError(f"reservation {reservation_id} vanished")
            return _outcome(existing, order_id)

        wanted = merge_lines(lines)
        position = {product_id: n for n, product_id in enumerate(wanted)}
        try:
            async with savepoint(self.session):
                priced = await self._reserve_lines(reservation_id, wanted, position)
        except _LinesUnavailable as unavailable:
            return await self._reject(reservation_id, order_id, unavailable.products, position)
        return Reserved(order_id, tuple(sorted(priced.values(), key=lambda line: position[line.product_id])))

    async def _reserve_lines(
        self, reservation_id: uuid.UUID, wanted: Mapping[uuid.UUID, int], position: Mapping[uuid.UUID, int]
    ) -> dict[uuid.UUID, PricedLine]:
        """Reserve each wanted quantity and record the priced lines; _LinesUnavailable (in the
        caller's savepoint, which it rolls back) when any product is short or unknown."""
        priced: dict[uuid.UUID, PricedLine] = {}
        failed: list[uuid.UUID] = []
        for product_id in sorted(wanted):
            quantity = wanted[product_id]
            row = (
                await _RESERVE_LINE.execute(
                    self.session, {"b_id": product_id, "b_quantity": quantity, "b_now": _now()}
                )
            ).first()
            if row is None:
                failed.append(product_id)
            else:
                name, price, currency = row
                priced[product_id] = PricedLine(
                    product_id=product_id,
                    name=name,
                    unit_price=int(price),
                    currency=currency,
                    quantity=quantity,
                )
        if failed:
            raise _LinesUnavailable(failed)
        await _INSERT_LINE.execute_many(
            self.session,
            [
                {
                    "reservation_id": reservation_id,
                    "product_id": line.product_id,
                    "position": position[line.product_id],
                    "quantity": line.quantity,
                    "unit_price": line.unit_price,
                    "currency": line.currency,
                    "name": line.name,
                }
                for line in priced.values()
            ],
        )
        return priced

    async def _reject(
        self,
        reservation_id: uuid.UUID,
        order_id: uuid.UUID,
        failed: Sequence[uuid.UUID],
        position: Mapping[uuid.UUID, int],
    ) -> Unavailable:
        known = {
            row[0]
            for row in await self.session.execute(sa.select(products.c.id).where(products.c.id.in_(failed)))
        }
        unknown = [p for p in failed if p not in known]
        reason, culprits = (UNKNOWN_PRODUCT, unknown) if unknown else (OUT_OF_STOCK, list(failed))
        culprits.sort(key=lambda p: position[p])
        await self.session.execute(
            reservations.update()
            .where(reservations.c.id == reservation_id)
            .values(
                status=REJECTED,
                reason=reason,
                unavailable=[str(p) for p in culprits],
                updated_at=_now(),
            )
        )
        return Unavailable(order_id, reason, tuple(culprits))

    async def _transition(self, reservation_id: uuid.UUID, source: str, target: str) -> bool:
        """Move the reservation from `source` to `target`; False if it was not in `source`.

        Concurrent transitions of one reservation queue on its row; the loser sees 0 rows."""
        result = await _TRANSITION.execute(
            self.session, {"b_id": reservation_id, "b_status": source, "status": target, "updated_at": _now()}
        )
        return bool(result.rowcount)

    async def _lines(self, reservation_id: uuid.UUID) -> list[tuple[uuid.UUID, int]]:
        rows = (await _LINES.execute(self.session, {"b_id": reservation_id})).rows
        return [(row[0], int(row[1])) for row in rows]

    async def _apply(self, reservation_id: uuid.UUID, change: Prepared) -> None:
        """Apply `change` (one of the _STOCK_* statements) to each line's product with the line's
        quantity, in product-id order: one batch (SQLite's executemany; on PostgreSQL one round
        trip, the rows still locked in that order)."""
        now = _now()
        rows = [
            {"b_id": product_id, "b_quantity": quantity, "b_now": now}
            for product_id, quantity in await self._lines(reservation_id)
        ]
        await change.execute_many(self.session, rows)

    async def release(self, reservation_id: uuid.UUID) -> Transition:
        """RESERVED -> RELEASED, giving the stock back. A reservation already RELEASED, COMMITTED,
        RESTOCKED or REJECTED stays as it is.

        An unknown id is recorded RELEASED (a tombstone), so a ReserveStock for it that arrives
        late reserves nothing."""
        for _ in range(3):
            if await self._transition(reservation_id, RESERVED, RELEASED):
                await self._apply(reservation_id, _STOCK_RELEASED)
                return Transition(RELEASED, changed=True)
            current = await self._status(reservation_id)
            if current is not None and current != RESERVED:
                return Transition(current, changed=False)
            if current is None and await self._claim(reservation_id, None, RELEASED):
                return Transition(RELEASED, changed=False)  # a tombstone: nothing was held
            # a concurrent ReserveStock claimed the id meanwhile: release what it reserved
        raise RuntimeError(f"reservation {reservation_id} kept changing while being released")

    async def commit(self, reservation_id: uuid.UUID) -> Transition:
        """RESERVED -> COMMITTED: the stock leaves the shelf (on hand and reserved both drop)."""
        if await self._transition(reservation_id, RESERVED, COMMITTED):
            await self._apply(reservation_id, _STOCK_COMMITTED)
            return Transition(COMMITTED, changed=True)
        return Transition(await self._status(reservation_id), changed=False)

    async def restock(self, reservation_id: uuid.UUID) -> Transition:
        """COMMITTED -> RESTOCKED: the committed stock returns to the shelf."""
        if await self._transition(reservation_id, COMMITTED, RESTOCKED):
            await self._apply(reservation_id, _STOCK_RESTOCKED)
            return Transition(RESTOCKED, changed=True)
        return Transition(await self._status(reservation_id), changed=False)

    async def _status(self, reservation_id: uuid.UUID) -> str | None:
        found = await self.session.execute(
            sa.select(reservations.c.status).where(reservations.c.id == reservation_id)
        )
        status: str | None = found.scalar_one_or_none()
        return status


def _outcome(existing: Reservation, order_id: uuid.UUID) -> Reserved | Unavailable:
    """What a repeated ReserveStock answers, from what is stored."""
    order = existing.order_id or order_id
    if existing.status in (RESERVED, COMMITTED, RESTOCKED):
        return Reserved(order, existing.lines, replayed=True)
    if existing.status == REJECTED:
        return Unavailable(order, existing.reason or OUT_OF_STOCK, existing.product_ids, replayed=True)
    return Unavailable(order, ALREADY_RELEASED, (), replayed=True)


async def read_product(database: Database, product_id: uuid.UUID) -> ProductView | None:
    """`Catalog.get` on its own, the hot anonymous read (ADR 0027): one prepared SELECT on the
    readers' connection (`shop.db.read`), with no unit of work around it."""
    row = (await read(database, _GET, {"b_id": product_id})).first()
    return None if row is None else _product_of_row(row)
