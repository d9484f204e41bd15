"""The payments bounded context: authorize, capture, void and refund through a provider."""

from __future__ import annotations

from shop.bus.module import Module
from shop.modules.payments import api, handlers, models
from shop.modules.payments.provider import GuardedProvider, PaymentProvider, guarded_provider
from shop.modules.payments.providers import close_payment_provider, payment_provider
from shop.modules.payments.service import PaymentBook, PaymentProcessor

module = Module("payments", metadata=models.metadata, controllers=[api.PaymentsController])
module.include(handlers.handlers)
module.provide(PaymentBook, PaymentBook)
module.provide(PaymentProvider, payment_provider, singleton=True)  # SHOP_PAYMENT_PROVIDER
module.on_shutdown(close_payment_provider)
module.provide(GuardedProvider, guarded_provider, singleton=True)
module.provide(PaymentProcessor, PaymentProcessor, singleton=True)

__all__ = ["module"]
