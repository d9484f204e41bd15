"""Stored times come back as timezone-aware UTC whatever the database hands over."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from shop.bus.clock import as_utc


def test_a_naive_time_from_sqlite_is_taken_as_utc() -> None:
    assert as_utc(datetime(2026, 1, 2, 3, 4, 5)) == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert as_utc(datetime(2026, 1, 2, 3, 4, 5)).tzinfo is UTC


def test_an_aware_time_is_the_same_instant_in_utc() -> None:
    paris = datetime(2026, 1, 2, 4, 4, 5, tzinfo=timezone(timedelta(hours=1)))

    assert as_utc(paris) == paris
    assert as_utc(paris).utcoffset() == timedelta(0)
    assert as_utc(paris).hour == 3
