"""The delivery bounded context: shipments prepared once an order is paid, and their progress."""

from __future__ import annotations

from shop.bus.module import Module
from shop.modules.delivery import api, handlers, models
from shop.modules.delivery.service import DeliveryDesk

module = Module("delivery", metadata=models.metadata, controllers=[api.DeliveriesController])
module.include(handlers.handlers)
module.provide(DeliveryDesk, DeliveryDesk)

__all__ = ["module"]
