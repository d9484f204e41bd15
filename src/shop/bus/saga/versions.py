"""Which definition a stored saga runs on: the version it started on when the engine still has
it; else the newest version when that one can finish the saga by step *names* (its completed
steps and its current step where the saga stands); else none, and the saga is parked.

A step's name is its identity across versions: a step that changes what it does (or how it
is undone) gets a new name, so a saga never runs an undo that does not match what it did.
"""

from __future__ import annotations

from dataclasses import dataclass

from shop.bus.saga.definition import Saga
from shop.bus.saga.state import SagaRow
from shop.bus.saga.statuses import SagaStatus

__all__ = ["DEFINITION_CHANGED", "Resolution", "Versions", "resolve"]

DEFINITION_CHANGED = "DEFINITION_CHANGED"  # the failure reason of a saga parked by this


@dataclass(frozen=True, slots=True)
class Resolution:
    """``definition`` to run the saga on, or None and ``why`` it cannot run; ``adopted``: the
    saga moves from its own (unregistered) version onto ``definition``."""

    definition: Saga | None
    why: str | None = None
    adopted: bool = False


class Versions:
    """The registered versions of one saga definition name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.by_version: dict[int, Saga] = {}

    def add(self, definition: Saga) -> None:
        if definition.version in self.by_version:
            raise ValueError(
                f"two saga definitions named {definition.name!r} of version {definition.version}"
            )
        if not definition.steps:
            raise ValueError(f"saga {definition.name!r} has no steps")
        self.by_version[definition.version] = definition

    @property
    def newest(self) -> Saga:
        return self.by_version[max(self.by_version)]

    def get(self, version: int) -> Saga | None:
        return self.by_version.get(version)


def resolve(versions: Versions, row: SagaRow) -> Resolution:
    """The definition ``row`` runs on (see the module docstring). Fills in the completed steps
    of a row stored before versions, from its version-1 definition."""
    own = versions.get(row.definition_version)
    if own is not None:
        if not row.versioned:
            row.completed = [step.name for step in own.steps[: row.step_index]]
            row.versioned = True
        return Resolution(own)
    newest = versions.newest
    gone = f"{row.type} v{row.definition_version} is not registered"
    if not row.versioned:
        return Resolution(None, f"{gone} and the saga was stored without its completed steps")
    problem = _incompatibility(newest, row)
    if problem is not None:
        return Resolution(None, f"{gone}; v{newest.version} {problem}")
    return Resolution(newest, adopted=True)


def _incompatibility(definition: Saga, row: SagaRow) -> str | None:
    """Why ``definition`` cannot take ``row`` over by step names, or None when it can."""
    names = [step.name for step in definition.steps]
    if row.status == SagaStatus.COMPENSATING:
        undone = [*row.completed, *([str(row.meta["abort"])] if row.meta.get("abort") else [])]
        missing = [name for name in undone if name not in names]
        if missing:
            return f"has no step {', '.join(missing)} to undo"
        return None
    done = len(row.completed)
    if names[:done] != row.completed:
        return f"does not begin with the completed steps {', '.join(row.completed)}"
    if done >= len(names) or names[done] != row.step:
        return f"does not continue with {row.step} after them"
    return None
