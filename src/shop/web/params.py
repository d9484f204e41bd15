"""Explicit Litestar parameter markers for controllers (Litestar 3 drops inferred ones)."""

from __future__ import annotations

from typing import Any, TypeAlias

from litestar import Request
from litestar.di import NamedDependency

from shop.bus.bus import Bus
from shop.security.throttle import Throttle
from shop.security.tokens import Principal

BusDep: TypeAlias = NamedDependency[Bus]
# The request of a signed-in caller: `request.user` is the principal the gateway verified (a
# route guarded by `authenticated` has answered 401 before its handler otherwise). Not a
# dependency: Litestar resolves two or more dependencies of one handler in an anyio task group,
# a task each, where one is awaited in place (ADR 0032), so `bus` stays a handler's only one.
SignedIn: TypeAlias = Request[Principal, Any, Any]
ThrottleDep: TypeAlias = NamedDependency[Throttle]
ClientAddressDep: TypeAlias = NamedDependency[str]
