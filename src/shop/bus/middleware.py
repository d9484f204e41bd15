"""The default handler middleware: metrics and logs for every handled message."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import structlog

from shop.observability import metrics

if TYPE_CHECKING:
    from prometheus_client.metrics import Counter, Histogram

    from shop.bus.bus import Call, Next

log = structlog.get_logger("shop.bus.handler")
_children: dict[tuple[str, str], tuple[Histogram, Counter]] = {}


def _metrics_for(consumer: str, message_type: str) -> tuple[Histogram, Counter]:
    key = (consumer, message_type)
    found = _children.get(key)
    if found is None:
        found = _children[key] = (
            metrics.HANDLER_LATENCY.labels(consumer),
            metrics.BUS_HANDLED.labels(consumer, message_type),
        )
    return found


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
    latency, handled = _metrics_for(call.consumer, call.envelope.type)
    latency.observe(elapsed)
    handled.inc()
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
