"""The published language of the payments module."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import ClassVar

import msgspec

from shop.bus.messages import Command, Event, Query


class PaymentView(msgspec.Struct, frozen=True, kw_only=True):
    id: uuid.UUID
    order_id: uuid.UUID
    customer_id: uuid.UUID
    amount: int
    currency: str
    status: str  # PENDING (outcome not known yet), AUTHORIZED, CAPTURED, DECLINED, VOIDED, REFUNDED
    provider_ref: str | None
    created_at: datetime  # the list's order and its cursor


class PaymentPage(msgspec.Struct, frozen=True, kw_only=True):
    items: tuple[PaymentView, ...]
    has_more: bool


class TakePayment(Command, frozen=True, kw_only=True):
    """Authorize and capture `amount` for an order. Sent by the order saga through the outbox;
    the outcome comes back as PaymentCaptured or PaymentDeclined. Idempotent by `payment_id`
    (the saga's key for its payment step): a retried command never charges twice."""

    wire_name: ClassVar[str] = "payments.TakePayment.v1"

    payment_id: uuid.UUID
    order_id: uuid.UUID
    customer_id: uuid.UUID
    amount: int
    currency: str
    payment_token: str


class VoidPayment(Command, frozen=True, kw_only=True):
    """Give up on an order's payment (deadline passed, or cancelled before payment): void an
    authorization, refund a capture, and make sure a capture that lands later is refunded.
    Idempotent; replies PaymentSettled."""

    wire_name: ClassVar[str] = "payments.VoidPayment.v1"

    order_id: uuid.UUID
    reason: str


class RefundPayment(Command, frozen=True, kw_only=True):
    """Refund an order's captured payment (cancel after payment). Idempotent; replies PaymentSettled."""

    wire_name: ClassVar[str] = "payments.RefundPayment.v1"

    order_id: uuid.UUID
    reason: str


class PaymentSettled(msgspec.Struct, frozen=True, kw_only=True):
    """What a void/refund left: the payment's status now, and the net amount still charged."""

    order_id: uuid.UUID
    status: str | None
    net_charged: int


class PaymentCaptured(Event, frozen=True, kw_only=True):
    wire_name: ClassVar[str] = "payments.PaymentCaptured.v1"

    payment_id: uuid.UUID
    order_id: uuid.UUID
    customer_id: uuid.UUID
    amount: int
    currency: str
    provider_ref: str


class PaymentDeclined(Event, frozen=True, kw_only=True):
    wire_name: ClassVar[str] = "payments.PaymentDeclined.v1"

    payment_id: uuid.UUID
    order_id: uuid.UUID
    customer_id: uuid.UUID
    reason: str


class PaymentRefunded(Event, frozen=True, kw_only=True):
    wire_name: ClassVar[str] = "payments.PaymentRefunded.v1"

    payment_id: uuid.UUID
    order_id: uuid.UUID
    amount: int


class PaymentVoided(Event, frozen=True, kw_only=True):
    wire_name: ClassVar[str] = "payments.PaymentVoided.v1"

    payment_id: uuid.UUID
    order_id: uuid.UUID


class ListPayments(Query, frozen=True, kw_only=True):
    """The payments the caller may see: `customer_id` None means all (an admin)."""

    wire_name: ClassVar[str] = "payments.ListPayments.v1"

    customer_id: uuid.UUID | None
    order_id: uuid.UUID | None = None
    limit: int = 20
    after: tuple[str, str] | None = None
