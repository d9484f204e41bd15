"""The delivery bounded context."""

from __future__ import annotations

from shop.bus.module import Module
from shop.modules.delivery import models

module = Module("delivery", metadata=models.metadata)
