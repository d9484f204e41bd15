"""The timers of a module's sagas: which sagas they pick up (retries due, deadlines passed,
abandoned by a dead process; at start-up, every unfinished one), the tick that advances them
and the loop that ticks."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from shop.bus.saga.definition import Clock
from shop.bus.saga.queries import SagaQueries
from shop.bus.saga.state import SagaState
from shop.bus.saga.statuses import SagaStatus
from shop.bus.tables import saga_instances
from shop.db import Database, unit_of_work
from shop.observability.loggers import get_logger

__all__ = ["SagaTimers", "due", "run_every", "unfinished"]

log = get_logger("shop.bus.saga")

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


class SagaTimers(SagaQueries):
    """Timer passes over a module's sagas; the engine supplies :meth:`advance` and :meth:`_busy`."""

    def __init__(
        self,
        database: Database,
        clock: Clock,
        stale_after: timedelta,
        batch_size: int,
        tick_interval: float = 1.0,
        startup_grace: float = 0.0,
    ) -> None:
        super().__init__(database, clock)
        self._stale_after = stale_after
        self._batch_size = batch_size
        self.tick_interval = tick_interval
        self.startup_grace = startup_grace

    async def advance(self, saga_id: uuid.UUID) -> SagaState | None:
        raise NotImplementedError

    def _busy(self, saga_id: uuid.UUID) -> bool:
        raise NotImplementedError

    async def _due(self, query: sa.Select[Any]) -> list[uuid.UUID]:
        async with unit_of_work(self.database, write=False) as uow:
            return list((await uow.session.execute(query)).scalars().all())

    async def _advance_each(self, ids: Iterable[uuid.UUID]) -> int:
        count = 0
        for saga_id in ids:
            if self._busy(saga_id):
                continue  # being advanced in this process right now
            try:
                await self.advance(saga_id)
            except Exception:
                log.exception("saga.advance_failed", saga_id=str(saga_id))
            count += 1
        return count

    async def tick(self) -> int:
        """One pass of timers: advance sagas whose retry time or deadline has come.

        Also picks up RUNNING/COMPENSATING sagas nobody touched for ``stale_after`` (their
        advancing process died). Returns how many sagas were advanced.
        """
        query = due(self._now(), self._stale_after, self._batch_size)
        return await self._advance_each(await self._due(query))

    async def resume_all(self) -> int:
        """At start-up: advance every RUNNING/COMPENSATING saga, and WAITING ones past a deadline."""
        return await self._advance_each(await self._due(unfinished(self._now())))

    async def run(self, interval: float | None = None) -> None:
        """Call :meth:`tick` every ``interval`` seconds (``tick_interval``) until cancelled."""
        await run_every(self.tick, self.tick_interval if interval is None else interval)

    async def serve(self) -> None:
        """What the composition root runs for a module's sagas: after ``startup_grace`` seconds
        :meth:`resume_all`, then :meth:`run` until cancelled.

        The grace lets outcomes that were on their way at a restart (an event still in an
        outbox, relayed by the start-up sweep) land before a deadline that passed while the
        process was down is enforced."""
        await asyncio.sleep(self.startup_grace)
        await self.resume_all()
        await self.run()
