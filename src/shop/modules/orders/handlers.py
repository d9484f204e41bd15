"""Handlers of the orders module: its API's commands and queries, and the payment verdicts."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime

from shop.bus.breaker import CircuitOpenError
from shop.bus.bus import Bus
from shop.bus.errors import BusError
from shop.bus.messages import Rejected
from shop.bus.saga import NOT_FINAL, SagaEngine, SagaState, SagaStatus
from shop.contracts.delivery import CancelDelivery, DeliveryCancellation
from shop.contracts.orders import (
    CancelOrder,
    CountSagas,
    GetOrder,
    GetSagaTimeline,
    GetTimeline,
    ListOrders,
    ListSagas,
    OrderPage,
    OrderPlaced,
    OrderView,
    PlaceOrder,
    RetrySaga,
    SagaCounts,
    SagaSummary,
    TimelineItem,
)
from shop.contracts.payments import PaymentCaptured, PaymentDeclined
from shop.db import Database, unit_of_work
from shop.modules.orders import module, service
from shop.modules.orders.saga import TAKE_PAYMENT, OrderSagas, cancel_saga_id, initial_data
from shop.modules.orders.service import IdempotencyConflict, OrderBook, OrderStatus
from shop.observability import metrics

STARTUP_GRACE_S = 5.0
NOT_FOUND = Rejected(code="NOT_FOUND", detail="no such order")


@module.handles(PlaceOrder)
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


@module.handles(GetOrder)
async def get_order(query: GetOrder, book: OrderBook) -> OrderView | None:
    return await book.visible(query.order_id, query.viewer_id, query.viewer_is_admin)


@module.handles(ListOrders)
async def list_orders(query: ListOrders, book: OrderBook) -> OrderPage:
    before = (datetime.fromisoformat(query.before[0]), uuid.UUID(query.before[1])) if query.before else None
    return await book.page(query.customer_id, limit=query.limit, before=before)


@module.handles(CancelOrder, transactional=False)
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


@module.handles(GetTimeline)
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


@module.handles(GetSagaTimeline)
async def get_saga_timeline(query: GetSagaTimeline, sagas: OrderSagas) -> tuple[TimelineItem, ...] | None:
    if await sagas.engine.get(query.saga_id) is None:
        return None
    entries = await sagas.engine.timeline(query.saga_id)
    return tuple(TimelineItem(step=e.step, status=e.status, at=e.at, detail=e.detail) for e in entries)


def _summary(s: SagaState) -> SagaSummary:
    return SagaSummary(
        id=s.id,
        type=s.type,
        status=s.status,
        step=s.step,
        deadline=s.step_deadline or s.deadline,
        updated_at=s.updated_at,
        failure_reason=s.failure_reason,
    )


@module.handles(ListSagas)
async def list_sagas(query: ListSagas, sagas: OrderSagas) -> tuple[SagaSummary, ...]:
    states = await sagas.engine.list_sagas(
        status=query.status, limit=query.limit, after=query.after, overdue=query.overdue
    )
    return tuple(_summary(s) for s in states)


@module.handles(CountSagas)
async def count_sagas(query: CountSagas, sagas: OrderSagas) -> SagaCounts:
    by_type: dict[str, dict[str, int]] = {}
    for (saga_type, status), count in sorted((await sagas.engine.counts()).items()):
        by_type.setdefault(saga_type, {})[status] = count
    overdue = sum((await sagas.engine.overdue_counts()).values())
    return SagaCounts(by_type=by_type, overdue=overdue)


@module.handles(RetrySaga, transactional=False)
async def retry_saga(cmd: RetrySaga, database: Database, sagas: OrderSagas) -> SagaSummary | Rejected:
    """Operator: resume a parked saga; it advances in the background once this commits."""
    async with unit_of_work(database):
        retried = await sagas.engine.retry(cmd.saga_id)
    state = await sagas.engine.get(cmd.saga_id)
    if state is None:
        return Rejected(code="NOT_FOUND", detail="no such saga")
    if not retried:
        return Rejected(
            code="NOT_RETRYABLE",
            detail=f"the saga is {state.status}: only COMPENSATION_FAILED or PARKED sagas (or "
            "steps waiting to be retried) can be retried",
        )
    return _summary(state)


async def report_sagas(engine: SagaEngine) -> None:
    """The saga gauges, read from the orders database when /metrics is scraped."""
    active, overdue = await engine.counts(final=False), await engine.overdue_counts()
    types = sorted({*engine.saga_types, *(t for t, _ in active), *overdue})
    by_state: dict[tuple[str, ...], float] = {(t, s): 0 for t in types for s in sorted(NOT_FINAL)}
    for (saga_type, status), count in active.items():
        by_state[(saga_type, status)] = count
    metrics.SAGAS_ACTIVE_READING.set_all(by_state)
    metrics.SAGAS_OVERDUE_READING.set_all({(t,): overdue.get(t, 0) for t in types})


@module.on_startup
async def report_sagas_at_scrape(sagas: OrderSagas) -> None:
    engine = sagas.engine
    metrics.on_scrape(f"sagas:{id(engine)}", lambda: report_sagas(engine))


@module.on(PaymentCaptured)
async def when_payment_captured_complete_order(event: PaymentCaptured, sagas: OrderSagas) -> None:
    await sagas.engine.complete_step(
        event.order_id,
        TAKE_PAYMENT,
        {"payment_id": str(event.payment_id), "provider_ref": event.provider_ref},
    )


@module.on(PaymentDeclined)
async def when_payment_declined_cancel_order(event: PaymentDeclined, sagas: OrderSagas) -> None:
    await sagas.engine.fail_step(
        event.order_id, TAKE_PAYMENT, "PAYMENT_DECLINED", status=SagaStatus.CANCELLED, detail=event.reason
    )


@module.background
async def resume_sagas_and_run_timers(sagas: OrderSagas) -> None:
    """Resume unfinished sagas, then tick deadlines and retries (once a second, or faster when
    the payment deadline is short).

    After a restart, outcomes that were on their way (a PaymentCaptured still in an outbox) are
    relayed by the start-up sweep; a short grace lets them land before a payment deadline that
    expired while the shop was down is enforced — the deadline applies "without a known outcome"."""
    grace = min(STARTUP_GRACE_S, sagas.settings.payment_deadline_s / 2)
    await asyncio.sleep(grace)
    await sagas.engine.resume_all()
    await sagas.engine.run(interval=min(1.0, max(0.05, sagas.settings.payment_deadline_s / 10)))


@module.on_shutdown
async def close_saga_engine(sagas: OrderSagas) -> None:
    metrics.off_scrape(f"sagas:{id(sagas.engine)}")
    await sagas.engine.close()


__all__ = ["SagaEngine"]
