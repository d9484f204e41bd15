"""An in-process registry: `shop run` (one local instance per module) and tests.

Same semantics as the Redis registry: an instance is healthy while its time to live lasts; once
it has lapsed it is listed as unhealthy for `grace_s` more seconds, then forgotten.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from shop.discovery.base import Instance, InstanceView, from_epoch, routes_of, sort_views

DEFAULT_GRACE_S = 30.0


@dataclass(slots=True)
class _Record:
    instance: Instance
    last_seen: float
    expires_at: float | None


class MemoryRegistry:
    def __init__(self, *, grace_s: float = DEFAULT_GRACE_S, clock: Callable[[], float] = time.time) -> None:
        self._records: dict[str, _Record] = {}
        self._grace_s = grace_s
        self._clock = clock

    async def register(self, instance: Instance, ttl_s: float | None = None) -> None:
        now = self._clock()
        self._records[instance.key] = _Record(instance, now, None if ttl_s is None else now + ttl_s)

    async def heartbeat(self, instance: Instance, ttl_s: float | None = None) -> None:
        await self.register(instance, ttl_s)

    async def deregister(self, instance: Instance) -> None:
        self._records.pop(instance.key, None)

    async def instances(self, module: str | None = None) -> list[InstanceView]:
        now = self._clock()
        views: list[InstanceView] = []
        for key, record in list(self._records.items()):
            healthy = record.expires_at is None or now < record.expires_at
            if not healthy and record.expires_at is not None and now >= record.expires_at + self._grace_s:
                del self._records[key]
                continue
            if module is None or record.instance.module == module:
                views.append(
                    InstanceView.of(record.instance, healthy=healthy, last_seen=from_epoch(record.last_seen))
                )
        return sort_views(views)

    async def routes(self) -> dict[str, list[str]]:
        return routes_of(await self.instances())

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        return None
