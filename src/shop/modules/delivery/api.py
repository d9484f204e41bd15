"""HTTP controllers of the delivery module: thin, they turn requests into commands and queries."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Controller, get, post
from litestar.params import FromPath, FromQuery, JSONBody

from shop.contracts.delivery import DeliveryView, ListDeliveries, RecordDeliveryEvent
from shop.security.guards import admin_only, authenticated
from shop.web.codes import any_case_pattern
from shop.web.owned_lists import owned_list
from shop.web.pagination import Cursor, Limit, Page
from shop.web.params import BusDep, SignedIn
from shop.web.rejections import unwrap

STATUSES = {"NOT_FOUND": 404, "ILLEGAL_TRANSITION": 409, "INVALID_STATUS": 400}


KNOWN_STATUSES = ("PREPARING", "SHIPPED", "IN_TRANSIT", "DELIVERED", "CANCELLED")
DeliveryStatus = Annotated[
    str,
    msgspec.Meta(
        pattern=any_case_pattern(KNOWN_STATUSES),
        description=f"one of {', '.join(KNOWN_STATUSES)} (any case)",
    ),
]


class DeliveryEvent(msgspec.Struct, kw_only=True):
    status: DeliveryStatus


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


class DeliveriesController(Controller):
    path = "/api/v1/deliveries"
    tags = ["delivery"]

    @get(
        "/",
        guards=[authenticated],
        summary="Deliveries: the caller's own (an admin's: all)",
        problems={404: "`order_id` names an order that is not the caller's"},
    )
    async def deliveries(
        self,
        request: SignedIn,
        bus: BusDep,
        order_id: FromQuery[uuid.UUID | None] = None,
        limit: Limit = 20,
        cursor: Cursor = None,
    ) -> Page[Delivery]:
        return await owned_list(
            bus,
            request.user,
            ListDeliveries,
            STATUSES,
            _delivery,
            order_id=order_id,
            limit=limit,
            cursor=cursor,
        )

    @post(
        "/{delivery_id:uuid}/events",
        guards=[admin_only],
        status_code=200,
        problems={409: "the delivery cannot move to that status from the one it is in"},
        summary="Move a delivery along (PREPARING → SHIPPED → IN_TRANSIT → DELIVERED, or CANCELLED)",
    )
    async def record_event(
        self, delivery_id: FromPath[uuid.UUID], data: JSONBody[DeliveryEvent], bus: BusDep
    ) -> Delivery:
        view: DeliveryView = unwrap(
            await bus.ask(RecordDeliveryEvent(delivery_id=delivery_id, status=data.status.upper())), STATUSES
        )
        return _delivery(view)
