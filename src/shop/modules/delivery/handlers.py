"""Handlers of the delivery module: the events it follows, its commands and its query."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import structlog

from shop.bus.bus import Bus
from shop.bus.messages import Rejected
from shop.bus.module import Handlers
from shop.contracts.delivery import (
    CancelDelivery,
    DeliveryCancellation,
    DeliveryPage,
    DeliveryShipped,
    DeliveryStatusChanged,
    DeliveryView,
    ListDeliveries,
    RecordDeliveryEvent,
)
from shop.contracts.orders import OrderAwaitingPayment, OrderCancelled
from shop.contracts.payments import PaymentCaptured
from shop.modules.delivery.service import CANCELLED, SHIPPED, STATUSES, DeliveryDesk, can_move

handlers = Handlers()

log = structlog.get_logger("shop.delivery")


class ShippingInstructionMissing(Exception):
    """The payment was captured before delivery heard where the order ships to; retried later."""


async def _changed(bus: Bus, view: DeliveryView) -> None:
    await bus.publish(DeliveryStatusChanged(delivery_id=view.id, order_id=view.order_id, status=view.status))
    if view.status == SHIPPED and view.tracking_number is not None:
        await bus.publish(
            DeliveryShipped(delivery_id=view.id, order_id=view.order_id, tracking_number=view.tracking_number)
        )


async def _call_off(order_id: UUID, reason: str, desk: DeliveryDesk, bus: Bus) -> DeliveryCancellation:
    """Cancel the order's delivery unless it has shipped; with none yet, make sure none comes."""
    delivery = await desk.of_order(order_id)
    if delivery is None:
        await desk.call_off(order_id, reason)
        return DeliveryCancellation(order_id=order_id, cancelled=True, status=None)
    if delivery.status == CANCELLED:
        return DeliveryCancellation(order_id=order_id, cancelled=True, status=CANCELLED)
    if not can_move(delivery.status, CANCELLED):
        return DeliveryCancellation(order_id=order_id, cancelled=False, status=delivery.status)
    await desk.call_off(order_id, reason)
    await _changed(bus, await desk.move(delivery, CANCELLED))
    log.info("delivery.cancelled", order_id=str(order_id), reason=reason)
    return DeliveryCancellation(order_id=order_id, cancelled=True, status=CANCELLED)


@handlers.on(OrderAwaitingPayment)
async def keep_shipping_address(event: OrderAwaitingPayment, desk: DeliveryDesk) -> None:
    await desk.remember(event.order_id, event.customer_id, event.address)


@handlers.on(PaymentCaptured)
async def prepare_delivery(event: PaymentCaptured, desk: DeliveryDesk, bus: Bus) -> None:
    """One delivery per order, PREPARING, to the address the order was placed with."""
    if await desk.of_order(event.order_id) is not None or await desk.is_called_off(event.order_id):
        return
    instruction = await desk.instruction(event.order_id)
    if instruction is None:
        raise ShippingInstructionMissing(f"no shipping address for order {event.order_id} yet")
    await _changed(bus, await desk.create(instruction))


@handlers.on(OrderCancelled)
async def cancel_delivery_of_cancelled_order(event: OrderCancelled, desk: DeliveryDesk, bus: Bus) -> None:
    await _call_off(event.order_id, event.reason, desk, bus)


@handlers.handles(CancelDelivery)
async def cancel_delivery(cmd: CancelDelivery, desk: DeliveryDesk, bus: Bus) -> DeliveryCancellation:
    return await _call_off(cmd.order_id, "CANCELLED_BY_CUSTOMER", desk, bus)


@handlers.handles(RecordDeliveryEvent)
async def record_delivery_event(
    cmd: RecordDeliveryEvent, desk: DeliveryDesk, bus: Bus
) -> DeliveryView | Rejected:
    if cmd.status not in STATUSES:
        return Rejected(
            code="INVALID_STATUS", detail=f"status must be one of {', '.join(STATUSES)}", field="status"
        )
    delivery = await desk.get(cmd.delivery_id)
    if delivery is None:
        return Rejected(code="NOT_FOUND", detail="no such delivery")
    if not can_move(delivery.status, cmd.status):
        return Rejected(
            code="ILLEGAL_TRANSITION", detail=f"a {delivery.status} delivery cannot become {cmd.status}"
        )
    if cmd.status == CANCELLED:
        await desk.call_off(delivery.order_id, "CANCELLED_BY_OPERATOR")
    view = await desk.move(delivery, cmd.status)
    await _changed(bus, view)
    return view


@handlers.handles(ListDeliveries)
async def list_deliveries(query: ListDeliveries, desk: DeliveryDesk) -> DeliveryPage | Rejected:
    """The caller's deliveries (all of them for an admin). Rejected("NOT_FOUND") for another
    customer's order: nobody learns that it exists."""
    if query.order_id is not None and query.customer_id is not None:
        owner = await desk.owner_of(query.order_id)
        if owner is not None and owner != query.customer_id:
            return Rejected(code="NOT_FOUND", detail="no such order")
    after = (datetime.fromisoformat(query.after[0]), UUID(query.after[1])) if query.after else None
    return await desk.page(
        customer_id=query.customer_id, order_id=query.order_id, limit=query.limit, after=after
    )
