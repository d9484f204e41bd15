"""Service discovery: where each module's instances are and whether they are healthy."""

from shop.discovery.base import (
    Instance,
    InstanceView,
    Registry,
    RegistryError,
    advertised_url,
    new_instance_id,
)
from shop.discovery.factory import registry_for
from shop.discovery.heartbeat import heartbeat
from shop.discovery.memory import MemoryRegistry
from shop.discovery.redis_registry import RedisRegistry
from shop.discovery.routes import route_prefixes
from shop.discovery.static import StaticRegistry, parse_service_urls

__all__ = [
    "Instance",
    "InstanceView",
    "MemoryRegistry",
    "RedisRegistry",
    "Registry",
    "RegistryError",
    "StaticRegistry",
    "advertised_url",
    "heartbeat",
    "new_instance_id",
    "parse_service_urls",
    "registry_for",
    "route_prefixes",
]
