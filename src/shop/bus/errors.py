"""Exceptions the bus raises to callers.

A handler that raised reaches its asker as :class:`HandlerFailed`, or as one of two subclasses
that say the module itself is not at fault, so that the module's circuit breaker does not count
them (a breaker guards one dependency and counts only that dependency's failures):

* :class:`DependencyFailed`: something outside the module failed -- a payment provider (the
  handler raised a :class:`DependencyFailure`), another module (a nested ask failed or timed
  out), an open breaker. That dependency's own breaker has counted it.
* :class:`InputRefused`: the handler raised on the input it was given (ValueError, TypeError,
  LookupError, a validation error): the caller's fault, counted by no breaker.
"""

from __future__ import annotations

from typing import ClassVar


class BusError(Exception):
    """Base of the bus's own errors."""


class NoHandler(BusError):
    """No module owns this command or query."""


class AskTimeout(BusError, TimeoutError):
    """No reply arrived within the timeout: the outcome is unknown."""


class DependencyFailure(Exception):
    """Base for what a handler raises when a dependency outside its module failed (e.g. a
    payment provider that is down): the asker sees :class:`DependencyFailed`."""


class HandlerFailed(BusError):
    """The handler raised; `error_type` and the message say what. `fault` says whose fault it
    was: "module" (here), "dependency" (:class:`DependencyFailed`), "input" (:class:`InputRefused`)."""

    fault: ClassVar[str] = "module"

    def __init__(self, message: str, *, error_type: str = "Exception") -> None:
        super().__init__(message)
        self.error_type = error_type


class DependencyFailed(HandlerFailed):
    """The handler failed because a dependency outside its module did."""

    fault: ClassVar[str] = "dependency"


class InputRefused(HandlerFailed):
    """The handler raised on the input it was given."""

    fault: ClassVar[str] = "input"


FAILURES: dict[str, type[HandlerFailed]] = {
    cls.fault: cls for cls in (HandlerFailed, DependencyFailed, InputRefused)
}


def handler_failed(message: str, *, error_type: str, fault: str | None) -> HandlerFailed:
    """The HandlerFailed (or subclass) for a fault carried across a transport."""
    return FAILURES.get(fault or "module", HandlerFailed)(message, error_type=error_type)


class NoUnitOfWork(BusError):
    """send/publish was called outside a unit of work, so there is no outbox to write to."""
