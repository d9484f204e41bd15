"""Orchestration sagas: a durable, generic engine that runs steps and undoes them on failure.

A :class:`Saga` is a named, ordered list of steps. Each step has an ``action`` and may have a
``compensate`` (undoes a completed step), an ``abort`` (called when the step is abandoned
while in progress: its deadline passed or the saga was cancelled) and a ``deadline``. The
kernel knows no business word: the owning module supplies the callables and the hooks.

The :class:`SagaEngine` persists every state change in its own short transaction on the owning
module's database (tables ``saga_instances`` and ``saga_steps``) and runs the callables outside
any transaction. What an action's outcome means:

* returns ``None`` or a dict (merged into ``data``): the step is DONE, the next one runs;
* returns :class:`Wait`: the saga is WAITING until the owning module calls
  :meth:`SagaEngine.complete_step` or :meth:`SagaEngine.fail_step` (or the deadline passes);
* raises :class:`StepFailed`: a definitive failure; completed steps are compensated in reverse
  order and the saga ends with the given status and reason;
* raises any other exception: the outcome is unknown. Nothing is compensated; the step is
  retried with backoff and the same idempotency key until it succeeds, fails definitively, or
  its deadline (or the saga's) passes; then the step is aborted and the completed steps are
  compensated.

Compensations and aborts are retried with backoff; after ``max_compensation_attempts`` the
saga is parked in ``COMPENSATION_FAILED`` until an operator calls :meth:`SagaEngine.retry`.

Concurrency: optimistic (``version`` column) across processes, and an :class:`asyncio.Lock`
per saga within one process. Time comes from an injectable clock, so tests never sleep.

The engine keeps a little bookkeeping of its own inside the persisted ``data`` under the key
``"__saga__"``; it is never shown to actions, hooks or :class:`SagaState`. Among it, ``"trace"``:
the traceparent and correlation id of the context that started the saga. Steps run after that
context is gone (in a task after commit, from a timer, after a restart); each runs in a span of
the starter's trace (see :meth:`SagaEngine._traced`), so the saga's messages belong to it too.
"""

from __future__ import annotations

import asyncio
import builtins
import copy
import inspect
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias, cast

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncConnection

from shop.bus import context
from shop.bus.retry import RetryPolicy
from shop.bus.tables import saga_instances, saga_steps
from shop.db import Database, UnitOfWork, current_unit_of_work, unit_of_work
from shop.observability import metrics, tracing
from shop.observability.logcontext import bound_module

__all__ = [
    "ABORTED",
    "CANCELLED",
    "COMPENSATED",
    "COMPENSATING",
    "COMPENSATION_FAILED",
    "COMPLETED",
    "DONE",
    "FAILED",
    "NOT_FINAL",
    "RETRY",
    "RUNNING",
    "STARTED",
    "TIMED_OUT",
    "WAITING",
    "NoUnitOfWorkForSaga",
    "Saga",
    "SagaContext",
    "SagaEngine",
    "SagaError",
    "SagaState",
    "Step",
    "StepFailed",
    "TimelineEntry",
    "UnknownSaga",
    "Wait",
    "is_final",
]

log = structlog.get_logger("shop.bus.saga")

# Saga statuses.
RUNNING = "RUNNING"
WAITING = "WAITING"
COMPENSATING = "COMPENSATING"
COMPLETED = "COMPLETED"
FAILED = "FAILED"
CANCELLED = "CANCELLED"
COMPENSATION_FAILED = "COMPENSATION_FAILED"
# Timeline-only statuses (per step).
STARTED = "STARTED"
DONE = "DONE"
RETRY = "RETRY"
TIMED_OUT = "TIMED_OUT"
ABORTING = "ABORTING"
ABORTED = "ABORTED"
COMPENSATED = "COMPENSATED"
RESUMED = "RESUMED"

DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"

NOT_FINAL = frozenset({RUNNING, WAITING, COMPENSATING, COMPENSATION_FAILED})
_MAX_NAME = 100
_MAX_STATUS = 32
_MAX_REASON = 100
META_KEY = "__saga__"
_TRACE_KEY = "trace"
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:shop:bus:saga")


# Built once: a statement built per call costs SQLAlchemy twice as much as one reused.
_LOAD = sa.select(saga_instances).where(saga_instances.c.id == sa.bindparam("b_id"))
_SAVE = saga_instances.update().where(
    saga_instances.c.id == sa.bindparam("b_id"), saga_instances.c.version == sa.bindparam("b_version")
)


def is_final(status: str) -> bool:
    """Whether a saga in ``status`` has ended (COMPENSATION_FAILED is parked, not final)."""
    return status not in NOT_FINAL


def _check_final_status(status: str) -> None:
    if not isinstance(status, str) or not status or len(status) > _MAX_STATUS:
        raise ValueError(f"a saga status must be a non-empty string of at most {_MAX_STATUS} characters")
    if status in NOT_FINAL:
        raise ValueError(f"{status!r} is not a final status; use e.g. {FAILED!r} or {CANCELLED!r}")


def _check_reason(reason: str) -> None:
    if not isinstance(reason, str) or not reason or len(reason) > _MAX_REASON:
        raise ValueError(f"a failure reason must be a non-empty string of at most {_MAX_REASON} characters")


def _check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not name or len(name) > _MAX_NAME:
        raise ValueError(f"a {kind} name must be a non-empty string of at most {_MAX_NAME} characters")


def _utc(value: datetime) -> datetime:
    """Timezone-aware UTC (SQLite hands back naive datetimes, which are UTC by construction)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _utc_or_none(value: datetime | None) -> datetime | None:
    return None if value is None else _utc(value)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class SagaError(Exception):
    """Base of the saga engine's own errors."""


class _RollBack(Exception):
    """Roll a local step's transaction back (its action failed, or the saga changed meanwhile)."""


class NoUnitOfWorkForSaga(SagaError):
    """`start` was awaited outside a unit of work on the saga's database."""


class UnknownSaga(SagaError, KeyError):
    """No saga definition of that name is registered with the engine."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown saga"


class StepFailed(Exception):
    """Raised by an action for a definitive failure: compensate, then end with ``status``."""

    def __init__(self, reason: str, status: str = FAILED, detail: str | None = None) -> None:
        _check_reason(reason)
        _check_final_status(status)
        super().__init__(reason if detail is None else f"{reason}: {detail}")
        self.reason = reason
        self.status = status
        self.detail = detail


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


def _resolve_deadline(deadline: Deadline, ctx: SagaContext) -> timedelta:
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
    timeout_status: str = FAILED
    local: bool = False  # the action only writes the saga's own database: see Saga.step


@dataclass(frozen=True, slots=True)
class Saga:
    """A saga definition; ``.step(...)`` returns a new definition with one more step."""

    name: str
    deadline: Deadline | None = None
    on_step: StepHook | None = None
    on_finish: FinishHook | None = None
    timeout_reason: str = DEADLINE_EXCEEDED
    timeout_status: str = FAILED
    steps: tuple[Step, ...] = ()
    # Data keys not kept once the saga finishes (secrets such as a payment token).
    transient: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_name("saga", self.name)
        _check_reason(self.timeout_reason)
        _check_final_status(self.timeout_status)

    def step(
        self,
        name: str,
        action: Action,
        *,
        compensate: Action | None = None,
        abort: Action | None = None,
        deadline: Deadline | None = None,
        timeout_reason: str = DEADLINE_EXCEEDED,
        timeout_status: str = FAILED,
        local: bool = False,
    ) -> Saga:
        """A copy of this definition with a step appended.

        ``local=True``: the action only changes the saga's own database (through
        ``ctx.uow``, and messages through that unit of work's outbox). It runs inside the
        transaction that records its outcome, so its effect and the saga's progress commit
        together, in one transaction and without a claim of their own."""
        _check_name("step", name)
        _check_reason(timeout_reason)
        _check_final_status(timeout_status)
        if any(existing.name == name for existing in self.steps):
            raise ValueError(f"saga {self.name!r} already has a step named {name!r}")
        new = Step(name, action, compensate, abort, deadline, timeout_reason, timeout_status, local)
        return replace(self, steps=(*self.steps, new))

    def index_of(self, name: str) -> int | None:
        for index, step in enumerate(self.steps):
            if step.name == name:
                return index
        return None


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
class _Row:
    """A saga instance as loaded, mutated by a transition, then saved with a version check."""

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
    stale: bool = False  # a save found the stored saga changed by someone else: reload

    @classmethod
    def from_mapping(cls, row: sa.RowMapping) -> _Row:
        data = dict(row["data"] or {})
        meta = data.pop(META_KEY, None)
        meta = dict(meta) if isinstance(meta, dict) else {}
        trace = meta.pop(_TRACE_KEY, None)
        return cls(
            id=row["id"],
            type=row["type"],
            status=row["status"],
            step=row["step"],
            step_index=row["step_index"],
            data=data,
            meta=meta,
            failure_reason=row["failure_reason"],
            step_deadline=_utc_or_none(row["step_deadline"]),
            deadline=_utc_or_none(row["deadline"]),
            attempts=row["attempts"],
            next_attempt_at=_utc_or_none(row["next_attempt_at"]),
            version=row["version"],
            created_at=_utc(row["created_at"]),
            updated_at=_utc(row["updated_at"]),
            trace=dict(trace) if isinstance(trace, dict) else {},
        )

    def stored_data(self) -> dict[str, Any]:
        stored = dict(self.data)
        meta = {**self.meta, _TRACE_KEY: self.trace} if self.trace else self.meta
        if meta:
            stored[META_KEY] = meta
        return stored

    def state(self) -> SagaState:
        return SagaState(
            id=self.id,
            type=self.type,
            status=self.status,
            step=self.step,
            data=copy.deepcopy(self.data),
            failure_reason=self.failure_reason,
            step_deadline=self.step_deadline,
            deadline=self.deadline,
            attempts=self.attempts,
            created_at=self.created_at,
            updated_at=self.updated_at,
            next_attempt_at=self.next_attempt_at,
        )


@dataclass(frozen=True, slots=True)
class _Event:
    step: str
    status: str
    detail: str | None = None
    hook: bool = True  # step-level: passed to on_step


@dataclass(frozen=True, slots=True)
class _Finish:
    status: str
    reason: str | None
    final: bool = True


@dataclass(slots=True)
class _Change:
    events: list[_Event] = field(default_factory=list)
    finish: _Finish | None = None
    claims_next: bool = False  # the save also claims (starts) the step that comes next


@dataclass(slots=True)
class _LockEntry:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


def _merge(data: dict[str, Any], result: Mapping[str, Any] | None) -> dict[str, Any]:
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
    json.dumps(merged)  # raises TypeError/ValueError when not JSON-able
    return merged


def _trace_of(ctx: context.MessageContext) -> dict[str, str]:
    """What a saga keeps of the context that starts it (JSON)."""
    trace: dict[str, str] = {}
    if ctx.traceparent:
        trace["traceparent"] = ctx.traceparent
    if ctx.correlation_id:
        trace["correlation_id"] = str(ctx.correlation_id)
    return trace


def _uuid_or_none(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value)) if value else None
    except ValueError:
        return None


def _detail(reason: str, detail: str | None) -> str:
    return reason if detail is None else f"{reason}: {detail}"


async def _call_hook(result: Awaitable[None] | None) -> None:
    if inspect.isawaitable(result):
        await result


class SagaEngine:
    """Runs the sagas of one module on that module's database; see the module docstring."""

    def __init__(
        self,
        database: Database,
        definitions: Iterable[Saga],
        *,
        clock: Clock = _utcnow,
        retry: RetryPolicy | None = None,
        max_compensation_attempts: int = 5,
        stale_after: timedelta = timedelta(minutes=5),
        batch_size: int = 100,
    ) -> None:
        if max_compensation_attempts < 1:
            raise ValueError("max_compensation_attempts must be >= 1")
        self.database = database
        self._definitions: dict[str, Saga] = {}
        for definition in definitions:
            if definition.name in self._definitions:
                raise ValueError(f"two saga definitions named {definition.name!r}")
            if not definition.steps:
                raise ValueError(f"saga {definition.name!r} has no steps")
            self._definitions[definition.name] = definition
        self._clock = clock
        self._retry = retry if retry is not None else RetryPolicy(base_delay=1.0, max_delay=300.0, jitter=0.2)
        self.max_compensation_attempts = max_compensation_attempts
        self._stale_after = stale_after
        self._batch_size = batch_size
        self._locks: dict[uuid.UUID, _LockEntry] = {}
        # saga id -> the version whose save claimed the current step on the way (see _claim_next)
        self._preclaimed: dict[uuid.UUID, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    # -- definitions and plumbing ---------------------------------------------------------

    def definition(self, name: str) -> Saga:
        """The registered definition called ``name``."""
        try:
            return self._definitions[name]
        except KeyError:
            raise UnknownSaga(f"no saga definition named {name!r} is registered") from None

    @property
    def background_tasks(self) -> frozenset[asyncio.Task[None]]:
        """The advancing tasks scheduled after commits and not finished yet."""
        return frozenset(self._tasks)

    def _now(self) -> datetime:
        return _utc(self._clock())

    def _joined(self) -> UnitOfWork | None:
        """The caller's unit of work when it is on this engine's database."""
        uow = current_unit_of_work()
        if uow is None:
            return None
        if uow.database.url != self.database.url or uow.database.module != self.database.module:
            return None
        return uow

    @asynccontextmanager
    async def _locked(self, saga_id: uuid.UUID) -> AsyncIterator[None]:
        entry = self._locks.get(saga_id)
        if entry is None:
            entry = self._locks[saga_id] = _LockEntry()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                self._locks.pop(saga_id, None)

    def _busy(self, saga_id: uuid.UUID) -> bool:
        entry = self._locks.get(saga_id)
        return entry is not None and entry.lock.locked()

    def _schedule(self, saga_id: uuid.UUID) -> None:
        if self._closed:
            log.warning("saga.not_scheduled_engine_closed", saga_id=str(saga_id))
            return
        task = asyncio.get_running_loop().create_task(
            self._advance_logged(saga_id), name=f"saga-advance-{saga_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:  # a BaseException that escaped _advance_logged
            log.error("saga.background_crashed", task=task.get_name(), exc_info=error)

    async def _advance_logged(self, saga_id: uuid.UUID) -> None:
        try:
            await self.advance(saga_id)
        except Exception:
            log.exception("saga.advance_failed", saga_id=str(saga_id))

    def _context(
        self, row: _Row, step: str, phase: str = "action", uow: UnitOfWork | None = None
    ) -> SagaContext:
        return SagaContext(
            saga_id=row.id,
            saga_type=row.type,
            step=step,
            data=copy.deepcopy(row.data),
            attempt=row.attempts + 1,
            phase=phase,
            uow=uow,
        )

    # -- persistence --------------------------------------------------------------------

    async def _load(self, saga_id: uuid.UUID, session: AsyncConnection | None = None) -> _Row | None:
        params = {"b_id": saga_id}
        if session is not None:
            found = (await session.execute(_LOAD, params)).mappings().first()
        else:
            async with unit_of_work(self.database, write=False) as uow:
                found = (await uow.session.execute(_LOAD, params)).mappings().first()
        return None if found is None else _Row.from_mapping(found)

    async def _write(self, uow: UnitOfWork, definition: Saga, row: _Row, change: _Change) -> bool:
        """Save ``row`` if nobody changed it since it was loaded; timeline and hooks alike."""
        session = uow.session
        now = self._now()
        expected = row.version
        if change.finish is not None:
            for key in definition.transient:
                row.data.pop(key, None)
        result = cast(
            CursorResult[Any],
            await session.execute(
                _SAVE,
                {
                    "b_id": row.id,
                    "b_version": expected,
                    "status": row.status,
                    "step": row.step,
                    "step_index": row.step_index,
                    "data": row.stored_data(),
                    "failure_reason": row.failure_reason,
                    "step_deadline": row.step_deadline,
                    "deadline": row.deadline,
                    "attempts": row.attempts,
                    "next_attempt_at": row.next_attempt_at,
                    "version": expected + 1,
                    "updated_at": now,
                },
            ),
        )
        if result.rowcount != 1:
            log.info("saga.concurrent_change", saga_id=str(row.id), version=expected)
            row.stale = True
            return False
        row.version = expected + 1
        row.updated_at = now
        if change.claims_next:
            self._preclaimed[row.id] = row.version
        if change.events:
            await session.execute(
                saga_steps.insert(),
                [
                    {"saga_id": row.id, "step": e.step, "status": e.status, "detail": e.detail, "at": now}
                    for e in change.events
                ],
            )
        if definition.on_step is not None:
            for event in change.events:
                if event.hook:
                    ctx = self._context(row, event.step)
                    await _call_hook(definition.on_step(ctx, event.step, event.status, session))
        if change.finish is not None:
            await self._finished(uow, definition, row, change.finish)
        return True

    async def _finished(self, uow: UnitOfWork, definition: Saga, row: _Row, finish: _Finish) -> None:
        """The saga's finish, saved in ``uow``: its on_finish hook, the count once committed, the log."""
        if definition.on_finish is not None:
            ctx = self._context(row, row.step or "")
            await _call_hook(definition.on_finish(ctx, finish.status, finish.reason, uow.session))
        if finish.final:
            saga_type, status = row.type, finish.status

            async def count() -> None:
                metrics.SAGAS.labels(saga_type, status).inc()

            uow.after_commit(count)
        log.info(
            "saga.finished",
            saga_id=str(row.id),
            type=row.type,
            status=finish.status,
            reason=finish.reason,
        )

    async def _save(self, definition: Saga, row: _Row, change: _Change) -> bool:
        async with unit_of_work(self.database) as uow:
            return await self._write(uow, definition, row, change)

    # -- transitions (mutate the row, describe the change) ------------------------------

    def _finish(self, row: _Row, change: _Change) -> None:
        status = str(row.meta.get("outcome") or FAILED)
        failed_step = row.meta.get("failed_step")
        if isinstance(failed_step, str):
            row.step = failed_step
        row.status = status
        row.meta = {}
        row.attempts = 0
        row.next_attempt_at = None
        row.step_deadline = None
        change.events.append(_Event(row.type, status, row.failure_reason, hook=False))
        change.finish = _Finish(status, row.failure_reason)

    def _next_compensation(self, definition: Saga, row: _Row) -> int | None:
        for index in range(min(row.step_index, len(definition.steps)) - 1, -1, -1):
            if definition.steps[index].compensate is not None:
                return index
        return None

    def _settle(self, definition: Saga, row: _Row, change: _Change) -> None:
        """After an undo (or entering compensation): finish at once when nothing is left."""
        if not row.meta.get("abort") and self._next_compensation(definition, row) is None:
            self._finish(row, change)

    def _enter_compensation(
        self, definition: Saga, row: _Row, change: _Change, status: str, reason: str, abort: str | None
    ) -> None:
        row.meta = {"outcome": status, "failed_step": row.step}
        if abort is not None:
            row.meta["abort"] = abort
        row.status = COMPENSATING
        row.failure_reason = reason
        row.attempts = 0
        row.next_attempt_at = None
        row.step_deadline = None
        if row.meta.get("abort") or self._next_compensation(definition, row) is not None:
            change.events.append(_Event(row.type, COMPENSATING, f"{status}: {reason}", hook=False))
        else:
            self._finish(row, change)

    def _abandon(self, definition: Saga, row: _Row, status: str, reason: str, event_status: str) -> _Change:
        """Give up the current step (deadline or cancel): abort it if it had started."""
        change = _Change()
        step = definition.steps[row.step_index] if row.step_index < len(definition.steps) else None
        started = row.status == WAITING or bool(row.meta.get("started"))
        abort: str | None = None
        if step is not None and started:
            change.events.append(_Event(step.name, event_status, reason))
            if step.abort is not None:
                abort = step.name
        self._enter_compensation(definition, row, change, status, reason, abort)
        return change

    def _step_done(
        self, definition: Saga, row: _Row, step: Step, data: dict[str, Any], *, claim_next: bool = False
    ) -> _Change:
        change = _Change([_Event(step.name, DONE)])
        row.data = data
        row.meta = {}
        row.attempts = 0
        row.next_attempt_at = None
        row.step_deadline = None
        row.step_index += 1
        if row.step_index >= len(definition.steps):
            row.status = COMPLETED
            row.step = step.name
            change.events.append(_Event(row.type, COMPLETED, hook=False))
            change.finish = _Finish(COMPLETED, None)
        else:
            row.status = RUNNING
            row.step = definition.steps[row.step_index].name
            if claim_next:
                self._claim_next(definition, row, change)
        return change

    def _claim_next(self, definition: Saga, row: _Row, change: _Change) -> None:
        """Record the start of the next step in the save that completes the previous one, when
        the advancing loop runs it right away (no cancel can come in between: the loop holds
        the saga's lock), so the step needs no save of its own first. A crash before it really
        starts looks like a crash just after: it counts as started (aborts are idempotent)."""
        step = definition.steps[row.step_index]
        row.meta["started"] = True
        if step.deadline is not None:
            row.step_deadline = self._now() + _resolve_deadline(step.deadline, self._context(row, step.name))
        change.events.append(_Event(step.name, STARTED, "attempt 1"))
        change.claims_next = True

    def _step_failed(
        self,
        definition: Saga,
        row: _Row,
        step: Step,
        data: dict[str, Any],
        reason: str,
        status: str,
        detail: str | None,
    ) -> _Change:
        change = _Change([_Event(step.name, FAILED, _detail(reason, detail))])
        row.data = data
        self._enter_compensation(definition, row, change, status, reason, abort=None)
        return change

    def _expired(self, definition: Saga, row: _Row, now: datetime) -> tuple[str, str] | None:
        candidates: list[tuple[datetime, str, str]] = []
        if (
            row.step_deadline is not None
            and row.step_deadline <= now
            and row.step_index < len(definition.steps)
        ):
            step = definition.steps[row.step_index]
            candidates.append((row.step_deadline, step.timeout_status, step.timeout_reason))
        if row.deadline is not None and row.deadline <= now:
            candidates.append((row.deadline, definition.timeout_status, definition.timeout_reason))
        if not candidates:
            return None
        _, status, reason = min(candidates, key=lambda candidate: candidate[0])
        return status, reason

    # -- the advancing loop ---------------------------------------------------------------

    async def advance(self, saga_id: uuid.UUID) -> SagaState | None:
        """Run the saga as far as it can go now; return its state (None if unknown).

        Stops at WAITING, a retry wait, a parked or a final status, or when another process
        changed the saga meanwhile. Must not be awaited inside a unit of work on the saga's
        database (it is scheduled after commit instead).
        """
        if self._joined() is not None:
            raise SagaError("advance() must not run inside a unit of work on the saga's database")
        with bound_module(self.database.module):  # timers advance sagas outside any handler
            async with self._locked(saga_id):
                # Loaded once: after each successful save the row in memory is the stored one
                # (the version check of the next save catches any other writer).
                row = await self._load(saga_id)
                while row is not None and await self._step_once(row):
                    pass
                self._preclaimed.pop(saga_id, None)
                if row is not None and not row.stale:
                    return row.state()
            return await self.get(saga_id)

    async def _step_once(self, row: _Row) -> bool:
        saga_id = row.id
        if row.status not in (RUNNING, WAITING, COMPENSATING):
            return False
        definition = self._definitions.get(row.type)
        if definition is None:
            log.error("saga.unknown_definition", saga_id=str(saga_id), type=row.type)
            return False
        now = self._now()
        if row.status in (RUNNING, WAITING):
            expired = self._expired(definition, row, now)
            if expired is not None:
                status, reason = expired
                with self._traced(row, "timeout"):
                    log.warning("saga.deadline_passed", saga_id=str(saga_id), step=row.step, reason=reason)
                    return await self._save(
                        definition, row, self._abandon(definition, row, status, reason, TIMED_OUT)
                    )
            if row.status == WAITING:
                return False
            if row.next_attempt_at is not None and row.next_attempt_at > now:
                return False
            with self._traced(row, "action"):
                return await self._run_step(definition, row, now)
        if row.next_attempt_at is not None and row.next_attempt_at > now:
            return False
        with self._traced(row, "undo"):
            return await self._undo_next(definition, row)

    @contextmanager
    def _traced(self, row: _Row, phase: str) -> Iterator[None]:
        """One step's work (its call, its save, the hooks' messages) in the trace of the context
        that started the saga: the current context when it is of that trace (the handler that
        started it or that reported the step's outcome), else the stored one (a timer, a
        restart, an operator's retry). With tracing on, inside a span of its own."""
        stored = row.trace.get("traceparent")
        current = context.current()
        resume = (
            isinstance(stored, str)
            and context.parse_traceparent(stored) is not None
            and context.trace_id_of(current.traceparent) != context.trace_id_of(stored)
        )
        token = None
        if resume:
            token = context.enter(
                context.MessageContext(
                    correlation_id=_uuid_or_none(row.trace.get("correlation_id")), traceparent=stored
                )
            )
        try:
            with tracing.child_span(
                f"saga {row.type} {row.step}",
                attributes={
                    "shop.saga.id": str(row.id),
                    "shop.saga.type": row.type,
                    "shop.saga.step": row.step or "",
                    "shop.saga.phase": phase,
                    "shop.saga.attempt": row.attempts + 1,
                },
            ):
                yield
        finally:
            if token is not None:
                context.leave(token)

    async def _run_step(self, definition: Saga, row: _Row, now: datetime) -> bool:
        if row.step_index >= len(definition.steps):  # cannot happen with this engine's writes
            row.status, row.step = COMPLETED, definition.steps[-1].name
            return await self._save(
                definition, row, _Change([_Event(row.type, COMPLETED, hook=False)], _Finish(COMPLETED, None))
            )
        step = definition.steps[row.step_index]
        if row.step != step.name:
            log.error("saga.step_mismatch", saga_id=str(row.id), stored=row.step, expected=step.name)
            return False
        preclaimed = self._preclaimed.pop(row.id, None) == row.version and bool(row.meta.get("started"))
        if step.local:
            return await self._run_local_step(definition, row, step, now, preclaimed)
        if not preclaimed:
            if not row.meta.get("started"):
                row.meta["started"] = True
                if step.deadline is not None:
                    row.step_deadline = now + _resolve_deadline(step.deadline, self._context(row, step.name))
            row.next_attempt_at = None
            claim = _Change([_Event(step.name, STARTED, f"attempt {row.attempts + 1}")])
            if not await self._save(definition, row, claim):
                return False
        ctx = self._context(row, step.name)
        log.debug("saga.step_started", saga_id=str(row.id), step=step.name, attempt=ctx.attempt)
        try:
            result = await step.action(ctx)
            data = _merge(ctx.data, result.data if isinstance(result, Wait) else result)
        except StepFailed as failure:
            try:
                data = _merge(ctx.data, None)
            except (TypeError, ValueError):
                data = row.data
            log.info("saga.step_failed", saga_id=str(row.id), step=step.name, reason=failure.reason)
            change = self._step_failed(
                definition, row, step, data, failure.reason, failure.status, failure.detail
            )
            return await self._save(definition, row, change)
        except Exception as error:
            return await self._save(definition, row, self._retry_later(row, step.name, error))
        if isinstance(result, Wait):
            return await self._save(definition, row, self._waiting(definition, row, step, data))
        return await self._save(
            definition, row, self._step_done(definition, row, step, data, claim_next=True)
        )

    async def _run_local_step(
        self, definition: Saga, row: _Row, step: Step, now: datetime, preclaimed: bool
    ) -> bool:
        """A local step: its action and the record of its outcome in one transaction. When
        the action fails, its transaction is rolled back (its effect with it) and the failure
        is recorded as for any step."""
        started = [] if preclaimed else [_Event(step.name, STARTED, f"attempt {row.attempts + 1}")]
        failed: Exception | None = None
        try:
            async with unit_of_work(self.database) as uow:
                ctx = self._context(row, step.name, uow=uow)
                log.debug("saga.step_started", saga_id=str(row.id), step=step.name, attempt=ctx.attempt)
                try:
                    result = await step.action(ctx)
                    data = _merge(ctx.data, result.data if isinstance(result, Wait) else result)
                except Exception as error:
                    failed = error
                    raise _RollBack from error
                if isinstance(result, Wait):
                    change = self._waiting(definition, row, step, data)
                else:
                    change = self._step_done(definition, row, step, data, claim_next=True)
                change.events[:0] = started
                try:
                    if not await self._write(uow, definition, row, change):
                        raise _RollBack
                except BaseException:
                    row.stale = True  # mutated for a save that did not happen
                    raise
        except _RollBack:
            if failed is None:
                return False  # the saga changed meanwhile
        if failed is None:
            return True
        if isinstance(failed, StepFailed):
            log.info("saga.step_failed", saga_id=str(row.id), step=step.name, reason=failed.reason)
            change = self._step_failed(
                definition, row, step, row.data, failed.reason, failed.status, failed.detail
            )
        else:
            row.meta["started"] = True
            change = self._retry_later(row, step.name, failed)
        change.events[:0] = started
        return await self._save(definition, row, change)

    def _waiting(self, definition: Saga, row: _Row, step: Step, data: dict[str, Any]) -> _Change:
        row.data = data
        row.status = WAITING
        row.attempts = 0
        row.next_attempt_at = None
        if step.deadline is not None:
            ctx = self._context(row, step.name)
            row.step_deadline = self._now() + _resolve_deadline(step.deadline, ctx)
        return _Change([_Event(step.name, WAITING)])

    def _retry_later(self, row: _Row, step: str, error: Exception) -> _Change:
        row.attempts += 1
        delay = self._retry.delay(row.attempts)
        row.next_attempt_at = self._now() + timedelta(seconds=delay)
        log.warning(
            "saga.retry_scheduled",
            saga_id=str(row.id),
            step=step,
            attempts=row.attempts,
            delay=delay,
            error=repr(error),
        )
        return _Change([_Event(step, RETRY, repr(error))])

    async def _undo_next(self, definition: Saga, row: _Row) -> bool:
        """Run the pending abort, or the next compensation, or finish."""
        change = _Change()
        abort_name = row.meta.get("abort")
        if abort_name:
            index = definition.index_of(str(abort_name))
            step = definition.steps[index] if index is not None else None
            if step is None or step.abort is None:
                row.meta.pop("abort", None)
                self._settle(definition, row, change)
                return await self._save(definition, row, change)
            return await self._undo(definition, row, step, step.abort, "abort", index)
        compensation = self._next_compensation(definition, row)
        if compensation is None:
            self._finish(row, change)
            return await self._save(definition, row, change)
        step = definition.steps[compensation]
        assert step.compensate is not None
        return await self._undo(definition, row, step, step.compensate, "compensate", compensation)

    async def _undo(
        self, definition: Saga, row: _Row, step: Step, fn: Action, phase: str, index: int | None
    ) -> bool:
        row.step = step.name
        row.next_attempt_at = None
        claim_status = COMPENSATING if phase == "compensate" else ABORTING
        claim = _Change([_Event(step.name, claim_status, f"attempt {row.attempts + 1}")])
        if not await self._save(definition, row, claim):
            return False
        ctx = self._context(row, step.name, phase)
        try:
            result = await fn(ctx)
            data = _merge(ctx.data, None if isinstance(result, Wait) else result)
        except Exception as error:
            return await self._save(definition, row, self._undo_failed(row, step.name, error))
        change = _Change()
        row.data = data
        row.attempts = 0
        if phase == "abort":
            row.meta.pop("abort", None)
            change.events.append(_Event(step.name, ABORTED))
        else:
            assert index is not None
            row.step_index = index
            change.events.append(_Event(step.name, COMPENSATED))
        self._settle(definition, row, change)
        return await self._save(definition, row, change)

    def _undo_failed(self, row: _Row, step: str, error: Exception) -> _Change:
        row.attempts += 1
        if row.attempts >= self.max_compensation_attempts:
            row.status = COMPENSATION_FAILED
            row.next_attempt_at = None
            log.error(
                "saga.compensation_failed",
                saga_id=str(row.id),
                step=step,
                attempts=row.attempts,
                error=repr(error),
            )
            return _Change(
                [
                    _Event(step, COMPENSATION_FAILED, repr(error)),
                    _Event(row.type, COMPENSATION_FAILED, row.failure_reason, hook=False),
                ],
                _Finish(COMPENSATION_FAILED, row.failure_reason, final=False),
            )
        delay = self._retry.delay(row.attempts)
        row.next_attempt_at = self._now() + timedelta(seconds=delay)
        log.warning(
            "saga.compensation_retry",
            saga_id=str(row.id),
            step=step,
            attempts=row.attempts,
            delay=delay,
            error=repr(error),
        )
        return _Change([_Event(step, RETRY, repr(error))])

    # -- entry points ---------------------------------------------------------------------

    async def start(
        self, saga: Saga | str, saga_id: uuid.UUID, data: Mapping[str, Any] | None = None
    ) -> None:
        """Create a saga in the caller's open unit of work; it advances after that commits.

        Starting an id that already exists with the same type does nothing (idempotent).
        """
        uow = self._joined()
        if uow is None:
            raise NoUnitOfWorkForSaga(
                "SagaEngine.start() must be awaited inside an open unit of work on the "
                f"{self.database.module!r} database (shop.db.unit_of_work)"
            )
        definition = self.definition(saga if isinstance(saga, str) else saga.name)
        initial = _merge(dict(data or {}), None)
        existing = await self._load(saga_id, uow.session)
        if existing is not None:
            if existing.type != definition.name:
                raise SagaError(f"saga {saga_id} already exists as a {existing.type!r}")
            log.info("saga.already_started", saga_id=str(saga_id), type=definition.name)
            return
        now = self._now()
        first = definition.steps[0].name
        deadline: datetime | None = None
        if definition.deadline is not None:
            ctx = SagaContext(saga_id, definition.name, first, copy.deepcopy(initial))
            deadline = now + _resolve_deadline(definition.deadline, ctx)
        trace = _trace_of(context.current())
        await uow.session.execute(
            saga_instances.insert().values(
                id=saga_id,
                type=definition.name,
                status=RUNNING,
                step=first,
                step_index=0,
                data={**initial, META_KEY: {_TRACE_KEY: trace}} if trace else initial,
                failure_reason=None,
                step_deadline=None,
                deadline=deadline,
                attempts=0,
                next_attempt_at=None,
                version=0,
                created_at=now,
                updated_at=now,
            )
        )
        await uow.session.execute(
            saga_steps.insert().values(saga_id=saga_id, step=definition.name, status=STARTED, at=now)
        )

        async def advance_after_commit() -> None:
            self._schedule(saga_id)

        uow.after_commit(advance_after_commit)
        log.info("saga.started", saga_id=str(saga_id), type=definition.name)

    async def _external(self, saga_id: uuid.UUID, transition: Callable[[Saga, _Row], _Change | None]) -> bool:
        """Apply a change asked for from outside (event handler, operator), then advance.

        Inside the caller's unit of work on this database the change joins that transaction
        and advancing is scheduled after it commits; otherwise it gets its own transaction and
        the saga is advanced before returning.
        """
        uow = self._joined()
        if uow is not None:
            row = await self._load(saga_id, uow.session)
            definition = self._definitions.get(row.type) if row is not None else None
            if row is None or definition is None:
                return False
            change = transition(definition, row)
            if change is None or not await self._write(uow, definition, row, change):
                return False

            async def advance_after_commit() -> None:
                self._schedule(saga_id)

            uow.after_commit(advance_after_commit)
            return True
        async with self._locked(saga_id):
            row = await self._load(saga_id)
            definition = self._definitions.get(row.type) if row is not None else None
            if row is None or definition is None:
                return False
            change = transition(definition, row)
            if change is None or not await self._save(definition, row, change):
                return False
        try:
            await self.advance(saga_id)
        except Exception:
            log.exception("saga.advance_failed", saga_id=str(saga_id))
        return True

    @staticmethod
    def _awaiting(definition: Saga, row: _Row, step: str) -> Step | None:
        """The step if the saga is waiting on it (or its outcome is still unknown)."""
        if row.step != step or row.step_index >= len(definition.steps):
            return None
        current = definition.steps[row.step_index]
        if current.name != step:
            return None
        if row.status == WAITING or (row.status == RUNNING and row.meta.get("started")):
            return current
        return None

    async def complete_step(
        self, saga_id: uuid.UUID, step: str, data: Mapping[str, Any] | None = None
    ) -> bool:
        """The step the saga waits on succeeded; False (and nothing done) if it does not wait.

        Also accepted while the step's action has started but its outcome is not recorded yet
        (the event overtook the action's `Wait()`, or resolves an unknown outcome).
        """
        extra = dict(data) if data is not None else None

        def transition(definition: Saga, row: _Row) -> _Change | None:
            current = self._awaiting(definition, row, step)
            if current is None:
                return None
            return self._step_done(definition, row, current, _merge(row.data, extra))

        return await self._external(saga_id, transition)

    async def fail_step(
        self,
        saga_id: uuid.UUID,
        step: str,
        reason: str,
        status: str = FAILED,
        detail: str | None = None,
    ) -> bool:
        """The step the saga waits on failed definitively: compensate and end with ``status``."""
        _check_reason(reason)
        _check_final_status(status)

        def transition(definition: Saga, row: _Row) -> _Change | None:
            current = self._awaiting(definition, row, step)
            if current is None:
                return None
            return self._step_failed(definition, row, current, row.data, reason, status, detail)

        return await self._external(saga_id, transition)

    async def cancel(self, saga_id: uuid.UUID, reason: str, status: str = CANCELLED) -> bool:
        """Abandon a RUNNING or WAITING saga: abort the current step, compensate, end.

        False when the saga is unknown, already final, or already being compensated.
        """
        _check_reason(reason)
        _check_final_status(status)

        def transition(definition: Saga, row: _Row) -> _Change | None:
            if row.status not in (RUNNING, WAITING):
                return None
            return self._abandon(definition, row, status, reason, CANCELLED)

        return await self._external(saga_id, transition)

    async def retry(self, saga_id: uuid.UUID) -> bool:
        """Operator: resume a COMPENSATION_FAILED saga, or skip a pending retry wait now."""

        def transition(definition: Saga, row: _Row) -> _Change | None:
            if row.status == COMPENSATION_FAILED:
                row.status = COMPENSATING
            elif row.status not in (RUNNING, COMPENSATING) or row.next_attempt_at is None:
                return None
            row.attempts = 0
            row.next_attempt_at = None
            return _Change([_Event(row.type, RESUMED, "operator retry", hook=False)])

        return await self._external(saga_id, transition)

    # -- timers ---------------------------------------------------------------------------

    async def _due(self, query: sa.Select[uuid.UUID]) -> builtins.list[uuid.UUID]:
        async with unit_of_work(self.database, write=False) as uow:
            return [found[0] for found in (await uow.session.execute(query)).all()]

    async def _advance_each(self, ids: Iterable[uuid.UUID]) -> int:
        count = 0
        for saga_id in ids:
            if self._busy(saga_id):
                continue  # being advanced in this process right now
            try:
                await self.advance(saga_id)
            except Exception:
                log.exception("saga.advance_failed", saga_id=str(saga_id))
            count += 1
        return count

    async def tick(self) -> int:
        """One pass of timers: advance sagas whose retry time or deadline has come.

        Also picks up RUNNING/COMPENSATING sagas nobody touched for ``stale_after`` (their
        advancing process died). Returns how many sagas were advanced.
        """
        now = self._now()
        c = saga_instances.c
        moving = c.status.in_((RUNNING, COMPENSATING))
        query = (
            sa.select(c.id)
            .where(
                sa.or_(
                    sa.and_(moving, c.next_attempt_at <= now),
                    sa.and_(
                        c.status.in_((RUNNING, WAITING)),
                        sa.or_(c.step_deadline <= now, c.deadline <= now),
                    ),
                    sa.and_(moving, c.next_attempt_at.is_(None), c.updated_at <= now - self._stale_after),
                )
            )
            .order_by(c.updated_at)
            .limit(self._batch_size)
        )
        return await self._advance_each(await self._due(query))

    async def resume_all(self) -> int:
        """At start-up: advance every RUNNING/COMPENSATING saga, and WAITING ones past a deadline."""
        now = self._now()
        c = saga_instances.c
        query = (
            sa.select(c.id)
            .where(
                sa.or_(
                    c.status.in_((RUNNING, COMPENSATING)),
                    sa.and_(c.status == WAITING, sa.or_(c.step_deadline <= now, c.deadline <= now)),
                )
            )
            .order_by(c.created_at)
        )
        return await self._advance_each(await self._due(query))

    async def run(self, interval: float = 1.0) -> None:
        """Call :meth:`tick` every ``interval`` seconds until cancelled."""
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("saga.tick_failed")
            await asyncio.sleep(interval)

    async def drain(self) -> None:
        """Wait for the background advancing scheduled so far (and any it schedules)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        """Cancel and await the background advancing tasks; schedule no more."""
        self._closed = True
        tasks = builtins.list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- queries --------------------------------------------------------------------------

    async def get(self, saga_id: uuid.UUID) -> SagaState | None:
        """The saga's current state, or None."""
        row = await self._load(saga_id)
        return None if row is None else row.state()

    async def timeline(self, saga_id: uuid.UUID) -> builtins.list[TimelineEntry]:
        """The saga's history, oldest first."""
        query = (
            sa.select(saga_steps.c.step, saga_steps.c.status, saga_steps.c.at, saga_steps.c.detail)
            .where(saga_steps.c.saga_id == saga_id)
            .order_by(saga_steps.c.id)
        )
        async with unit_of_work(self.database, write=False) as uow:
            rows = (await uow.session.execute(query)).all()
        return [TimelineEntry(step, status, _utc(at), detail) for step, status, at, detail in rows]

    def _overdue(self) -> sa.ColumnElement[bool]:
        """Not final, and the step's or the saga's deadline has passed."""
        c, now = saga_instances.c, self._now()
        return sa.and_(c.status.in_(NOT_FINAL), sa.or_(c.step_deadline <= now, c.deadline <= now))

    async def counts(self, *, final: bool = True) -> dict[tuple[str, str], int]:
        """How many sagas there are per (type, status); only the not-final ones if not ``final``."""
        c = saga_instances.c
        query = sa.select(c.type, c.status, sa.func.count()).group_by(c.type, c.status)
        if not final:
            query = query.where(c.status.in_(NOT_FINAL))
        async with unit_of_work(self.database, write=False) as uow:
            rows = (await uow.session.execute(query)).all()
        return {(saga_type, status): int(count) for saga_type, status, count in rows}

    async def overdue_counts(self) -> dict[str, int]:
        """How many sagas per type are past a deadline without being final (the timers have not
        caught up with them: the engine is not running, or a step keeps failing)."""
        c = saga_instances.c
        query = sa.select(c.type, sa.func.count()).where(self._overdue()).group_by(c.type)
        async with unit_of_work(self.database, write=False) as uow:
            rows = (await uow.session.execute(query)).all()
        return {saga_type: int(count) for saga_type, count in rows}

    @property
    def saga_types(self) -> builtins.list[str]:
        """The names of the registered saga definitions."""
        return sorted(self._definitions)

    async def list(
        self,
        status: str | None = None,
        limit: int = 20,
        after: uuid.UUID | None = None,
        *,
        overdue: bool = False,
    ) -> builtins.list[SagaState]:
        """Sagas, newest first; ``after`` is the id of the last saga of the previous page;
        ``overdue``: only those not final and past their step's or their own deadline."""
        c = saga_instances.c
        query = sa.select(saga_instances)
        if status is not None:
            query = query.where(c.status == status)
        if overdue:
            query = query.where(self._overdue())
        async with unit_of_work(self.database, write=False) as uow:
            if after is not None:
                anchor = (
                    await uow.session.execute(sa.select(c.created_at, c.id).where(c.id == after))
                ).first()
                if anchor is None:
                    return []
                created_at, anchor_id = _utc(anchor[0]), anchor[1]
                query = query.where(
                    sa.or_(c.created_at < created_at, sa.and_(c.created_at == created_at, c.id < anchor_id))
                )
            query = query.order_by(c.created_at.desc(), c.id.desc()).limit(max(0, limit))
            rows = (await uow.session.execute(query)).mappings().all()
        return [_Row.from_mapping(row).state() for row in rows]
