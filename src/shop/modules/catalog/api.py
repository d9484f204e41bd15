"""HTTP controllers of the catalog module: thin, they turn requests into commands and queries."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import msgspec
from litestar import Controller, Response, get, patch, post
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, JSONBody, Parameter

from shop.contracts.catalog import (
    AdjustStock,
    CategoryView,
    CreateProduct,
    GetProduct,
    ListCategories,
    ListProducts,
    ProductPage,
    ProductView,
    UpdateProduct,
)
from shop.security.guards import admin_only
from shop.web.codes import NOT_BLANK, CurrencyCode
from shop.web.pagination import Cursor, Limit, Page, encode_cursor, keyset_cursor, text_cursor
from shop.web.params import BusDep
from shop.web.rejections import field_error, unwrap

MAX_AMOUNT = 10**12
STATUSES = {"SKU_TAKEN": 409, "NOT_FOUND": 404, "BELOW_RESERVED": 409, "INVALID": 400}

Sku = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=NOT_BLANK)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=NOT_BLANK)]
Description = Annotated[str, msgspec.Meta(max_length=5000)]
Price = Annotated[int, msgspec.Meta(ge=0, le=MAX_AMOUNT)]
MAX_CATEGORY = 100
Category = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_CATEGORY, pattern=NOT_BLANK)]
Stock = Annotated[int, msgspec.Meta(ge=0, le=MAX_AMOUNT)]
Delta = Annotated[int, msgspec.Meta(ge=-MAX_AMOUNT, le=MAX_AMOUNT)]
CategoryFilter = Annotated[
    str | None, Parameter(description="only products of this category", max_length=100)
]


class NewProduct(msgspec.Struct, kw_only=True):
    sku: Sku
    name: Name
    price: Price
    currency: CurrencyCode
    stock: Stock
    description: Description = ""
    category: Category | None = None


class ProductChanges(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Only the fields present change; `"category": null` removes the category."""

    name: Name | msgspec.UnsetType = msgspec.UNSET
    description: Description | msgspec.UnsetType = msgspec.UNSET
    price: Price | msgspec.UnsetType = msgspec.UNSET
    category: Category | msgspec.UnsetType | None = msgspec.UNSET


class StockChange(msgspec.Struct, kw_only=True):
    delta: Delta


class Product(msgspec.Struct):
    id: str
    sku: str
    name: str
    description: str
    price: int
    currency: str
    category: str | None
    stock_available: int


class CategoryItem(msgspec.Struct):
    name: str
    product_count: int


def _product(view: ProductView) -> Product:
    return Product(
        str(view.id),
        view.sku,
        view.name,
        view.description,
        view.price,
        view.currency,
        view.category,
        view.stock_available,
    )


def _filled(field: str, value: str) -> str:
    """The value without surrounding blanks; 400 naming the field when nothing is left."""
    stripped = value.strip()
    if not stripped:
        raise field_error(field, "must not be blank")
    return stripped


def _found(view: ProductView | None) -> ProductView:
    if view is None:
        raise NotFoundException(detail="no such product")
    return view


class CatalogController(Controller):
    path = "/api/v1"
    tags = ["catalog"]

    @get("/products", summary="List products")
    async def products(
        self,
        bus: BusDep,
        category: CategoryFilter = None,
        limit: Limit = 20,
        cursor: Cursor = None,
    ) -> Page[Product]:
        after = keyset_cursor(cursor)
        page: ProductPage = await bus.ask(ListProducts(category=category or None, limit=limit, after=after))
        last = page.items[-1] if page.items else None
        next_cursor = (
            encode_cursor(last.created_at.isoformat(), str(last.id)) if page.has_more and last else None
        )
        return Page(items=[_product(p) for p in page.items], next_cursor=next_cursor)

    @get("/products/{product_id:uuid}", summary="One product")
    async def product(self, product_id: FromPath[uuid.UUID], bus: BusDep) -> Product:
        return _product(_found(await bus.ask(GetProduct(product_id=product_id))))

    @post(
        "/products",
        guards=[admin_only],
        summary="Create a product",
        status_code=201,
        problems={409: "the sku is taken"},
    )
    async def create(self, data: JSONBody[NewProduct], bus: BusDep) -> Response[Product]:
        reply = await bus.ask(
            CreateProduct(
                sku=_filled("sku", data.sku),
                name=_filled("name", data.name),
                description=data.description.strip(),
                price=data.price,
                currency=data.currency.upper(),
                category=_filled("category", data.category) if data.category is not None else None,
                stock=data.stock,
            )
        )
        product = _product(unwrap(reply, STATUSES))
        return Response(product, status_code=201, headers={"Location": f"/api/v1/products/{product.id}"})

    @patch("/products/{product_id:uuid}", guards=[admin_only], summary="Change a product")
    async def update(
        self, product_id: FromPath[uuid.UUID], bus: BusDep, data: JSONBody[ProductChanges | None] = None
    ) -> Product:
        changes = data or ProductChanges()
        category = changes.category
        reply = await bus.ask(
            UpdateProduct(
                product_id=product_id,
                name=_filled("name", changes.name) if isinstance(changes.name, str) else None,
                description=changes.description.strip() if isinstance(changes.description, str) else None,
                price=changes.price if isinstance(changes.price, int) else None,
                category=_filled("category", category) if isinstance(category, str) else None,
                clear_category=category is None,
            )
        )
        return _product(unwrap(reply, STATUSES))

    @post(
        "/products/{product_id:uuid}/stock",
        guards=[admin_only],
        summary="Restock (delta > 0) or write off (delta < 0)",
        status_code=200,
        problems={409: "the write-off would leave less stock than is reserved"},
    )
    async def adjust_stock(
        self, product_id: FromPath[uuid.UUID], data: JSONBody[StockChange], bus: BusDep
    ) -> Product:
        reply = await bus.ask(AdjustStock(product_id=product_id, delta=data.delta))
        return _product(unwrap(reply, STATUSES))

    @get("/categories", summary="The categories of products, with how many products each has")
    async def categories(self, bus: BusDep, limit: Limit = 20, cursor: Cursor = None) -> Page[CategoryItem]:
        after = text_cursor(cursor, MAX_CATEGORY)
        found: tuple[CategoryView, ...] = await bus.ask(ListCategories(limit=limit + 1, after=after))
        items = [CategoryItem(c.name, c.product_count) for c in found[:limit]]
        next_cursor = encode_cursor(items[-1].name) if len(found) > limit and items else None
        return Page(items=items, next_cursor=next_cursor)


__all__: list[Any] = ["CatalogController"]
