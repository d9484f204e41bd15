"""Explicit Litestar parameter markers for controllers (Litestar 3 drops inferred ones)."""

from __future__ import annotations

from typing import TypeAlias

from litestar.di import NamedDependency

from shop.bus.bus import Bus
from shop.security.throttle import Throttle
from shop.security.tokens import Principal

BusDep: TypeAlias = NamedDependency[Bus]
PrincipalDep: TypeAlias = NamedDependency[Principal]
ThrottleDep: TypeAlias = NamedDependency[Throttle]
ClientAddressDep: TypeAlias = NamedDependency[str]
