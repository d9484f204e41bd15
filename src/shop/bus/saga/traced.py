"""A saga's steps in the trace of the context that started it (they run after that context is
gone: in a task after commit, from a timer, after a restart)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from shop.bus import context
from shop.bus.saga.state import SagaRow
from shop.observability import tracing

__all__ = ["trace_of", "traced"]


def trace_of(ctx: context.MessageContext) -> dict[str, str]:
    """What a saga keeps of the context that starts it (JSON)."""
    trace: dict[str, str] = {}
    if ctx.traceparent:
        trace["traceparent"] = ctx.traceparent
    if ctx.correlation_id:
        trace["correlation_id"] = str(ctx.correlation_id)
    return trace


def _uuid_or_none(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value)) if value else None
    except ValueError:
        return None


@contextmanager
def traced(row: SagaRow, phase: str) -> Iterator[None]:
    """One step's work (its call, its save, the hooks' messages) in the trace of the context
    that started the saga: the current context when it is of that trace (the handler that
    started it or that reported the step's outcome), else the stored one (a timer, a
    restart, an operator's retry). With tracing on, inside a span of its own."""
    stored = row.trace.get("traceparent")
    current = context.current()
    resume = (
        isinstance(stored, str)
        and context.parse_traceparent(stored) is not None
        and context.trace_id_of(current.traceparent) != context.trace_id_of(stored)
    )
    token = None
    if resume:
        token = context.enter(
            context.MessageContext(
                correlation_id=_uuid_or_none(row.trace.get("correlation_id")), traceparent=stored
            )
        )
    try:
        with tracing.child_span(
            f"saga {row.type} {row.step}",
            attributes={
                "shop.saga.id": str(row.id),
                "shop.saga.type": row.type,
                "shop.saga.step": row.step or "",
                "shop.saga.phase": phase,
                "shop.saga.attempt": row.attempts + 1,
            },
        ):
            yield
    finally:
        if token is not None:
            context.leave(token)
