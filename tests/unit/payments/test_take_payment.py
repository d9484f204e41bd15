"""TakePayment, as the order saga sends it: authorize then capture, once, through the breaker."""

from __future__ import annotations

import time
import uuid
from typing import Any

from shop.contracts.payments import PaymentCaptured, PaymentDeclined, PaymentSettled, VoidPayment


async def test_tok_ok_is_captured_once_and_publishes_payment_captured(open_shop: Any) -> None:
    async with open_shop() as shop:
        order_id, customer_id = uuid.uuid4(), uuid.uuid4()
        cmd = shop.take_payment(order_id, customer_id, "tok_ok", amount=12900)

        await shop.send(cmd)

        payment = await shop.status_becomes(order_id, "CAPTURED")
        assert payment == {
            "id": str(cmd.payment_id),
            "order_id": str(order_id),
            "amount": 12900,
            "currency": "EUR",
            "status": "CAPTURED",
            "provider_ref": payment["provider_ref"],
        }
        assert payment["provider_ref"]
        captured = await shop.eventually(lambda: shop.published.of(PaymentCaptured))
        assert captured == [
            PaymentCaptured(
                payment_id=cmd.payment_id,
                order_id=order_id,
                customer_id=customer_id,
                amount=12900,
                currency="EUR",
                provider_ref=payment["provider_ref"],
            )
        ]
        assert shop.provider.captured_total == 12900
        assert shop.published.of(PaymentDeclined) == []


async def test_tok_decline_is_declined_with_its_reason_and_never_captured(open_shop: Any) -> None:
    async with open_shop() as shop:
        order_id, customer_id = uuid.uuid4(), uuid.uuid4()
        cmd = shop.take_payment(order_id, customer_id, "tok_decline")

        await shop.send(cmd)

        payment = await shop.status_becomes(order_id, "DECLINED")
        assert payment["provider_ref"] is None
        declined = await shop.eventually(lambda: shop.published.of(PaymentDeclined))
        assert declined == [
            PaymentDeclined(
                payment_id=cmd.payment_id, order_id=order_id, customer_id=customer_id, reason="card_declined"
            )
        ]
        assert shop.published.of(PaymentCaptured) == []
        assert shop.provider.captured_total == 0
        assert shop.provider.calls["capture"] == 0


async def test_an_unknown_token_is_declined_as_invalid_token(open_shop: Any) -> None:
    async with open_shop() as shop:
        order_id = uuid.uuid4()

        await shop.send(shop.take_payment(order_id, uuid.uuid4(), "tok_made_up"))

        await shop.status_becomes(order_id, "DECLINED")
        declined = await shop.eventually(lambda: shop.published.of(PaymentDeclined))
        assert [d.reason for d in declined] == ["invalid_token"]


async def test_tok_error_is_retried_opens_the_provider_breaker_and_charges_nothing(open_shop: Any) -> None:
    async with open_shop() as shop:
        order_id = uuid.uuid4()
        admin = await shop.admin()

        await shop.send(shop.take_payment(order_id, uuid.uuid4(), "tok_error"))

        # the bus retried the command until it gave up on it: the outcome stays unknown
        dead = await shop.eventually(lambda: shop.dead_letters("payments"))
        assert [d.message_type for d in dead] == ["payments.TakePayment.v1"]
        assert dead[0].attempts > 1
        assert "PaymentOutcomeUnknown" in dead[0].error
        assert shop.provider.calls["authorize"] >= 3  # each delivery retried the call itself
        services = await shop.client.get("/api/v1/services", headers=admin)
        assert services.json()["breakers"]["provider:simulated"] == "OPEN"
        payment = await shop.payment_of(order_id)
        assert payment is not None
        assert payment["status"] == "PENDING"
        assert shop.provider.captured_total == 0
        assert shop.published.of(PaymentCaptured) == []
        assert shop.published.of(PaymentDeclined) == []


async def test_an_open_provider_breaker_fails_fast_and_the_command_comes_back_after_its_wait(
    open_shop: Any,
) -> None:
    async with open_shop() as shop:
        shop.breaker.force_open()
        order_id = uuid.uuid4()

        await shop.send(shop.take_payment(order_id, uuid.uuid4(), "tok_ok"))

        # the first delivery met the open breaker and reached no provider; the bus delivered
        # the command again once the breaker let probes through, and it was charged then
        captured = await shop.eventually(lambda: shop.published.of(PaymentCaptured))
        assert [event.order_id for event in captured] == [order_id]
        assert shop.provider.calls["authorize"] == 1
        assert await shop.dead_letters("payments") == []
        assert (await shop.payment_of(order_id) or {})["status"] == "CAPTURED"


async def test_tok_slow_times_out_on_every_attempt_and_is_never_captured(open_shop: Any) -> None:
    async with open_shop() as shop:
        order_id = uuid.uuid4()

        await shop.send(shop.take_payment(order_id, uuid.uuid4(), "tok_slow"))

        dead = await shop.eventually(lambda: shop.dead_letters("payments"))
        assert "PaymentOutcomeUnknown" in dead[0].error
        # tok_slow approves when it gets to answer: every attempt was cut off before it did,
        # and the timeouts opened the breaker
        assert shop.provider.calls["authorize"] >= 3
        assert shop.provider.authorizations == {}
        assert shop.breaker.state.value == "OPEN"
        assert (await shop.payment_of(order_id) or {})["status"] == "PENDING"
        assert shop.published.of(PaymentCaptured) == []


async def test_a_redelivered_take_payment_charges_once(open_shop: Any) -> None:
    async with open_shop() as shop:
        order_id = uuid.uuid4()
        cmd = shop.take_payment(order_id, uuid.uuid4(), "tok_ok")
        before = shop.handled("payments.take_payment", "payments.TakePayment.v1")

        # the same payment_id in new messages: twice at once, then once more after the capture
        await shop.send(cmd, cmd)
        await shop.status_becomes(order_id, "CAPTURED")
        await shop.send(cmd)
        await shop.eventually(
            lambda: shop.handled("payments.take_payment", "payments.TakePayment.v1") >= before + 3
        )

        assert len(shop.provider.authorizations) == 1
        assert shop.provider.captured_total == cmd.amount
        assert len(shop.published.of(PaymentCaptured)) == 1
        assert [p["status"] for p in await shop.payments(await shop.admin())] == ["CAPTURED"]


async def test_the_provider_is_not_called_inside_a_payments_transaction(open_shop: Any) -> None:
    """While the provider thinks, other writers get the payments database at once (no lock held)."""
    async with open_shop(payment_provider_timeout_s=5.0) as shop:
        slow_order, other_order = uuid.uuid4(), uuid.uuid4()
        gate = shop.hold("authorize")
        await shop.send(shop.take_payment(slow_order, uuid.uuid4(), "tok_ok"))
        await shop.eventually(gate.arrived.is_set)

        # a void of another order writes to the payments database meanwhile, at once
        started = time.monotonic()
        settled = await shop.ask(VoidPayment(order_id=other_order, reason="test"))
        waited = time.monotonic() - started
        gate.open()

        assert settled == PaymentSettled(order_id=other_order, status=None, net_charged=0)
        assert waited < 1.0
        await shop.status_becomes(slow_order, "CAPTURED")
