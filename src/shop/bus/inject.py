"""Dependency injection by type, planned once at start-up.

A handler's parameters after the message are looked up by their annotation: singletons (the
bus, settings, the clock …), per-message values (the session, the unit of work, the envelope)
and module-provided factories whose own parameters are resolved the same way. The plan is
computed when the app starts, so a missing provider fails start-up, not the first message.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from shop.bus.messages import Envelope
from shop.db import UnitOfWork


class InjectionError(TypeError):
    """A parameter's type has no provider."""


@dataclass(slots=True)
class Scope:
    """Per-message values, and the cache of factory results within one message."""

    uow: UnitOfWork | None = None
    envelope: Envelope | None = None
    cache: dict[type[Any], Any] = field(default_factory=dict)


Resolver = Callable[[Scope], Any]

_SCOPED: dict[type[Any], Resolver] = {
    AsyncConnection: lambda scope: _require(scope.uow, "a unit of work").session,
    UnitOfWork: lambda scope: _require(scope.uow, "a unit of work"),
    Envelope: lambda scope: _require(scope.envelope, "an envelope"),
}


def _require(value: Any, what: str) -> Any:
    if value is None:
        raise InjectionError(f"no {what} in this scope")
    return value


@dataclass(frozen=True, slots=True)
class Plan:
    """How to build a function's arguments; `needs_uow` when any of them wants the database,
    `needs_envelope` when any of them wants the message's envelope (directly or through a
    provider)."""

    resolvers: tuple[tuple[str, Resolver], ...]
    needs_uow: bool
    needs_envelope: bool = False
    static: bool = False  # every argument is a singleton: the same values for every message

    def arguments(self, scope: Scope) -> dict[str, Any]:
        return {name: resolve(scope) for name, resolve in self.resolvers}


class Injector:
    def __init__(
        self,
        singletons: Mapping[type[Any], Any],
        factories: Mapping[type[Any], Callable[..., Any]],
        singleton_factories: Mapping[type[Any], Callable[..., Any]] | None = None,
    ) -> None:
        self.singletons = dict(singletons)
        self.factories = dict(factories)
        self.singleton_factories = dict(singleton_factories or {})

    def build_singletons(self) -> None:
        """Build every singleton factory once (in dependency order through resolution)."""
        for kind in list(self.singleton_factories):
            self.resolve(kind)

    def resolve(self, kind: type[Any]) -> Any:
        """The value of `kind` outside any message (singletons only)."""
        resolve, uses_db, _ = self._resolver(kind, where=f"resolve({kind!r})", seen=())
        if uses_db:
            raise InjectionError(f"{kind!r} needs a unit of work; it cannot be resolved at start-up")
        return resolve(Scope())

    def plan(self, func: Callable[..., Any], *, skip: int = 0) -> Plan:
        """Plan the arguments of `func`, leaving out its first `skip` positional parameters."""
        hints = typing.get_type_hints(func)
        params = list(inspect.signature(func).parameters.values())[skip:]
        resolvers: list[tuple[str, Resolver]] = []
        needs_uow = needs_envelope = False
        static = True
        for param in params:
            kind = hints.get(param.name)
            if kind is None:
                raise InjectionError(f"{func.__qualname__}: parameter {param.name!r} has no type annotation")
            resolve, uses_db, uses_envelope = self._resolver(
                kind, where=f"{func.__qualname__}({param.name})", seen=()
            )
            needs_uow = needs_uow or uses_db
            needs_envelope = needs_envelope or uses_envelope
            static = static and kind not in _SCOPED and kind in self.singletons  # (built by now)
            resolvers.append((param.name, resolve))
        return Plan(tuple(resolvers), needs_uow, needs_envelope, static)

    def _resolver(self, kind: Any, *, where: str, seen: tuple[Any, ...]) -> tuple[Resolver, bool, bool]:
        """The resolver of `kind`, whether it needs a unit of work, whether it needs the envelope."""
        if kind in seen:
            raise InjectionError(f"{where}: dependency cycle through {kind!r}")
        if kind in _SCOPED:
            return _SCOPED[kind], kind in (AsyncConnection, UnitOfWork), kind is Envelope
        if kind in self.singletons:
            value = self.singletons[kind]
            return (lambda _scope: value), False, False
        if kind in self.singleton_factories:
            maker = self.singleton_factories[kind]
            sub = self.plan_factory(maker, kind, seen=(*seen, kind))
            if sub.needs_uow:
                raise InjectionError(f"{where}: singleton {kind!r} cannot depend on a unit of work")
            built = self.singletons[kind] = maker(**sub.arguments(Scope()))
            return (lambda _scope: built), False, False
        factory = self.factories.get(kind)
        if factory is None:
            raise InjectionError(f"{where}: nothing provides {getattr(kind, '__name__', kind)!r}")
        sub = self.plan_factory(factory, kind, seen=(*seen, kind))

        def build(scope: Scope) -> Any:
            if kind not in scope.cache:
                scope.cache[kind] = factory(**sub.arguments(scope))
            return scope.cache[kind]

        return build, sub.needs_uow, sub.needs_envelope

    def _provides(self, kind: Any) -> bool:
        return (
            kind in _SCOPED
            or kind in self.singletons
            or kind in self.factories
            or (kind in self.singleton_factories)
        )

    def plan_factory(self, factory: Callable[..., Any], kind: Any, *, seen: tuple[Any, ...]) -> Plan:
        target = factory.__init__ if inspect.isclass(factory) else factory
        hints = typing.get_type_hints(target)
        params = [p for p in inspect.signature(factory).parameters.values() if p.name != "self"]
        resolvers: list[tuple[str, Resolver]] = []
        needs_uow = needs_envelope = False
        for param in params:
            sub_kind = hints.get(param.name)
            if param.default is not inspect.Parameter.empty and not self._provides(sub_kind):
                continue  # optional and nothing provides it: let the default stand
            if sub_kind is None:
                raise InjectionError(f"provider of {kind!r}: parameter {param.name!r} has no annotation")
            resolve, uses_db, uses_envelope = self._resolver(
                sub_kind, where=f"provider of {kind!r}", seen=seen
            )
            needs_uow = needs_uow or uses_db
            needs_envelope = needs_envelope or uses_envelope
            resolvers.append((param.name, resolve))
        return Plan(tuple(resolvers), needs_uow, needs_envelope)
