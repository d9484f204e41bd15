"""Handlers of the orders module: its API's commands and queries, and the payment verdicts."""

from __future__ import annotations

import uuid
from datetime import datetime

from shop.bus.breaker import CircuitOpenError
from shop.bus.bus import Bus
from shop.bus.errors import BusError
from shop.bus.messages import Rejected
from shop.bus.module import Handlers
from shop.bus.saga import SagaStatus
from shop.contracts.delivery import CancelDelivery, DeliveryCancellation
from shop.contracts.orders import (
    CancelOrder,
    GetOrderOwner,
    OrderOwner,
    OrderPlaced,
    OrderView,
    PlaceOrder,
)
from shop.contracts.payments import PaymentCaptured, PaymentDeclined
from shop.db import Database, unit_of_work
from shop.modules.orders import service
from shop.modules.orders.messages import GetOrder, GetTimeline, ListOrders, OrderPage, TimelineItem
from shop.modules.orders.saga import TAKE_PAYMENT, OrderSagas, cancel_saga_id, initial_data
from shop.modules.orders.service import IdempotencyConflict, OrderBook, OrderStatus

handlers = Handlers()

NOT_FOUND = Rejected(code="NOT_FOUND", detail="no such order")


@handlers.handles(PlaceOrder)
async def place_order(cmd: PlaceOrder, book: OrderBook, sagas: OrderSagas) -> OrderPlaced | Rejected:
    """Persist the order PENDING and start its saga in the same transaction."""
    try:
        order, created = await book.create(
            customer_id=cmd.customer_id,
            items=cmd.items,
            address_id=cmd.address_id,
            payment_token=cmd.payment_token,
            idempotency_key=cmd.idempotency_key,
        )
    except IdempotencyConflict:
        return Rejected(
            code="IDEMPOTENCY_CONFLICT",
            detail="this Idempotency-Key was already used with a different request body",
            field="Idempotency-Key",
        )
    if created:
        data = initial_data(cmd.customer_id, list(cmd.items), cmd.address_id, cmd.payment_token)
        await sagas.engine.start(sagas.place_order, order.id, data)
    return OrderPlaced(order=order, created=created)


@handlers.handles(GetOrderOwner)
async def order_owner(query: GetOrderOwner, book: OrderBook) -> OrderOwner | None:
    """Whose order it is, for another module's visibility check (None: no such order)."""
    order = await book.get(query.order_id)
    return None if order is None else OrderOwner(order_id=order.id, customer_id=order.customer_id)


@handlers.handles(GetOrder)
async def get_order(query: GetOrder, book: OrderBook) -> OrderView | None:
    return await book.visible(query.order_id, query.viewer_id, query.viewer_is_admin)


@handlers.handles(ListOrders)
async def list_orders(query: ListOrders, book: OrderBook) -> OrderPage:
    before = (datetime.fromisoformat(query.before[0]), uuid.UUID(query.before[1])) if query.before else None
    return await book.page(query.customer_id, limit=query.limit, before=before)


@handlers.handles(CancelOrder, transactional=False)
async def cancel_order(
    cmd: CancelOrder, database: Database, sagas: OrderSagas, bus: Bus
) -> OrderView | Rejected:
    """Before payment: cancel the running saga (void, release). After: refund, restock — unless
    the delivery has shipped (409). Delivery is asked outside any orders transaction, so the
    orders write slot is never held across a call to another module."""
    async with unit_of_work(database, write=False) as uow:
        order = await OrderBook(uow.session).visible(cmd.order_id, cmd.viewer_id, cmd.viewer_is_admin)
    if order is None:
        return NOT_FOUND
    if order.status in service.FINAL:
        return Rejected(code="ALREADY_FINAL", detail=f"the order is already {order.status}")
    if order.status != OrderStatus.COMPLETED:
        async with unit_of_work(database) as uow:
            cancelled = await sagas.engine.cancel(order.id, "CANCELLED_BY_CUSTOMER", SagaStatus.CANCELLED)
        if not cancelled:
            state = await sagas.engine.get(order.id)
            if state is None or state.status != SagaStatus.COMPLETED:
                return Rejected(code="ALREADY_FINAL", detail="the order is already being cancelled")
        async with unit_of_work(database, write=False) as uow:
            return await OrderBook(uow.session).get(order.id) or order
    try:
        verdict = await bus.ask(CancelDelivery(order_id=order.id), timeout=5.0)
    except (BusError, CircuitOpenError, TimeoutError) as exc:
        return Rejected(
            code="DEPENDENCY_UNAVAILABLE", detail=f"delivery cannot be reached: {type(exc).__name__}"
        )
    if not isinstance(verdict, DeliveryCancellation) or not verdict.cancelled:
        status = verdict.status if isinstance(verdict, DeliveryCancellation) else "unknown"
        return Rejected(code="ALREADY_SHIPPED", detail=f"the delivery is already {status}")
    async with unit_of_work(database):
        await sagas.engine.start(
            sagas.cancel_completed,
            cancel_saga_id(order.id),
            {"order_id": str(order.id), "customer_id": str(order.customer_id)},
        )
    return order


@handlers.handles(GetTimeline)
async def get_timeline(
    query: GetTimeline, book: OrderBook, sagas: OrderSagas
) -> tuple[TimelineItem, ...] | None:
    order = await book.visible(query.order_id, query.viewer_id, query.viewer_is_admin)
    if order is None:
        return None
    entries = [*await sagas.engine.timeline(order.id)]
    if await sagas.engine.get(cancel_saga_id(order.id)) is not None:
        entries.extend(await sagas.engine.timeline(cancel_saga_id(order.id)))
    return tuple(TimelineItem(step=e.step, status=e.status, at=e.at, detail=e.detail) for e in entries)


@handlers.on(PaymentCaptured)
async def when_payment_captured_complete_order(event: PaymentCaptured, sagas: OrderSagas) -> None:
    await sagas.engine.complete_step(
        event.order_id,
        TAKE_PAYMENT,
        {"payment_id": str(event.payment_id), "provider_ref": event.provider_ref},
    )


@handlers.on(PaymentDeclined)
async def when_payment_declined_cancel_order(event: PaymentDeclined, sagas: OrderSagas) -> None:
    await sagas.engine.fail_step(
        event.order_id, TAKE_PAYMENT, "PAYMENT_DECLINED", status=SagaStatus.CANCELLED, detail=event.reason
    )
