"""Which registry a process uses: static URLs when given (Kubernetes), else Redis."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from shop.discovery.base import Registry
from shop.discovery.redis_registry import RedisRegistry
from shop.discovery.static import StaticRegistry
from shop.settings import Settings

SERVICE_URLS_VAR = "SHOP_SERVICE_URLS"


def registry_for(
    settings: Settings,
    service_urls: str | None = None,
    *,
    namespace: str = "shop",
    routes: Mapping[str, Sequence[str]] | None = None,
) -> Registry:
    """`service_urls` ("catalog=http://catalog:8000,...", default: $SHOP_SERVICE_URLS) selects a
    StaticRegistry probing each URL's /ready every 2 s, its instances serving `routes` (module ->
    path prefixes, `shop.app.route_table()`); otherwise a RedisRegistry on `settings.redis_url`."""
    if service_urls is None:
        service_urls = os.environ.get(SERVICE_URLS_VAR) or None
    if service_urls:
        return StaticRegistry(service_urls, routes=routes, probe_interval_s=2.0)
    return RedisRegistry(settings.redis_url, namespace)
