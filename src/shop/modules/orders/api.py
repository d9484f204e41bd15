"""HTTP controllers of the orders module: thin, they turn requests into commands and queries."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Response, get, post
from litestar.datastructures import State
from litestar.exceptions import NotFoundException
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, HeaderParameter, JSONBody

from shop.contracts.catalog import Line
from shop.contracts.orders import CancelOrder, OrderPlaced, OrderView, PlaceOrder
from shop.modules.orders.messages import GetOrder, GetTimeline, ListOrders, OrderPage, TimelineItem
from shop.security.guards import authenticated
from shop.web.pagination import Cursor, Limit, Page, encode_cursor, keyset_cursor, offset_cursor
from shop.web.params import BusDep, SignedIn
from shop.web.rejections import field_error, unwrap

STATUSES = {
    "NOT_FOUND": 404,
    "ALREADY_FINAL": 409,
    "ALREADY_SHIPPED": 409,
    "IDEMPOTENCY_CONFLICT": 409,
    "DEPENDENCY_UNAVAILABLE": 503,
}


class ItemIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    product_id: uuid.UUID
    quantity: Annotated[int, msgspec.Meta(ge=1, le=1000)]


class NewOrder(msgspec.Struct, kw_only=True):
    items: Annotated[list[ItemIn], msgspec.Meta(min_length=1, max_length=100)]
    address_id: uuid.UUID
    payment_token: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class OrderItemOut(msgspec.Struct):
    product_id: str
    name: str | None
    unit_price: int | None
    quantity: int


class OrderOut(msgspec.Struct):
    id: str
    status: str
    items: list[OrderItemOut]
    total: int | None
    currency: str | None
    address_id: str
    failure_reason: str | None
    created_at: datetime
    updated_at: datetime


class TimelineOut(msgspec.Struct, omit_defaults=True):
    step: str
    status: str
    at: datetime
    detail: str | None = None


def _timeline_page(items: tuple[TimelineItem, ...], limit: int, cursor: str | None) -> Page[TimelineOut]:
    start = offset_cursor(cursor)
    window = items[start : start + limit]
    more = start + limit < len(items)
    return Page(
        items=[TimelineOut(i.step, i.status, i.at, i.detail) for i in window],
        next_cursor=encode_cursor(start + limit) if more else None,
    )


def _order(view: OrderView) -> OrderOut:
    return OrderOut(
        id=str(view.id),
        status=view.status,
        items=[OrderItemOut(str(i.product_id), i.name, i.unit_price, i.quantity) for i in view.items],
        total=view.total,
        currency=view.currency,
        address_id=str(view.address_id),
        failure_reason=view.failure_reason,
        created_at=view.created_at,
        updated_at=view.updated_at,
    )


IdempotencyKey = Annotated[
    str | None, HeaderParameter(name="Idempotency-Key", required=False, max_length=200, min_length=1)
]


class OrdersController(Controller):
    path = "/api/v1/orders"
    tags = ["orders"]
    guards = [authenticated]

    @post(
        "/",
        summary="Place an order (starts the saga)",
        status_code=202,
        responses={
            200: ResponseSpec(
                OrderOut, description="the order an earlier request with this Idempotency-Key and body placed"
            )
        },
        problems={409: "this Idempotency-Key was used with a different body"},
    )
    async def place(
        self,
        data: JSONBody[NewOrder],
        request: SignedIn,
        bus: BusDep,
        idempotency_key: IdempotencyKey = None,
    ) -> Response[OrderOut]:
        quantities: dict[uuid.UUID, int] = {}
        for item in data.items:
            quantities[item.product_id] = quantities.get(item.product_id, 0) + item.quantity
        if any(q > 1000 for q in quantities.values()):
            raise field_error("items", "at most 1000 of one product per order")
        reply = await bus.ask(
            PlaceOrder(
                customer_id=request.user.user_id,
                items=tuple(Line(product_id=i.product_id, quantity=i.quantity) for i in data.items),
                address_id=data.address_id,
                payment_token=data.payment_token,
                idempotency_key=idempotency_key,
            )
        )
        placed: OrderPlaced = unwrap(reply, STATUSES)
        order = _order(placed.order)
        return Response(
            order,
            status_code=202 if placed.created else 200,
            headers={"Location": f"/api/v1/orders/{order.id}"},
        )

    @get("/", summary="The caller's orders, newest first")
    async def list_orders(
        self, request: SignedIn, bus: BusDep, limit: Limit = 20, cursor: Cursor = None
    ) -> Page[OrderOut]:
        page: OrderPage = await bus.ask(
            ListOrders(customer_id=request.user.user_id, limit=limit, before=keyset_cursor(cursor))
        )
        last = page.items[-1] if page.items else None
        next_cursor = (
            encode_cursor(last.created_at.isoformat(), str(last.id)) if page.has_more and last else None
        )
        return Page(items=[_order(o) for o in page.items], next_cursor=next_cursor)

    @get("/{order_id:uuid}", summary="One order (owner or admin)")
    async def get_order(self, order_id: FromPath[uuid.UUID], request: SignedIn, bus: BusDep) -> OrderOut:
        caller = request.user
        view = await bus.ask(
            GetOrder(order_id=order_id, viewer_id=caller.user_id, viewer_is_admin=caller.is_admin)
        )
        if view is None:
            raise NotFoundException(detail="no such order")
        return _order(view)

    @post(
        "/{order_id:uuid}/cancel",
        summary="Cancel an order",
        status_code=202,
        problems={409: "the order is already final, or its delivery has shipped"},
    )
    async def cancel(
        self, order_id: FromPath[uuid.UUID], request: SignedIn, bus: BusDep
    ) -> Response[OrderOut]:
        caller = request.user
        reply = await bus.ask(
            CancelOrder(order_id=order_id, viewer_id=caller.user_id, viewer_is_admin=caller.is_admin),
            timeout=15.0,
        )
        return Response(_order(unwrap(reply, STATUSES)), status_code=202)

    @get("/{order_id:uuid}/timeline", summary="The saga's steps, in order")
    async def timeline(
        self,
        order_id: FromPath[uuid.UUID],
        request: SignedIn,
        bus: BusDep,
        limit: Limit = 100,
        cursor: Cursor = None,
    ) -> Page[TimelineOut]:
        caller = request.user
        reply = await bus.ask(
            GetTimeline(order_id=order_id, viewer_id=caller.user_id, viewer_is_admin=caller.is_admin)
        )
        if reply is None:
            raise NotFoundException(detail="no such order")
        return _timeline_page(reply, limit, cursor)


__all__: list[Any] = ["OrdersController", "State"]
