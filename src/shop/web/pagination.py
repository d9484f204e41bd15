"""Keyset pagination with opaque cursors: `?limit=` (1..100, default 20) and `?cursor=`."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, Generic, TypeVar

import msgspec
from litestar.exceptions import ValidationException
from litestar.params import Parameter

T = TypeVar("T")

Limit = Annotated[int, Parameter(ge=1, le=100, description="page size, 1..100")]
Cursor = Annotated[str | None, Parameter(description="opaque cursor from a previous page", max_length=512)]


class Page(msgspec.Struct, Generic[T]):
    items: list[T]
    next_cursor: str | None


def encode_cursor(*values: Any) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode(list(values))).decode().rstrip("=")


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
        raise ValidationException(
            detail="invalid cursor", extra=[{"key": "cursor", "message": "invalid cursor"}]
        )
    return values
