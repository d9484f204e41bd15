"""Every provider call goes through the `provider:<name>` breaker, a timeout and retries."""

from __future__ import annotations

import pytest

from shop.bus.breaker import BreakerConfig, BreakerRegistry, CircuitOpenError
from shop.bus.retry import RetryPolicy
from shop.modules.payments.provider import GuardedProvider, ProviderError
from shop.modules.payments.simulated import SimulatedProvider

NO_WAIT = RetryPolicy(max_attempts=3, base_delay=0.0)


def _guard(provider: SimulatedProvider, **config: float) -> GuardedProvider:
    breakers = BreakerRegistry(BreakerConfig(**config))  # type: ignore[arg-type]
    return GuardedProvider(provider, breakers, timeout=0.02, retry=NO_WAIT)


async def test_a_server_error_is_retried_then_raised_and_counted_by_the_breaker() -> None:
    provider = SimulatedProvider()
    guard = _guard(provider, minimum_number_of_calls=10)

    with pytest.raises(ProviderError):
        await guard.authorize("k", 100, "EUR", "tok_error")

    assert provider.calls["authorize"] == 3
    assert guard.breaker.name == "provider:simulated"
    assert guard.breaker.metrics().failed_calls == 3


async def test_a_timeout_is_retried_then_raised() -> None:
    provider = SimulatedProvider(slow_delay=1.0)
    guard = _guard(provider, minimum_number_of_calls=10)

    with pytest.raises(TimeoutError):
        await guard.authorize("k", 100, "EUR", "tok_slow")

    assert provider.calls["authorize"] == 3
    assert provider.authorizations == {}


async def test_a_decline_is_an_answer_not_a_failure() -> None:
    provider = SimulatedProvider()
    guard = _guard(provider, minimum_number_of_calls=1)

    result = await guard.authorize("k", 100, "EUR", "tok_decline")

    assert not result.approved
    assert provider.calls["authorize"] == 1
    assert guard.breaker.state.value == "CLOSED"
    assert guard.breaker.metrics().failed_calls == 0


async def test_failures_open_the_breaker_which_then_fails_fast_without_calling() -> None:
    provider = SimulatedProvider()
    guard = _guard(provider, minimum_number_of_calls=3, sliding_window_size=3)

    with pytest.raises(ProviderError):
        await guard.authorize("k", 100, "EUR", "tok_error")
    assert guard.breaker.state.value == "OPEN"

    with pytest.raises(CircuitOpenError):
        await guard.authorize("k2", 100, "EUR", "tok_ok")
    assert provider.calls["authorize"] == 3
