"""Which payment provider the payments module uses: SHOP_PAYMENT_PROVIDER picks it."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from shop.modules.payments.provider import PaymentProvider
from shop.modules.payments.simulated import simulated_provider
from shop.settings import Settings


@runtime_checkable
class Closeable(Protocol):
    async def aclose(self) -> None: ...


def payment_provider(settings: Settings) -> PaymentProvider:
    """`simulated` (the default; refused with SHOP_ENV=production) or `stripe`."""
    settings.check_payment_provider()
    if settings.payment_provider == "stripe":
        from shop.modules.payments.stripe_provider import stripe_provider  # only when chosen

        return stripe_provider(settings)
    return simulated_provider(settings)


async def close_payment_provider(provider: PaymentProvider) -> None:
    """At the module's shutdown: a provider holding connections closes them."""
    if isinstance(provider, Closeable):
        await provider.aclose()
