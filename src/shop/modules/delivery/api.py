"""HTTP controllers of the delivery module: thin, they turn requests into commands and queries."""

from __future__ import annotations

import uuid
from datetime import datetime

import msgspec
from litestar import Controller, get, post
from litestar.params import FromPath, FromQuery, JSONBody

from shop.contracts.delivery import DeliveryPage, DeliveryView, ListDeliveries, RecordDeliveryEvent
from shop.security.guards import admin_only, authenticated
from shop.web.pagination import Cursor, Limit, Page, decode_cursor, encode_cursor
from shop.web.params import BusDep, PrincipalDep
from shop.web.rejections import field_error, unwrap

STATUSES = {"NOT_FOUND": 404, "ILLEGAL_TRANSITION": 409, "INVALID_STATUS": 400}
KNOWN_STATUSES = ("PREPARING", "SHIPPED", "IN_TRANSIT", "DELIVERED", "CANCELLED")


class DeliveryEvent(msgspec.Struct, kw_only=True):
    status: str


class Address(msgspec.Struct):
    recipient: str
    line1: str
    line2: str | None
    city: str
    postal_code: str
    country: str


class Delivery(msgspec.Struct):
    id: str
    order_id: str
    status: str
    tracking_number: str | None
    address: Address
    updated_at: datetime


def _delivery(view: DeliveryView) -> Delivery:
    a = view.address
    return Delivery(
        str(view.id),
        str(view.order_id),
        view.status,
        view.tracking_number,
        Address(a.recipient, a.line1, a.line2, a.city, a.postal_code, a.country),
        view.updated_at,
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


class DeliveriesController(Controller):
    path = "/api/v1/deliveries"
    tags = ["delivery"]

    @get("/", guards=[authenticated], summary="Deliveries: the caller's own (an admin's: all)")
    async def deliveries(
        self,
        principal: PrincipalDep,
        bus: BusDep,
        order_id: FromQuery[uuid.UUID | None] = None,
        limit: Limit = 20,
        cursor: Cursor = None,
    ) -> Page[Delivery]:
        query = ListDeliveries(
            customer_id=None if principal.is_admin else principal.user_id,
            order_id=order_id,
            limit=limit,
            after=_after(cursor),
        )
        page: DeliveryPage = unwrap(await bus.ask(query), STATUSES)
        last = page.items[-1] if page.items else None
        next_cursor = None
        if page.has_more and last is not None:
            next_cursor = encode_cursor(last.created_at.isoformat(), str(last.id))
        return Page(items=[_delivery(d) for d in page.items], next_cursor=next_cursor)

    @post(
        "/{delivery_id:uuid}/events",
        guards=[admin_only],
        status_code=200,
        summary="Move a delivery along (PREPARING → SHIPPED → IN_TRANSIT → DELIVERED, or CANCELLED)",
    )
    async def record_event(
        self, delivery_id: FromPath[uuid.UUID], data: JSONBody[DeliveryEvent], bus: BusDep
    ) -> Delivery:
        status = data.status.strip().upper()
        if status not in KNOWN_STATUSES:
            raise field_error("status", f"must be one of {', '.join(KNOWN_STATUSES)}")
        view: DeliveryView = unwrap(
            await bus.ask(RecordDeliveryEvent(delivery_id=delivery_id, status=status)), STATUSES
        )
        return _delivery(view)
