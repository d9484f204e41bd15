"""What every registry stores and answers: instances, their health, the routes they serve."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

import msgspec

__all__ = [
    "Instance",
    "InstanceView",
    "Registry",
    "RegistryError",
    "advertised_url",
    "new_instance_id",
    "rfc3339",
    "routes_of",
]


class RegistryError(Exception):
    """The registry could not be read or written (its backend did not answer)."""


class Instance(msgspec.Struct, frozen=True, kw_only=True):
    """One running copy of a module: where it listens and which path prefixes it serves.

    A process serving several modules registers one Instance per module, all with the same
    `instance_id` and `url` (the gateway keeps one breaker per `instance_id`: per process)."""

    module: str
    instance_id: str
    url: str
    routes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.module or not self.instance_id:
            raise ValueError("an instance needs a module and an instance_id")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"instance url must be http(s)://..., got {self.url!r}")
        for route in self.routes:
            if not route.startswith("/"):
                raise ValueError(f"a route prefix starts with '/', got {route!r}")

    @property
    def key(self) -> str:
        return f"{self.module}/{self.instance_id}"

    @property
    def base_url(self) -> str:
        return self.url.rstrip("/")


class InstanceView(msgspec.Struct, frozen=True, kw_only=True):
    """An instance as the registry sees it now."""

    module: str
    instance_id: str
    url: str
    routes: tuple[str, ...]
    healthy: bool
    last_seen: datetime

    @classmethod
    def of(cls, instance: Instance, *, healthy: bool, last_seen: datetime) -> InstanceView:
        return cls(
            module=instance.module,
            instance_id=instance.instance_id,
            url=instance.url.rstrip("/"),
            routes=instance.routes,
            healthy=healthy,
            last_seen=last_seen,
        )

    def public(self) -> dict[str, object]:
        """The shape of `GET /api/v1/services` (API.md)."""
        return {
            "instance_id": self.instance_id,
            "url": self.url,
            "healthy": self.healthy,
            "last_seen": rfc3339(self.last_seen),
        }


@runtime_checkable
class Registry(Protocol):
    """Where instances announce themselves and where the gateway looks them up.

    `register` and `heartbeat` both (re)write the instance with a time to live (None: until
    deregistered); an instance is healthy while that lives. `instances` lists them, sorted by
    module then instance id. Backend failures raise RegistryError."""

    async def register(self, instance: Instance, ttl_s: float | None = None) -> None: ...

    async def heartbeat(self, instance: Instance, ttl_s: float | None = None) -> None: ...

    async def deregister(self, instance: Instance) -> None: ...

    async def instances(self, module: str | None = None) -> list[InstanceView]: ...

    async def routes(self) -> dict[str, list[str]]: ...

    async def ping(self) -> None: ...

    async def aclose(self) -> None: ...


def routes_of(views: Iterable[InstanceView]) -> dict[str, list[str]]:
    """Module -> the sorted union of the route prefixes its instances registered."""
    found: dict[str, set[str]] = {}
    for view in views:
        found.setdefault(view.module, set()).update(view.routes)
    return {module: sorted(prefixes) for module, prefixes in sorted(found.items())}


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def from_epoch(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def new_instance_id() -> str:
    """A process-unique id: host, pid and a random suffix (a restarted process is a new instance)."""
    host = socket.gethostname().split(".")[0][:40] or "host"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def advertised_url(host: str, port: int, *, scheme: str = "http") -> str:
    """The URL other processes reach this one at: a wildcard bind address is replaced by the
    host name (Docker/Kubernetes resolve it); set an explicit host to advertise another."""
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = socket.gethostname()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal
    return f"{scheme}://{host}:{port}"


def sort_views(views: Sequence[InstanceView]) -> list[InstanceView]:
    return sorted(views, key=lambda v: (v.module, v.instance_id))
