"""The catalog bounded context: products, categories and stock reservations."""

from __future__ import annotations

from shop.bus.module import Module
from shop.modules.catalog import models

module = Module("catalog", metadata=models.metadata)

from shop.modules.catalog import api, handlers  # noqa: E402  (they register on `module`)
from shop.modules.catalog.service import Catalog, StockLedger  # noqa: E402

module.controllers = [api.CatalogController]
module.provide(Catalog, Catalog)
module.provide(StockLedger, StockLedger)

__all__ = ["handlers", "module"]
