"""Which module a log line is about.

The dispatcher binds the handler's module for each message it runs, the outbox relay the
sending module for each delivery, the saga engine its owning module while it advances a saga,
the composition root each module around its start-up hooks and background tasks. Lines written
outside all of those carry the process's own name (`shop`, `gateway`, or the modules a
`shop serve` process runs). `shop.observability.logging` merges it into every line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token

_module: ContextVar[str | None] = ContextVar("shop_log_module", default=None)


class _Process:
    name: str | None = None


_process = _Process()


def current_module() -> str | None:
    """The bound module, else the process's name, else None."""
    return _module.get() or _process.name


def set_process_module(name: str | None) -> None:
    """The name lines outside any module's work carry (set once at start-up)."""
    _process.name = name


enter_module: Callable[[str | None], Token[str | None]] = _module.set
"""Bind a module for the lines written until `leave_module` with the token."""
leave_module: Callable[[Token[str | None]], None] = _module.reset


@contextmanager
def bound_module(name: str) -> Iterator[None]:
    """Lines written inside are about module `name`."""
    token = _module.set(name)
    try:
        yield
    finally:
        _module.reset(token)
