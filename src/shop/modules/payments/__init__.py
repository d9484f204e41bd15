"""The payments bounded context: authorize, capture, void and refund through a provider."""

from __future__ import annotations

from shop.bus.module import Module
from shop.modules.payments import models

module = Module("payments", metadata=models.metadata)

from shop.modules.payments import api, handlers  # noqa: E402  (they register on `module`)
from shop.modules.payments.provider import GuardedProvider, PaymentProvider, guarded_provider  # noqa: E402
from shop.modules.payments.providers import close_payment_provider, payment_provider  # noqa: E402
from shop.modules.payments.service import PaymentBook, PaymentProcessor  # noqa: E402

module.controllers = [api.PaymentsController]
module.provide(PaymentBook, PaymentBook)
module.provide(PaymentProvider, payment_provider, singleton=True)  # SHOP_PAYMENT_PROVIDER
module.on_shutdown(close_payment_provider)
module.provide(GuardedProvider, guarded_provider, singleton=True)
module.provide(PaymentProcessor, PaymentProcessor, singleton=True)

__all__ = ["handlers", "module"]
