"""What a module declares: a :class:`Saga` of :class:`Step` s, and what its callables see
(:class:`SagaContext`) and return (:class:`Wait`, or raise :class:`~shop.bus.saga.errors.StepFailed`)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, TypeAlias

from sqlalchemy.ext.asyncio import AsyncConnection

from shop.bus.saga.checks import check_final_status, check_name, check_reason
from shop.bus.saga.statuses import DEADLINE_EXCEEDED, SagaStatus
from shop.db import UnitOfWork

__all__ = ["Action", "Clock", "Deadline", "Saga", "SagaContext", "Step", "Wait", "resolve_deadline"]

_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:shop:bus:saga")


@dataclass(frozen=True, slots=True)
class Wait:
    """Returned by an action: the step goes on outside the saga; `data` is merged now."""

    data: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class SagaContext:
    """What an action, compensation, abort or hook gets to see of its saga.

    ``data`` is the saga's JSON-able data; changes made to it in place are persisted when the
    call's outcome is known (not when it raises an unknown-outcome error). ``phase`` is
    ``"action"``, ``"compensate"`` or ``"abort"``.
    """

    saga_id: uuid.UUID
    saga_type: str
    step: str
    data: dict[str, Any]
    attempt: int = 1
    phase: str = "action"
    uow: UnitOfWork | None = None  # a local step's unit of work (see Saga.step)

    @property
    def idempotency_key(self) -> str:
        """Stable across re-runs: ``"<saga_id>:<step>"`` for actions, with ``":<phase>"`` else.

        Compensations and aborts get their own key so that a receiver's inbox never mistakes
        an undo for a duplicate of the action it undoes.
        """
        key = f"{self.saga_id}:{self.step}"
        return key if self.phase == "action" else f"{key}:{self.phase}"

    def message_id(self, suffix: str = "") -> uuid.UUID:
        """A message id that is the same on every re-run of this call (uuid5 of the key)."""
        key = self.idempotency_key if not suffix else f"{self.idempotency_key}:{suffix}"
        return uuid.uuid5(_NAMESPACE, key)


Action: TypeAlias = Callable[[SagaContext], Awaitable[Any]]
Deadline: TypeAlias = timedelta | Callable[[SagaContext], timedelta]
StepHook: TypeAlias = Callable[[SagaContext, str, str, AsyncConnection], Awaitable[None] | None]
FinishHook: TypeAlias = Callable[[SagaContext, str, str | None, AsyncConnection], Awaitable[None] | None]
Clock: TypeAlias = Callable[[], datetime]


def resolve_deadline(deadline: Deadline, ctx: SagaContext) -> timedelta:
    value = deadline if isinstance(deadline, timedelta) else deadline(ctx)
    if not isinstance(value, timedelta):
        raise TypeError(f"a deadline must be a timedelta, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a saga definition."""

    name: str
    action: Action
    compensate: Action | None = None
    abort: Action | None = None
    deadline: Deadline | None = None
    timeout_reason: str = DEADLINE_EXCEEDED
    timeout_status: str = SagaStatus.FAILED
    local: bool = False  # the action only writes the saga's own database: see Saga.step
    reads_only: bool = False  # the action changes nothing anywhere: see Saga.step


@dataclass(frozen=True, slots=True)
class Saga:
    """A saga definition; ``.step(...)`` returns a new definition with one more step.

    ``version``: raise it whenever the steps change (added, removed, reordered, renamed). A
    saga runs on the version it started on; keep older versions registered with the engine
    until no saga of theirs is left (see docs/adr on saga versions).
    """

    name: str
    deadline: Deadline | None = None
    on_step: StepHook | None = None
    on_finish: FinishHook | None = None
    timeout_reason: str = DEADLINE_EXCEEDED
    timeout_status: str = SagaStatus.FAILED
    steps: tuple[Step, ...] = ()
    version: int = 1
    # Data keys not kept once the saga finishes (secrets such as a payment token).
    transient: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_name("saga", self.name)
        check_reason(self.timeout_reason)
        check_final_status(self.timeout_status)
        if not isinstance(self.version, int) or isinstance(self.version, bool) or self.version < 1:
            raise ValueError(f"a saga version must be an int >= 1, got {self.version!r}")

    def step(
        self,
        name: str,
        action: Action,
        *,
        compensate: Action | None = None,
        abort: Action | None = None,
        deadline: Deadline | None = None,
        timeout_reason: str = DEADLINE_EXCEEDED,
        timeout_status: str = SagaStatus.FAILED,
        local: bool = False,
        reads_only: bool = False,
    ) -> Saga:
        """A copy of this definition with a step appended.

        ``local=True``: the action only changes the saga's own database (through
        ``ctx.uow``, and messages through that unit of work's outbox). It runs inside the
        transaction that records its outcome, so its effect and the saga's progress commit
        together, in one transaction and without a claim of their own.

        ``reads_only=True``: the action changes nothing anywhere (a query of another module),
        so running it again is always harmless. When the step before it is an external one
        whose outcome the engine has just received, it runs at once, before that outcome is
        saved, and both outcomes are saved together (one transaction fewer); after a crash in
        between, the step before runs again, as after any crash before its outcome is saved.
        Otherwise (a retry, a restart) it runs as any external step."""
        if local and reads_only:
            raise ValueError(
                f"step {name!r}: a local step runs in the saga's transaction; reads_only is for external ones"
            )
        check_name("step", name)
        check_reason(timeout_reason)
        check_final_status(timeout_status)
        if any(existing.name == name for existing in self.steps):
            raise ValueError(f"saga {self.name!r} already has a step named {name!r}")
        new = Step(
            name, action, compensate, abort, deadline, timeout_reason, timeout_status, local, reads_only
        )
        return replace(self, steps=(*self.steps, new))

    def index_of(self, name: str) -> int | None:
        for index, step in enumerate(self.steps):
            if step.name == name:
                return index
        return None
