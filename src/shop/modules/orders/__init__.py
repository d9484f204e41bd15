"""The orders bounded context: orders and the order saga."""

from __future__ import annotations

from shop.bus.module import Module
from shop.modules.orders import api, handlers, models
from shop.modules.orders.saga import OrderSagas, saga_engine
from shop.modules.orders.service import OrderBook

module = Module("orders", metadata=models.metadata, controllers=[api.OrdersController])
module.include(handlers.handlers)
module.provide(OrderBook, OrderBook)
module.provide(OrderSagas, OrderSagas, singleton=True)
module.sagas(saga_engine)

__all__ = ["module"]
