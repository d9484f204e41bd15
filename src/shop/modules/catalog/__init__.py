"""The catalog bounded context."""

from __future__ import annotations

from shop.bus.module import Module
from shop.modules.catalog import models

module = Module("catalog", metadata=models.metadata)
