"""Which sagas the timers pick up (retries due, deadlines passed, abandoned by a dead process;
at start-up, every unfinished one) and the loop that ticks them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
import structlog

from shop.bus.saga.statuses import SagaStatus
from shop.bus.tables import saga_instances

__all__ = ["due", "run_every", "unfinished"]

log = structlog.get_logger("shop.bus.saga")

_MOVING = (SagaStatus.RUNNING, SagaStatus.COMPENSATING)
_ON_TIME = (SagaStatus.RUNNING, SagaStatus.WAITING)


def due(now: datetime, stale_after: timedelta, limit: int) -> sa.Select[Any]:
    """Sagas whose retry time or deadline has come, and RUNNING/COMPENSATING ones nobody
    touched for ``stale_after`` (their advancing process died); least recently touched first."""
    c = saga_instances.c
    moving = c.status.in_(_MOVING)
    return (
        sa.select(c.id)
        .where(
            sa.or_(
                sa.and_(moving, c.next_attempt_at <= now),
                sa.and_(c.status.in_(_ON_TIME), sa.or_(c.step_deadline <= now, c.deadline <= now)),
                sa.and_(moving, c.next_attempt_at.is_(None), c.updated_at <= now - stale_after),
            )
        )
        .order_by(c.updated_at)
        .limit(limit)
    )


def unfinished(now: datetime) -> sa.Select[Any]:
    """At start-up: every RUNNING/COMPENSATING saga, and WAITING ones past a deadline."""
    c = saga_instances.c
    return (
        sa.select(c.id)
        .where(
            sa.or_(
                c.status.in_(_MOVING),
                sa.and_(c.status == SagaStatus.WAITING, sa.or_(c.step_deadline <= now, c.deadline <= now)),
            )
        )
        .order_by(c.created_at)
    )


async def run_every(tick: Callable[[], Awaitable[int]], interval: float) -> None:
    """Await ``tick`` every ``interval`` seconds until cancelled; a failed tick is logged."""
    while True:
        try:
            await tick()
        except Exception:
            log.exception("saga.tick_failed")
        await asyncio.sleep(interval)
