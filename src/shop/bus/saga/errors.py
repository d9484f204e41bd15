"""The saga engine's own errors, and :class:`StepFailed` which an action raises."""

from __future__ import annotations

from shop.bus.saga.checks import check_final_status, check_reason
from shop.bus.saga.statuses import SagaStatus

__all__ = ["NoUnitOfWorkForSaga", "SagaError", "StepFailed", "UnknownSaga"]


class SagaError(Exception):
    """Base of the saga engine's own errors."""


class NoUnitOfWorkForSaga(SagaError):
    """`start` was awaited outside a unit of work on the saga's database."""


class UnknownSaga(SagaError, KeyError):
    """No saga definition of that name (or version) is registered with the engine."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown saga"


class StepFailed(Exception):
    """Raised by an action for a definitive failure: compensate, then end with ``status``."""

    def __init__(self, reason: str, status: str = SagaStatus.FAILED, detail: str | None = None) -> None:
        check_reason(reason)
        check_final_status(status)
        super().__init__(reason if detail is None else f"{reason}: {detail}")
        self.reason = reason
        self.status = status
        self.detail = detail
