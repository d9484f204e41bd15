"""Named structlog loggers, bound once per configuration instead of once per call.

`structlog.get_logger()` returns a lazy proxy that builds a new bound logger on every call:
~4 µs for a `debug` line that is filtered out anyway, ~10 µs for an `info` line, and the saga
and payments write several an order (ADR 0031). `get_logger` here keeps the bound logger and
builds it again only when structlog's configuration has changed (`structlog.configure`,
`shop.observability.logging.configure`, a test's `structlog.configure`): the lines are the
same, and `structlog.testing.capture_logs`, which edits the processors list in place, still
sees them.
"""

from __future__ import annotations

from typing import Any

import structlog
from structlog._config import _CONFIG  # the configuration `configure` assigns to


def _configuration() -> tuple[Any, ...]:
    return (
        _CONFIG.default_processors,
        _CONFIG.default_wrapper_class,
        _CONFIG.default_context_class,
        _CONFIG.logger_factory,
    )


class Logger:
    """A structlog logger of a fixed name (`get_logger`); `debug` … `exception` as structlog's."""

    __slots__ = ("_bound", "_made_for", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._bound: Any = None
        self._made_for: tuple[Any, ...] = ()

    def _logger(self) -> Any:
        made_for = self._made_for
        if (
            self._bound is None
            or made_for[0] is not _CONFIG.default_processors
            or made_for[1] is not _CONFIG.default_wrapper_class
            or made_for[2] is not _CONFIG.default_context_class
            or made_for[3] is not _CONFIG.logger_factory
        ):
            self._made_for = _configuration()
            self._bound = structlog.get_logger(self._name).bind()
        return self._bound

    def debug(self, event: str, **values: Any) -> Any:
        return self._logger().debug(event, **values)

    def info(self, event: str, **values: Any) -> Any:
        return self._logger().info(event, **values)

    def warning(self, event: str, **values: Any) -> Any:
        return self._logger().warning(event, **values)

    def error(self, event: str, **values: Any) -> Any:
        return self._logger().error(event, **values)

    def exception(self, event: str, **values: Any) -> Any:
        return self._logger().exception(event, **values)

    def bind(self, **values: Any) -> Any:
        """A logger with `values` on each line (structlog's, bound now)."""
        return self._logger().bind(**values)


def get_logger(name: str) -> Logger:
    """The logger called `name` (the stdlib-style name structlog's `get_logger` takes)."""
    return Logger(name)
