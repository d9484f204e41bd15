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

Definitions are versioned (``Saga(..., version=n)``) and a saga runs on the version it
started on: the engine keeps that version and the names of the completed steps in its
bookkeeping, and compensation walks those names back. Register the older versions beside the
new one until their sagas are gone; a saga whose version is not registered moves onto the
newest only when it agrees by step names, else it is ``PARKED`` (reason ``DEFINITION_CHANGED``)
for an operator (see :mod:`shop.bus.saga.versions` and docs/adr/0022-saga-versions.md).

The package: :mod:`~shop.bus.saga.statuses`, :mod:`~shop.bus.saga.definition`,
:mod:`~shop.bus.saga.state` (the row and its views), :mod:`~shop.bus.saga.transitions` (pure),
:mod:`~shop.bus.saga.versions`, :mod:`~shop.bus.saga.store`, :mod:`~shop.bus.saga.engine`,
:mod:`~shop.bus.saga.timers`, :mod:`~shop.bus.saga.queries`, :mod:`~shop.bus.saga.traced`.

Concurrency: optimistic (``version`` column) across processes, and an :class:`asyncio.Lock`
per saga within one process. Time comes from an injectable clock, so tests never sleep.

The engine keeps a little bookkeeping of its own inside the persisted ``data`` under the key
``"__saga__"``; it is never shown to actions, hooks or :class:`SagaState`. Among it, ``"trace"``:
the traceparent and correlation id of the context that started the saga. Steps run after that
context is gone (in a task after commit, from a timer, after a restart); each runs in a span of
the starter's trace (see :meth:`SagaEngine._traced`), so the saga's messages belong to it too.
"""

from __future__ import annotations

from shop.bus.saga.definition import Action, Clock, Deadline, Saga, SagaContext, Step, Wait
from shop.bus.saga.engine import SagaEngine
from shop.bus.saga.errors import NoUnitOfWorkForSaga, SagaError, StepFailed, UnknownSaga
from shop.bus.saga.state import META_KEY, SagaState, TimelineEntry
from shop.bus.saga.statuses import DEADLINE_EXCEEDED, NOT_FINAL, SagaStatus, StepStatus, is_final

# The statuses by their bare names, as imported before they were enums.
RUNNING = SagaStatus.RUNNING
WAITING = SagaStatus.WAITING
COMPENSATING = SagaStatus.COMPENSATING
COMPLETED = SagaStatus.COMPLETED
FAILED = SagaStatus.FAILED
CANCELLED = SagaStatus.CANCELLED
COMPENSATION_FAILED = SagaStatus.COMPENSATION_FAILED
PARKED = SagaStatus.PARKED
STARTED = StepStatus.STARTED
DONE = StepStatus.DONE
RETRY = StepStatus.RETRY
TIMED_OUT = StepStatus.TIMED_OUT
ABORTING = StepStatus.ABORTING
ABORTED = StepStatus.ABORTED
COMPENSATED = StepStatus.COMPENSATED
RESUMED = StepStatus.RESUMED

__all__ = [
    "ABORTED",
    "ABORTING",
    "CANCELLED",
    "COMPENSATED",
    "COMPENSATING",
    "COMPENSATION_FAILED",
    "COMPLETED",
    "DEADLINE_EXCEEDED",
    "DONE",
    "FAILED",
    "META_KEY",
    "NOT_FINAL",
    "PARKED",
    "RESUMED",
    "RETRY",
    "RUNNING",
    "STARTED",
    "TIMED_OUT",
    "WAITING",
    "Action",
    "Clock",
    "Deadline",
    "NoUnitOfWorkForSaga",
    "Saga",
    "SagaContext",
    "SagaEngine",
    "SagaError",
    "SagaState",
    "SagaStatus",
    "Step",
    "StepFailed",
    "StepStatus",
    "TimelineEntry",
    "UnknownSaga",
    "Wait",
    "is_final",
]
