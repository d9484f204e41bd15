"""Handlers of the payments module's commands and queries.

TakePayment, VoidPayment and RefundPayment call the provider, so they are not transactional:
the bus opens no unit of work around them (no database lock is held across a provider call);
the processor opens its own short ones and is idempotent by payment id (docs/adr/0005).
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from shop.bus.messages import Rejected
from shop.bus.module import Handlers
from shop.contracts.payments import (
    ListPayments,
    PaymentPage,
    PaymentSettled,
    RefundPayment,
    TakePayment,
    VoidPayment,
)
from shop.modules.payments.service import PaymentBook, PaymentProcessor

handlers = Handlers()


@handlers.handles(TakePayment, transactional=False)
async def take_payment(cmd: TakePayment, processor: PaymentProcessor) -> None:
    """Authorize and capture; PaymentCaptured or PaymentDeclined follows. An unknown outcome
    (provider error, timeout, open breaker) raises, so the bus delivers the command again."""
    await processor.take(cmd)


@handlers.handles(VoidPayment, transactional=False)
async def void_payment(cmd: VoidPayment, processor: PaymentProcessor) -> PaymentSettled:
    """Give up on the order's payment: void an authorization, refund a capture, and make a
    TakePayment that arrives later charge nothing."""
    return await processor.give_up(cmd.order_id, cmd.reason)


@handlers.handles(RefundPayment, transactional=False)
async def refund_payment(cmd: RefundPayment, processor: PaymentProcessor) -> PaymentSettled:
    """Refund the order's captured payment (the order was cancelled after payment)."""
    return await processor.give_up(cmd.order_id, cmd.reason)


@handlers.handles(ListPayments)
async def list_payments(query: ListPayments, book: PaymentBook) -> PaymentPage | Rejected:
    """The caller's payments (all of them for an admin). Rejected("NOT_FOUND") for an order
    whose payments belong to someone else: nobody learns that another's order exists."""
    if query.order_id is not None and query.customer_id is not None:
        owners = await book.owners_of(query.order_id)
        if owners and query.customer_id not in owners:
            return Rejected(code="NOT_FOUND", detail="no such order")
    after = (datetime.fromisoformat(query.after[0]), UUID(query.after[1])) if query.after else None
    return await book.page(
        customer_id=query.customer_id, order_id=query.order_id, limit=query.limit, after=after
    )
