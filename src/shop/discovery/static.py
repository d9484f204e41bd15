"""A fixed registry, for platforms that do discovery themselves (Kubernetes Services, DNS).

    SHOP_SERVICE_URLS="catalog=http://catalog:8000,orders=http://orders:8000|http://orders-b:8000"

Each URL is one instance (a Kubernetes Service name is one instance whose load balancing the
platform does). Healthy always, or -- with `probe_interval_s` -- as the instance's own `/ready`
answered at most that long ago (probed lazily when listed, concurrently, with a timeout).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from shop.discovery.base import Instance, InstanceView, from_epoch, routes_of, sort_views


def parse_service_urls(text: str) -> dict[str, list[str]]:
    """`"catalog=http://catalog:8000,orders=http://a:8000|http://b:8000"` -> module -> URLs.

    Entries are separated by commas (or whitespace); several URLs of one module by `|`, or by
    repeating the module. Raises ValueError naming the bad entry."""
    found: dict[str, list[str]] = {}
    for entry in text.replace(",", " ").split():
        module, sep, urls = entry.partition("=")
        module = module.strip().lower()
        if not sep or not module or not urls:
            raise ValueError(f"expected 'module=http://host:port', got {entry!r}")
        for url in urls.split("|"):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"expected an http(s):// URL for {module!r}, got {url!r}")
            url = url.rstrip("/")
            if url not in found.setdefault(module, []):
                found[module].append(url)
    return found


@dataclass(slots=True)
class _Probe:
    healthy: bool
    checked_at: float  # monotonic
    last_seen: float  # wall clock of the last good answer (or of start-up)


class StaticRegistry:
    def __init__(
        self,
        services: Mapping[str, Sequence[str]] | str,
        *,
        routes: Mapping[str, Sequence[str]] | None = None,
        probe_interval_s: float | None = None,
        probe_timeout_s: float = 1.0,
        probe_path: str = "/ready",
        http_client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if isinstance(services, str):
            services = parse_service_urls(services)
        self._instances = [
            Instance(
                module=module,
                instance_id=f"{module}@{urlsplit(url).netloc}",
                url=url.rstrip("/"),
                routes=tuple((routes or {}).get(module, ())),
            )
            for module, urls in sorted(services.items())
            for url in urls
        ]
        self._probe_interval_s = probe_interval_s
        self._probe_timeout_s = probe_timeout_s
        self._probe_path = probe_path
        self._client = http_client
        self._own_client = http_client is None
        self._clock = clock
        started = clock()
        self._probes = {i.key: _Probe(True, float("-inf"), started) for i in self._instances}

    # Registration is the platform's job: these are no-ops, so `shop serve` can heartbeat blindly.
    async def register(self, instance: Instance, ttl_s: float | None = None) -> None:
        return None

    async def heartbeat(self, instance: Instance, ttl_s: float | None = None) -> None:
        return None

    async def deregister(self, instance: Instance) -> None:
        return None

    async def instances(self, module: str | None = None) -> list[InstanceView]:
        chosen = [i for i in self._instances if module is None or i.module == module]
        if self._probe_interval_s is not None:
            due = time.monotonic() - self._probe_interval_s
            stale = [i for i in chosen if self._probes[i.key].checked_at <= due]
            if stale:
                await asyncio.gather(*(self._probe(i) for i in stale))
        return sort_views(
            [
                InstanceView.of(
                    i,
                    healthy=self._probes[i.key].healthy,
                    last_seen=from_epoch(self._probes[i.key].last_seen),
                )
                for i in chosen
            ]
        )

    async def _probe(self, instance: Instance) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._probe_timeout_s)
        probe = self._probes[instance.key]
        try:
            response = await self._client.get(
                instance.base_url + self._probe_path, timeout=self._probe_timeout_s
            )
            healthy = response.status_code == 200
        except httpx.HTTPError:
            healthy = False
        probe.healthy = healthy
        probe.checked_at = time.monotonic()
        if healthy:
            probe.last_seen = self._clock()

    async def routes(self) -> dict[str, list[str]]:
        return routes_of(await self.instances())

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None
