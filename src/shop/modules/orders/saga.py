"""The order sagas, orchestrated by orders on the kernel's saga engine.

place_order:  reserve_stock (compensate/abort: release_stock)
              → check_address
              → take_payment (lines in more than one currency: fail MIXED_CURRENCIES, charge nothing;
                              else wait for PaymentCaptured/PaymentDeclined; abort: void_payment;
                              compensate: refund_payment; deadline SHOP_PAYMENT_DEADLINE_S)
              → complete (order COMPLETED, CommitStock; OrderCompleted with the address, for delivery)
cancel_completed_order: refund_payment → restock → mark_cancelled

An unknown outcome (timeout, open breaker, handler failure) is never compensated blindly: the
engine retries the step with the same idempotency key until its deadline, then aborts it.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncConnection

from shop.bus.bus import Bus
from shop.bus.clock import Clock
from shop.bus.saga import Saga, SagaContext, SagaEngine, SagaStatus, StepFailed, StepStatus, Wait
from shop.contracts.catalog import (
    CommitStock,
    Line,
    PricedLine,
    ReleaseStock,
    ReserveStock,
    RestockItems,
    StockReserved,
    StockUnavailable,
)
from shop.contracts.delivery import AddressSnapshot
from shop.contracts.orders import OrderAwaitingPayment, OrderCancelled, OrderCompleted, OrderFailed
from shop.contracts.payments import RefundPayment, TakePayment, VoidPayment
from shop.contracts.users import AddressView, GetAddress
from shop.db import Database, UnitOfWork
from shop.modules.orders.service import OrderBook, OrderStatus
from shop.settings import Settings

PLACE_ORDER = "place_order"
CANCEL_COMPLETED_ORDER = "cancel_completed_order"
# place_order's steps (the payment outcome handlers name take_payment too)
RESERVE_STOCK = "reserve_stock"
CHECK_ADDRESS = "check_address"
TAKE_PAYMENT = "take_payment"
COMPLETE = "complete"
ASK_TIMEOUT_S = 5.0
STARTUP_GRACE_S = 5.0
DEPENDENCY_DEADLINE = timedelta(seconds=60)
MIXED_CURRENCIES = "MIXED_CURRENCIES"
PAYMENT_TOKEN = "payment_token"
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:shop:orders")


def reservation_id(order_id: uuid.UUID) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, f"{order_id}:reservation")


def payment_id(order_id: uuid.UUID) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, f"{order_id}:payment")


def initial_data(
    customer_id: uuid.UUID, items: list[Line], address_id: uuid.UUID, token: str
) -> dict[str, Any]:
    return {
        "customer_id": str(customer_id),
        "address_id": str(address_id),
        PAYMENT_TOKEN: token,
        "lines": [{"product_id": str(line.product_id), "quantity": line.quantity} for line in items],
    }


class OrderSagas:
    """The order sagas bound to this process's bus, settings and database; and their engine."""

    def __init__(self, bus: Bus, settings: Settings, database: Database, clock: Clock) -> None:
        self.bus = bus
        self.settings = settings
        self.database = database
        self.place_order = (
            Saga(PLACE_ORDER, on_step=self._on_step, on_finish=self._on_finish, transient=(PAYMENT_TOKEN,))
            .step(
                RESERVE_STOCK,
                self.reserve_stock,
                compensate=self.release_stock,
                abort=self.release_stock,
                deadline=DEPENDENCY_DEADLINE,
                timeout_reason="DEPENDENCY_UNAVAILABLE",
            )
            .step(
                CHECK_ADDRESS,
                self.check_address,
                deadline=DEPENDENCY_DEADLINE,
                timeout_reason="DEPENDENCY_UNAVAILABLE",
                reads_only=True,  # a query of users: runs with reserve_stock's outcome
            )
            .step(
                TAKE_PAYMENT,
                self.take_payment,
                compensate=self.refund_payment,
                abort=self.void_payment,
                deadline=timedelta(seconds=settings.payment_deadline_s),
                timeout_reason="PAYMENT_TIMEOUT",
                timeout_status=SagaStatus.CANCELLED,
                local=True,
            )
            .step(COMPLETE, self.complete, local=True)
        )
        self.cancel_completed = (
            Saga(CANCEL_COMPLETED_ORDER, on_finish=self._on_cancel_finished)
            .step("refund_payment", self.refund_payment)
            .step("restock", self.restock)
        )
        deadline_s = settings.payment_deadline_s
        self.engine = SagaEngine(
            database,
            [self.place_order, self.cancel_completed],
            clock=clock.now,
            # once a second, or faster when the payment deadline is short
            tick_interval=min(1.0, max(0.05, deadline_s / 10)),
            # after a restart, a PaymentCaptured still in an outbox lands before a payment
            # deadline that passed while the shop was down is enforced ("without a known outcome")
            startup_grace=min(STARTUP_GRACE_S, deadline_s / 2),
        )

    # -- place_order's steps ---------------------------------------------------------------

    async def reserve_stock(self, ctx: SagaContext) -> dict[str, Any]:
        order_id = ctx.saga_id
        lines = tuple(msgspec.convert(ctx.data["lines"], list[Line]))
        reply = await self.bus.ask(
            ReserveStock(reservation_id=reservation_id(order_id), order_id=order_id, lines=lines),
            timeout=ASK_TIMEOUT_S,
        )
        if isinstance(reply, StockUnavailable):
            # RELEASED: this saga already gave the reservation up (it timed out waiting for
            # catalog); to the customer that is the dependency having been unavailable.
            reason = "DEPENDENCY_UNAVAILABLE" if reply.reason == "RELEASED" else reply.reason
            raise StepFailed(reason, detail=", ".join(str(p) for p in reply.product_ids) or reply.reason)
        if not isinstance(reply, StockReserved):
            raise TypeError(f"unexpected reply to ReserveStock: {reply!r}")
        return {"priced": msgspec.to_builtins(reply.lines)}

    async def release_stock(self, ctx: SagaContext) -> None:
        await self.bus.ask(ReleaseStock(reservation_id=reservation_id(ctx.saga_id)), timeout=ASK_TIMEOUT_S)

    async def check_address(self, ctx: SagaContext) -> dict[str, Any]:
        reply = await self.bus.ask(
            GetAddress(
                address_id=uuid.UUID(ctx.data["address_id"]), user_id=uuid.UUID(ctx.data["customer_id"])
            ),
            timeout=ASK_TIMEOUT_S,
        )
        if reply is None:
            raise StepFailed("INVALID_ADDRESS", detail="the address is not the customer's")
        if not isinstance(reply, AddressView):
            raise TypeError(f"unexpected reply to GetAddress: {reply!r}")
        snapshot = AddressSnapshot(
            recipient=reply.recipient,
            line1=reply.line1,
            line2=reply.line2,
            city=reply.city,
            postal_code=reply.postal_code,
            country=reply.country,
        )
        return {"address": msgspec.to_builtins(snapshot)}

    async def take_payment(self, ctx: SagaContext) -> Wait:
        """Ask payments to charge (through the outbox) and wait for its verdict.

        The payment token is needed only for that TakePayment: once it is in the outbox the
        token is dropped from the saga's data (kept until then, so a retried step has it)."""
        order_id = ctx.saga_id
        if PAYMENT_TOKEN not in ctx.data:  # TakePayment was sent by an earlier run of this step
            return Wait()
        customer_id = uuid.UUID(ctx.data["customer_id"])
        priced = msgspec.convert(ctx.data["priced"], list[PricedLine])
        currencies = sorted({line.currency for line in priced})
        if len(currencies) > 1:
            # Nothing is charged: the reservation is released by reserve_stock's compensation.
            raise StepFailed(MIXED_CURRENCIES, detail=f"the lines are priced in {', '.join(currencies)}")
        total = sum(line.unit_price * line.quantity for line in priced)
        currency = currencies[0] if currencies else "EUR"
        uow = _local(ctx)
        await OrderBook(uow.session).set_status(
            order_id,
            OrderStatus.AWAITING_PAYMENT,
            only_from=(OrderStatus.PENDING, OrderStatus.AWAITING_PAYMENT),
        )
        await self.bus.publish(
            OrderAwaitingPayment(
                order_id=order_id,
                customer_id=customer_id,
                address_id=uuid.UUID(ctx.data["address_id"]),
                address=msgspec.convert(ctx.data["address"], AddressSnapshot),
                total=total,
                currency=currency,
            )
        )
        await self.bus.send(
            TakePayment(
                payment_id=payment_id(order_id),
                order_id=order_id,
                customer_id=customer_id,
                amount=total,
                currency=currency,
                payment_token=ctx.data[PAYMENT_TOKEN],
            )
        )
        del ctx.data[PAYMENT_TOKEN]
        return Wait()

    async def void_payment(self, ctx: SagaContext) -> None:
        """The payment step is abandoned (deadline, or the customer cancelled): void it at the
        provider; payments refunds a capture that lands later."""
        await self.bus.ask(
            VoidPayment(order_id=ctx.saga_id, reason="the order was abandoned before its payment completed"),
            timeout=ASK_TIMEOUT_S,
        )

    async def refund_payment(self, ctx: SagaContext) -> None:
        order_id = uuid.UUID(ctx.data.get("order_id", str(ctx.saga_id)))
        await self.bus.ask(RefundPayment(order_id=order_id, reason="order cancelled"), timeout=ASK_TIMEOUT_S)

    async def complete(self, ctx: SagaContext) -> None:
        order_id = ctx.saga_id
        book = OrderBook(_local(ctx).session)
        if await book.set_status(
            order_id, OrderStatus.COMPLETED, only_from=(OrderStatus.PENDING, OrderStatus.AWAITING_PAYMENT)
        ):
            await self.bus.send(CommitStock(reservation_id=reservation_id(order_id)))
            await self.bus.publish(
                OrderCompleted(
                    order_id=order_id,
                    customer_id=uuid.UUID(ctx.data["customer_id"]),
                    address=msgspec.convert(ctx.data["address"], AddressSnapshot),
                )
            )

    # -- cancel_completed_order's steps ----------------------------------------------------

    async def restock(self, ctx: SagaContext) -> None:
        order_id = uuid.UUID(ctx.data["order_id"])
        await self.bus.ask(RestockItems(reservation_id=reservation_id(order_id)), timeout=ASK_TIMEOUT_S)

    # -- hooks (inside the transaction that persists the saga's state) ---------------------

    async def _on_step(self, ctx: SagaContext, step: str, status: str, session: AsyncConnection) -> None:
        if step == RESERVE_STOCK and status == StepStatus.DONE and "priced" in ctx.data:
            await OrderBook(session).price(ctx.saga_id, msgspec.convert(ctx.data["priced"], list[PricedLine]))

    async def _on_finish(
        self, ctx: SagaContext, status: str, reason: str | None, session: AsyncConnection
    ) -> None:
        book = OrderBook(session)
        order_id = ctx.saga_id
        customer_id = uuid.UUID(ctx.data["customer_id"])
        if status == SagaStatus.COMPLETED:
            return  # the complete step already did it, in its own transaction
        if status in (SagaStatus.FAILED, SagaStatus.CANCELLED):
            final = OrderStatus.CANCELLED if status == SagaStatus.CANCELLED else OrderStatus.FAILED
            if await book.set_status(order_id, final, failure_reason=reason or status):
                if final == OrderStatus.CANCELLED:
                    await self.bus.publish(
                        OrderCancelled(order_id=order_id, customer_id=customer_id, reason=reason or "")
                    )
                else:
                    await self.bus.publish(
                        OrderFailed(order_id=order_id, customer_id=customer_id, reason=reason or "")
                    )

    async def _on_cancel_finished(
        self, ctx: SagaContext, status: str, reason: str | None, session: AsyncConnection
    ) -> None:
        if status != SagaStatus.COMPLETED:
            return  # parked or failed: an operator sees it in the saga views
        order_id = uuid.UUID(ctx.data["order_id"])
        book = OrderBook(session)
        if await book.set_status(
            order_id,
            OrderStatus.CANCELLED,
            failure_reason="CANCELLED_BY_CUSTOMER",
            only_from=(OrderStatus.COMPLETED,),
        ):
            await self.bus.publish(
                OrderCancelled(
                    order_id=order_id,
                    customer_id=uuid.UUID(ctx.data["customer_id"]),
                    reason="CANCELLED_BY_CUSTOMER",
                )
            )


def _local(ctx: SagaContext) -> UnitOfWork:
    """The unit of work of a local step (its effect commits with the saga's progress)."""
    if ctx.uow is None:
        raise RuntimeError(f"{ctx.step} runs as a local step, inside the saga's unit of work")
    return ctx.uow


def saga_engine(sagas: OrderSagas) -> SagaEngine:
    """The engine of the order sagas (declared with ``module.sagas``: the composition root
    resumes, ticks and closes it and serves the saga admin views over it)."""
    return sagas.engine


def cancel_saga_id(order_id: uuid.UUID) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, f"{order_id}:cancel")
