"""The pure transitions of a saga: each mutates a :class:`SagaRow` and returns (or fills in) the
:class:`Change` that describes it for the save. No database, no clock, no I/O: what they need
to know of time (``now``, a retry's next attempt) is handed in, so they are tested alone."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shop.bus.saga.definition import Saga, Step, resolve_deadline
from shop.bus.saga.state import Change, Event, Finish, SagaRow, context_of
from shop.bus.saga.statuses import SagaStatus, StepStatus

__all__ = [
    "abandon",
    "adopt",
    "claim_next",
    "claim_step",
    "claim_undo",
    "enter_compensation",
    "expired",
    "finish",
    "next_compensation",
    "operator_retry",
    "park",
    "retry_later",
    "settle",
    "step_done",
    "step_failed",
    "undo_done",
    "undo_failed",
    "waiting",
]


def detail_of(reason: str, detail: str | None) -> str:
    return reason if detail is None else f"{reason}: {detail}"


def finish(row: SagaRow, change: Change) -> None:
    """End the saga with the outcome compensation was entered for."""
    status = str(row.meta.get("outcome") or SagaStatus.FAILED)
    failed_step = row.meta.get("failed_step")
    if isinstance(failed_step, str):
        row.step = failed_step
    row.status = status
    row.meta = {}
    row.attempts = 0
    row.next_attempt_at = None
    row.step_deadline = None
    change.events.append(Event(row.type, status, row.failure_reason, hook=False))
    change.finish = Finish(status, row.failure_reason)


def next_compensation(definition: Saga, row: SagaRow) -> tuple[int, Step] | None:
    """The last completed step (by name, walking back) that has a compensation: its position
    among the completed steps, and the step; None when nothing is left to compensate."""
    for position in range(len(row.completed) - 1, -1, -1):
        index = definition.index_of(row.completed[position])
        if index is not None and definition.steps[index].compensate is not None:
            return position, definition.steps[index]
    return None


def settle(definition: Saga, row: SagaRow, change: Change) -> None:
    """After an undo (or entering compensation): finish at once when nothing is left."""
    if not row.meta.get("abort") and next_compensation(definition, row) is None:
        finish(row, change)


def enter_compensation(
    definition: Saga, row: SagaRow, change: Change, status: str, reason: str, abort: str | None
) -> None:
    """Start undoing: abort the step in progress (``abort``) and compensate the completed ones,
    then end with ``status``; at once when there is nothing to undo."""
    row.meta = {"outcome": status, "failed_step": row.step}
    if abort is not None:
        row.meta["abort"] = abort
    row.status = SagaStatus.COMPENSATING
    row.failure_reason = reason
    row.attempts = 0
    row.next_attempt_at = None
    row.step_deadline = None
    if row.meta.get("abort") or next_compensation(definition, row) is not None:
        change.events.append(Event(row.type, SagaStatus.COMPENSATING, f"{status}: {reason}", hook=False))
    else:
        finish(row, change)


def abandon(definition: Saga, row: SagaRow, status: str, reason: str, event_status: str) -> Change:
    """Give up the current step (deadline or cancel): abort it if it had started."""
    change = Change()
    step = definition.steps[row.step_index] if row.step_index < len(definition.steps) else None
    started = row.status == SagaStatus.WAITING or bool(row.meta.get("started"))
    abort: str | None = None
    if step is not None and started:
        change.events.append(Event(step.name, event_status, reason))
        if step.abort is not None:
            abort = step.name
    enter_compensation(definition, row, change, status, reason, abort)
    return change


def step_done(
    definition: Saga, row: SagaRow, step: Step, data: dict[str, Any], *, claim_at: datetime | None = None
) -> Change:
    """``step`` succeeded: move on to the next step (claimed at once when ``claim_at`` is
    given, see :func:`claim_next`), or complete the saga."""
    change = Change([Event(step.name, StepStatus.DONE)])
    row.data = data
    row.meta = {}
    row.attempts = 0
    row.next_attempt_at = None
    row.step_deadline = None
    row.step_index += 1
    row.completed = [*row.completed, step.name]
    if row.step_index >= len(definition.steps):
        row.status = SagaStatus.COMPLETED
        row.step = step.name
        change.events.append(Event(row.type, SagaStatus.COMPLETED, hook=False))
        change.finish = Finish(SagaStatus.COMPLETED, None)
    else:
        row.status = SagaStatus.RUNNING
        row.step = definition.steps[row.step_index].name
        if claim_at is not None:
            claim_next(definition, row, change, claim_at)
    return change


def claim_next(definition: Saga, row: SagaRow, change: Change, now: datetime) -> None:
    """Record the start of the next step in the save that completes the previous one, when
    the advancing loop runs it right away (no cancel can come in between: the loop holds
    the saga's lock), so the step needs no save of its own first. A crash before it really
    starts looks like a crash just after: it counts as started (aborts are idempotent)."""
    step = definition.steps[row.step_index]
    row.meta["started"] = True
    if step.deadline is not None:
        row.step_deadline = now + resolve_deadline(step.deadline, context_of(row, step.name))
    change.events.append(Event(step.name, StepStatus.STARTED, "attempt 1"))
    change.claims_next = True


def claim_step(row: SagaRow, step: Step, now: datetime) -> Change:
    """The step's action is about to run (its own save first, for an external step)."""
    if not row.meta.get("started"):
        row.meta["started"] = True
        if step.deadline is not None:
            row.step_deadline = now + resolve_deadline(step.deadline, context_of(row, step.name))
    row.next_attempt_at = None
    return Change([started(row, step)])


def started(row: SagaRow, step: Step) -> Event:
    """The timeline line of ``step``'s next attempt starting."""
    return Event(step.name, StepStatus.STARTED, f"attempt {row.attempts + 1}")


def step_failed(
    definition: Saga,
    row: SagaRow,
    step: Step,
    data: dict[str, Any],
    reason: str,
    status: str,
    detail: str | None,
) -> Change:
    """``step`` failed definitively: compensate, then end with ``status``."""
    change = Change([Event(step.name, StepStatus.FAILED, detail_of(reason, detail))])
    row.data = data
    enter_compensation(definition, row, change, status, reason, abort=None)
    return change


def expired(definition: Saga, row: SagaRow, now: datetime) -> tuple[str, str] | None:
    """(status, reason) of the earliest deadline (the step's or the saga's) passed at ``now``."""
    candidates: list[tuple[datetime, str, str]] = []
    if row.step_deadline is not None and row.step_deadline <= now and row.step_index < len(definition.steps):
        step = definition.steps[row.step_index]
        candidates.append((row.step_deadline, step.timeout_status, step.timeout_reason))
    if row.deadline is not None and row.deadline <= now:
        candidates.append((row.deadline, definition.timeout_status, definition.timeout_reason))
    if not candidates:
        return None
    _, status, reason = min(candidates, key=lambda candidate: candidate[0])
    return status, reason


def waiting(row: SagaRow, step: Step, data: dict[str, Any], now: datetime) -> Change:
    """The action returned ``Wait()``: the step goes on outside the saga until its deadline."""
    row.data = data
    row.status = SagaStatus.WAITING
    row.attempts = 0
    row.next_attempt_at = None
    if step.deadline is not None:
        row.step_deadline = now + resolve_deadline(step.deadline, context_of(row, step.name))
    return Change([Event(step.name, StepStatus.WAITING)])


def retry_later(row: SagaRow, step: str, error: BaseException, next_attempt_at: datetime) -> Change:
    """The step's outcome is unknown: run it again at ``next_attempt_at``."""
    row.attempts += 1
    row.next_attempt_at = next_attempt_at
    return Change([Event(step, StepStatus.RETRY, repr(error))])


def claim_undo(row: SagaRow, step: Step, phase: str) -> Change:
    """An abort (``phase="abort"``) or a compensation of ``step`` is about to run."""
    row.step = step.name
    row.next_attempt_at = None
    status = StepStatus.COMPENSATING if phase == "compensate" else StepStatus.ABORTING
    return Change([Event(step.name, status, f"attempt {row.attempts + 1}")])


def undo_done(
    definition: Saga, row: SagaRow, step: Step, data: dict[str, Any], phase: str, position: int | None
) -> Change:
    """The abort or the compensation of ``step`` (at ``position`` among the completed steps)
    succeeded: on to the next."""
    change = Change()
    row.data = data
    row.attempts = 0
    if phase == "abort":
        row.meta.pop("abort", None)
        change.events.append(Event(step.name, StepStatus.ABORTED))
    else:
        assert position is not None
        row.completed = row.completed[:position]
        row.step_index = position
        change.events.append(Event(step.name, StepStatus.COMPENSATED))
    settle(definition, row, change)
    return change


def undo_failed(
    row: SagaRow, step: str, error: BaseException, max_attempts: int, next_attempt_at: datetime
) -> Change:
    """An undo failed: retry at ``next_attempt_at``, or park after ``max_attempts``."""
    row.attempts += 1
    if row.attempts >= max_attempts:
        row.status = SagaStatus.COMPENSATION_FAILED
        row.next_attempt_at = None
        return Change(
            [
                Event(step, StepStatus.COMPENSATION_FAILED, repr(error)),
                Event(row.type, SagaStatus.COMPENSATION_FAILED, row.failure_reason, hook=False),
            ],
            Finish(SagaStatus.COMPENSATION_FAILED, row.failure_reason, final=False),
        )
    row.next_attempt_at = next_attempt_at
    return Change([Event(step, StepStatus.RETRY, repr(error))])


def operator_retry(row: SagaRow) -> Change | None:
    """Resume a COMPENSATION_FAILED or a PARKED saga, or skip a pending retry wait; None if
    none of these. A parked saga goes back to where it was parked (and may park again)."""
    if row.status == SagaStatus.COMPENSATION_FAILED:
        row.status = SagaStatus.COMPENSATING
    elif row.status == SagaStatus.PARKED:
        parked = row.meta.pop("parked", None)
        parked = parked if isinstance(parked, dict) else {}
        row.status = str(parked.get("status") or SagaStatus.COMPENSATING)
        row.failure_reason = parked.get("failure_reason")
    elif row.status not in (SagaStatus.RUNNING, SagaStatus.COMPENSATING) or row.next_attempt_at is None:
        return None
    row.attempts = 0
    row.next_attempt_at = None
    return Change([Event(row.type, StepStatus.RESUMED, "operator retry", hook=False)])


def park(row: SagaRow, reason: str, why: str) -> Change:
    """The saga cannot go on (e.g. no definition can run it): park it for an operator with
    ``reason`` as its failure reason and ``why`` on its timeline. Where it stood is kept for
    :func:`operator_retry`."""
    row.meta["parked"] = {"status": row.status, "failure_reason": row.failure_reason}
    row.status = SagaStatus.PARKED
    row.failure_reason = reason
    row.next_attempt_at = None
    return Change(
        [Event(row.type, SagaStatus.PARKED, why, hook=False)], Finish(SagaStatus.PARKED, reason, final=False)
    )


def adopt(row: SagaRow, definition: Saga) -> Change:
    """The saga's own version is gone and ``definition`` (a newer one) can finish it by step
    names: it runs on that version from now on."""
    old = row.definition_version
    row.definition_version = definition.version
    return Change([Event(row.type, StepStatus.MIGRATED, f"v{old} -> v{definition.version}", hook=False)])
