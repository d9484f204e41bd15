"""Fixtures for the payments module, driven through `shop run`'s app (every module in process).

`open_shop(**settings)` starts `create_app(Settings.from_env({}, ...))` on tmp_path with an
admin and a tiny provider timeout. The `Shop` harness (the shared one of
tests/unit/shopharness.py, plus payments' own helpers) sends what the order saga would send
(through the orders module's outbox), asks payments directly, reads the HTTP API, spies on every
message written to an outbox (committed ones only) and polls with a deadline, never sleeping
blindly.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from shop.bus.breaker import CircuitBreaker
from shop.modules.payments.provider import GuardedProvider, PaymentProvider, ProviderResult

from .. import shopharness
from ..shopharness import Published


class Shop(shopharness.Shop):
    """The shared harness, plus the payment provider's guard, holds and circuit breaker."""

    @property
    def guard(self) -> GuardedProvider:
        guard: GuardedProvider = self.shop.bus.injector_for("payments").resolve(GuardedProvider)
        return guard

    def hold(self, operation: str, *, after: bool = False) -> Held:
        """Hold the provider's `operation` until the returned gate is opened (see `Held`); the
        shop's provider timeout must be longer than the hold, or the call times out first."""
        held = Held(self, self.provider, operation, after=after)
        self.guard.provider = held
        return held

    @property
    def breaker(self) -> CircuitBreaker:
        return self.shop.breakers.get("provider:simulated")


class Held:
    """The provider with one operation held until `open()`: `arrived` is set when such a call
    comes in (with `after=True`: once the real provider has acted on it, so only the answer is
    late). Calls of the other operations pass straight through."""

    name = "simulated"

    def __init__(self, shop: Shop, inner: PaymentProvider, operation: str, *, after: bool) -> None:
        self.shop = shop
        self.inner = inner
        self.operation = operation
        self.after = after
        self.arrived = threading.Event()
        self._open = asyncio.Event()  # bound to the app's loop when first awaited there

    def open(self) -> None:
        self.shop.run(self._release)

    async def _release(self) -> None:
        self._open.set()

    async def _call(self, operation: str, call: Callable[[], Awaitable[ProviderResult]]) -> ProviderResult:
        if operation != self.operation:
            return await call()
        result = await call() if self.after else None
        self.arrived.set()
        await self._open.wait()
        return result if result is not None else await call()

    async def authorize(self, key: str, amount: int, currency: str, token: str) -> ProviderResult:
        return await self._call("authorize", lambda: self.inner.authorize(key, amount, currency, token))

    async def capture(self, key: str, ref: str) -> ProviderResult:
        return await self._call("capture", lambda: self.inner.capture(key, ref))

    async def void(self, key: str, ref: str) -> ProviderResult:
        return await self._call("void", lambda: self.inner.void(key, ref))

    async def refund(self, key: str, ref: str, amount: int) -> ProviderResult:
        return await self._call("refund", lambda: self.inner.refund(key, ref, amount))


OpenShop = Callable[..., contextlib.AbstractAsyncContextManager[Shop]]


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> Published:
    """Spy on the outbox: record each message once its unit of work has committed."""
    return shopharness.spy_on_outbox(monkeypatch)


@pytest.fixture
def open_shop(tmp_path: Path, published: Published) -> OpenShop:
    return shopharness.open_shop(tmp_path, published, Shop)
