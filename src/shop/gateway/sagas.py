"""Operator endpoints over the sagas of every local module (admin only): list, summary,
timeline, retry. Mounted by the composition root when a local module declares sagas
(``Module.sagas``), as the dead-letter endpoints are for every process."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime

import msgspec
from litestar import Controller, get, post
from litestar.datastructures import State
from litestar.exceptions import HTTPException, NotFoundException
from litestar.params import FromPath, FromQuery

from shop.bus.saga import SagaEngine, SagaState, TimelineEntry
from shop.db import unit_of_work
from shop.security.guards import admin_only
from shop.web.pagination import Cursor, Limit, Page, encode_cursor, id_cursor, offset_cursor

PATH = "/api/v1/admin/sagas"


class SagaOut(msgspec.Struct):
    id: str
    type: str
    status: str
    step: str | None
    deadline: datetime | None
    updated_at: datetime
    failure_reason: str | None


class SagaSummaryOut(msgspec.Struct):
    by_status: dict[str, int]
    by_type: dict[str, dict[str, int]]
    overdue: int


class TimelineOut(msgspec.Struct, omit_defaults=True):
    step: str
    status: str
    at: datetime
    detail: str | None = None


def _saga(s: SagaState) -> SagaOut:
    deadline = s.step_deadline or s.deadline  # the one that comes first
    return SagaOut(str(s.id), s.type, str(s.status), s.step, deadline, s.updated_at, s.failure_reason)


def _engines(state: State) -> Mapping[str, SagaEngine]:
    engines: Mapping[str, SagaEngine] = state["saga_engines"]
    return engines


async def _owner(state: State, saga_id: uuid.UUID) -> tuple[SagaEngine, SagaState] | None:
    """The engine that runs the saga, and the saga; None when no local module has it."""
    for engine in _engines(state).values():
        found = await engine.get(saga_id)
        if found is not None:
            return engine, found
    return None


def timeline_page(entries: list[TimelineEntry], limit: int, cursor: str | None) -> Page[TimelineOut]:
    """A page of a saga's timeline (the cursor is an offset)."""
    start = offset_cursor(cursor)
    window = entries[start : start + limit]
    more = start + limit < len(entries)
    return Page(
        items=[TimelineOut(e.step, str(e.status), e.at, e.detail) for e in window],
        next_cursor=encode_cursor(start + limit) if more else None,
    )


class SagaAdminController(Controller):
    path = PATH
    tags = ["operations"]
    guards = [admin_only]

    @get("/", summary="Sagas by state, or past their deadline (operators)")
    async def list_sagas(
        self,
        state: State,
        status: FromQuery[str | None] = None,
        overdue: FromQuery[bool] = False,
        limit: Limit = 20,
        cursor: Cursor = None,
    ) -> Page[SagaOut]:
        """`status` filters by state (e.g. `COMPENSATION_FAILED`, `PARKED`); `overdue=true` keeps
        the sagas not final whose step or saga deadline has passed."""
        after = id_cursor(cursor)
        anchor: tuple[datetime, uuid.UUID] | None = None
        if after is not None:
            owner = await _owner(state, after)
            if owner is None:
                return Page(items=[], next_cursor=None)
            anchor = (owner[1].created_at, owner[1].id)
        sagas: list[SagaState] = []
        for engine in _engines(state).values():
            sagas.extend(await engine.list_sagas(status, limit + 1, overdue=overdue, after_key=anchor))
        sagas.sort(key=lambda s: (s.created_at, s.id), reverse=True)
        window = sagas[:limit]
        more = len(sagas) > limit
        return Page(
            items=[_saga(s) for s in window],
            next_cursor=encode_cursor(str(window[-1].id)) if more and window else None,
        )

    @get("/summary", summary="How many sagas are in each state, and how many are overdue")
    async def summary(self, state: State) -> SagaSummaryOut:
        by_type: dict[str, dict[str, int]] = {}
        by_status: dict[str, int] = {}
        overdue = 0
        for engine in _engines(state).values():
            for (saga_type, status), count in sorted((await engine.counts()).items()):
                by_type.setdefault(saga_type, {})[status] = count
                by_status[status] = by_status.get(status, 0) + count
            overdue += sum((await engine.overdue_counts()).values())
        return SagaSummaryOut(by_status=dict(sorted(by_status.items())), by_type=by_type, overdue=overdue)

    @get("/{saga_id:uuid}/timeline", summary="One saga's steps, in order (operators)")
    async def saga_timeline(
        self, state: State, saga_id: FromPath[uuid.UUID], limit: Limit = 100, cursor: Cursor = None
    ) -> Page[TimelineOut]:
        """Any saga's history by its id (an order's `place_order` saga has the order's id; its
        cancellation saga has its own); 404 for an unknown saga."""
        owner = await _owner(state, saga_id)
        if owner is None:
            raise NotFoundException(detail="no such saga")
        return timeline_page(await owner[0].timeline(saga_id), limit, cursor)

    @post(
        "/{saga_id:uuid}/retry",
        summary="Resume a COMPENSATION_FAILED or PARKED saga",
        status_code=202,
        problems={409: "the saga has nothing to retry"},
    )
    async def retry(self, state: State, saga_id: FromPath[uuid.UUID]) -> SagaOut:
        """202 with the saga as it is now (it goes on in the background); 404 for an unknown
        saga; 409 for a saga that has nothing to retry."""
        owner = await _owner(state, saga_id)
        if owner is None:
            raise NotFoundException(detail="no such saga")
        engine = owner[0]
        async with unit_of_work(engine.database):  # it advances once this commits
            retried = await engine.retry(saga_id)
        now = await engine.get(saga_id)
        if now is None:
            raise NotFoundException(detail="no such saga")
        if not retried:
            raise HTTPException(
                status_code=409,
                detail=f"the saga is {now.status}: only COMPENSATION_FAILED or PARKED sagas (or steps "
                "waiting to be retried) can be retried",
            )
        return _saga(now)
