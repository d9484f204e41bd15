"""A lock per key, kept only while someone holds or waits for it.

The saga engine serialises the advancing of one saga (by id) and the simulated payment
provider the calls of one idempotency key: both see an unbounded stream of keys, so a lock
kept for every key seen would grow for as long as the process runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class _Entry:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0  # calls holding or waiting for the lock


class KeyedLocks(Generic[K]):
    """`async with locks.hold(key):` one holder a key at a time, in arrival order."""

    def __init__(self) -> None:
        self._entries: dict[K, _Entry] = {}

    @asynccontextmanager
    async def hold(self, key: K) -> AsyncIterator[None]:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._entries[key]

    def locked(self, key: K) -> bool:
        """Whether someone holds `key`'s lock right now."""
        entry = self._entries.get(key)
        return entry is not None and entry.lock.locked()

    def __len__(self) -> int:
        """How many keys have a holder or a waiter."""
        return len(self._entries)

    def keys(self) -> list[K]:
        return list(self._entries)
