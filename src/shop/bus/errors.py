"""Exceptions the bus raises to callers."""

from __future__ import annotations


class BusError(Exception):
    """Base of the bus's own errors."""


class NoHandler(BusError):
    """No module owns this command or query."""


class AskTimeout(BusError, TimeoutError):
    """No reply arrived within the timeout: the outcome is unknown."""


class HandlerFailed(BusError):
    """The handler raised; `error_type` and the message say what."""

    def __init__(self, message: str, *, error_type: str = "Exception") -> None:
        super().__init__(message)
        self.error_type = error_type


class NoUnitOfWork(BusError):
    """send/publish was called outside a unit of work, so there is no outbox to write to."""
