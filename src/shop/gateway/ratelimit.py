"""Fixed-window rate limiting with a pluggable store (memory here; Redis in split mode)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Protocol

from shop.settings import RateLimit


class RateLimitStore(Protocol):
    async def hit(self, key: str, limit: RateLimit) -> tuple[bool, float]:
        """Count one request against `key`; (allowed, seconds until the window resets)."""
        ...


class MemoryRateLimitStore:
    """Per-process counters; enough for `shop run`, which is one process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000) -> None:
        self._clock = clock
        self._windows: dict[str, tuple[float, int]] = {}
        self._max_keys = max_keys

    async def hit(self, key: str, limit: RateLimit) -> tuple[bool, float]:
        now = self._clock()
        window_start = math.floor(now / limit.period) * limit.period
        start, count = self._windows.get(key, (window_start, 0))
        if start != window_start:
            start, count = window_start, 0
        count += 1
        self._windows[key] = (start, count)
        if len(self._windows) > self._max_keys:
            self._prune(now)
        return count <= limit.count, max(0.0, start + limit.period - now)

    def _prune(self, now: float) -> None:
        # Drop windows that ended more than a day ago (no limit period is longer).
        stale = [k for k, (start, _) in self._windows.items() if start + 86400 < now]
        for k in stale:
            del self._windows[k]
        if len(self._windows) > self._max_keys:
            self._windows.clear()


class RateLimiter:
    def __init__(self, store: RateLimitStore) -> None:
        self.store = store

    async def check(self, scope: str, key: str, limit: RateLimit) -> float | None:
        """None when allowed, else the Retry-After in whole seconds (at least 1)."""
        allowed, reset = await self.store.hit(f"{scope}:{key}", limit)
        return None if allowed else float(max(1, math.ceil(reset)))
