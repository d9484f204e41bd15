"""The idempotent consumer (inbox) and the dead-letter store, both in the consumer's schema."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec
import sqlalchemy as sa

from shop.bus import outbox
from shop.bus.messages import Envelope, decode_envelope, encode
from shop.bus.outbox import Relay
from shop.bus.tables import dead_letters, inbox
from shop.db import Database, Prepared, UnitOfWork, unit_of_work
from shop.db_tables import InsertIfAbsent

_SEEN = Prepared(
    sa.select(inbox.c.reply).where(
        inbox.c.consumer == sa.bindparam("b_consumer"), inbox.c.message_id == sa.bindparam("b_message_id")
    )
)
_RECORD = Prepared(inbox.insert())
_CLAIM = InsertIfAbsent(inbox)
_KEEP_REPLY = Prepared(
    inbox.update()
    .where(inbox.c.consumer == sa.bindparam("b_consumer"), inbox.c.message_id == sa.bindparam("b_message_id"))
    .values(reply=sa.bindparam("reply"))
)


async def seen(uow: UnitOfWork, consumer: str, message_id: uuid.UUID) -> tuple[bool, bytes | None]:
    """Whether `consumer` already handled `message_id`, and the reply it gave then."""
    row = (await _SEEN.execute(uow, {"b_consumer": consumer, "b_message_id": message_id})).first()
    return (row is not None, row[0] if row is not None else None)


async def record(uow: UnitOfWork, consumer: str, message_id: uuid.UUID, reply: bytes | None) -> None:
    """Record the handling in the handler's own transaction (a duplicate fails the commit)."""
    await _RECORD.execute(
        uow, {"consumer": consumer, "message_id": message_id, "reply": reply, "handled_at": time.time()}
    )


async def claim(uow: UnitOfWork, consumer: str, message_id: uuid.UUID) -> tuple[bool, bytes | None]:
    """Record that `consumer` handles `message_id` in the handler's own transaction, before it
    runs: (True, None) the first time; (False, the reply it gave then) for a duplicate. One
    statement where a check and a record took two; a concurrent duplicate waits for the first
    to commit (PostgreSQL's unique key; SQLite's write lock) and then finds it. The claim goes
    with the transaction when the handler fails."""
    if await _CLAIM.execute(
        uow, {"consumer": consumer, "message_id": message_id, "reply": None, "handled_at": time.time()}
    ):
        return True, None
    return False, (await seen(uow, consumer, message_id))[1]


async def keep_reply(uow: UnitOfWork, consumer: str, message_id: uuid.UUID, reply: bytes) -> None:
    """Store the reply of a claimed handling (answered again to a duplicate)."""
    await _KEEP_REPLY.execute(uow, {"b_consumer": consumer, "b_message_id": message_id, "reply": reply})


PRUNE_BATCH = 1000


async def prune(database: Database, older_than: float, *, batch: int = PRUNE_BATCH) -> int:
    """Forget handlings recorded before `older_than` (epoch seconds), `batch` rows per short
    transaction; how many were removed. A redelivery older than the retention is not expected:
    the outbox, the transports' retries and a redrive all come much sooner."""
    removed = 0
    while True:
        oldest = (
            sa.select(inbox.c.consumer, inbox.c.message_id)
            .where(inbox.c.handled_at < older_than)
            .limit(batch)
        )
        async with unit_of_work(database) as uow:
            result = await uow.session.execute(
                inbox.delete().where(sa.tuple_(inbox.c.consumer, inbox.c.message_id).in_(oldest))
            )
        count = int(result.rowcount)
        removed += count
        if count < batch:
            return removed


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: uuid.UUID
    module: str
    message_id: uuid.UUID
    message_type: str
    consumer: str
    queue: str
    error: str
    attempts: int
    failed_at: datetime
    envelope: Envelope


ERROR_LIMIT = 4000


def _bounded(error: str) -> str:
    """A traceback cut to ERROR_LIMIT characters around the middle: its first frames and its end,
    where the exception that finally failed the message is named."""
    if len(error) <= ERROR_LIMIT:
        return error
    head = ERROR_LIMIT // 4
    tail = ERROR_LIMIT - head - 5
    return f"{error[:head]}\n...\n{error[-tail:]}"


async def bury(database: Database, queue: str, envelope: Envelope, error: str) -> uuid.UUID:
    """Store a message that failed for the last time."""
    entry_id = uuid.uuid4()
    async with unit_of_work(database) as uow:
        await uow.session.execute(
            dead_letters.insert().values(
                id=entry_id,
                message_id=envelope.message_id,
                message_type=envelope.type,
                consumer=envelope.consumer or "",
                queue=queue,
                envelope=encode(envelope),
                error=_bounded(error),
                attempts=envelope.attempt,
                failed_at=datetime.now(UTC),
            )
        )
    return entry_id


def _entry(module: str, row: sa.Row[tuple[object, ...]]) -> DeadLetter:
    m = row._mapping
    failed_at = m["failed_at"]
    if failed_at.tzinfo is None:
        failed_at = failed_at.replace(tzinfo=UTC)
    return DeadLetter(
        id=m["id"],
        module=module,
        message_id=m["message_id"],
        message_type=m["message_type"],
        consumer=m["consumer"],
        queue=m["queue"],
        error=m["error"],
        attempts=m["attempts"],
        failed_at=failed_at,
        envelope=decode_envelope(m["envelope"]),
    )


async def list_dead(
    database: Database, *, limit: int | None = None, after: tuple[datetime, uuid.UUID] | None = None
) -> list[DeadLetter]:
    """Dead letters oldest first, by (failed_at, id): at most `limit`, those after `after`."""
    query = sa.select(dead_letters)
    if after is not None:
        query = query.where(sa.tuple_(dead_letters.c.failed_at, dead_letters.c.id) > sa.tuple_(*after))
    query = query.order_by(dead_letters.c.failed_at, dead_letters.c.id)
    if limit is not None:
        query = query.limit(limit)
    async with unit_of_work(database, write=False) as uow:
        rows = await uow.session.execute(query)
        return [_entry(database.module, row) for row in rows]


async def get_dead(database: Database, entry_id: uuid.UUID) -> DeadLetter | None:
    async with unit_of_work(database, write=False) as uow:
        row = (
            await uow.session.execute(sa.select(dead_letters).where(dead_letters.c.id == entry_id))
        ).first()
        return _entry(database.module, row) if row is not None else None


async def redrive(database: Database, entry_id: uuid.UUID, relay: Relay | None = None) -> bool:
    """Put a dead letter back on its way to its consumer (attempts start again); False if gone.

    The envelope goes into the module's outbox in the same transaction that removes the entry,
    so a redrive is never lost nor doubled."""
    async with unit_of_work(database) as uow:
        row = (
            await uow.session.execute(
                sa.select(dead_letters.c.envelope).where(dead_letters.c.id == entry_id).with_for_update()
            )
        ).first()
        if row is None:
            return False
        envelope = msgspec.structs.replace(decode_envelope(row[0]), attempt=1, sent_at=time.time())
        await uow.session.execute(dead_letters.delete().where(dead_letters.c.id == entry_id))
        await outbox.write(uow, envelope, relay)
    return True


async def remove_dead(database: Database, entry_id: uuid.UUID) -> bool:
    async with unit_of_work(database) as uow:
        result = await uow.session.execute(dead_letters.delete().where(dead_letters.c.id == entry_id))
        return bool(result.rowcount)
