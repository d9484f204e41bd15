"""Keyset-paged lists by (created_at, id), and the owner-or-admin list with `?order_id=`.

No module words: a module passes in its query type, the map from its rejections to HTTP
statuses and the function that turns one item of a page into its HTTP shape.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Protocol, TypeVar

from shop.bus.bus import Bus
from shop.bus.messages import Message
from shop.security.tokens import Principal
from shop.web.pagination import Page, encode_cursor, keyset_cursor
from shop.web.rejections import unwrap

T = TypeVar("T")
V = TypeVar("V", bound="Keyed")
V_co = TypeVar("V_co", bound="Keyed", covariant=True)


class Keyed(Protocol):
    """An item of a keyset page: pages are ordered by (created_at, id)."""

    @property
    def created_at(self) -> datetime: ...

    @property
    def id(self) -> uuid.UUID: ...


class KeyedPage(Protocol[V_co]):
    """A page as a module's query replies it: the items, and whether more follow."""

    @property
    def items(self) -> Sequence[V_co]: ...

    @property
    def has_more(self) -> bool: ...


def keyset_after(cursor: str | None) -> tuple[str, str] | None:
    """The (created_at, id) a cursor of ours holds; 400 for one we did not make (never a 500)."""
    return keyset_cursor(cursor)


def keyset_page(page: KeyedPage[V], view: Callable[[V], T]) -> Page[T]:
    """The HTTP page: each item as `view` shows it, and a cursor after the last one if more follow."""
    last = page.items[-1] if page.items else None
    next_cursor = None
    if page.has_more and last is not None:
        next_cursor = encode_cursor(last.created_at.isoformat(), str(last.id))
    return Page(items=[view(item) for item in page.items], next_cursor=next_cursor)


class OwnedListQuery(Protocol):
    """A list query over items that belong to customers: `customer_id=None` asks for everyone's."""

    def __call__(
        self,
        *,
        customer_id: uuid.UUID | None,
        order_id: uuid.UUID | None,
        limit: int,
        after: tuple[str, str] | None,
    ) -> Message: ...


async def owned_list(
    bus: Bus,
    principal: Principal,
    query: OwnedListQuery,
    statuses: Mapping[str, int],
    view: Callable[[V], T],
    *,
    order_id: uuid.UUID | None,
    limit: int,
    cursor: str | None,
) -> Page[T]:
    """The caller's own items (an admin's: everyone's), only the order's with `order_id`.

    The module's query replies a page, or rejects (e.g. NOT_FOUND for another customer's order),
    which `statuses` maps to the HTTP error.
    """
    message = query(
        customer_id=None if principal.is_admin else principal.user_id,
        order_id=order_id,
        limit=limit,
        after=keyset_after(cursor),
    )
    page: KeyedPage[V] = unwrap(await bus.ask(message), statuses)
    return keyset_page(page, view)
