"""The payments domain: the payment book (one session) and the processor that drives a payment
through the provider without holding a database transaction across a provider call.

A payment moves PENDING → AUTHORIZED → CAPTURED, or ends DECLINED or VOIDED; a captured payment
of an order that was given up is refunded (→ REFUNDED). Every change of status is a
compare-and-set in its own short unit of work, and the event it causes is published in that
same unit of work by whoever won the change; every provider call uses a key derived from the
payment id, so a driver that runs twice (a redelivered command, a void racing a capture) moves
money once.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from shop.bus.breaker import CircuitOpenError
from shop.bus.bus import Bus
from shop.bus.clock import as_utc
from shop.bus.errors import DependencyFailure
from shop.bus.messages import Event
from shop.contracts.payments import (
    PaymentCaptured,
    PaymentDeclined,
    PaymentPage,
    PaymentRefunded,
    PaymentSettled,
    PaymentView,
    PaymentVoided,
    TakePayment,
)
from shop.db import Database, Prepared, unit_of_work
from shop.db_tables import InsertIfAbsent, is_marked_cancelled, keyset_rows, mark_cancelled
from shop.modules.payments.models import cancelled_orders, payments
from shop.modules.payments.provider import (
    ALREADY_CAPTURED,
    AUTHORIZATION_VOIDED,
    GuardedProvider,
    ProviderError,
)
from shop.observability.loggers import get_logger

log = get_logger("shop.payments")

PENDING = "PENDING"
AUTHORIZED = "AUTHORIZED"
CAPTURED = "CAPTURED"
DECLINED = "DECLINED"
VOIDED = "VOIDED"
REFUNDED = "REFUNDED"
FINAL = frozenset({DECLINED, VOIDED, REFUNDED})
MAX_STEPS = 10  # a payment settles in at most ~4 steps; more means someone keeps moving it


class PaymentOutcomeUnknown(DependencyFailure):
    """The provider failed, timed out or its breaker is open: whether money moved is unknown.
    The handler raises it so that the bus delivers the command again later."""


class PaymentStuck(Exception):
    """The provider refused an operation the payment's state says must succeed (an operator's case)."""


@dataclass(frozen=True, slots=True)
class Payment:
    id: uuid.UUID
    order_id: uuid.UUID
    customer_id: uuid.UUID
    amount: int
    currency: str
    status: str
    provider_ref: str | None
    decline_reason: str | None
    refunded: int
    created_at: datetime

    @property
    def net_charged(self) -> int:
        return self.amount - self.refunded if self.status in (CAPTURED, REFUNDED) else 0

    def view(self) -> PaymentView:
        return PaymentView(
            id=self.id,
            order_id=self.order_id,
            customer_id=self.customer_id,
            amount=self.amount,
            currency=self.currency,
            status=self.status,
            provider_ref=self.provider_ref,
            created_at=self.created_at,
        )


_OPEN = InsertIfAbsent(payments)
_GET = Prepared(sa.select(payments).where(payments.c.id == sa.bindparam("b_id")))
_GIVEN_UP = cancelled_orders.alias("given_up")
# The compare-and-set also answers whether the payment's order was given up, read in the same
# statement (one round trip where a move and a read took two).
_MOVE = Prepared(
    payments.update()
    .where(payments.c.id == sa.bindparam("b_id"), payments.c.status == sa.bindparam("b_status"))
    .returning(
        # named in full: a RETURNING clause renders the updated table's columns unqualified,
        # which inside the subquery would name the cancelled orders' own column
        sa.exists()
        .select_from(_GIVEN_UP)
        .where(sa.literal_column("given_up.order_id") == sa.literal_column(f"{payments.name}.order_id"))
        .label("cancelled")
    )
)


def _payment(m: Any) -> Payment:
    return Payment(
        id=m["id"],
        order_id=m["order_id"],
        customer_id=m["customer_id"],
        amount=m["amount"],
        currency=m["currency"],
        status=m["status"],
        provider_ref=m["provider_ref"],
        decline_reason=m["decline_reason"],
        refunded=m["refunded"],
        created_at=as_utc(m["created_at"]),
    )


class PaymentBook:
    """The payments table and the cancelled orders, over one session."""

    def __init__(self, session: AsyncConnection) -> None:
        self.session = session

    async def get(self, payment_id: uuid.UUID) -> Payment | None:
        found = (await _GET.execute(self.session, {"b_id": payment_id})).mappings()
        return _payment(found[0]) if found else None

    async def open(self, cmd: TakePayment) -> Payment:
        """The payment of this id, created PENDING the first time (a redelivered or concurrent
        command finds the one there and leaves it alone)."""
        now = datetime.now(UTC)
        opened = Payment(
            id=cmd.payment_id,
            order_id=cmd.order_id,
            customer_id=cmd.customer_id,
            amount=cmd.amount,
            currency=cmd.currency,
            status=PENDING,
            provider_ref=None,
            decline_reason=None,
            refunded=0,
            created_at=now,
        )
        values = {
            "id": opened.id,
            "order_id": opened.order_id,
            "customer_id": opened.customer_id,
            "amount": opened.amount,
            "currency": opened.currency,
            "status": PENDING,
            "refunded": 0,
            "created_at": now,
            "updated_at": now,
        }
        if await _OPEN.execute(self.session, values):
            return opened
        found = await self.get(cmd.payment_id)
        assert found is not None
        if (found.order_id, found.amount, found.currency) != (cmd.order_id, cmd.amount, cmd.currency):
            log.warning("payments.conflicting_take_payment", payment_id=str(cmd.payment_id))
        return found

    async def move(self, payment_id: uuid.UUID, source: str, target: str, **values: Any) -> bool | None:
        """Compare-and-set the status: None when the payment was not at `source` (nothing
        changed), else whether its order is marked given up (read in the same statement)."""
        params = {"b_id": payment_id, "b_status": source, "status": target, "updated_at": datetime.now(UTC)}
        moved = (await _MOVE.execute(self.session, {**params, **values})).first()
        return None if moved is None else bool(moved[0])

    async def remember_ref(self, payment_id: uuid.UUID, ref: str) -> None:
        await self.session.execute(
            payments.update()
            .where(payments.c.id == payment_id, payments.c.provider_ref.is_(None))
            .values(provider_ref=ref, updated_at=datetime.now(UTC))
        )

    async def for_order(self, order_id: uuid.UUID) -> list[Payment]:
        rows = await self.session.execute(
            sa.select(payments)
            .where(payments.c.order_id == order_id)
            .order_by(payments.c.created_at, payments.c.id)
        )
        return [_payment(r._mapping) for r in rows]

    async def cancel_order(self, order_id: uuid.UUID, reason: str) -> None:
        """Remember that this order's payment was given up (idempotent)."""
        await mark_cancelled(self.session, cancelled_orders, order_id, reason)

    async def is_cancelled(self, order_id: uuid.UUID) -> bool:
        return await is_marked_cancelled(self.session, cancelled_orders, order_id)

    async def owners_of(self, order_id: uuid.UUID) -> set[uuid.UUID]:
        rows = await self.session.execute(
            sa.select(payments.c.customer_id).where(payments.c.order_id == order_id).distinct()
        )
        return {r[0] for r in rows}

    async def page(
        self,
        *,
        customer_id: uuid.UUID | None,
        order_id: uuid.UUID | None,
        limit: int,
        after: tuple[datetime, uuid.UUID] | None,
    ) -> PaymentPage:
        rows, has_more = await keyset_rows(
            self.session,
            payments,
            equal={"customer_id": customer_id, "order_id": order_id},
            limit=limit,
            after=after,
        )
        return PaymentPage(items=tuple(_payment(r).view() for r in rows), has_more=has_more)


def settled(order_id: uuid.UUID, found: list[Payment]) -> PaymentSettled:
    """The reply to a void or refund: the latest attempt's status and what is still charged."""
    return PaymentSettled(
        order_id=order_id,
        status=found[-1].status if found else None,
        net_charged=sum(p.net_charged for p in found),
    )


def _key(payment: Payment, operation: str) -> str:
    return f"{payment.id}:{operation}"


class PaymentProcessor:
    """Drives payments through the provider. No transaction is open during a provider call:
    it reads in one short unit of work, calls the provider, and records the outcome in another."""

    def __init__(self, database: Database, bus: Bus, provider: GuardedProvider) -> None:
        self.database = database
        self.bus = bus
        self.provider = provider

    async def take(self, cmd: TakePayment) -> Payment:
        """Authorize and capture (once, whatever the number of deliveries)."""
        async with unit_of_work(self.database) as uow:
            book = PaymentBook(uow.session)
            payment = await book.open(cmd)
            seen = _Seen(payment, await book.is_cancelled(payment.order_id))
        return await self.drive(cmd.payment_id, token=cmd.payment_token, seen=seen)

    async def give_up(self, order_id: uuid.UUID, reason: str) -> PaymentSettled:
        """The order's payment is not wanted any more: void what is authorized, refund what is
        captured, and make sure a payment that arrives or lands later is voided or refunded."""
        async with unit_of_work(self.database) as uow:
            book = PaymentBook(uow.session)
            await book.cancel_order(order_id, reason)
            ids = [p.id for p in await book.for_order(order_id)]
        for payment_id in ids:
            await self.drive(payment_id, token=None)
        async with unit_of_work(self.database, write=False) as uow:
            return settled(order_id, await PaymentBook(uow.session).for_order(order_id))

    async def drive(self, payment_id: uuid.UUID, *, token: str | None, seen: _Seen | None = None) -> Payment:
        """Move the payment on until nothing is left to do. Without a token (a void or refund)
        a PENDING payment of an order still wanted is left to its TakePayment.

        Each step starts from the payment as read, or as this driver's own compare-and-set
        just left it (with the order's cancelled mark read in that same transaction)."""
        for _ in range(MAX_STEPS):
            if seen is None:
                async with unit_of_work(self.database, write=False) as uow:
                    book = PaymentBook(uow.session)
                    payment = await book.get(payment_id)
                    assert payment is not None, payment_id
                    seen = _Seen(payment, await book.is_cancelled(payment.order_id))
            payment = seen.payment
            try:
                outcome = await self._step(payment, seen.cancelled, token)
            except (ProviderError, TimeoutError, CircuitOpenError) as exc:
                log.warning(
                    "payments.outcome_unknown",
                    payment_id=str(payment_id),
                    status=payment.status,
                    error=repr(exc),
                )
                raise PaymentOutcomeUnknown(f"payment {payment_id} ({payment.status}): {exc!r}") from exc
            if isinstance(outcome, _Done):
                return payment
            seen = outcome
        raise PaymentStuck(f"payment {payment_id} did not settle in {MAX_STEPS} steps")

    async def _step(self, p: Payment, cancelled: bool, token: str | None) -> _Next:
        """One move: what it left (None: read the payment again), or _DONE."""
        if p.status == PENDING:
            if cancelled:  # never charge an order that was given up
                return await self._move(
                    p, PENDING, VOIDED, PaymentVoided(payment_id=p.id, order_id=p.order_id)
                )
            if token is None:
                return _DONE
            return await self._authorize(p, token)
        if p.status == AUTHORIZED:
            assert p.provider_ref is not None
            return await (self._void(p) if cancelled else self._capture(p))
        if p.status == CAPTURED and cancelled and p.refunded < p.amount:
            return await self._refund(p)
        return _DONE

    async def _authorize(self, p: Payment, token: str) -> _Seen | None:
        result = await self.provider.authorize(_key(p, "authorize"), p.amount, p.currency, token)
        if not result.approved:
            reason = result.reason or "declined"
            event = PaymentDeclined(
                payment_id=p.id, order_id=p.order_id, customer_id=p.customer_id, reason=reason
            )
            return await self._move(p, PENDING, DECLINED, event, decline_reason=reason[:100])
        assert result.provider_ref is not None
        moved = await self._move(p, PENDING, AUTHORIZED, None, provider_ref=result.provider_ref)
        if moved is None:
            # Moved on while we asked the provider: by a duplicate of this command (same key,
            # same authorization, nothing to do) or by a void, which found nothing to release
            # then: release our authorization now (its reference recorded first).
            async with unit_of_work(self.database) as uow:
                book = PaymentBook(uow.session)
                current = await book.get(p.id)
                voided = current is not None and current.status == VOIDED
                if voided:
                    await book.remember_ref(p.id, result.provider_ref)
            if voided:
                await self.provider.void(_key(p, "void"), result.provider_ref)
                log.info("payments.late_authorization_voided", payment_id=str(p.id))
        return moved

    async def _capture(self, p: Payment) -> _Seen | None:
        assert p.provider_ref is not None
        result = await self.provider.capture(_key(p, "capture"), p.provider_ref)
        if result.approved or result.reason == ALREADY_CAPTURED:
            return await self._record_capture(p)
        if result.reason == AUTHORIZATION_VOIDED:  # a concurrent void got there first
            return await self._move(
                p, AUTHORIZED, VOIDED, PaymentVoided(payment_id=p.id, order_id=p.order_id)
            )
        reason = result.reason or "capture_declined"
        event = PaymentDeclined(
            payment_id=p.id, order_id=p.order_id, customer_id=p.customer_id, reason=reason
        )
        return await self._move(p, AUTHORIZED, DECLINED, event, decline_reason=reason[:100])

    async def _void(self, p: Payment) -> _Seen | None:
        assert p.provider_ref is not None
        result = await self.provider.void(_key(p, "void"), p.provider_ref)
        if result.reason == ALREADY_CAPTURED:  # a concurrent capture got there first: refund next
            return await self._record_capture(p)
        return await self._move(p, AUTHORIZED, VOIDED, PaymentVoided(payment_id=p.id, order_id=p.order_id))

    async def _refund(self, p: Payment) -> _Seen | None:
        assert p.provider_ref is not None
        amount = p.amount - p.refunded
        result = await self.provider.refund(_key(p, "refund"), p.provider_ref, amount)
        if not result.approved:
            raise PaymentStuck(f"payment {p.id}: the provider refused the refund ({result.reason})")
        event = PaymentRefunded(payment_id=p.id, order_id=p.order_id, amount=amount)
        moved = await self._move(p, CAPTURED, REFUNDED, event, refunded=p.amount)
        log.info("payments.refunded", payment_id=str(p.id), order_id=str(p.order_id), amount=amount)
        return moved

    async def _record_capture(self, p: Payment) -> _Seen | None:
        """AUTHORIZED → CAPTURED; PaymentCaptured only while the order is still wanted (a capture
        landing after the order was given up is refunded by the next step instead)."""
        async with unit_of_work(self.database) as uow:
            cancelled = await PaymentBook(uow.session).move(p.id, AUTHORIZED, CAPTURED)
            if cancelled is None:
                return None
            if not cancelled:
                assert p.provider_ref is not None
                await self.bus.publish(
                    PaymentCaptured(
                        payment_id=p.id,
                        order_id=p.order_id,
                        customer_id=p.customer_id,
                        amount=p.amount,
                        currency=p.currency,
                        provider_ref=p.provider_ref,
                    )
                )
        return _Seen(replace(p, status=CAPTURED), cancelled)

    async def _move(
        self, p: Payment, source: str, target: str, event: Event | None, **values: Any
    ) -> _Seen | None:
        """Compare-and-set ``p`` from ``source`` to ``target`` (publishing ``event`` with it):
        the payment as it left it, or None when it had moved on meanwhile."""
        async with unit_of_work(self.database) as uow:
            cancelled = await PaymentBook(uow.session).move(p.id, source, target, **values)
            if cancelled is None:
                return None
            if event is not None:
                await self.bus.publish(event)
        log.info("payments.status_changed", payment_id=str(p.id), order_id=str(p.order_id), status=target)
        return _Seen(replace(p, status=target, **values), cancelled)


@dataclass(frozen=True, slots=True)
class _Seen:
    """A payment as last read or written by its driver, and whether its order was given up."""

    payment: Payment
    cancelled: bool


class _Done:
    """Nothing left for the driver to do."""


_DONE = _Done()
_Next = _Seen | _Done | None
