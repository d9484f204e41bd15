"""The published language of the orders module."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import ClassVar

import msgspec

from shop.bus.messages import Command, Event, Query
from shop.contracts.catalog import Line
from shop.contracts.delivery import AddressSnapshot


class OrderAwaitingPayment(Event, frozen=True, kw_only=True):
    """The order's stock is reserved and its address confirmed; payment was requested."""

    wire_name: ClassVar[str] = "orders.OrderAwaitingPayment.v1"

    order_id: uuid.UUID
    customer_id: uuid.UUID
    address_id: uuid.UUID
    address: AddressSnapshot
    total: int
    currency: str


class OrderCompleted(Event, frozen=True, kw_only=True):
    """The order is paid and complete. Delivery prepares its shipment to ``address``, the
    address the order was placed with (None only from orders versions that did not carry it:
    delivery then uses the one it kept from OrderAwaitingPayment)."""

    wire_name: ClassVar[str] = "orders.OrderCompleted.v1"

    order_id: uuid.UUID
    customer_id: uuid.UUID
    address: AddressSnapshot | None = None


class OrderCancelled(Event, frozen=True, kw_only=True):
    wire_name: ClassVar[str] = "orders.OrderCancelled.v1"

    order_id: uuid.UUID
    customer_id: uuid.UUID
    reason: str


class OrderFailed(Event, frozen=True, kw_only=True):
    wire_name: ClassVar[str] = "orders.OrderFailed.v1"

    order_id: uuid.UUID
    customer_id: uuid.UUID
    reason: str


# -- what the orders API asks its own module -----------------------------------------------


class OrderLine(msgspec.Struct, frozen=True, kw_only=True):
    product_id: uuid.UUID
    quantity: int
    name: str | None = None
    unit_price: int | None = None


class OrderView(msgspec.Struct, frozen=True, kw_only=True):
    id: uuid.UUID
    customer_id: uuid.UUID
    status: str
    items: tuple[OrderLine, ...]
    total: int | None
    currency: str | None
    address_id: uuid.UUID
    failure_reason: str | None
    created_at: datetime
    updated_at: datetime


class PlaceOrder(Command, frozen=True, kw_only=True):
    """Accept an order and start its saga. Replies OrderPlaced, or Rejected("IDEMPOTENCY_CONFLICT")."""

    wire_name: ClassVar[str] = "orders.PlaceOrder.v1"

    customer_id: uuid.UUID
    items: tuple[Line, ...]
    address_id: uuid.UUID
    payment_token: str
    idempotency_key: str | None = None


class OrderPlaced(msgspec.Struct, frozen=True, kw_only=True):
    order: OrderView
    created: bool  # False: the same Idempotency-Key and body gave this earlier order


class CancelOrder(Command, frozen=True, kw_only=True):
    """Cancel on behalf of the owner or an admin. Replies OrderView, or Rejected("NOT_FOUND" |
    "ALREADY_FINAL" | "ALREADY_SHIPPED" | "DEPENDENCY_UNAVAILABLE")."""

    wire_name: ClassVar[str] = "orders.CancelOrder.v1"

    order_id: uuid.UUID
    viewer_id: uuid.UUID
    viewer_is_admin: bool = False


class GetOrderOwner(Query, frozen=True, kw_only=True):
    """Whose order this is (for a module that must not show it to anyone else before it has a
    record of its own). Replies OrderOwner, or None when there is no such order."""

    wire_name: ClassVar[str] = "orders.GetOrderOwner.v1"

    order_id: uuid.UUID


class OrderOwner(msgspec.Struct, frozen=True, kw_only=True):
    order_id: uuid.UUID
    customer_id: uuid.UUID
