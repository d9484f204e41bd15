"""The registry of the split deployment: Redis, one TTL key per live instance.

Keys (under `<namespace>:discovery:`):

* `alive:<module>/<instance_id>` -- a string with a time to live; the instance is healthy
  exactly while it exists. Each heartbeat sets it again (so an instance whose key lapsed, or
  whose Redis was flushed, comes back on its next beat).
* `instances` -- a hash `<module>/<instance_id>` -> the instance and its `last_seen` (JSON),
  without a TTL: what lets an instance whose key lapsed be listed as unhealthy for `grace_s`
  (an operator sees the crash) before it is pruned.

Register and heartbeat are one MULTI round trip; listing is two (HGETALL, MGET). Redis errors
become RegistryError.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import msgspec
from redis.exceptions import RedisError

from shop.discovery.base import Instance, InstanceView, RegistryError, from_epoch, routes_of, sort_views
from shop.discovery.memory import DEFAULT_GRACE_S
from shop.discovery.redis_client import LazyRedis

# Delete a record only if its instance is still not alive: a re-registration racing with the
# prune wins.
_PRUNE = """
if redis.call('EXISTS', KEYS[2]) == 0 then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""


class _Record(msgspec.Struct, frozen=True):
    instance: Instance
    last_seen: float
    ttl_s: float | None


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(_Record).decode


class RedisRegistry:
    def __init__(
        self,
        redis_url: str,
        namespace: str = "shop",
        *,
        grace_s: float = DEFAULT_GRACE_S,
        socket_timeout_s: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = LazyRedis(
            redis_url,
            socket_timeout_s=socket_timeout_s,
            connect_timeout_s=socket_timeout_s,
            max_connections=16,
        )
        self._prefix = f"{namespace}:discovery:"
        self._hash = f"{self._prefix}instances"
        self._grace_s = grace_s
        self._clock = clock

    def _alive(self, key: str) -> str:
        return f"{self._prefix}alive:{key}"

    async def register(self, instance: Instance, ttl_s: float | None = None) -> None:
        now = self._clock()
        record = _encode(_Record(instance, now, ttl_s))
        try:
            async with self._redis.get().pipeline(transaction=True) as pipe:
                pipe.hset(self._hash, instance.key, record)
                if ttl_s is None:
                    pipe.set(self._alive(instance.key), b"1")
                else:
                    pipe.set(self._alive(instance.key), b"1", px=max(1, int(ttl_s * 1000)))
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise RegistryError(f"could not register {instance.key}: {exc}") from exc

    async def heartbeat(self, instance: Instance, ttl_s: float | None = None) -> None:
        await self.register(instance, ttl_s)

    async def deregister(self, instance: Instance) -> None:
        try:
            async with self._redis.get().pipeline(transaction=True) as pipe:
                pipe.delete(self._alive(instance.key))
                pipe.hdel(self._hash, instance.key)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise RegistryError(f"could not deregister {instance.key}: {exc}") from exc

    async def instances(self, module: str | None = None) -> list[InstanceView]:
        client = self._redis.get()
        try:
            raw: dict[Any, Any] = await client.hgetall(self._hash)
            if not raw:
                return []
            keys = [k.decode() for k in raw]
            if module is not None:
                keys = [k for k in keys if k.partition("/")[0] == module]
                if not keys:
                    return []
            alive = await client.mget([self._alive(k) for k in keys])
        except (RedisError, OSError) as exc:
            raise RegistryError(f"could not list instances: {exc}") from exc
        now = self._clock()
        views: list[InstanceView] = []
        for key, live in zip(keys, alive, strict=True):
            try:
                record = _decode(raw[key.encode()])
            except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
                await self._prune(key)  # not ours, or from an incompatible version
                continue
            if live is None:
                lapsed_at = record.last_seen + (record.ttl_s or 0.0)
                if now >= lapsed_at + self._grace_s:
                    await self._prune(key)
                    continue
            views.append(
                InstanceView.of(
                    record.instance, healthy=live is not None, last_seen=from_epoch(record.last_seen)
                )
            )
        return sort_views(views)

    async def _prune(self, key: str) -> None:
        # Pruning is housekeeping: a failure is tried again at the next listing.
        with contextlib.suppress(RedisError, OSError):
            await self._redis.get().eval(_PRUNE, 2, self._hash, self._alive(key), key)

    async def routes(self) -> dict[str, list[str]]:
        return routes_of(await self.instances())

    async def ping(self) -> None:
        try:
            await self._redis.get().ping()
        except (RedisError, OSError) as exc:
            raise RegistryError(f"redis: {exc}") from exc

    async def aclose(self) -> None:
        await self._redis.aclose()
