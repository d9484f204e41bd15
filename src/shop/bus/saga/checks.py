"""Validation of the names, statuses and reasons a saga definition or an action hands in."""

from __future__ import annotations

from datetime import UTC, datetime

from shop.bus.saga.statuses import NOT_FINAL, SagaStatus

MAX_NAME = 100
MAX_STATUS = 32
MAX_REASON = 100


def check_final_status(status: str) -> None:
    if not isinstance(status, str) or not status or len(status) > MAX_STATUS:
        raise ValueError(f"a saga status must be a non-empty string of at most {MAX_STATUS} characters")
    if status in NOT_FINAL:
        raise ValueError(
            f"{status!r} is not a final status; use e.g. {SagaStatus.FAILED.value!r} "
            f"or {SagaStatus.CANCELLED.value!r}"
        )


def check_reason(reason: str) -> None:
    if not isinstance(reason, str) or not reason or len(reason) > MAX_REASON:
        raise ValueError(f"a failure reason must be a non-empty string of at most {MAX_REASON} characters")


def check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not name or len(name) > MAX_NAME:
        raise ValueError(f"a {kind} name must be a non-empty string of at most {MAX_NAME} characters")


def utc(value: datetime) -> datetime:
    """Timezone-aware UTC (SQLite hands back naive datetimes, which are UTC by construction)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def utc_or_none(value: datetime | None) -> datetime | None:
    return None if value is None else utc(value)


def utcnow() -> datetime:
    return datetime.now(UTC)
