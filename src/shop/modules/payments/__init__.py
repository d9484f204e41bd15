"""The payments bounded context."""

from __future__ import annotations

from shop.bus.module import Module
from shop.modules.payments import models

module = Module("payments", metadata=models.metadata)
