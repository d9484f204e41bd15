"""A saga instance: as persisted (:class:`SagaRow`, with the engine's bookkeeping), as shown
(:class:`SagaState`, :class:`TimelineEntry`), and a change to it (:class:`Change`)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec

from shop.bus.saga.checks import utc, utc_or_none
from shop.bus.saga.definition import SagaContext
from shop.bus.saga.statuses import SagaStatus, is_final
from shop.db import UnitOfWork

__all__ = [
    "META_KEY",
    "Change",
    "Event",
    "Finish",
    "SagaRow",
    "SagaState",
    "TimelineEntry",
    "context_of",
    "merge",
]

META_KEY = "__saga__"
TRACE_KEY = "trace"
VERSION_KEY = "version"  # the definition version the saga runs on
DONE_KEY = "done"  # the names of its completed steps, in order (what compensation walks back)


@dataclass(frozen=True, slots=True)
class SagaState:
    """A snapshot of one saga instance."""

    id: uuid.UUID
    type: str
    status: str
    step: str | None
    data: dict[str, Any]
    failure_reason: str | None
    step_deadline: datetime | None
    deadline: datetime | None
    attempts: int
    created_at: datetime
    updated_at: datetime
    next_attempt_at: datetime | None = None

    @property
    def final(self) -> bool:
        return is_final(self.status)


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One line of a saga's history. Saga-level entries carry the saga type as ``step``."""

    step: str
    status: str
    at: datetime
    detail: str | None


@dataclass(slots=True)
class SagaRow:
    """A saga instance as loaded, mutated by a transition, then saved with a version check.

    ``meta`` is the engine's per-step bookkeeping (reset between steps); ``trace``,
    ``definition_version`` and ``completed`` are kept across those resets. All are stored in
    ``data`` under :data:`META_KEY` (the version and the completed steps only while the saga is
    not final: nothing reads them after). ``version`` is the row's optimistic-lock counter.

    A row stored before sagas were versioned has neither: it ran on version 1, and its
    completed steps are the first ``step_index`` steps of that version (``versioned`` is False
    until the engine has filled them in, see :func:`shop.bus.saga.versions.resolve`).
    """

    id: uuid.UUID
    type: str
    status: str
    step: str | None
    step_index: int
    data: dict[str, Any]
    meta: dict[str, Any]
    failure_reason: str | None
    step_deadline: datetime | None
    deadline: datetime | None
    attempts: int
    next_attempt_at: datetime | None
    version: int
    created_at: datetime
    updated_at: datetime
    trace: dict[str, Any] = field(default_factory=dict)  # kept in meta, across its resets
    definition_version: int = 1
    completed: list[str] = field(default_factory=list)
    versioned: bool = True  # False: stored before versions; ``completed`` is not known yet
    stale: bool = False  # a save found the stored saga changed by someone else: reload
    # (status, next_attempt_at) as stored at ``version`` (None: not stored yet): a save leaves
    # out of its UPDATE an indexed column that has not changed (see `store._save`)
    stored: tuple[str, datetime | None] | None = None

    @classmethod
    def from_mapping(cls, row: Mapping[Any, Any]) -> SagaRow:
        data = dict(row["data"] or {})
        meta = data.pop(META_KEY, None)
        meta = dict(meta) if isinstance(meta, dict) else {}
        trace = meta.pop(TRACE_KEY, None)
        version = meta.pop(VERSION_KEY, None)
        done = meta.pop(DONE_KEY, None)
        versioned = isinstance(version, int) and isinstance(done, list)
        return cls(
            id=row["id"],
            type=row["type"],
            status=row["status"],
            step=row["step"],
            step_index=row["step_index"],
            data=data,
            meta=meta,
            failure_reason=row["failure_reason"],
            step_deadline=utc_or_none(row["step_deadline"]),
            deadline=utc_or_none(row["deadline"]),
            attempts=row["attempts"],
            next_attempt_at=utc_or_none(row["next_attempt_at"]),
            version=row["version"],
            created_at=utc(row["created_at"]),
            updated_at=utc(row["updated_at"]),
            trace=dict(trace) if isinstance(trace, dict) else {},
            definition_version=version if versioned else 1,
            completed=[str(name) for name in done] if versioned else [],
            versioned=versioned,
            stored=(row["status"], utc_or_none(row["next_attempt_at"])),
        )

    @classmethod
    def new(
        cls,
        saga_id: uuid.UUID,
        saga_type: str,
        first_step: str,
        data: dict[str, Any],
        definition_version: int,
        trace: dict[str, Any],
        deadline: datetime | None,
        now: datetime,
    ) -> SagaRow:
        """A new saga's row, RUNNING its first step (what `store.insert` stores)."""
        return cls(
            id=saga_id,
            type=saga_type,
            status=SagaStatus.RUNNING,
            step=first_step,
            step_index=0,
            data=data,
            meta={},
            failure_reason=None,
            step_deadline=None,
            deadline=utc_or_none(deadline),
            attempts=0,
            next_attempt_at=None,
            version=0,
            created_at=utc(now),
            updated_at=utc(now),
            trace=dict(trace),
            definition_version=definition_version,
            completed=[],
        )

    def copy(self) -> SagaRow:
        """An independent copy. Its dicts and list are copied one level deep: the engine
        changes a row only by setting or removing their keys or by replacing them, never inside
        a value (a step's action gets a deep copy of the data, see `context_of`).

        Written out field by field: `dataclasses.replace` costs ~4x more, and a saga row is
        copied several times an order."""
        return SagaRow(
            self.id,
            self.type,
            self.status,
            self.step,
            self.step_index,
            dict(self.data),
            dict(self.meta),
            self.failure_reason,
            self.step_deadline,
            self.deadline,
            self.attempts,
            self.next_attempt_at,
            self.version,
            self.created_at,
            self.updated_at,
            dict(self.trace),
            self.definition_version,
            list(self.completed),
            self.versioned,
            self.stale,
            self.stored,
        )

    def stored_data(self) -> dict[str, Any]:
        stored = dict(self.data)
        meta = {**self.meta, TRACE_KEY: self.trace} if self.trace else self.meta
        if self.versioned and not is_final(self.status):
            meta = {**meta, VERSION_KEY: self.definition_version, DONE_KEY: self.completed}
        if meta:
            stored[META_KEY] = meta
        return stored

    def state(self) -> SagaState:
        return SagaState(
            id=self.id,
            type=self.type,
            status=self.status,
            step=self.step,
            data=copy_data(self.data),
            failure_reason=self.failure_reason,
            step_deadline=self.step_deadline,
            deadline=self.deadline,
            attempts=self.attempts,
            created_at=self.created_at,
            updated_at=self.updated_at,
            next_attempt_at=self.next_attempt_at,
        )


@dataclass(frozen=True, slots=True)
class Event:
    """One timeline line a change writes."""

    step: str
    status: str
    detail: str | None = None
    hook: bool = True  # step-level: passed to on_step


@dataclass(frozen=True, slots=True)
class Finish:
    """The saga ended (or parked, when not ``final``) with ``status``."""

    status: str
    reason: str | None
    final: bool = True


@dataclass(slots=True)
class Change:
    """What a transition did, for the save: timeline lines, an end, a claim of the next step."""

    events: list[Event] = field(default_factory=list)
    finish: Finish | None = None
    claims_next: bool = False  # the save also claims (starts) the step that comes next


def merge(data: dict[str, Any], result: Mapping[str, Any] | None) -> dict[str, Any]:
    """``data`` updated with ``result``, checked to be JSON-able and free of the reserved key."""
    if not isinstance(data, dict):
        raise TypeError(f"saga data must stay a dict, got {type(data).__name__}")
    merged = dict(data)
    if result is not None:
        if not isinstance(result, Mapping):
            raise TypeError(f"a saga step must return None, a dict or Wait(), got {result!r}")
        merged.update(result)
    if META_KEY in merged:
        raise ValueError(f"the data key {META_KEY!r} is reserved for the saga engine")
    # JSON-able: what msgspec's round trip gives back unchanged (~4x cheaper than json.dumps);
    # anything else (a datetime, a UUID, a set, a tuple ...) is judged by json.dumps, which
    # raises TypeError/ValueError when it is not JSON-able
    if msgspec.json.decode(msgspec.json.encode(merged)) != merged:
        json.dumps(merged)
    return merged


def copy_data(data: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of JSON-able saga data (msgspec's round trip: ~10x cheaper than deepcopy)."""
    copied: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(data))
    return copied


def context_of(row: SagaRow, step: str, phase: str = "action", uow: UnitOfWork | None = None) -> SagaContext:
    """What a call on ``row``'s ``step`` gets to see (a copy of the data)."""
    return SagaContext(
        saga_id=row.id,
        saga_type=row.type,
        step=step,
        data=copy_data(row.data),
        attempt=row.attempts + 1,
        phase=phase,
        uow=uow,
    )
