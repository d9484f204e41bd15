"""Handlers of the delivery module: the events it follows, its commands and its query."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from shop.bus.breaker import CircuitOpenError
from shop.bus.bus import Bus
from shop.bus.errors import BusError
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
from shop.contracts.orders import GetOrderOwner, OrderCancelled, OrderCompleted, OrderOwner
from shop.db import Database, unit_of_work
from shop.modules.delivery.service import (
    CANCELLED,
    SHIPPED,
    STATUSES,
    DeliveryDesk,
    Instruction,
    can_move,
)
from shop.observability.loggers import get_logger

handlers = Handlers()

log = get_logger("shop.delivery")

OWNER_TIMEOUT_S = 2.0


class ShippingInstructionMissing(Exception):
    """An order completed without an address delivery knows (an OrderCompleted from an orders
    version that did not carry it, for an order delivery kept no instruction of); retried,
    then dead-lettered for an operator."""


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


@handlers.on(OrderCompleted)
async def prepare_delivery(event: OrderCompleted, desk: DeliveryDesk, bus: Bus) -> None:
    """One delivery per completed order, PREPARING, to the address the order was placed with
    (carried by the event; from an orders version that did not carry it, the instruction this
    module kept from OrderAwaitingPayment then)."""
    if await desk.of_order(event.order_id) is not None or await desk.is_called_off(event.order_id):
        return
    if event.address is not None:
        instruction: Instruction | None = Instruction(event.order_id, event.customer_id, event.address)
    else:
        instruction = await desk.instruction(event.order_id)
    if instruction is None:
        raise ShippingInstructionMissing(f"no shipping address for order {event.order_id}")
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
async def list_deliveries(query: ListDeliveries, database: Database, bus: Bus) -> DeliveryPage | Rejected:
    """The caller's deliveries (all of them for an admin). Rejected("NOT_FOUND") for another
    customer's order: nobody learns that it exists. An order this module has no record of yet
    (its delivery comes once it completes) is looked up in orders, outside any transaction of
    this module's; if orders cannot answer, the page (empty for that order) is all there is."""
    after = (datetime.fromisoformat(query.after[0]), UUID(query.after[1])) if query.after else None
    checked = query.order_id if query.customer_id is not None else None  # an admin sees any
    async with unit_of_work(database, write=False) as uow:
        desk = DeliveryDesk(uow.session)
        owner = None if checked is None else await desk.owner_of(checked)
        page = await desk.page(
            customer_id=query.customer_id, order_id=query.order_id, limit=query.limit, after=after
        )
    if checked is not None and owner is None:
        owner = await _owner_in_orders(bus, checked)
    if owner is not None and owner != query.customer_id:
        return Rejected(code="NOT_FOUND", detail="no such order")
    return page


async def _owner_in_orders(bus: Bus, order_id: UUID) -> UUID | None:
    try:
        found = await bus.ask(GetOrderOwner(order_id=order_id), timeout=OWNER_TIMEOUT_S)
    except (BusError, CircuitOpenError, TimeoutError) as exc:
        log.warning("delivery.order_owner_unknown", order_id=str(order_id), error=repr(exc))
        return None
    return found.customer_id if isinstance(found, OrderOwner) else None
