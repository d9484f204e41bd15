"""The payment provider port, and the guard every call to it goes through.

A provider authorizes, captures, voids and refunds; every operation is idempotent by the key
the caller gives (the same key returns the same result and never moves money twice). A decline
is a result; a server error raises `ProviderError`; a call that does not answer in time raises
`TimeoutError`. Either of those leaves the outcome unknown.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from shop.bus.breaker import BreakerRegistry, CircuitBreaker
from shop.bus.retry import RetryPolicy, retry_async
from shop.settings import Settings

T = TypeVar("T")

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


class ProviderError(Exception):
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
    (every operation is idempotent by key); an open breaker fails at once."""

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

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        async def once() -> T:
            async with asyncio.timeout(self.timeout):
                return await fn()

        async def guarded() -> T:
            return await self.breaker.call(once)

        return await retry_async(guarded, self.retry, retry_on=(ProviderError, TimeoutError))

    async def authorize(self, key: str, amount: int, currency: str, token: str) -> ProviderResult:
        return await self._call(lambda: self.provider.authorize(key, amount, currency, token))

    async def capture(self, key: str, ref: str) -> ProviderResult:
        return await self._call(lambda: self.provider.capture(key, ref))

    async def void(self, key: str, ref: str) -> ProviderResult:
        return await self._call(lambda: self.provider.void(key, ref))

    async def refund(self, key: str, ref: str, amount: int) -> ProviderResult:
        return await self._call(lambda: self.provider.refund(key, ref, amount))


def guarded_provider(
    provider: PaymentProvider, breakers: BreakerRegistry, settings: Settings
) -> GuardedProvider:
    """The module's provider guard; SHOP_PAYMENT_PROVIDER_TIMEOUT_S bounds each call."""
    return GuardedProvider(provider, breakers, timeout=settings.payment_provider_timeout_s)
