"""The published language of the delivery module."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import ClassVar

import msgspec

from shop.bus.messages import Command, Event, Query


class AddressSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    recipient: str
    line1: str
    line2: str | None
    city: str
    postal_code: str
    country: str


class DeliveryView(msgspec.Struct, frozen=True, kw_only=True):
    id: uuid.UUID
    order_id: uuid.UUID
    customer_id: uuid.UUID
    status: str  # PREPARING, SHIPPED, IN_TRANSIT, DELIVERED, CANCELLED
    tracking_number: str | None
    address: AddressSnapshot
    created_at: datetime  # the list's order and its cursor
    updated_at: datetime


class DeliveryPage(msgspec.Struct, frozen=True, kw_only=True):
    items: tuple[DeliveryView, ...]
    has_more: bool


class ListDeliveries(Query, frozen=True, kw_only=True):
    wire_name: ClassVar[str] = "delivery.ListDeliveries.v1"

    customer_id: uuid.UUID | None
    order_id: uuid.UUID | None = None
    limit: int = 20
    after: tuple[str, str] | None = None


class RecordDeliveryEvent(Command, frozen=True, kw_only=True):
    """Admin moves a delivery along. Replies DeliveryView or Rejected("NOT_FOUND" | "ILLEGAL_TRANSITION")."""

    wire_name: ClassVar[str] = "delivery.RecordDeliveryEvent.v1"

    delivery_id: uuid.UUID
    status: str


class CancelDelivery(Command, frozen=True, kw_only=True):
    """Cancel an order's delivery if it has not shipped. Replies DeliveryCancellation."""

    wire_name: ClassVar[str] = "delivery.CancelDelivery.v1"

    order_id: uuid.UUID


class DeliveryCancellation(msgspec.Struct, frozen=True, kw_only=True):
    """cancelled: the delivery is (now) CANCELLED or never existed; False when it has shipped."""

    order_id: uuid.UUID
    cancelled: bool
    status: str | None


class DeliveryShipped(Event, frozen=True, kw_only=True):
    wire_name: ClassVar[str] = "delivery.DeliveryShipped.v1"

    delivery_id: uuid.UUID
    order_id: uuid.UUID
    tracking_number: str


class DeliveryStatusChanged(Event, frozen=True, kw_only=True):
    wire_name: ClassVar[str] = "delivery.DeliveryStatusChanged.v1"

    delivery_id: uuid.UUID
    order_id: uuid.UUID
    status: str
