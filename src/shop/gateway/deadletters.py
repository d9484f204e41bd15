"""Operator endpoints for the dead-letter store (admin only): list, show, redrive."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import msgspec
from litestar import Controller, Response, get, post
from litestar.datastructures import State
from litestar.exceptions import NotFoundException
from litestar.params import FromPath

from shop.bus import inbox
from shop.bus.messages import to_json
from shop.bus.outbox import Relay
from shop.db import Database
from shop.security.guards import admin_only
from shop.web.pagination import Cursor, Limit, Page, encode_cursor, keyset_cursor


class DeadLetterOut(msgspec.Struct):
    id: str
    module: str
    message_type: str
    consumer: str
    error: str
    attempts: int
    failed_at: datetime


class DeadLetterDetail(msgspec.Struct):
    id: str
    module: str
    message_type: str
    consumer: str
    error: str
    attempts: int
    failed_at: datetime
    envelope: dict[str, Any]


def _summary(entry: inbox.DeadLetter) -> DeadLetterOut:
    last_line = entry.error.strip().splitlines()[-1] if entry.error.strip() else ""
    return DeadLetterOut(
        str(entry.id),
        entry.module,
        entry.message_type,
        entry.consumer,
        last_line,
        entry.attempts,
        entry.failed_at,
    )


class DeadLetterController(Controller):
    path = "/api/v1/admin/dead-letters"
    tags = ["operations"]
    guards = [admin_only]

    @get("/", summary="Dead letters of every local module, oldest first")
    async def list_dead_letters(
        self, state: State, limit: Limit = 20, cursor: Cursor = None
    ) -> Page[DeadLetterOut]:
        """Keyset pages by (failed_at, id): each local database is asked, in SQL, for the
        `limit + 1` entries after the cursor, and the first `limit` of them all are the page."""
        databases: Mapping[str, Database] = state["databases"]
        after = keyset_cursor(cursor)
        position = (datetime.fromisoformat(after[0]), uuid.UUID(after[1])) if after else None
        entries = [
            entry
            for database in databases.values()
            for entry in await inbox.list_dead(database, limit=limit + 1, after=position)
        ]
        entries.sort(key=lambda e: (e.failed_at, e.id))
        window = entries[:limit]
        last = window[-1] if window else None
        more = len(entries) > limit and last is not None
        return Page(
            items=[_summary(e) for e in window],
            next_cursor=encode_cursor(last.failed_at.isoformat(), str(last.id)) if more and last else None,
        )

    @get("/{entry_id:uuid}", summary="One dead letter with its envelope")
    async def show_dead_letter(self, state: State, entry_id: FromPath[uuid.UUID]) -> DeadLetterDetail:
        databases: Mapping[str, Database] = state["databases"]
        for database in databases.values():
            entry = await inbox.get_dead(database, entry_id)
            if entry is not None:
                s = _summary(entry)
                return DeadLetterDetail(
                    s.id, s.module, s.message_type, s.consumer, entry.error, s.attempts, s.failed_at,
                    msgspec.to_builtins(to_json(entry.envelope)),
                )  # fmt: skip
        raise NotFoundException(detail="no such dead letter")

    @post("/{entry_id:uuid}/redrive", summary="Deliver a dead letter again", status_code=202)
    async def redrive_dead_letter(
        self, state: State, entry_id: FromPath[uuid.UUID]
    ) -> Response[dict[str, str]]:
        databases: Mapping[str, Database] = state["databases"]
        relay: Relay = state["relay"]
        for database in databases.values():
            if await inbox.redrive(database, entry_id, relay):
                return Response({"id": str(entry_id), "status": "redriven"}, status_code=202)
        raise NotFoundException(detail="no such dead letter")
