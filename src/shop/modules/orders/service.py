"""The orders domain: orders, their statuses and the idempotency of placing them."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from shop.bus.clock import as_utc
from shop.contracts.catalog import Line, PricedLine
from shop.contracts.orders import OrderLine, OrderView
from shop.db import Prepared
from shop.db_tables import InsertIfAbsent
from shop.modules.orders.messages import OrderPage
from shop.modules.orders.models import orders


class OrderStatus(StrEnum):
    """Where an order stands (what the REST API shows as its ``status``)."""

    PENDING = "PENDING"
    AWAITING_PAYMENT = "AWAITING_PAYMENT"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


FINAL = frozenset({OrderStatus.FAILED, OrderStatus.CANCELLED})


_GET = Prepared(sa.select(orders).where(orders.c.id == sa.bindparam("b_id")))
_INSERT = InsertIfAbsent(orders)
_PRICE = Prepared(orders.update().where(orders.c.id == sa.bindparam("b_id")))


def _page(after_cursor: bool) -> Prepared:
    """A customer's orders, newest first, `b_limit` of them (after a cursor: older than it)."""
    query = sa.select(orders).where(orders.c.customer_id == sa.bindparam("b_customer"))
    if after_cursor:
        query = query.where(
            sa.tuple_(orders.c.created_at, orders.c.id)
            < sa.tuple_(
                sa.bindparam("b_created", type_=orders.c.created_at.type),
                sa.bindparam("b_order", type_=orders.c.id.type),
            )
        )
    order = (orders.c.created_at.desc(), orders.c.id.desc())
    # SQLite renders a LIMIT parameter with an OFFSET one: named, so both come from the caller
    limit, offset = sa.bindparam("b_limit", type_=sa.Integer), sa.bindparam("b_offset", type_=sa.Integer)
    return Prepared(query.order_by(*order).limit(limit).offset(offset))


# Built once (a customer polling their orders lists them every few seconds).
_FIRST_PAGE = _page(after_cursor=False)
_NEXT_PAGE = _page(after_cursor=True)
_SET_STATUS: dict[int, Prepared] = {}


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different body."""


def fingerprint(items: Sequence[Line], address_id: uuid.UUID, payment_token: str) -> str:
    """A stable digest of what makes two order requests "the same body"."""
    body = {
        "items": [[str(line.product_id), line.quantity] for line in items],
        "address_id": str(address_id),
        "payment_token": payment_token,
    }
    return hashlib.sha256(msgspec.json.encode(body)).hexdigest()


def view(m: Any) -> OrderView:
    return OrderView(
        id=m["id"],
        customer_id=m["customer_id"],
        status=m["status"],
        items=tuple(msgspec.convert(m["items"], list[OrderLine])),
        total=m["total"],
        currency=m["currency"],
        address_id=m["address_id"],
        failure_reason=m["failure_reason"],
        created_at=as_utc(m["created_at"]),
        updated_at=as_utc(m["updated_at"]),
    )


class OrderBook:
    def __init__(self, session: AsyncConnection) -> None:
        self.session = session

    async def get(self, order_id: uuid.UUID) -> OrderView | None:
        found = (await _GET.execute(self.session, {"b_id": order_id})).mappings()
        return view(found[0]) if found else None

    async def visible(self, order_id: uuid.UUID, viewer_id: uuid.UUID, is_admin: bool) -> OrderView | None:
        """The order if the viewer owns it or is an admin; None hides whether it exists."""
        order = await self.get(order_id)
        if order is None or (order.customer_id != viewer_id and not is_admin):
            return None
        return order

    async def by_idempotency_key(self, customer_id: uuid.UUID, key: str) -> tuple[OrderView, str] | None:
        row = (
            await self.session.execute(
                sa.select(orders).where(orders.c.customer_id == customer_id, orders.c.idempotency_key == key)
            )
        ).first()
        return (view(row._mapping), row._mapping["request_fingerprint"]) if row is not None else None

    async def create(
        self,
        *,
        customer_id: uuid.UUID,
        items: Sequence[Line],
        address_id: uuid.UUID,
        payment_token: str,
        idempotency_key: str | None,
    ) -> tuple[OrderView, bool]:
        """A new PENDING order; or, for a known Idempotency-Key with the same body, that order."""
        digest = fingerprint(items, address_id, payment_token)
        if idempotency_key is not None:
            found = await self.by_idempotency_key(customer_id, idempotency_key)
            if found is not None:
                return self._replay(found, digest), False
        now = datetime.now(UTC)
        order_id = uuid.uuid4()
        values = {
            "id": order_id,
            "customer_id": customer_id,
            "status": OrderStatus.PENDING,
            "items": [{"product_id": str(line.product_id), "quantity": line.quantity} for line in items],
            "total": None,
            "currency": None,
            "address_id": address_id,
            "payment_token": "",  # not kept: only the saga needs it, until TakePayment is sent
            "failure_reason": None,
            "idempotency_key": idempotency_key,
            "request_fingerprint": digest,
            "created_at": now,
            "updated_at": now,
        }
        # One statement, no savepoint: a concurrent request with the same key that won the race
        # leaves this insert nothing to do (its order is then answered as for a replay).
        if not await _INSERT.execute(self.session, values):
            found = await self.by_idempotency_key(customer_id, idempotency_key or "")
            if found is None:
                raise RuntimeError(f"order {order_id} was not stored, and no order has its key")
            return self._replay(found, digest), False
        return view(values), True

    @staticmethod
    def _replay(found: tuple[OrderView, str], digest: str) -> OrderView:
        order, stored = found
        if stored != digest:
            raise IdempotencyConflict(str(order.id))
        return order

    async def page(
        self, customer_id: uuid.UUID, *, limit: int, before: tuple[datetime, uuid.UUID] | None
    ) -> OrderPage:
        params: dict[str, Any] = {"b_customer": customer_id, "b_limit": limit + 1, "b_offset": 0}
        if before is None:
            found = await _FIRST_PAGE.execute(self.session, params)
        else:
            found = await _NEXT_PAGE.execute(
                self.session, {**params, "b_created": before[0], "b_order": before[1]}
            )
        rows = [view(m) for m in found.mappings()]
        return OrderPage(items=tuple(rows[:limit]), has_more=len(rows) > limit)

    async def set_status(
        self,
        order_id: uuid.UUID,
        status: str,
        *,
        failure_reason: str | None = None,
        only_from: Sequence[str] | None = None,
    ) -> bool:
        """Move an order to `status` (from one of `only_from`, when given); False if it was not there."""
        sources = tuple(only_from) if only_from is not None else None
        arity = -1 if sources is None else len(sources)
        query = _SET_STATUS.get(arity)
        if query is None:  # one prepared statement per number of source statuses
            update = orders.update().where(orders.c.id == sa.bindparam("b_id"))
            if sources is not None:
                update = update.where(
                    orders.c.status.in_([sa.bindparam(f"b_from_{n}") for n in range(arity)])
                )
            query = _SET_STATUS[arity] = Prepared(update)
        values: dict[str, Any] = {"b_id": order_id, "status": status, "updated_at": datetime.now(UTC)}
        values.update({f"b_from_{n}": source for n, source in enumerate(sources or ())})
        if failure_reason is not None:
            values["failure_reason"] = failure_reason
        return bool((await query.execute(self.session, values)).rowcount)

    async def price(self, order_id: uuid.UUID, lines: Sequence[PricedLine]) -> None:
        """Record the catalog's snapshot of names and prices (taken when the stock was reserved).
        Lines priced in more than one currency have no total (the saga fails MIXED_CURRENCIES)."""
        currencies = {line.currency for line in lines}
        single = len(currencies) == 1
        currency = currencies.pop() if single else None
        await _PRICE.execute(
            self.session,
            {
                "b_id": order_id,
                "items": [
                    {
                        "product_id": str(line.product_id),
                        "name": line.name,
                        "unit_price": line.unit_price,
                        "quantity": line.quantity,
                    }
                    for line in lines
                ],
                "total": sum(line.unit_price * line.quantity for line in lines) if single else None,
                "currency": currency,
                "updated_at": datetime.now(UTC),
            },
        )
