"""Turning a handler's `Rejected` reply into the HTTP problem the API promises."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn, TypeVar

from litestar.exceptions import HTTPException, ValidationException

from shop.bus.messages import Rejected

T = TypeVar("T")


def raise_rejection(rejection: Rejected, statuses: Mapping[str, int]) -> NoReturn:
    """Raise the HTTP error a module maps the rejection's code to (409 unless mapped)."""
    status = statuses.get(rejection.code, 409)
    if status == 400:
        raise ValidationException(
            detail=rejection.detail, extra=[{"key": rejection.field or "body", "message": rejection.detail}]
        )
    headers = {"Retry-After": "5"} if status == 503 else None
    raise HTTPException(status_code=status, detail=rejection.detail or rejection.code, headers=headers)


def unwrap(reply: T | Rejected, statuses: Mapping[str, int]) -> T:
    """The reply, or the HTTP error for its rejection."""
    if isinstance(reply, Rejected):
        raise_rejection(reply, statuses)
    return reply


def field_error(field: str, message: str) -> ValidationException:
    return ValidationException(detail=f"{field}: {message}", extra=[{"key": field, "message": message}])


__all__: list[Any] = ["field_error", "raise_rejection", "unwrap"]
