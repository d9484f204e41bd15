"""The statuses of a saga and of the lines of its timeline (``StrEnum``: they compare equal to
the strings stored in the database, so rows written before they were enums read the same)."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["DEADLINE_EXCEEDED", "NOT_FINAL", "SagaStatus", "StepStatus", "is_final"]


class SagaStatus(StrEnum):
    """Where a saga stands. A definitive failure may end it with any other final status an
    action names (``StepFailed(status=...)``); these are the engine's own."""

    RUNNING = "RUNNING"
    WAITING = "WAITING"
    COMPENSATING = "COMPENSATING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    COMPENSATION_FAILED = "COMPENSATION_FAILED"  # parked for an operator (not final)
    PARKED = "PARKED"  # its stored definition version cannot be run: parked for an operator


class StepStatus(StrEnum):
    """What a timeline line records about a step (saga-level lines use a saga status)."""

    STARTED = "STARTED"
    DONE = "DONE"
    WAITING = "WAITING"
    RETRY = "RETRY"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    CANCELLED = "CANCELLED"
    ABORTING = "ABORTING"
    ABORTED = "ABORTED"
    COMPENSATING = "COMPENSATING"
    COMPENSATED = "COMPENSATED"
    COMPENSATION_FAILED = "COMPENSATION_FAILED"
    RESUMED = "RESUMED"
    MIGRATED = "MIGRATED"  # the saga moved onto a newer definition version (by step names)


DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"

NOT_FINAL = frozenset(
    {
        SagaStatus.RUNNING,
        SagaStatus.WAITING,
        SagaStatus.COMPENSATING,
        SagaStatus.COMPENSATION_FAILED,
        SagaStatus.PARKED,
    }
)


def is_final(status: str) -> bool:
    """Whether a saga in ``status`` has ended (COMPENSATION_FAILED and PARKED are parked, not final)."""
    return status not in NOT_FINAL
