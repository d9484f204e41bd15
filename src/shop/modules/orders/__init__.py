"""The orders bounded context."""

from __future__ import annotations

from shop.bus.module import Module
from shop.modules.orders import models

module = Module("orders", metadata=models.metadata)
