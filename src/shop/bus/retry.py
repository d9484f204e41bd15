"""Retry with capped exponential backoff and jitter, for asyncio code.

A :class:`RetryPolicy` says how many attempts to make and how long to wait
between them: after ``attempt`` failed attempts (counting from 1) the wait is
``min(max_delay, base_delay * multiplier ** (attempt - 1))``, drawn uniformly
from ``[d * (1 - jitter), d]``.  :func:`retry_async` runs an awaitable factory
under a policy.  Sleep and randomness are injectable so tests never wait.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["RetryPolicy", "retry_async"]

T = TypeVar("T")


def _check_number(field: str, value: float) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{field} must be a finite number, got {value!r}")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Immutable backoff settings; delays are seconds, ``jitter`` a fraction in [0, 1]."""

    max_attempts: int = 5
    base_delay: float = 0.05
    max_delay: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not isinstance(self.max_attempts, int) or isinstance(self.max_attempts, bool):
            raise ValueError(f"max_attempts must be an int, got {self.max_attempts!r}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts!r}")
        for field in ("base_delay", "max_delay", "multiplier", "jitter"):
            _check_number(field, getattr(self, field))
        if self.base_delay < 0:
            raise ValueError(f"base_delay must be >= 0 seconds, got {self.base_delay!r}")
        if self.max_delay < self.base_delay:
            raise ValueError(f"max_delay must be >= base_delay ({self.base_delay!r}), got {self.max_delay!r}")
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier!r}")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"jitter must be a fraction in [0, 1], got {self.jitter!r}")

    def should_retry(self, attempt: int) -> bool:
        """Whether another attempt may follow attempt number ``attempt`` (counting from 1)."""
        return attempt < self.max_attempts

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after ``attempt`` failed attempts (>= 1), before the next one."""
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
            raise ValueError(f"attempt must be an int >= 1, got {attempt!r}")
        if self.base_delay == 0.0:
            return 0.0
        try:
            ceiling = min(self.max_delay, self.base_delay * self.multiplier ** (attempt - 1))
        except OverflowError:
            ceiling = self.max_delay
        if self.jitter == 0.0:
            return ceiling
        low = ceiling * (1.0 - self.jitter)
        return rng.uniform(low, ceiling) if rng is not None else random.uniform(low, ceiling)


async def retry_async(
    fn: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    rng: random.Random | None = None,
) -> T:
    """Await ``fn()`` up to ``policy.max_attempts`` times, sleeping between attempts.

    Only exceptions in ``retry_on`` are retried; any other propagates at once.
    When the attempts are used up, the last error is re-raised unchanged.
    """
    attempt = 1
    while True:
        try:
            return await fn()
        except retry_on:
            if not policy.should_retry(attempt):
                raise
        await sleep(policy.delay(attempt, rng))
        attempt += 1
