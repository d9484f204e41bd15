"""The payment provider port, and the guard every call to it goes through.

A provider authorizes, captures, voids and refunds; every operation is idempotent by the key
the caller gives (the same key returns the same result and never moves money twice). A decline
is a result; a server error raises `ProviderError`; a call that does not answer in time raises
`TimeoutError`. Either of those leaves the outcome unknown.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Protocol

from shop.bus.breaker import BreakerRegistry, CircuitBreaker, CircuitOpenError
from shop.bus.errors import DependencyFailure
from shop.bus.retry import RetryPolicy, retry_async
from shop.observability import tracing
from shop.settings import Settings

# Decline reasons the payments module acts on (anything else is just reported).
INVALID_TOKEN = "invalid_token"
CARD_DECLINED = "card_declined"
UNKNOWN_AUTHORIZATION = "unknown_authorization"
AUTHORIZATION_VOIDED = "authorization_voided"
ALREADY_CAPTURED = "already_captured"
NOT_CAPTURED = "not_captured"
EXCEEDS_CAPTURED = "exceeds_captured"


@dataclass(frozen=True, slots=True)
class ProviderResult:
    """The provider's answer: approved with its reference, or declined with a reason."""

    approved: bool
    provider_ref: str | None = None
    reason: str | None = None

    @classmethod
    def ok(cls, ref: str) -> ProviderResult:
        return cls(True, ref)

    @classmethod
    def declined(cls, reason: str, ref: str | None = None) -> ProviderResult:
        return cls(False, ref, reason)


class ProviderError(DependencyFailure):
    """The provider failed (a server error): the outcome of the call is unknown."""


class PaymentProvider(Protocol):
    """What payments needs of a payment provider. Every operation is idempotent by key."""

    name: str

    async def authorize(
        self, idempotency_key: str, amount: int, currency: str, token: str
    ) -> ProviderResult: ...

    async def capture(self, idempotency_key: str, authorization_ref: str) -> ProviderResult: ...

    async def void(self, idempotency_key: str, ref: str) -> ProviderResult: ...

    async def refund(self, idempotency_key: str, ref: str, amount: int) -> ProviderResult: ...


# Each call: up to 3 attempts, 50 ms then 100 ms apart (jittered). Declines are not retried.
CALL_RETRY = RetryPolicy(max_attempts=3, base_delay=0.05, max_delay=0.5)


class GuardedProvider:
    """The provider behind its circuit breaker (`provider:<name>`), a timeout per call and
    retries with backoff. Only server errors and timeouts count as failures and are retried
    (every operation is idempotent by key); an open breaker fails at once.

    With tracing on, each operation is a CLIENT span `payment_provider <operation>` with the
    provider, the operation, its outcome and the attempts made -- never the card token."""

    def __init__(
        self,
        provider: PaymentProvider,
        breakers: BreakerRegistry,
        *,
        timeout: float,
        retry: RetryPolicy = CALL_RETRY,
    ) -> None:
        self.provider = provider
        self.breaker: CircuitBreaker = breakers.get(f"provider:{provider.name}")
        self.timeout = timeout
        self.retry = retry

    async def _call(self, operation: str, fn: Callable[[], Awaitable[ProviderResult]]) -> ProviderResult:
        attempts = 0

        async def once() -> ProviderResult:
            nonlocal attempts
            attempts += 1
            async with asyncio.timeout(self.timeout):
                return await fn()

        async def guarded() -> ProviderResult:
            return await self.breaker.call(once)

        attributes = {"payment.provider": self.provider.name, "payment.operation": operation}
        with tracing.child_span(f"payment_provider {operation}", tracing.SpanKind.CLIENT, attributes) as span:
            outcome = "error"
            try:
                result = await retry_async(guarded, self.retry, retry_on=(ProviderError, TimeoutError))
                outcome = "approved" if result.approved else "declined"
                if span is not None and result.reason:
                    span.set_attribute("payment.decline_reason", result.reason)
                return result
            except CircuitOpenError:
                outcome = "circuit_open"
                raise
            except TimeoutError:
                outcome = "timeout"
                raise
            finally:
                if span is not None:
                    span.set_attribute("payment.outcome", outcome)
                    span.set_attribute("payment.attempts", attempts)

    async def authorize(self, key: str, amount: int, currency: str, token: str) -> ProviderResult:
        return await self._call("authorize", lambda: self.provider.authorize(key, amount, currency, token))

    async def capture(self, key: str, ref: str) -> ProviderResult:
        return await self._call("capture", lambda: self.provider.capture(key, ref))

    async def void(self, key: str, ref: str) -> ProviderResult:
        return await self._call("void", lambda: self.provider.void(key, ref))

    async def refund(self, key: str, ref: str, amount: int) -> ProviderResult:
        return await self._call("refund", lambda: self.provider.refund(key, ref, amount))


def guarded_provider(
    provider: PaymentProvider, breakers: BreakerRegistry, settings: Settings
) -> GuardedProvider:
    """The module's provider guard; SHOP_PAYMENT_PROVIDER_TIMEOUT_S bounds each call, and its
    breaker stays open SHOP_PAYMENT_PROVIDER_BREAKER_WAIT_S before it lets probes through."""
    name = f"provider:{provider.name}"
    breakers.configure(
        name,
        replace(
            breakers.config_for(name), wait_duration_in_open_state=settings.payment_provider_breaker_wait_s
        ),
    )
    return GuardedProvider(provider, breakers, timeout=settings.payment_provider_timeout_s)
