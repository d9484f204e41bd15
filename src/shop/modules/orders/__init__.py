"""The orders bounded context: orders and the order saga."""

from __future__ import annotations

from shop.bus.module import Module
from shop.modules.orders import models

module = Module("orders", metadata=models.metadata)

from shop.modules.orders import api, handlers  # noqa: E402  (they register on `module`)
from shop.modules.orders.saga import OrderSagas, saga_engine  # noqa: E402
from shop.modules.orders.service import OrderBook  # noqa: E402

module.controllers = [api.OrdersController]
module.provide(OrderBook, OrderBook)
module.provide(OrderSagas, OrderSagas, singleton=True)
module.sagas(saga_engine)

__all__ = ["handlers", "module"]
