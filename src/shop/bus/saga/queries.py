"""The read side of a module's sagas, for its handlers and for operators: one saga, its
timeline, pages of sagas, counts per type and status, and the overdue ones."""

from __future__ import annotations

import uuid
from datetime import datetime

import sqlalchemy as sa

from shop.bus.saga import store
from shop.bus.saga.checks import utc
from shop.bus.saga.definition import Clock
from shop.bus.saga.state import SagaRow, SagaState, TimelineEntry
from shop.bus.saga.statuses import NOT_FINAL
from shop.bus.tables import saga_instances, saga_steps
from shop.db import Database, unit_of_work

__all__ = ["SagaQueries"]


class SagaQueries:
    """Read-only queries over the sagas of one module's database."""

    def __init__(self, database: Database, clock: Clock) -> None:
        self.database = database
        self._clock = clock

    def _now(self) -> datetime:
        return utc(self._clock())

    async def get(self, saga_id: uuid.UUID) -> SagaState | None:
        """The saga's current state, or None."""
        row = await store.load(self.database, saga_id)
        return None if row is None else row.state()

    async def timeline(self, saga_id: uuid.UUID) -> list[TimelineEntry]:
        """The saga's history, oldest first."""
        query = (
            sa.select(saga_steps.c.step, saga_steps.c.status, saga_steps.c.at, saga_steps.c.detail)
            .where(saga_steps.c.saga_id == saga_id)
            .order_by(saga_steps.c.id)
        )
        async with unit_of_work(self.database, write=False) as uow:
            rows = (await uow.session.execute(query)).all()
        return [TimelineEntry(step, status, utc(at), detail) for step, status, at, detail in rows]

    def _overdue(self) -> sa.ColumnElement[bool]:
        """Not final, and the step's or the saga's deadline has passed."""
        c, now = saga_instances.c, self._now()
        return sa.and_(c.status.in_(NOT_FINAL), sa.or_(c.step_deadline <= now, c.deadline <= now))

    async def counts(self, *, final: bool = True) -> dict[tuple[str, str], int]:
        """How many sagas there are per (type, status); only the not-final ones if not ``final``."""
        c = saga_instances.c
        query = sa.select(c.type, c.status, sa.func.count()).group_by(c.type, c.status)
        if not final:
            query = query.where(c.status.in_(NOT_FINAL))
        async with unit_of_work(self.database, write=False) as uow:
            rows = (await uow.session.execute(query)).all()
        return {(saga_type, status): int(count) for saga_type, status, count in rows}

    async def overdue_counts(self) -> dict[str, int]:
        """How many sagas per type are past a deadline without being final (the timers have not
        caught up with them: the engine is not running, or a step keeps failing)."""
        c = saga_instances.c
        query = sa.select(c.type, sa.func.count()).where(self._overdue()).group_by(c.type)
        async with unit_of_work(self.database, write=False) as uow:
            rows = (await uow.session.execute(query)).all()
        return {saga_type: int(count) for saga_type, count in rows}

    async def list_sagas(
        self,
        status: str | None = None,
        limit: int = 20,
        after: uuid.UUID | None = None,
        *,
        overdue: bool = False,
        after_key: tuple[datetime, uuid.UUID] | None = None,
    ) -> list[SagaState]:
        """Sagas, newest first; ``after`` is the id of the last saga of the previous page (or
        ``after_key`` its creation time and id, when it may be in another module's database);
        ``overdue``: only those not final and past their step's or their own deadline."""
        c = saga_instances.c
        query = sa.select(saga_instances)
        if status is not None:
            query = query.where(c.status == status)
        if overdue:
            query = query.where(self._overdue())
        async with unit_of_work(self.database, write=False) as uow:
            if after is not None and after_key is None:
                anchor = (
                    await uow.session.execute(sa.select(c.created_at, c.id).where(c.id == after))
                ).first()
                if anchor is None:
                    return []
                after_key = (utc(anchor[0]), anchor[1])
            if after_key is not None:
                created_at, anchor_id = after_key
                query = query.where(
                    sa.or_(c.created_at < created_at, sa.and_(c.created_at == created_at, c.id < anchor_id))
                )
            query = query.order_by(c.created_at.desc(), c.id.desc()).limit(max(0, limit))
            rows = (await uow.session.execute(query)).mappings().all()
        return [SagaRow.from_mapping(row).state() for row in rows]
