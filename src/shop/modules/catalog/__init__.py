"""The catalog bounded context: products, categories and stock reservations."""

from __future__ import annotations

from shop.bus.module import Module
from shop.modules.catalog import api, handlers, models
from shop.modules.catalog.service import Catalog, StockLedger

module = Module("catalog", metadata=models.metadata, controllers=[api.CatalogController])
module.include(handlers.handlers)
module.provide(Catalog, Catalog)
module.provide(StockLedger, StockLedger)

__all__ = ["module"]
