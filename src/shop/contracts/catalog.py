"""The published language of the catalog module: products, categories and stock."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import ClassVar

import msgspec

from shop.bus.messages import Command, Event, Query


class Line(msgspec.Struct, frozen=True, kw_only=True):
    product_id: uuid.UUID
    quantity: int


class PricedLine(msgspec.Struct, frozen=True, kw_only=True):
    """A reserved line with the product's name and price at reservation time (the order's snapshot)."""

    product_id: uuid.UUID
    name: str
    unit_price: int
    currency: str
    quantity: int


class ProductView(msgspec.Struct, frozen=True, kw_only=True):
    id: uuid.UUID
    sku: str
    name: str
    description: str
    price: int
    currency: str
    category: str | None
    stock_available: int
    on_hand: int
    reserved: int
    created_at: datetime


class ProductPage(msgspec.Struct, frozen=True, kw_only=True):
    items: tuple[ProductView, ...]
    has_more: bool


class CategoryView(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    product_count: int


# -- admin commands and reads --------------------------------------------------------------


class CreateProduct(Command, frozen=True, kw_only=True):
    """Replies ProductView, or Rejected("SKU_TAKEN" | "INVALID")."""

    wire_name: ClassVar[str] = "catalog.CreateProduct.v1"

    sku: str
    name: str
    description: str = ""
    price: int
    currency: str
    category: str | None = None
    stock: int = 0


class UpdateProduct(Command, frozen=True, kw_only=True):
    """Only the fields given change. Replies ProductView, or Rejected("NOT_FOUND" | "INVALID")."""

    wire_name: ClassVar[str] = "catalog.UpdateProduct.v1"

    product_id: uuid.UUID
    name: str | None = None
    description: str | None = None
    price: int | None = None
    category: str | None = None
    clear_category: bool = False


class AdjustStock(Command, frozen=True, kw_only=True):
    """Restock (delta > 0) or write off (delta < 0). Replies ProductView, or
    Rejected("NOT_FOUND" | "BELOW_RESERVED")."""

    wire_name: ClassVar[str] = "catalog.AdjustStock.v1"

    product_id: uuid.UUID
    delta: int


class GetProduct(Query, frozen=True, kw_only=True):
    """Replies ProductView or None."""

    wire_name: ClassVar[str] = "catalog.GetProduct.v1"

    product_id: uuid.UUID


class ListProducts(Query, frozen=True, kw_only=True):
    """Replies ProductPage, ordered by (created_at, id)."""

    wire_name: ClassVar[str] = "catalog.ListProducts.v1"

    category: str | None = None
    limit: int = 20
    after: tuple[str, str] | None = None


class ListCategories(Query, frozen=True, kw_only=True):
    """Replies tuple[CategoryView, ...] ordered by name: at most `limit` (None: all), those
    after the category named `after` (keyset pagination)."""

    wire_name: ClassVar[str] = "catalog.ListCategories.v1"

    limit: int | None = None
    after: str | None = None


# -- the order saga's commands (idempotent by reservation_id) ------------------------------


class ReserveStock(Command, frozen=True, kw_only=True):
    """Reserve every line or none. Replies StockReserved or StockUnavailable (or
    Rejected("INVALID") for a quantity below 1). Sent again for the same reservation_id it
    reserves nothing more and answers as the first time; once that reservation was released
    (or a ReleaseStock for it came first), StockUnavailable(reason="RELEASED")."""

    wire_name: ClassVar[str] = "catalog.ReserveStock.v1"

    reservation_id: uuid.UUID
    order_id: uuid.UUID
    lines: tuple[Line, ...]


class StockReserved(Event, frozen=True, kw_only=True):
    wire_name: ClassVar[str] = "catalog.StockReserved.v1"

    reservation_id: uuid.UUID
    order_id: uuid.UUID
    lines: tuple[PricedLine, ...]


class StockUnavailable(Event, frozen=True, kw_only=True):
    """reason: OUT_OF_STOCK or UNKNOWN_PRODUCT (product_ids: the lines at fault), or RELEASED
    (the reservation was released before this command arrived again or at all)."""

    wire_name: ClassVar[str] = "catalog.StockUnavailable.v1"

    reservation_id: uuid.UUID
    order_id: uuid.UUID
    reason: str
    product_ids: tuple[uuid.UUID, ...]


class ReleaseStock(Command, frozen=True, kw_only=True):
    """Give a reservation's stock back (compensation). Replies StockReleased. Idempotent; an
    unknown id reserves nothing but is remembered, so a late ReserveStock for it reserves nothing."""

    wire_name: ClassVar[str] = "catalog.ReleaseStock.v1"

    reservation_id: uuid.UUID


class CommitStock(Command, frozen=True, kw_only=True):
    """The order completed: the reserved stock leaves the shelf. Idempotent. Replies
    StockCommitted, or Rejected("NOT_RESERVED") for a reservation unknown, released or refused."""

    wire_name: ClassVar[str] = "catalog.CommitStock.v1"

    reservation_id: uuid.UUID


class RestockItems(Command, frozen=True, kw_only=True):
    """A completed order was cancelled: its committed stock returns to the shelf. Idempotent.
    Replies StockRestocked, or Rejected("NOT_COMMITTED") for a reservation never committed."""

    wire_name: ClassVar[str] = "catalog.RestockItems.v1"

    reservation_id: uuid.UUID


class StockReleased(Event, frozen=True, kw_only=True):
    wire_name: ClassVar[str] = "catalog.StockReleased.v1"

    reservation_id: uuid.UUID


class StockCommitted(Event, frozen=True, kw_only=True):
    wire_name: ClassVar[str] = "catalog.StockCommitted.v1"

    reservation_id: uuid.UUID


class StockRestocked(Event, frozen=True, kw_only=True):
    wire_name: ClassVar[str] = "catalog.StockRestocked.v1"

    reservation_id: uuid.UUID
