"""HTTP controllers of the payments module: thin, they turn requests into queries."""

from __future__ import annotations

import uuid
from datetime import datetime

import msgspec
from litestar import Controller, get
from litestar.params import FromQuery

from shop.contracts.payments import ListPayments, PaymentPage, PaymentView
from shop.security.guards import authenticated
from shop.web.pagination import Cursor, Limit, Page, decode_cursor, encode_cursor
from shop.web.params import BusDep, PrincipalDep
from shop.web.rejections import field_error, unwrap

STATUSES = {"NOT_FOUND": 404}


class Payment(msgspec.Struct):
    id: str
    order_id: str
    amount: int
    currency: str
    status: str
    provider_ref: str | None


def _payment(view: PaymentView) -> Payment:
    return Payment(
        str(view.id), str(view.order_id), view.amount, view.currency, view.status, view.provider_ref
    )


def _after(cursor: str | None) -> tuple[str, str] | None:
    """The (created_at, id) a cursor of ours holds; 400 for one we did not make (never a 500)."""
    values = decode_cursor(cursor, 2)
    if values is None:
        return None
    try:
        created_at = datetime.fromisoformat(values[0])
        item_id = uuid.UUID(values[1])
    except (TypeError, ValueError, AttributeError):
        raise field_error("cursor", "invalid cursor") from None
    if created_at.tzinfo is None:
        raise field_error("cursor", "invalid cursor")
    return created_at.isoformat(), str(item_id)


class PaymentsController(Controller):
    path = "/api/v1"
    tags = ["payments"]

    @get("/payments", guards=[authenticated], summary="Payments: the caller's own (an admin's: all)")
    async def payments(
        self,
        principal: PrincipalDep,
        bus: BusDep,
        order_id: FromQuery[uuid.UUID | None] = None,
        limit: Limit = 20,
        cursor: Cursor = None,
    ) -> Page[Payment]:
        query = ListPayments(
            customer_id=None if principal.is_admin else principal.user_id,
            order_id=order_id,
            limit=limit,
            after=_after(cursor),
        )
        page: PaymentPage = unwrap(await bus.ask(query), STATUSES)
        last = page.items[-1] if page.items else None
        next_cursor = None
        if page.has_more and last is not None:
            next_cursor = encode_cursor(last.created_at.isoformat(), str(last.id))
        return Page(items=[_payment(p) for p in page.items], next_cursor=next_cursor)
