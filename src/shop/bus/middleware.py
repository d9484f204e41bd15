"""The default handler middleware: metrics and logs for every handled message."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import structlog

from shop.observability import metrics

if TYPE_CHECKING:
    from shop.bus.bus import Call, Next

log = structlog.get_logger("shop.bus.handler")


async def observe(call: Call, nxt: Next) -> Any:
    """Count and time the handler; log failures with the message's identity."""
    started = time.perf_counter()
    try:
        result = await nxt(call)
    except Exception as exc:
        log.warning(
            "bus.handler_failed",
            module=call.module,
            consumer=call.consumer,
            type=call.envelope.type,
            message_id=str(call.envelope.message_id),
            attempt=call.envelope.attempt,
            error=repr(exc),
        )
        raise
    elapsed = time.perf_counter() - started
    metrics.BUS_HANDLERS.observe(call.consumer, call.envelope.type, elapsed)
    if _debug.enabled:
        log.debug(
            "bus.handled",
            module=call.module,
            consumer=call.consumer,
            type=call.envelope.type,
            message_id=str(call.envelope.message_id),
            duration_ms=round(elapsed * 1000, 3),
        )
    return result


class _Debug:
    """Whether per-message debug lines are wanted; set by the logging configuration."""

    enabled = False


_debug = _Debug()


def set_debug(enabled: bool) -> None:
    _debug.enabled = enabled
