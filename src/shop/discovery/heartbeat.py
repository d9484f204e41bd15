"""Keep instances registered while a process serves them; deregister on a graceful stop.

    async with heartbeat(registry, instances, interval_s=5, ttl_s=15):
        ...  # serve

Registers at entry (a failure there propagates: a service that cannot announce itself should
not start silently), refreshes every `interval_s` (a failed beat is logged and retried at the
next interval; the TTL -- a few intervals -- rides over a short registry outage), deregisters at
exit so the gateway stops routing to it at once instead of after the TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

from shop.discovery.base import Instance, Registry
from shop.observability.loggers import get_logger

log = get_logger("shop.discovery")
DEREGISTER_TIMEOUT_S = 2.0


@contextlib.asynccontextmanager
async def heartbeat(
    registry: Registry,
    instances: Instance | Sequence[Instance],
    *,
    interval_s: float = 5.0,
    ttl_s: float = 15.0,
) -> AsyncIterator[None]:
    if interval_s <= 0 or ttl_s <= interval_s:
        raise ValueError(f"need 0 < interval_s < ttl_s, got interval {interval_s}, ttl {ttl_s}")
    chosen = [instances] if isinstance(instances, Instance) else list(instances)
    for instance in chosen:
        await registry.register(instance, ttl_s)
    log.info("discovery.registered", instances=[i.key for i in chosen], ttl_s=ttl_s)
    task = asyncio.create_task(_beat(registry, chosen, interval_s, ttl_s), name="discovery-heartbeat")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for instance in chosen:
            try:
                await asyncio.wait_for(registry.deregister(instance), DEREGISTER_TIMEOUT_S)
            except Exception as exc:  # the TTL removes it anyway
                log.warning("discovery.deregister_failed", instance=instance.key, error=repr(exc))
        log.info("discovery.deregistered", instances=[i.key for i in chosen])


async def _beat(registry: Registry, instances: list[Instance], interval_s: float, ttl_s: float) -> None:
    failing = False
    while True:
        await asyncio.sleep(interval_s)
        try:
            for instance in instances:
                await asyncio.wait_for(registry.heartbeat(instance, ttl_s), interval_s)
        except Exception as exc:
            if not failing:
                log.warning("discovery.heartbeat_failed", error=repr(exc))
            failing = True
        else:
            if failing:
                log.info("discovery.heartbeat_recovered")
            failing = False
