"""Loading and saving a saga row: the statements (built once), the optimistic version check,
the timeline lines and the definition's hooks, all in the caller's transaction."""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Awaitable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from shop.bus.saga.definition import Saga, SagaContext
from shop.bus.saga.state import Change, Event, SagaRow, context_of, copy_data
from shop.bus.tables import saga_instances, saga_steps
from shop.db import Database, Prepared, UnitOfWork, unit_of_work
from shop.db_tables import InsertIfAbsent
from shop.observability import metrics
from shop.observability.loggers import get_logger

__all__ = ["insert", "load", "step_hooks", "write"]

log = get_logger("shop.bus.saga")

# Built once and run as the driver's SQL where it can (`shop.db.Prepared`): a saga is loaded
# and saved several times an order.
_LOAD = Prepared(sa.select(saga_instances).where(saga_instances.c.id == sa.bindparam("b_id")))
_SAVE = Prepared(
    saga_instances.update().where(
        saga_instances.c.id == sa.bindparam("b_id"), saga_instances.c.version == sa.bindparam("b_version")
    )
)
_INSERT = InsertIfAbsent(saga_instances)
_STEP = Prepared(saga_steps.insert())
# What a save writes: every column but the key and what never changes after the insert.
_SAVED_COLUMNS = tuple(c.name for c in saga_instances.c if c.name not in ("id", "type", "created_at"))


def _save_with_timeline() -> Prepared:
    """PostgreSQL: the version-checked UPDATE and the change's timeline lines in one statement
    (one round trip where they took two): the lines come as arrays, inserted in their order,
    and only if the UPDATE matched; the statement answers how many rows it updated."""
    saved = (
        saga_instances.update()
        .where(
            saga_instances.c.id == sa.bindparam("b_id"), saga_instances.c.version == sa.bindparam("b_version")
        )
        .values(
            {name: sa.bindparam(f"v_{name}", type_=saga_instances.c[name].type) for name in _SAVED_COLUMNS}
        )
        .returning(saga_instances.c.id)
        .cte("saved")
    )
    lines = (
        sa.func.unnest(
            sa.bindparam("l_steps", type_=postgresql.ARRAY(saga_steps.c.step.type)),
            sa.bindparam("l_statuses", type_=postgresql.ARRAY(saga_steps.c.status.type)),
            sa.bindparam("l_details", type_=postgresql.ARRAY(saga_steps.c.detail.type)),
        )
        .table_valued("step", "status", "detail", with_ordinality="n")
        .render_derived(name="line")
    )
    timeline = saga_steps.insert().from_select(
        ["saga_id", "step", "status", "detail", "at"],
        sa.select(
            saved.c.id,
            lines.c.step,
            lines.c.status,
            lines.c.detail,
            sa.bindparam("l_at", type_=saga_steps.c.at.type),
        )
        .select_from(saved.join(lines, sa.true()))
        .order_by(lines.c.n),
    )
    return Prepared(sa.select(sa.func.count()).select_from(saved).add_cte(timeline.cte("timeline")))


_SAVE_WITH_TIMELINE = _save_with_timeline()


async def load(
    database: Database, saga_id: uuid.UUID, session: AsyncConnection | None = None
) -> SagaRow | None:
    """The saga's row, read in ``session`` or in a read-only unit of work of its own."""
    params = {"b_id": saga_id}
    if session is not None:
        found = (await _LOAD.execute(session, params)).mappings()
    else:
        async with unit_of_work(database, write=False) as uow:
            found = (await _LOAD.execute(uow, params)).mappings()
    return SagaRow.from_mapping(found[0]) if found else None


async def _call_hook(result: Awaitable[None] | None) -> None:
    if inspect.isawaitable(result):
        await result


async def step_hooks(definition: Saga, row: SagaRow, change: Change, session: AsyncConnection) -> None:
    """The definition's ``on_step`` hook for each of ``change``'s timeline lines that calls it."""
    if definition.on_step is None:
        return
    data: dict[str, Any] | None = None  # one copy of the data for the change's lines
    for event in change.events:
        if event.hook:
            if data is None:
                data = copy_data(row.data)
            ctx = SagaContext(row.id, row.type, event.step, data, attempt=row.attempts + 1)
            await _call_hook(definition.on_step(ctx, event.step, event.status, session))


async def write(uow: UnitOfWork, definition: Saga, row: SagaRow, change: Change, now: datetime) -> bool:
    """Save ``row`` if nobody changed it since it was loaded; timeline and hooks alike.

    False (and ``row.stale``) when the version check fails: someone else saved it first.
    """
    session = uow.session
    expected = row.version
    if change.finish is not None:
        for key in definition.transient:
            row.data.pop(key, None)
    if not await _save(uow, row, change, now):
        log.info("saga.concurrent_change", saga_id=str(row.id), version=expected)
        row.stale = True
        return False
    row.version = expected + 1
    row.updated_at = now
    row.stored = (row.status, row.next_attempt_at)
    await step_hooks(definition, row, change, session)
    finish = change.finish
    if finish is not None:
        if definition.on_finish is not None:
            ctx = context_of(row, row.step or "")
            await _call_hook(definition.on_finish(ctx, finish.status, finish.reason, session))
        if finish.final:
            saga_type, status = row.type, finish.status

            async def count() -> None:
                metrics.SAGAS.labels(saga_type, status).inc()

            uow.after_commit(count)
        log.info(
            "saga.finished", saga_id=str(row.id), type=row.type, status=finish.status, reason=finish.reason
        )
    return True


async def _save(uow: UnitOfWork, row: SagaRow, change: Change, now: datetime) -> bool:
    """The row at its next version and the change's timeline lines, if the stored row is still
    at ``row.version``; False (nothing written) if not."""
    expected = row.version
    values = {**_state(row), "version": expected + 1, "updated_at": now}
    if uow.database.is_sqlite:
        # SQLite rewrites an index's entry whenever the UPDATE sets one of its columns, even to
        # the value it had: the indexed columns that have not changed since the stored version
        # (most saves keep RUNNING and no retry time) are left out (ADR 0031).
        stored = row.stored
        if stored is not None:
            if stored[0] == row.status:
                del values["status"]
            if stored[1] == row.next_attempt_at:
                del values["next_attempt_at"]
        result = await _SAVE.execute(uow, {"b_id": row.id, "b_version": expected, **values})
        if result.rowcount != 1:
            return False
        await _timeline(uow, row.id, change.events, now)
        return True
    result = await _SAVE_WITH_TIMELINE.execute(  # PostgreSQL: one round trip for both
        uow,
        {
            "b_id": row.id,
            "b_version": expected,
            **{f"v_{name}": value for name, value in values.items()},
            "l_steps": [e.step for e in change.events],
            "l_statuses": [e.status for e in change.events],
            "l_details": [e.detail for e in change.events],
            "l_at": now,
        },
    )
    return bool(result.scalar() == 1)


async def _timeline(
    target: UnitOfWork | AsyncConnection, saga_id: uuid.UUID, events: Sequence[Event], now: datetime
) -> None:
    """Timeline lines, one for each of ``events``."""
    lines = [
        {"saga_id": saga_id, "step": e.step, "status": e.status, "detail": e.detail, "at": now}
        for e in events
    ]
    if len(lines) == 1:
        await _STEP.execute(target, lines[0])
    else:  # one call (SQLite's executemany) or one statement (a server) for them all
        await _STEP.execute_many(target, lines)


def _state(row: SagaRow) -> dict[str, Any]:
    """The columns of ``row`` that a save writes (besides its version and time)."""
    return {
        "status": row.status,
        "step": row.step,
        "step_index": row.step_index,
        "data": row.stored_data(),
        "failure_reason": row.failure_reason,
        "step_deadline": row.step_deadline,
        "deadline": row.deadline,
        "attempts": row.attempts,
        "next_attempt_at": row.next_attempt_at,
    }


async def insert(session: AsyncConnection, row: SagaRow, started: str, change: Change | None = None) -> bool:
    """A new saga's row (see `SagaRow.new`), its first timeline line and ``change``'s (the
    first step's claim); False (and nothing written) when a saga with that id exists already."""
    values = {
        "id": row.id,
        "type": row.type,
        **_state(row),
        "version": row.version,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }
    if not await _INSERT.execute(session, values):
        return False
    row.stored = (row.status, row.next_attempt_at)
    claim = change.events if change is not None else []
    await _timeline(session, row.id, [Event(row.type, started, hook=False), *claim], row.created_at)
    return True
