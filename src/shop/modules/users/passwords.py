"""Password hashing with argon2id, off the event loop and bounded.

Each hash takes ~0.1 s of CPU and 64 MiB of memory, on purpose. They run on an executor of
their own with HASHING_THREADS threads, and a semaphore of the same size admits that many at
once: a flood of logins or sign-ups waits (cheaply, as coroutines) instead of taking the
default thread pool from every other `to_thread` caller or the memory of many hashes at once.
A caller that cannot get a slot within MAX_WAIT_S (or finds MAX_WAITING already waiting) gets
:class:`HashingBusy` at once -- the API answers 503 with Retry-After -- rather than waiting
out its deadline. Callers hold no database connection while they wait here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

HASHING_THREADS = 2
MAX_WAIT_S = 2.0
MAX_WAITING = 64
T = TypeVar("T")


class HashingBusy(Exception):
    """Every hashing slot is taken and has been for MAX_WAIT_S (or too many callers wait)."""


class Passwords:
    def __init__(self, hasher: PasswordHasher | None = None, *, threads: int = HASHING_THREADS) -> None:
        self._hasher = hasher or PasswordHasher()  # argon2id, RFC 9106 low-memory profile
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="argon2")
        self._slots: asyncio.Semaphore | None = None
        self.threads = threads
        self._dummy: asyncio.Task[str] | None = None
        self._waiting = 0

    async def _run(self, fn: Callable[..., T], *args: str) -> T:
        if self._slots is None:  # created on the running loop that first uses it
            self._slots = asyncio.Semaphore(self.threads)
        if self._waiting >= MAX_WAITING:
            raise HashingBusy(f"{self._waiting} callers already wait for a hashing slot")
        self._waiting += 1
        try:
            await asyncio.wait_for(self._slots.acquire(), MAX_WAIT_S)
        except TimeoutError:
            raise HashingBusy(f"no hashing slot within {MAX_WAIT_S} s") from None
        finally:
            self._waiting -= 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        finally:
            self._slots.release()

    async def hash(self, password: str) -> str:
        return await self._run(self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """True for a match. With no hash (unknown user) it still spends the same time."""
        if password_hash is None:
            failed = (
                self._dummy is not None
                and self._dummy.done()
                and (self._dummy.cancelled() or self._dummy.exception() is not None)
            )
            if self._dummy is None or failed:
                # one dummy hash for every unknown user, made once (by whoever asks first)
                self._dummy = asyncio.ensure_future(self._run(self._hasher.hash, "timing-equaliser"))
            target = await asyncio.shield(self._dummy)
        else:
            target = password_hash
        try:
            ok = await self._run(self._hasher.verify, target, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        return bool(ok) and password_hash is not None

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
