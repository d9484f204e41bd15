"""The payments table's compare-and-set: what it changed, and the order's given-up mark read in
the same statement (on both backends)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from shop.contracts.payments import TakePayment
from shop.db import unit_of_work
from shop.modules.payments.models import metadata
from shop.modules.payments.service import AUTHORIZED, CAPTURED, PENDING, PaymentBook

pytestmark = pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)


def _take(order_id: uuid.UUID) -> TakePayment:
    return TakePayment(
        payment_id=uuid.uuid4(),
        order_id=order_id,
        customer_id=uuid.uuid4(),
        amount=1200,
        currency="EUR",
        payment_token="tok_ok",
    )


async def test_a_move_answers_whether_its_own_order_was_given_up_and_changes_nothing_from_another_status(
    make_database: Any,
) -> None:
    database = await make_database("payments", metadata)
    wanted, given_up, other = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    async with unit_of_work(database) as uow:
        book = PaymentBook(uow.session)
        kept = await book.open(_take(wanted))
        dropped = await book.open(_take(given_up))
        await book.cancel_order(given_up, "customer")
        await book.cancel_order(other, "customer")

    async with unit_of_work(database) as uow:
        book = PaymentBook(uow.session)
        assert await book.move(kept.id, PENDING, AUTHORIZED, provider_ref="ref-1") is False
        assert await book.move(dropped.id, PENDING, AUTHORIZED, provider_ref="ref-2") is True
        assert await book.move(kept.id, PENDING, CAPTURED) is None  # not PENDING any more

    async with unit_of_work(database, write=False) as uow:
        book = PaymentBook(uow.session)
        stored = [await book.get(kept.id), await book.get(dropped.id)]
    assert [(p.status, p.provider_ref) for p in stored if p is not None] == [
        (AUTHORIZED, "ref-1"),
        (AUTHORIZED, "ref-2"),
    ]
