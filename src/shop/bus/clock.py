"""The time the kernel reads: wall time for deadlines, monotonic time for breakers.

One `Clock` is a singleton of every process. The system clock is the default; property tests
provide a virtual one, so deadlines, retries and breaker waits move only when the test says.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime


class Clock:
    """The system's clocks."""

    def now(self) -> datetime:
        """Wall time, timezone-aware UTC (deadlines, retry times)."""
        return datetime.now(UTC)

    def monotonic(self) -> float:
        """Seconds that never go backwards (breaker windows and waits)."""
        return time.monotonic()


def as_utc(value: datetime) -> datetime:
    """A stored time as timezone-aware UTC: SQLite hands back naive datetimes, which are UTC by
    construction; PostgreSQL's are aware."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
