"""The default handler middleware: metrics and logs for every handled message."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from shop.observability import metrics
from shop.observability.loggers import get_logger

if TYPE_CHECKING:
    from shop.bus.bus import Call, Next

log = get_logger("shop.bus.handler")


async def observe(call: Call, nxt: Next) -> Any:
    """Count and time the handler; log failures with the message's identity."""
    started = time.perf_counter()
    try:
        result = await nxt(call)
    except Exception as exc:
        log_failed(
            call.module,
            call.consumer,
            call.envelope.type,
            call.envelope.message_id,
            call.envelope.attempt,
            exc,
        )
        raise
    elapsed = time.perf_counter() - started
    metrics.BUS_HANDLERS.observe(call.consumer, call.envelope.type, elapsed)
    if _debug.enabled:
        log_handled(call.module, call.consumer, call.envelope.type, call.envelope.message_id, elapsed)
    return result


def log_failed(
    module: str, consumer: str, message_type: str, message_id: object, attempt: int, exc: Exception
) -> None:
    """The warning line of a handler that raised (also the lean local query path's)."""
    log.warning(
        "bus.handler_failed",
        module=module,
        consumer=consumer,
        type=message_type,
        message_id=str(message_id),
        attempt=attempt,
        error=repr(exc),
    )


def log_handled(module: str, consumer: str, message_type: str, message_id: object, elapsed: float) -> None:
    """The debug line of a handled message (write it only when `_debug.enabled`)."""
    log.debug(
        "bus.handled",
        module=module,
        consumer=consumer,
        type=message_type,
        message_id=str(message_id),
        duration_ms=round(elapsed * 1000, 3),
    )


class _Debug:
    """Whether per-message debug lines are wanted; set by the logging configuration."""

    enabled = False


_debug = _Debug()


def set_debug(enabled: bool) -> None:
    _debug.enabled = enabled
