"""Fixed-window rate limiting with a pluggable store (memory for `shop run`; Redis in split mode)."""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from typing import Protocol

from redis.exceptions import NoScriptError, RedisError

from shop.discovery.redis_client import LazyRedis
from shop.observability.loggers import get_logger
from shop.settings import RateLimit

log = get_logger("shop.gateway")


class RateLimitStore(Protocol):
    async def hit(self, key: str, limit: RateLimit) -> tuple[bool, float]:
        """Count one request against `key`; (allowed, seconds until the window resets)."""
        ...


class MemoryRateLimitStore:
    """Per-process counters; enough for `shop run`, which is one process. As in Redis, a key's
    window starts at its first hit (not at a multiple of the period), so a burst is never split
    by a window boundary the client cannot see."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000) -> None:
        self._clock = clock
        self._windows: dict[str, tuple[float, int]] = {}
        self._max_keys = max_keys

    async def hit(self, key: str, limit: RateLimit) -> tuple[bool, float]:
        now = self._clock()
        start, count = self._windows.get(key, (now, 0))
        if now >= start + limit.period:
            start, count = now, 0
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


# One round trip, atomic: count the hit, start the window's clock on its first hit, and answer the
# count with the milliseconds left in the window (a key that lost its TTL gets one again).
_HIT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  return {count, tonumber(ARGV[1])}
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {count, ttl}
"""
_HIT_SHA = hashlib.sha1(_HIT.encode()).hexdigest()


class RedisRateLimitStore:
    """Counters in Redis, shared by every gateway (and service) process of a deployment.

    Fixed windows that start at a key's first hit (the window's clock is Redis's TTL, so the
    processes' clocks do not matter). When Redis does not answer within the short socket
    timeout the hit is counted by `fallback` (per process) instead, and Redis is not asked again
    for `recheck_s` (so an outage costs one timeout per second, not one per request): a Redis
    outage loosens the limit to per-process counting, it neither refuses everything nor lifts it.
    """

    def __init__(
        self,
        redis_url: str,
        namespace: str = "shop",
        *,
        socket_timeout_s: float = 0.25,
        fallback: RateLimitStore | None = None,
        recheck_s: float = 1.0,
    ) -> None:
        self._redis = LazyRedis(
            redis_url, socket_timeout_s=socket_timeout_s, connect_timeout_s=socket_timeout_s
        )
        self._prefix = f"{namespace}:ratelimit:"
        self._fallback = fallback if fallback is not None else MemoryRateLimitStore()
        self._failing_since: float | None = None
        self._recheck_s = recheck_s
        self._skip_until = 0.0

    async def hit(self, key: str, limit: RateLimit) -> tuple[bool, float]:
        if self._skip_until and time.monotonic() < self._skip_until:
            return await self._fallback.hit(key, limit)
        period_ms = max(1, int(limit.period * 1000))
        try:
            client = self._redis.get()
            try:
                reply = await client.evalsha(_HIT_SHA, 1, self._prefix + key, period_ms)
            except NoScriptError:  # a Redis that restarted, or was never sent the script
                await client.script_load(_HIT)
                reply = await client.evalsha(_HIT_SHA, 1, self._prefix + key, period_ms)
        except (RedisError, OSError) as exc:
            if self._failing_since is None:
                self._failing_since = time.monotonic()
                log.warning("ratelimit.redis_unavailable", error=repr(exc), fallback="per-process")
            self._skip_until = time.monotonic() + self._recheck_s
            return await self._fallback.hit(key, limit)
        if self._failing_since is not None:
            log.info("ratelimit.redis_recovered", after_s=round(time.monotonic() - self._failing_since, 3))
            self._failing_since = None
            self._skip_until = 0.0
        count, ttl_ms = int(reply[0]), int(reply[1])
        return count <= limit.count, ttl_ms / 1000.0

    async def ping(self) -> None:
        await self._redis.get().ping()

    async def aclose(self) -> None:
        await self._redis.aclose()
