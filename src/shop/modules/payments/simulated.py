"""The built-in simulated payment provider (the default), understanding API.md's tokens.

`tok_ok` approves; `tok_decline` declines; `tok_error` fails with a server error every time;
`tok_slow` approves only after `slow_delay` seconds, longer than any call's timeout, so every
attempt times out; any other token declines with `invalid_token`.

It keeps its ledger in memory; the payments table stays the source of truth. Within a process
it is idempotent for real: a key seen before returns the first result and moves no money, also
when two calls with the same key overlap. A call that fails or is cancelled (a timeout) records
nothing, so a retry with the same key may still succeed.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from shop.bus.keyed_locks import KeyedLocks
from shop.modules.payments.provider import (
    ALREADY_CAPTURED,
    AUTHORIZATION_VOIDED,
    CARD_DECLINED,
    EXCEEDS_CAPTURED,
    INVALID_TOKEN,
    NOT_CAPTURED,
    UNKNOWN_AUTHORIZATION,
    ProviderError,
    ProviderResult,
)
from shop.settings import Settings

# How much longer than a call's timeout `tok_slow` takes to answer.
SLOW_FACTOR = 5.0


@dataclass(slots=True)
class Authorization:
    """One authorization at the provider and the money that moved under it."""

    ref: str
    amount: int
    currency: str
    state: str = "AUTHORIZED"  # AUTHORIZED, CAPTURED, VOIDED
    captured: int = 0
    refunded: int = 0


REF_PREFIX = "sim_auth_"


class SimulatedProvider:
    name = "simulated"

    def __init__(self, *, slow_delay: float = 10.0) -> None:
        self.slow_delay = slow_delay
        self.authorizations: dict[str, Authorization] = {}
        self.calls: defaultdict[str, int] = defaultdict(int)  # operation -> calls received
        self._results: dict[str, tuple[str, ProviderResult]] = {}
        self._locks: KeyedLocks[str] = KeyedLocks()  # one call a key at a time
        self._refs = itertools.count(1)

    # -- what tests and operators may look at -------------------------------------------

    @property
    def captured_total(self) -> int:
        return sum(a.captured for a in self.authorizations.values())

    @property
    def refunded_total(self) -> int:
        return sum(a.refunded for a in self.authorizations.values())

    # -- the port -------------------------------------------------------------------------

    async def authorize(self, idempotency_key: str, amount: int, currency: str, token: str) -> ProviderResult:
        async def run() -> ProviderResult:
            if token == "tok_error":
                raise ProviderError("simulated provider: 500 internal server error")
            if token == "tok_slow":
                await asyncio.sleep(self.slow_delay)
            elif token == "tok_decline":
                return ProviderResult.declined(CARD_DECLINED)
            elif token != "tok_ok":
                return ProviderResult.declined(INVALID_TOKEN)
            ref = f"{REF_PREFIX}{next(self._refs):06d}_{uuid.uuid4().hex[:12]}"
            self.authorizations[ref] = Authorization(ref, amount, currency)
            return ProviderResult.ok(ref)

        return await self._once("authorize", idempotency_key, run)

    async def capture(self, idempotency_key: str, authorization_ref: str) -> ProviderResult:
        async def run() -> ProviderResult:
            auth = self.authorizations.get(authorization_ref)
            if auth is None:
                return ProviderResult.declined(UNKNOWN_AUTHORIZATION, authorization_ref)
            if auth.state == "VOIDED":
                return ProviderResult.declined(AUTHORIZATION_VOIDED, auth.ref)
            if auth.state == "CAPTURED":
                return ProviderResult.declined(ALREADY_CAPTURED, auth.ref)
            auth.state, auth.captured = "CAPTURED", auth.amount
            return ProviderResult.ok(auth.ref)

        return await self._once("capture", idempotency_key, run)

    async def void(self, idempotency_key: str, ref: str) -> ProviderResult:
        async def run() -> ProviderResult:
            auth = self.authorizations.get(ref)
            if auth is None and ref.startswith(REF_PREFIX):
                return ProviderResult.ok(ref)  # issued before a restart: see `_recovered`
            if auth is None:
                return ProviderResult.declined(UNKNOWN_AUTHORIZATION, ref)
            if auth.state == "CAPTURED":
                return ProviderResult.declined(ALREADY_CAPTURED, auth.ref)
            auth.state = "VOIDED"
            return ProviderResult.ok(auth.ref)

        return await self._once("void", idempotency_key, run)

    async def refund(self, idempotency_key: str, ref: str, amount: int) -> ProviderResult:
        async def run() -> ProviderResult:
            auth = self.authorizations.get(ref)
            if auth is None and ref.startswith(REF_PREFIX) and amount > 0:
                # A real provider's ledger outlives our process; this one lives in memory. A
                # reference it issued before a restart is honoured as the real one would be
                # (payments only refunds what its own table recorded as captured).
                return ProviderResult.ok(ref)
            if auth is None:
                return ProviderResult.declined(UNKNOWN_AUTHORIZATION, ref)
            if auth.state != "CAPTURED":
                return ProviderResult.declined(NOT_CAPTURED, auth.ref)
            if amount <= 0 or auth.refunded + amount > auth.captured:
                return ProviderResult.declined(EXCEEDS_CAPTURED, auth.ref)
            auth.refunded += amount
            return ProviderResult.ok(auth.ref)

        return await self._once("refund", idempotency_key, run)

    async def _once(
        self, operation: str, key: str, run: Callable[[], Awaitable[ProviderResult]]
    ) -> ProviderResult:
        """The first result for `key`, computing it at most once at a time."""
        self.calls[operation] += 1
        async with self._locks.hold(key):
            known = self._results.get(key)
            if known is not None:
                if known[0] != operation:
                    raise ValueError(f"idempotency key {key!r} was used for {known[0]}, not {operation}")
                return known[1]
            result = await run()
            self._results[key] = (operation, result)
            return result


def simulated_provider(settings: Settings) -> SimulatedProvider:
    """The default provider; `tok_slow` answers only well after SHOP_PAYMENT_PROVIDER_TIMEOUT_S."""
    return SimulatedProvider(slow_delay=settings.payment_provider_timeout_s * SLOW_FACTOR)
