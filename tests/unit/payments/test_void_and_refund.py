"""VoidPayment and RefundPayment: giving up on an order's payment, whenever it comes."""

from __future__ import annotations

import uuid
from typing import Any

from shop.contracts.payments import (
    PaymentCaptured,
    PaymentRefunded,
    PaymentSettled,
    PaymentVoided,
    RefundPayment,
    VoidPayment,
)

# Tests that hold a provider call give it a timeout longer than the hold.
HELD_TIMEOUT_S = 5.0


async def _captured(shop: Any, amount: int = 12900) -> tuple[uuid.UUID, Any]:
    order_id = uuid.uuid4()
    cmd = shop.take_payment(order_id, uuid.uuid4(), "tok_ok", amount=amount)
    await shop.send(cmd)
    await shop.status_becomes(order_id, "CAPTURED")
    return order_id, cmd


async def test_a_void_before_take_payment_makes_the_later_take_payment_charge_nothing(open_shop: Any) -> None:
    async with open_shop() as shop:
        order_id = uuid.uuid4()

        settled = await shop.ask(VoidPayment(order_id=order_id, reason="PAYMENT_TIMEOUT"))
        await shop.send(shop.take_payment(order_id, uuid.uuid4(), "tok_ok"))

        assert settled == PaymentSettled(order_id=order_id, status=None, net_charged=0)
        payment = await shop.status_becomes(order_id, "VOIDED")
        assert payment["provider_ref"] is None
        assert shop.provider.calls["authorize"] == 0
        assert len(await shop.eventually(lambda: shop.published.of(PaymentVoided))) == 1
        assert shop.published.of(PaymentCaptured) == []


async def test_a_void_after_the_capture_refunds_it(open_shop: Any) -> None:
    async with open_shop() as shop:
        order_id, cmd = await _captured(shop, 4200)

        settled = await shop.ask(VoidPayment(order_id=order_id, reason="CANCELLED_BY_CUSTOMER"))

        assert settled == PaymentSettled(order_id=order_id, status="REFUNDED", net_charged=0)
        assert (await shop.payment_of(order_id) or {})["status"] == "REFUNDED"
        assert shop.provider.captured_total == shop.provider.refunded_total == 4200
        refunded = await shop.eventually(lambda: shop.published.of(PaymentRefunded))
        assert refunded == [PaymentRefunded(payment_id=cmd.payment_id, order_id=order_id, amount=4200)]


async def test_refund_payment_twice_refunds_once_and_never_more_than_was_captured(open_shop: Any) -> None:
    async with open_shop() as shop:
        order_id, _ = await _captured(shop, 12900)

        first = await shop.ask(RefundPayment(order_id=order_id, reason="CANCELLED_BY_CUSTOMER"))
        second = await shop.ask(RefundPayment(order_id=order_id, reason="CANCELLED_BY_CUSTOMER"))

        assert first == second == PaymentSettled(order_id=order_id, status="REFUNDED", net_charged=0)
        assert shop.provider.calls["refund"] == 1
        assert shop.provider.refunded_total == shop.provider.captured_total == 12900
        assert len(shop.published.of(PaymentRefunded)) == 1
        # one record per payment attempt: the captured payment itself is now REFUNDED
        assert [p["status"] for p in await shop.payments(await shop.admin())] == ["REFUNDED"]


async def test_a_void_of_an_authorized_payment_voids_it_before_it_is_captured(open_shop: Any) -> None:
    async with open_shop(payment_provider_timeout_s=HELD_TIMEOUT_S) as shop:
        order_id = uuid.uuid4()
        before = shop.handled("payments.take_payment", "payments.TakePayment.v1")
        gate = shop.hold("capture")
        await shop.send(shop.take_payment(order_id, uuid.uuid4(), "tok_ok"))
        await shop.eventually(gate.arrived.is_set)
        assert (await shop.payment_of(order_id) or {})["status"] == "AUTHORIZED"

        settled = await shop.ask(VoidPayment(order_id=order_id, reason="PAYMENT_TIMEOUT"))
        gate.open()  # the capture reaches the provider after the void: refused there

        assert settled == PaymentSettled(order_id=order_id, status="VOIDED", net_charged=0)
        await shop.eventually(
            lambda: shop.handled("payments.take_payment", "payments.TakePayment.v1") > before
        )
        assert shop.provider.calls["capture"] == 1
        assert (await shop.payment_of(order_id) or {})["status"] == "VOIDED"
        assert [a.state for a in shop.provider.authorizations.values()] == ["VOIDED"]
        assert shop.provider.captured_total == 0
        assert shop.published.of(PaymentCaptured) == []


async def test_a_capture_that_lands_after_the_void_is_refunded_instead_of_announced(open_shop: Any) -> None:
    async with open_shop(payment_provider_timeout_s=HELD_TIMEOUT_S) as shop:
        order_id = uuid.uuid4()
        before = shop.handled("payments.take_payment", "payments.TakePayment.v1")
        gate = shop.hold("capture", after=True)  # the provider captures; its answer is late
        cmd = shop.take_payment(order_id, uuid.uuid4(), "tok_ok")
        await shop.send(cmd)
        await shop.eventually(gate.arrived.is_set)

        settled = await shop.ask(VoidPayment(order_id=order_id, reason="PAYMENT_TIMEOUT"))
        gate.open()
        await shop.eventually(
            lambda: shop.handled("payments.take_payment", "payments.TakePayment.v1") > before
        )

        assert settled == PaymentSettled(order_id=order_id, status="REFUNDED", net_charged=0)
        assert (await shop.payment_of(order_id) or {})["status"] == "REFUNDED"
        assert shop.provider.captured_total == shop.provider.refunded_total == cmd.amount
        assert shop.published.of(PaymentCaptured) == []
        assert len(shop.published.of(PaymentRefunded)) == 1


async def test_a_void_while_authorizing_releases_the_authorization_that_lands_later(open_shop: Any) -> None:
    async with open_shop(payment_provider_timeout_s=HELD_TIMEOUT_S) as shop:
        order_id = uuid.uuid4()
        before = shop.handled("payments.take_payment", "payments.TakePayment.v1")
        gate = shop.hold("authorize", after=True)
        await shop.send(shop.take_payment(order_id, uuid.uuid4(), "tok_ok"))
        await shop.eventually(gate.arrived.is_set)

        settled = await shop.ask(VoidPayment(order_id=order_id, reason="PAYMENT_TIMEOUT"))
        gate.open()
        await shop.eventually(
            lambda: shop.handled("payments.take_payment", "payments.TakePayment.v1") > before
        )

        assert settled == PaymentSettled(order_id=order_id, status="VOIDED", net_charged=0)
        payment = await shop.payment_of(order_id)
        assert payment is not None
        assert payment["status"] == "VOIDED"
        authorization = shop.provider.authorizations[payment["provider_ref"]]
        assert authorization.state == "VOIDED"
        assert shop.provider.captured_total == 0
        assert shop.published.of(PaymentCaptured) == []


async def test_a_void_of_a_declined_payment_leaves_it_declined(open_shop: Any) -> None:
    async with open_shop() as shop:
        order_id = uuid.uuid4()
        await shop.send(shop.take_payment(order_id, uuid.uuid4(), "tok_decline"))
        await shop.status_becomes(order_id, "DECLINED")

        settled = await shop.ask(VoidPayment(order_id=order_id, reason="PAYMENT_DECLINED"))

        assert settled == PaymentSettled(order_id=order_id, status="DECLINED", net_charged=0)
        assert shop.provider.calls["void"] == 0


async def test_a_void_of_a_payment_with_an_unknown_outcome_voids_it_and_a_redelivery_charges_nothing(
    open_shop: Any,
) -> None:
    async with open_shop() as shop:
        order_id = uuid.uuid4()
        cmd = shop.take_payment(order_id, uuid.uuid4(), "tok_slow")
        await shop.send(cmd)
        await shop.eventually(lambda: shop.dead_letters("payments"))

        settled = await shop.ask(VoidPayment(order_id=order_id, reason="PAYMENT_TIMEOUT"))
        before = shop.handled("payments.take_payment", "payments.TakePayment.v1")
        await shop.send(cmd)  # e.g. an operator redrives the dead letter
        await shop.eventually(
            lambda: shop.handled("payments.take_payment", "payments.TakePayment.v1") > before
        )

        assert settled == PaymentSettled(order_id=order_id, status="VOIDED", net_charged=0)
        assert (await shop.payment_of(order_id) or {})["status"] == "VOIDED"
        assert shop.provider.authorizations == {}
