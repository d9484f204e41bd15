"""The :class:`SagaEngine`: runs a module's sagas on its database.

It advances a saga (one load, then step after step under the saga's lock, each outcome saved
with a version check), runs local steps inside the transaction that records them, applies
changes asked for from outside (an event reporting a step's outcome, a cancel, an operator's
retry), and schedules advancing after the commits that call for it. The transitions
themselves are pure functions (:mod:`shop.bus.saga.transitions`); the reads are
:class:`~shop.bus.saga.queries.SagaQueries`; the timer queries live in
:mod:`shop.bus.saga.timers`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import fields
from datetime import datetime, timedelta
from typing import Any

from shop.bus import context
from shop.bus.keyed_locks import KeyedLocks
from shop.bus.retry import RetryPolicy
from shop.bus.saga import store
from shop.bus.saga import transitions as t
from shop.bus.saga.checks import check_final_status, check_reason, utcnow
from shop.bus.saga.definition import Action, Clock, Saga, SagaContext, Step, Wait, resolve_deadline
from shop.bus.saga.errors import NoUnitOfWorkForSaga, SagaError, StepFailed, UnknownSaga
from shop.bus.saga.state import (
    Change,
    Event,
    Finish,
    SagaRow,
    SagaState,
    context_of,
    copy_data,
    merge,
)
from shop.bus.saga.statuses import SagaStatus, StepStatus
from shop.bus.saga.timers import SagaTimers
from shop.bus.saga.traced import trace_of, traced
from shop.bus.saga.versions import DEFINITION_CHANGED, Versions, resolve
from shop.db import Database, UnitOfWork, current_unit_of_work, unit_of_work
from shop.observability.logcontext import bound_module
from shop.observability.loggers import get_logger

__all__ = ["SagaEngine"]

log = get_logger("shop.bus.saga")


_MOVING = (SagaStatus.RUNNING, SagaStatus.WAITING, SagaStatus.COMPENSATING)
_ROW_FIELDS = tuple(f.name for f in fields(SagaRow))
_REMEMBERED_MAX = 10_000


class _RollBack(Exception):
    """Roll a local step's transaction back (its action failed, or the saga changed meanwhile)."""


class SagaEngine(SagaTimers):
    """Runs the sagas of one module on that module's database; see :mod:`shop.bus.saga`."""

    def __init__(
        self,
        database: Database,
        definitions: Iterable[Saga],
        *,
        clock: Clock = utcnow,
        retry: RetryPolicy | None = None,
        max_compensation_attempts: int = 5,
        stale_after: timedelta = timedelta(minutes=5),
        batch_size: int = 100,
        tick_interval: float = 1.0,
        startup_grace: float = 0.0,
    ) -> None:
        if max_compensation_attempts < 1:
            raise ValueError("max_compensation_attempts must be >= 1")
        super().__init__(database, clock, stale_after, batch_size, tick_interval, startup_grace)
        # name -> its registered versions; a saga runs on the version it started on
        self._definitions: dict[str, Versions] = {}
        for definition in definitions:
            self._definitions.setdefault(definition.name, Versions(definition.name)).add(definition)
        self._retry = retry if retry is not None else RetryPolicy(base_delay=1.0, max_delay=300.0, jitter=0.2)
        self.max_compensation_attempts = max_compensation_attempts
        self._locks: KeyedLocks[uuid.UUID] = KeyedLocks()
        # saga id -> the version whose save claimed the current step on the way (see claim_next)
        self._preclaimed: dict[uuid.UUID, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        # saga id -> a copy of its row as this process last committed it (see _remember): the
        # next advance starts from it instead of reading the row back (the save's version
        # check still catches any other writer)
        self._rows: dict[uuid.UUID, SagaRow] = {}

    # -- definitions and plumbing ---------------------------------------------------------

    def definition(self, name: str, version: int | None = None) -> Saga:
        """The registered definition called ``name``: its newest version, or ``version``."""
        versions = self._definitions.get(name)
        found = None if versions is None else versions.newest if version is None else versions.get(version)
        if found is None:
            which = f"{name!r}" if version is None else f"{name!r} of version {version}"
            raise UnknownSaga(f"no saga definition named {which} is registered")
        return found

    def _resolve(self, row: SagaRow) -> tuple[Saga | None, Change | None]:
        """The definition ``row`` runs on, and a change to save first: its move onto a newer
        version, or (with no definition) its parking. (None, None): no definition of that name."""
        versions = self._definitions.get(row.type)
        if versions is None:
            log.error("saga.unknown_definition", saga_id=str(row.id), type=row.type)
            return None, None
        own = versions.get(row.definition_version)
        if own is not None and row.versioned:  # the hot path: its own version is registered
            return own, None
        if row.status not in (SagaStatus.RUNNING, SagaStatus.WAITING, SagaStatus.COMPENSATING):
            # not moving: nothing runs a step; an operator's retry re-resolves when it moves
            return own or Saga(row.type), None
        found = resolve(versions, row)
        if found.definition is None:
            why = found.why or "no definition can run it"
            log.error("saga.parked", saga_id=str(row.id), type=row.type, why=why)
            return None, t.park(row, DEFINITION_CHANGED, why)
        if found.adopted:
            log.warning("saga.migrated", saga_id=str(row.id), type=row.type, version=found.definition.version)
            return found.definition, t.adopt(row, found.definition)
        return found.definition, None

    @property
    def saga_types(self) -> list[str]:
        """The names of the registered saga definitions."""
        return sorted(self._definitions)

    @property
    def background_tasks(self) -> frozenset[asyncio.Task[None]]:
        """The advancing tasks scheduled after commits and not finished yet."""
        return frozenset(self._tasks)

    def _joined(self) -> UnitOfWork | None:
        """The caller's unit of work when it is on this engine's database."""
        uow = current_unit_of_work()
        if uow is None:
            return None
        if uow.database.url != self.database.url or uow.database.module != self.database.module:
            return None
        return uow

    def _locked(self, saga_id: uuid.UUID) -> AbstractAsyncContextManager[None]:
        return self._locks.hold(saga_id)

    def _busy(self, saga_id: uuid.UUID) -> bool:
        """Whether the saga is being advanced in this process right now."""
        return self._locks.locked(saga_id)

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
            await self._advance(saga_id)
        except Exception:
            log.exception("saga.advance_failed", saga_id=str(saga_id))

    # -- persistence --------------------------------------------------------------------

    async def _load(self, saga_id: uuid.UUID, session: Any = None) -> SagaRow | None:
        return await store.load(self.database, saga_id, session)

    def _remember(self, uow: UnitOfWork, row: SagaRow) -> None:
        """Keep a copy of ``row`` as saved in ``uow`` once (and only if) that commits.

        A saga is saved, then advanced again a few milliseconds later (after the commit, or
        when its step's outcome arrives): the copy spares reading back the row this process
        has just written. Another process's write since then is caught by the next save's
        version check, as with a row read back. Rows are forgotten when taken, when final, and
        all at once past _REMEMBERED_MAX (sagas that wait long)."""
        snapshot = row.copy()

        async def remember() -> None:
            if snapshot.status in _MOVING:
                if len(self._rows) >= _REMEMBERED_MAX:
                    self._rows.clear()
                self._rows[snapshot.id] = snapshot
            else:
                self._rows.pop(snapshot.id, None)

        uow.after_commit(remember)

    async def _write(self, uow: UnitOfWork, definition: Saga, row: SagaRow, change: Change) -> bool:
        if not await store.write(uow, definition, row, change, self._now()):
            return False
        if change.claims_next:
            self._preclaimed[row.id] = row.version
        self._remember(uow, row)
        return True

    async def _save(self, definition: Saga, row: SagaRow, change: Change) -> bool:
        async with unit_of_work(self.database) as uow:
            return await self._write(uow, definition, row, change)

    def _retry_at(self, row: SagaRow, step: str, error: BaseException, event: str) -> datetime:
        """When the next attempt after ``row.attempts + 1`` failures is due (and say so)."""
        delay = self._retry.delay(row.attempts + 1)
        log.warning(
            event, saga_id=str(row.id), step=step, attempts=row.attempts + 1, delay=delay, error=repr(error)
        )
        return self._now() + timedelta(seconds=delay)

    def _retry_later(self, row: SagaRow, step: str, error: BaseException) -> Change:
        return t.retry_later(row, step, error, self._retry_at(row, step, error, "saga.retry_scheduled"))

    def _undo_failed(self, row: SagaRow, step: str, error: BaseException) -> Change:
        if row.attempts + 1 >= self.max_compensation_attempts:
            log.error(
                "saga.compensation_failed",
                saga_id=str(row.id),
                step=step,
                attempts=row.attempts + 1,
                error=repr(error),
            )
            return t.undo_failed(row, step, error, self.max_compensation_attempts, self._now())
        at = self._retry_at(row, step, error, "saga.compensation_retry")
        return t.undo_failed(row, step, error, self.max_compensation_attempts, at)

    # -- the advancing loop ---------------------------------------------------------------

    async def advance(self, saga_id: uuid.UUID) -> SagaState | None:
        """Run the saga as far as it can go now; return its state (None if unknown).

        Stops at WAITING, a retry wait, a parked or a final status, or when another process
        changed the saga meanwhile. Must not be awaited inside a unit of work on the saga's
        database (it is scheduled after commit instead).
        """
        row = await self._advance(saga_id)
        return row.state() if row is not None else await self.get(saga_id)

    async def _advance(self, saga_id: uuid.UUID) -> SagaRow | None:
        """`advance` without the state it returns (the background advancing needs none): the
        row as it stopped, or None when unknown or changed meanwhile by someone else."""
        if self._joined() is not None:
            raise SagaError("advance() must not run inside a unit of work on the saga's database")
        with bound_module(self.database.module):  # timers advance sagas outside any handler
            async with self._locked(saga_id):
                # Loaded once (or as this process last saved it): after each successful save the
                # row in memory is the stored one (the version check of the next save catches
                # any other writer).
                row = self._rows.pop(saga_id, None)
                remembered = None if row is None else row.version
                if row is None:
                    row = await self._load(saga_id)
                while row is not None and await self._step_once(row):
                    pass
                if row is not None and row.stale and row.version == remembered:
                    # what this process remembered was not the stored row any more (written
                    # since by another process or by hand): go on from the stored one
                    self._preclaimed.pop(saga_id, None)
                    row = await self._load(saga_id)
                    while row is not None and await self._step_once(row):
                        pass
                self._preclaimed.pop(saga_id, None)
                return row if row is not None and not row.stale else None

    async def _step_once(self, row: SagaRow) -> bool:
        saga_id = row.id
        if row.status not in (SagaStatus.RUNNING, SagaStatus.WAITING, SagaStatus.COMPENSATING):
            return False
        definition, note = self._resolve(row)
        if note is not None:  # parked (stops the loop), or moved onto a newer version
            return await self._save(definition or Saga(row.type), row, note)
        if definition is None:
            return False
        now = self._now()
        if row.status in (SagaStatus.RUNNING, SagaStatus.WAITING):
            expired = t.expired(definition, row, now)
            if expired is not None:
                status, reason = expired
                with traced(row, "timeout"):
                    log.warning("saga.deadline_passed", saga_id=str(saga_id), step=row.step, reason=reason)
                    change = t.abandon(definition, row, status, reason, StepStatus.TIMED_OUT)
                    return await self._save(definition, row, change)
            if row.status == SagaStatus.WAITING:
                return False
            if row.next_attempt_at is not None and row.next_attempt_at > now:
                return False
            with traced(row, "action"):
                return await self._run_step(definition, row, now)
        if row.next_attempt_at is not None and row.next_attempt_at > now:
            return False
        with traced(row, "undo"):
            return await self._undo_next(definition, row)

    async def _run_step(self, definition: Saga, row: SagaRow, now: datetime) -> bool:
        if row.step_index >= len(definition.steps):  # cannot happen with this engine's writes
            row.status, row.step = SagaStatus.COMPLETED, definition.steps[-1].name
            change = Change(
                [Event(row.type, SagaStatus.COMPLETED, hook=False)], Finish(SagaStatus.COMPLETED, None)
            )
            return await self._save(definition, row, change)
        step = definition.steps[row.step_index]
        if row.step != step.name:
            log.error("saga.step_mismatch", saga_id=str(row.id), stored=row.step, expected=step.name)
            return False
        preclaimed = self._preclaimed.pop(row.id, None) == row.version and bool(row.meta.get("started"))
        if step.local:
            return await self._run_local_step(definition, row, step, preclaimed)
        if not preclaimed and not await self._save(definition, row, t.claim_step(row, step, now)):
            return False
        change = await self._call_action(definition, row, step)
        await self._run_reads_due(definition, row, change)
        following = self._local_step_due(definition, row)
        if following is None:
            return await self._save(definition, row, change)
        # the next step is local: its action and outcome are saved with this outcome
        async with unit_of_work(self.database) as uow:
            return await self._write_with_local(uow, definition, row, change, following, [])

    async def _call_action(self, definition: Saga, row: SagaRow, step: Step) -> Change:
        """Run an external step's action and make its outcome the change to save: done (the
        next step claimed), a wait, a definitive failure, or a retry later (an unknown outcome)."""
        ctx = context_of(row, step.name)
        log.debug("saga.step_started", saga_id=str(row.id), step=step.name, attempt=ctx.attempt)
        try:
            result = await step.action(ctx)
            data = merge(ctx.data, result.data if isinstance(result, Wait) else result)
        except StepFailed as failure:
            try:
                data = merge(ctx.data, None)
            except (TypeError, ValueError):
                data = row.data
            log.info("saga.step_failed", saga_id=str(row.id), step=step.name, reason=failure.reason)
            return t.step_failed(definition, row, step, data, failure.reason, failure.status, failure.detail)
        except Exception as error:
            return self._retry_later(row, step.name, error)
        if isinstance(result, Wait):
            return t.waiting(row, step, data, self._now())
        return t.step_done(definition, row, step, data, claim_at=self._now())

    async def _run_local_step(self, definition: Saga, row: SagaRow, step: Step, preclaimed: bool) -> bool:
        """A local step: its action and the record of its outcome in one transaction. When
        the action fails, its transaction is rolled back (its effect with it) and the failure
        is recorded as for any step."""
        started = [] if preclaimed else [t.started(row, step)]
        failed: Exception | None = None
        try:
            async with unit_of_work(self.database) as uow:
                ctx = context_of(row, step.name, uow=uow)
                log.debug("saga.step_started", saga_id=str(row.id), step=step.name, attempt=ctx.attempt)
                try:
                    result = await step.action(ctx)
                    data = merge(ctx.data, result.data if isinstance(result, Wait) else result)
                except Exception as error:
                    failed = error
                    raise _RollBack from error
                if isinstance(result, Wait):
                    change = t.waiting(row, step, data, self._now())
                else:
                    change = t.step_done(definition, row, step, data, claim_at=self._now())
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
            change = t.step_failed(
                definition, row, step, row.data, failed.reason, failed.status, failed.detail
            )
        else:
            row.meta["started"] = True
            change = self._retry_later(row, step.name, failed)
        change.events[:0] = started
        return await self._save(definition, row, change)

    async def _run_reads_due(self, definition: Saga, row: SagaRow, change: Change) -> None:
        """Run the reads-only steps that ``change`` has just claimed (see `Saga.step`), one
        after the other, before ``change`` is saved: each one's outcome (done, failed, a retry
        or a wait) is added to ``change``, so that one save records them all."""
        while (step := self._reads_due(definition, row)) is not None:
            with traced(row, "action"):
                outcome = await self._call_action(definition, row, step)
            change.events.extend(outcome.events)
            change.finish, change.claims_next = outcome.finish, outcome.claims_next

    @staticmethod
    def _reads_due(definition: Saga, row: SagaRow) -> Step | None:
        """The reads-only step ``row`` has just claimed and is to run now, if it is one."""
        if row.status != SagaStatus.RUNNING or row.next_attempt_at is not None:
            return None
        if row.step_index >= len(definition.steps) or not row.meta.get("started"):
            return None
        step = definition.steps[row.step_index]
        return step if step.reads_only and row.step == step.name else None

    @staticmethod
    def _local_step_due(definition: Saga, row: SagaRow) -> Step | None:
        """The local step ``row`` is to run now, if it is one (RUNNING, no retry wait)."""
        if row.status != SagaStatus.RUNNING or row.next_attempt_at is not None:
            return None
        if row.step_index >= len(definition.steps):
            return None
        step = definition.steps[row.step_index]
        return step if step.local and row.step == step.name else None

    async def _write_with_local(
        self,
        uow: UnitOfWork,
        definition: Saga,
        row: SagaRow,
        change: Change,
        step: Step,
        started: list[Event],
    ) -> bool:
        """Save ``change`` with local ``step``, which it makes due, in one save inside ``uow``:
        the step's action runs in a savepoint on the row as ``change`` left it, and its outcome
        joins ``change`` (one UPDATE of the row and one batch of timeline lines where there were
        two; the hooks run after the action, in the lines' order). When the action fails (or
        anything in it does), the savepoint is rolled back, ``change`` is saved alone and the
        step then runs on its own as usual (`_run_local_step`), which records the failure.
        False when a save fails its version check."""
        snapshot = row.copy()
        preclaimed = self._preclaimed.get(row.id)
        try:
            async with uow.savepoint():
                ctx = context_of(row, step.name, uow=uow)
                log.debug("saga.step_started", saga_id=str(row.id), step=step.name, attempt=ctx.attempt)
                result = await step.action(ctx)
                data = merge(ctx.data, result.data if isinstance(result, Wait) else result)
                if isinstance(result, Wait):
                    local = t.waiting(row, step, data, self._now())
                else:
                    local = t.step_done(definition, row, step, data, claim_at=self._now())
                joined = Change([*change.events, *started, *local.events], local.finish, local.claims_next)
                if not await self._write(uow, definition, row, joined):
                    raise _RollBack
            return True
        except Exception:
            for name in _ROW_FIELDS:
                setattr(row, name, getattr(snapshot, name))
            if preclaimed is None:
                self._preclaimed.pop(row.id, None)
            else:
                self._preclaimed[row.id] = preclaimed
        return await self._write(uow, definition, row, change)

    async def _undo_next(self, definition: Saga, row: SagaRow) -> bool:
        """Run the pending abort, or the next compensation, or finish."""
        change = Change()
        abort_name = row.meta.get("abort")
        if abort_name:
            index = definition.index_of(str(abort_name))
            step = definition.steps[index] if index is not None else None
            if step is None or step.abort is None:
                row.meta.pop("abort", None)
                t.settle(definition, row, change)
                return await self._save(definition, row, change)
            return await self._undo(definition, row, step, step.abort, "abort", None)
        compensation = t.next_compensation(definition, row)
        if compensation is None:
            t.finish(row, change)
            return await self._save(definition, row, change)
        position, step = compensation
        assert step.compensate is not None
        return await self._undo(definition, row, step, step.compensate, "compensate", position)

    async def _undo(
        self, definition: Saga, row: SagaRow, step: Step, fn: Action, phase: str, position: int | None
    ) -> bool:
        if not await self._save(definition, row, t.claim_undo(row, step, phase)):
            return False
        ctx = context_of(row, step.name, phase)
        try:
            result = await fn(ctx)
            data = merge(ctx.data, None if isinstance(result, Wait) else result)
        except Exception as error:
            return await self._save(definition, row, self._undo_failed(row, step.name, error))
        return await self._save(definition, row, t.undo_done(definition, row, step, data, phase, position))

    # -- entry points ---------------------------------------------------------------------

    async def start(
        self, saga: Saga | str, saga_id: uuid.UUID, data: Mapping[str, Any] | None = None
    ) -> None:
        """Create a saga in the caller's open unit of work; it advances after that commits.

        It runs on the version of ``saga`` (a name: its newest registered version) to its end.

        Starting an id that already exists with the same type does nothing (idempotent).
        """
        uow = self._joined()
        if uow is None:
            raise NoUnitOfWorkForSaga(
                "SagaEngine.start() must be awaited inside an open unit of work on the "
                f"{self.database.module!r} database (shop.db.unit_of_work)"
            )
        definition = (
            self.definition(saga) if isinstance(saga, str) else self.definition(saga.name, saga.version)
        )
        initial = merge(dict(data or {}), None)
        now = self._now()
        first = definition.steps[0].name
        deadline: datetime | None = None
        if definition.deadline is not None:
            ctx = SagaContext(saga_id, definition.name, first, copy_data(initial))
            deadline = now + resolve_deadline(definition.deadline, ctx)
        row = SagaRow.new(
            saga_id,
            definition.name,
            first,
            copy_data(initial),  # its own data, JSON-shaped as a load would give it
            definition.version,
            trace_of(context.current()),
            deadline,
            now,
        )
        # An external first step is claimed in the insert (its STARTED line and deadline):
        # the advance that runs it after the commit needs no save of its own first, as with
        # `t.claim_next`. A cancel that comes in between takes the claim back in this process
        # (`_take_back_claim`: the step never ran, nothing to abort); after a restart it finds
        # the step started and aborts it (aborts are idempotent).
        claim = None if definition.steps[0].local else t.claim_step(row, definition.steps[0], now)
        if not await store.insert(uow.session, row, StepStatus.STARTED, claim):
            existing = await store.load(self.database, saga_id, uow.session)
            if existing is not None and existing.type != definition.name:
                raise SagaError(f"saga {saga_id} already exists as a {existing.type!r}")
            log.info("saga.already_started", saga_id=str(saga_id), type=definition.name)
            return
        if claim is not None:
            await store.step_hooks(definition, row, claim, uow.session)
        self._remember(uow, row)
        version = row.version

        async def advance_after_commit() -> None:
            if claim is not None:
                self._preclaimed[saga_id] = version
            self._schedule(saga_id)

        uow.after_commit(advance_after_commit)
        log.info("saga.started", saga_id=str(saga_id), type=definition.name)

    async def _external(
        self, saga_id: uuid.UUID, transition: Callable[[Saga, SagaRow], Change | None]
    ) -> bool:
        """Apply a change asked for from outside (event handler, operator), then advance.

        Inside the caller's unit of work on this database the change joins that transaction
        and advancing is scheduled after it commits; otherwise it gets its own transaction and
        the saga is advanced before returning.
        """
        uow = self._joined()
        if uow is not None:
            # As this process last committed it, if it remembers it (the version check of the
            # save catches any other writer); on any refusal, once more from the stored row.
            row = self._rows.pop(saga_id, None)
            prepared = await self._written(uow, row, transition)
            if prepared is None:
                row = await self._load(saga_id, uow.session)
                prepared = await self._written(uow, row, transition)
            if row is None or prepared is None:
                return False
            if row.status == SagaStatus.PARKED:
                return False
            if row.status not in _MOVING:
                return True

            async def advance_after_commit() -> None:
                self._schedule(saga_id)

            uow.after_commit(advance_after_commit)
            return True
        async with self._locked(saga_id):
            row = await self._load(saga_id)
            prepared = None if row is None else self._prepare(row, transition)
            if row is None or prepared is None or not await self._save(prepared[0], row, prepared[1]):
                return False
            if row.status == SagaStatus.PARKED:
                return False
        try:
            await self._advance(saga_id)
        except Exception:
            log.exception("saga.advance_failed", saga_id=str(saga_id))
        return True

    async def _written(
        self, uow: UnitOfWork, row: SagaRow | None, transition: Callable[[Saga, SagaRow], Change | None]
    ) -> tuple[Saga, Change] | None:
        """The definition and change an outside request made of ``row`` and saved in ``uow``;
        None when there is no row, the request is refused, or the version check failed."""
        prepared = None if row is None else self._prepare(row, transition)
        if row is None or prepared is None:
            return None
        definition, change = prepared
        following = self._local_step_due(definition, row)
        if following is not None and not row.meta.get("started"):
            # a local step comes next (orders' complete after the payment): saved with this
            # change; if it fails it runs on its own after the commit, as before
            written = await self._write_with_local(
                uow, definition, row, change, following, [t.started(row, following)]
            )
        else:
            written = await self._write(uow, definition, row, change)
        return prepared if written else None

    def _prepare(
        self, row: SagaRow, transition: Callable[[Saga, SagaRow], Change | None]
    ) -> tuple[Saga, Change] | None:
        """The definition and the change to save for an outside request: the transition's on
        the resolved definition, or the parking of a saga no definition can run (so the
        request is refused and an operator sees why)."""
        definition, note = self._resolve(row)
        if definition is None:
            return None if note is None else (Saga(row.type), note)
        deadline = row.step_deadline
        unrun = self._take_back_claim(row)
        change = transition(definition, row)
        if change is None:
            if unrun is not None:  # refused: the claim stays as it was
                self._preclaimed[row.id] = row.version
                row.meta["started"] = True
                row.step_deadline = deadline
            return None
        if unrun is not None:
            change.events.insert(0, Event(unrun, StepStatus.CANCELLED, "claimed, never ran"))
        if note is not None:
            change.events[:0] = note.events
        return definition, change

    def _take_back_claim(self, row: SagaRow) -> str | None:
        """The step ``row`` claimed without running it yet, taken back (its name), or None.

        A step claimed ahead of its action (by `start`, or `t.claim_next`) carries this
        process's mark until the advancing loop takes the mark to run the action. A change
        from outside that finds the mark still there knows the action has not begun: the step
        counts as never started (a cancel does not abort it). Without the mark the loop claims
        the step again with a version-checked save, which this change's save makes fail."""
        if self._preclaimed.get(row.id) != row.version or not row.meta.get("started"):
            return None
        del self._preclaimed[row.id]
        row.meta.pop("started", None)
        row.step_deadline = None
        return row.step

    @staticmethod
    def _awaiting(definition: Saga, row: SagaRow, step: str) -> Step | None:
        """The step if the saga is waiting on it (or its outcome is still unknown)."""
        if row.step != step or row.step_index >= len(definition.steps):
            return None
        current = definition.steps[row.step_index]
        if current.name != step:
            return None
        if row.status == SagaStatus.WAITING or (row.status == SagaStatus.RUNNING and row.meta.get("started")):
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

        def transition(definition: Saga, row: SagaRow) -> Change | None:
            current = self._awaiting(definition, row, step)
            if current is None:
                return None
            return t.step_done(definition, row, current, merge(row.data, extra))

        return await self._external(saga_id, transition)

    async def fail_step(
        self,
        saga_id: uuid.UUID,
        step: str,
        reason: str,
        status: str = SagaStatus.FAILED,
        detail: str | None = None,
    ) -> bool:
        """The step the saga waits on failed definitively: compensate and end with ``status``."""
        check_reason(reason)
        check_final_status(status)

        def transition(definition: Saga, row: SagaRow) -> Change | None:
            current = self._awaiting(definition, row, step)
            if current is None:
                return None
            return t.step_failed(definition, row, current, row.data, reason, status, detail)

        return await self._external(saga_id, transition)

    async def cancel(self, saga_id: uuid.UUID, reason: str, status: str = SagaStatus.CANCELLED) -> bool:
        """Abandon a RUNNING or WAITING saga: abort the current step, compensate, end.

        False when the saga is unknown, already final, or already being compensated.
        """
        check_reason(reason)
        check_final_status(status)

        def transition(definition: Saga, row: SagaRow) -> Change | None:
            if row.status not in (SagaStatus.RUNNING, SagaStatus.WAITING):
                return None
            return t.abandon(definition, row, status, reason, StepStatus.CANCELLED)

        return await self._external(saga_id, transition)

    async def retry(self, saga_id: uuid.UUID) -> bool:
        """Operator: resume a COMPENSATION_FAILED saga, or skip a pending retry wait now."""
        return await self._external(saga_id, lambda _definition, row: t.operator_retry(row))

    async def drain(self) -> None:
        """Wait for the background advancing scheduled so far (and any it schedules)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        """Cancel and await the background advancing tasks; schedule no more."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
