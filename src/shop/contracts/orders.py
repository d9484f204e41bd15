"""The published language of the orders module."""

from __future__ import annotations

import uuid

from shop.bus.messages import Event
from shop.contracts.delivery import AddressSnapshot


class OrderAwaitingPayment(Event, frozen=True, kw_only=True):
    """The order's stock is reserved and its address confirmed; payment was requested.
    Delivery keeps the address for the shipment it prepares once the payment is captured."""

    order_id: uuid.UUID
    customer_id: uuid.UUID
    address_id: uuid.UUID
    address: AddressSnapshot
    total: int
    currency: str


class OrderCompleted(Event, frozen=True, kw_only=True):
    order_id: uuid.UUID
    customer_id: uuid.UUID


class OrderCancelled(Event, frozen=True, kw_only=True):
    order_id: uuid.UUID
    customer_id: uuid.UUID
    reason: str


class OrderFailed(Event, frozen=True, kw_only=True):
    order_id: uuid.UUID
    customer_id: uuid.UUID
    reason: str
