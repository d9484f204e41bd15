"""The orders module's own messages: what its HTTP controllers ask it. Not published (no other
module sends or receives them), so they may change with the module; the published language is
:mod:`shop.contracts.orders`."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import ClassVar

import msgspec

from shop.bus.messages import Query
from shop.contracts.orders import OrderView

__all__ = ["GetOrder", "GetTimeline", "ListOrders", "OrderPage", "TimelineItem"]


class GetOrder(Query, frozen=True, kw_only=True):
    """The order if `viewer` may see it (its owner, or an admin); else None."""

    wire_name: ClassVar[str] = "orders.GetOrder.v1"

    order_id: uuid.UUID
    viewer_id: uuid.UUID
    viewer_is_admin: bool = False


class ListOrders(Query, frozen=True, kw_only=True):
    """A customer's own orders, newest first. Replies OrderPage."""

    wire_name: ClassVar[str] = "orders.ListOrders.v1"

    customer_id: uuid.UUID
    limit: int = 20
    before: tuple[str, str] | None = None


class OrderPage(msgspec.Struct, frozen=True, kw_only=True):
    items: tuple[OrderView, ...]
    has_more: bool


class GetTimeline(Query, frozen=True, kw_only=True):
    """The order saga's steps if `viewer` may see the order; else None. Replies tuple[TimelineItem, ...]."""

    wire_name: ClassVar[str] = "orders.GetTimeline.v1"

    order_id: uuid.UUID
    viewer_id: uuid.UUID
    viewer_is_admin: bool = False


class TimelineItem(msgspec.Struct, frozen=True, kw_only=True):
    step: str
    status: str
    at: datetime
    detail: str | None = None
