"""The catalog's commands and queries for products on the bus, on SQLite and on PostgreSQL."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from shop.bus.messages import Rejected
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

pytestmark = pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)


def _create(sku: str, category: str | None = None, **fields: Any) -> CreateProduct:
    values: dict[str, Any] = {"name": sku, "price": 100, "currency": "EUR", "stock": 1, **fields}
    return CreateProduct(sku=sku, category=category, **values)


async def test_a_created_product_is_read_back_with_its_stock(stock: Any) -> None:
    created = await stock.ask(_create("A", "tea", description="d", price=250, stock=4))

    fetched = await stock.ask(GetProduct(product_id=created.id))

    assert isinstance(created, ProductView)
    assert fetched == created
    assert (fetched.on_hand, fetched.reserved, fetched.stock_available) == (4, 0, 4)
    assert fetched.created_at.tzinfo is not None
    assert await stock.ask(GetProduct(product_id=uuid.uuid4())) is None


async def test_a_duplicate_sku_is_rejected(stock: Any) -> None:
    await stock.ask(_create("A"))

    reply = await stock.ask(_create("A"))

    assert isinstance(reply, Rejected)
    assert (reply.code, reply.field) == ("SKU_TAKEN", "sku")


@pytest.mark.parametrize(
    "fields",
    [
        {"price": -1},
        {"stock": -1},
        {"currency": "eur"},
        {"currency": "EURO"},
        {"name": " "},
        {"sku": ""},
        {"category": ""},
    ],
)
async def test_invalid_fields_are_rejected_by_the_handler_too(stock: Any, fields: dict[str, Any]) -> None:
    values: dict[str, Any] = {"sku": "A", "name": "A", "price": 1, "currency": "EUR", "stock": 1, **fields}

    reply = await stock.ask(CreateProduct(**values))

    assert isinstance(reply, Rejected)
    assert reply.code == "INVALID"
    assert reply.field == next(iter(fields))
    assert (await stock.ask(ListProducts())).items == ()


async def test_an_update_changes_only_what_it_names(stock: Any) -> None:
    created = await stock.ask(_create("A", "tea", price=100))

    renamed = await stock.ask(UpdateProduct(product_id=created.id, name="New"))
    cleared = await stock.ask(UpdateProduct(product_id=created.id, clear_category=True, price=5))
    untouched = await stock.ask(UpdateProduct(product_id=created.id))
    unknown = await stock.ask(UpdateProduct(product_id=uuid.uuid4(), name="x"))

    assert (renamed.name, renamed.category, renamed.price) == ("New", "tea", 100)
    assert (cleared.name, cleared.category, cleared.price) == ("New", None, 5)
    assert untouched == cleared
    assert isinstance(unknown, Rejected)
    assert unknown.code == "NOT_FOUND"


async def test_adjusting_unknown_stock_is_not_found(stock: Any) -> None:
    reply = await stock.ask(AdjustStock(product_id=uuid.uuid4(), delta=1))

    assert isinstance(reply, Rejected)
    assert reply.code == "NOT_FOUND"


async def test_products_are_listed_oldest_first_in_keyset_pages_per_category(stock: Any) -> None:
    ids = [(await stock.ask(_create(f"P{n}", "even" if n % 2 == 0 else "odd"))).id for n in range(7)]

    seen: list[uuid.UUID] = []
    after: tuple[str, str] | None = None
    while True:
        page = await stock.ask(ListProducts(limit=3, after=after))
        assert isinstance(page, ProductPage)
        seen += [p.id for p in page.items]
        if not page.has_more:
            break
        last = page.items[-1]
        after = (last.created_at.isoformat(), str(last.id))
    evens = await stock.ask(ListProducts(category="even", limit=10))

    assert seen == ids
    assert [p.id for p in evens.items] == ids[0::2]
    assert not evens.has_more


async def test_categories_are_counted_and_paged_by_name(stock: Any) -> None:
    for n, category in enumerate(["tea", "cups", "tea", None, "books", "tea"]):
        await stock.ask(_create(f"P{n}", category))

    everything = await stock.ask(ListCategories())
    first = await stock.ask(ListCategories(limit=2))
    rest = await stock.ask(ListCategories(limit=2, after=first[-1].name))

    assert everything == (
        CategoryView(name="books", product_count=1),
        CategoryView(name="cups", product_count=1),
        CategoryView(name="tea", product_count=3),
    )
    assert first + rest == everything


async def test_get_product_reads_without_a_unit_of_work_what_one_would_read(stock: Any) -> None:
    """GetProduct is one prepared SELECT outside any unit of work (ADR 0027): it sees a write
    committed just before, and answers what `Catalog.get` answers inside a read-only one."""
    from shop.db import current_unit_of_work, unit_of_work
    from shop.modules.catalog.service import Catalog, read_product

    product_id = await stock.product(stock=7)
    await stock.ask(AdjustStock(product_id=product_id, delta=5))

    fetched = await stock.ask(GetProduct(product_id=product_id))
    async with unit_of_work(stock.database, write=False) as uow:
        expected = await Catalog(uow.session).get(product_id)

    assert fetched == expected == await read_product(stock.database, product_id)
    assert fetched is not None
    assert fetched.on_hand == 12
    assert current_unit_of_work() is None
