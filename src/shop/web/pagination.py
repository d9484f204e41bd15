"""Keyset pagination with opaque cursors: `?limit=` (1..100, default 20) and `?cursor=`.

A cursor is ours: base64url of a JSON array. Every cursor is decoded and type-checked here, at
the edge, into the values a query needs (a timestamp and an id, an offset, an id, a name); a
cursor we did not make is a 400 naming `cursor`, never an error inside a handler.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

import msgspec
from litestar.params import Parameter

from shop.web.rejections import field_error

T = TypeVar("T")

MAX_CURSOR_LENGTH = 512
MAX_OFFSET = 1_000_000

Limit = Annotated[int, Parameter(ge=1, le=100, description="page size, 1..100")]
Cursor = Annotated[
    str | None,
    Parameter(description="opaque cursor from a previous page", max_length=MAX_CURSOR_LENGTH),
]


class Page(msgspec.Struct, Generic[T]):
    items: list[T]
    next_cursor: str | None


def encode_cursor(*values: Any) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode(list(values))).decode().rstrip("=")


def _invalid() -> Exception:
    return field_error("cursor", "invalid cursor")


def decode_cursor(cursor: str | None, arity: int) -> list[Any] | None:
    """The values a cursor holds, or None for the first page; 400 for a cursor we did not make."""
    if cursor is None or cursor == "":
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = msgspec.json.decode(raw)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        values = None
    if not isinstance(values, list) or len(values) != arity:
        raise _invalid()
    return values


def _timestamp(value: Any) -> datetime:
    """A timezone-aware timestamp, in UTC; 400 for anything else (naive, malformed, out of range)."""
    if not isinstance(value, str):
        raise _invalid()
    try:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            raise _invalid()
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):  # e.g. 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        raise _invalid() from None


def _uuid(value: Any) -> uuid.UUID:
    if not isinstance(value, str):
        raise _invalid()
    try:
        return uuid.UUID(value)
    except ValueError:
        raise _invalid() from None


def keyset_cursor(cursor: str | None) -> tuple[str, str] | None:
    """The (created_at, id) after which a page keyed by (created_at, id) goes on, as the
    queries take it (an ISO 8601 UTC timestamp and a UUID string); None for the first page."""
    values = decode_cursor(cursor, 2)
    if values is None:
        return None
    return _timestamp(values[0]).isoformat(), str(_uuid(values[1]))


def offset_cursor(cursor: str | None) -> int:
    """How many items earlier pages held (0 for the first page)."""
    values = decode_cursor(cursor, 1)
    if values is None:
        return 0
    offset = values[0]
    if type(offset) is not int or not 0 <= offset <= MAX_OFFSET:
        raise _invalid()
    return offset


def id_cursor(cursor: str | None) -> uuid.UUID | None:
    """The id after which a page keyed by id goes on; None for the first page."""
    values = decode_cursor(cursor, 1)
    return None if values is None else _uuid(values[0])


def text_cursor(cursor: str | None, max_length: int) -> str | None:
    """The non-empty name after which a page keyed by name goes on; None for the first page."""
    values = decode_cursor(cursor, 1)
    if values is None:
        return None
    if not isinstance(values[0], str) or not 0 < len(values[0]) <= max_length:
        raise _invalid()
    return values[0]
