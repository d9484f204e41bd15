"""The delivery bounded context: shipments prepared once an order is paid, and their progress."""

from __future__ import annotations

from shop.bus.module import Module
from shop.modules.delivery import models

module = Module("delivery", metadata=models.metadata)

from shop.modules.delivery import api, handlers  # noqa: E402  (they register on `module`)
from shop.modules.delivery.service import DeliveryDesk  # noqa: E402

module.controllers = [api.DeliveriesController]
module.provide(DeliveryDesk, DeliveryDesk)

__all__ = ["handlers", "module"]
