"""A breaker guards one dependency: the payment provider being down opens `provider:*` only,
and a failing or saturated command path of payments leaves its reads up."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from shop.bus.breaker import CircuitOpenError
from shop.bus.errors import DependencyFailed, HandlerFailed
from shop.contracts.payments import RefundPayment, VoidPayment
from shop.modules.payments.provider import ProviderError
from shop.modules.payments.service import PaymentProcessor
from shop.modules.payments.simulated import SimulatedProvider

ASKS = 30  # past the module breakers' minimum number of calls (20)


async def _captured(shop: Any) -> uuid.UUID:
    order_id = uuid.uuid4()
    await shop.send(shop.take_payment(order_id, uuid.uuid4(), "tok_ok", amount=1000))
    await shop.status_becomes(order_id, "CAPTURED")
    return order_id


async def test_a_provider_outage_counts_against_the_provider_breaker_only(
    open_shop: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def down(self: SimulatedProvider, *args: Any, **kwargs: Any) -> Any:
        raise ProviderError("the provider answers 503")

    async with open_shop() as shop:
        order_id = await _captured(shop)
        # The provider is down: its breaker is open, and the probes it lets through after its
        # wait fail too (however slowly this test runs).
        monkeypatch.setattr(SimulatedProvider, "refund", down)
        shop.breaker.force_open()

        for _ in range(ASKS):
            with pytest.raises(DependencyFailed):
                await shop.ask(RefundPayment(order_id=order_id, reason="order cancelled"))

        breakers = shop.shop.breakers
        commands = breakers.get("module:payments:commands")
        assert (commands.state, commands.metrics().failed_calls) == ("CLOSED", 0)
        assert breakers.get("provider:simulated").state == "OPEN"
        payment = await shop.payment_of(order_id)  # every customer's reads of payments stay up
        assert payment is not None
        assert payment["status"] == "CAPTURED"
        view = (await shop.client.get("/api/v1/services", headers=await shop.admin())).json()
        assert view["breakers"]["module:payments:commands"] == "CLOSED"
        assert view["breakers"]["provider:simulated"] == "OPEN"


async def test_a_failing_command_path_opens_the_commands_breaker_and_reads_stay_up(
    open_shop: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: PaymentProcessor, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the payments database refuses writes")

    monkeypatch.setattr(PaymentProcessor, "give_up", broken)
    async with open_shop() as shop:
        order_id = await _captured(shop)
        for _ in range(ASKS):
            with pytest.raises((HandlerFailed, CircuitOpenError)):
                await shop.ask(VoidPayment(order_id=order_id, reason="PAYMENT_TIMEOUT"))

        breakers = shop.shop.breakers
        assert breakers.get("module:payments:commands").state == "OPEN"
        assert breakers.get("module:payments:queries").state == "CLOSED"
        payment = await shop.payment_of(order_id)
        assert payment is not None
        assert payment["status"] == "CAPTURED"
        metrics = (await shop.client.get("/metrics")).text
        assert 'shop_breaker_state{breaker="module:payments:commands"} 2.0' in metrics
        assert 'shop_breaker_state{breaker="module:payments:queries"} 0.0' in metrics
