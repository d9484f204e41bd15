"""A throttle a module can ask without knowing where the counters live."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Throttle(Protocol):
    async def __call__(self, key: str) -> float | None:
        """Count one attempt for `key`; None when allowed, else seconds to wait."""
        ...
