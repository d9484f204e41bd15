"""The transactional outbox and its relay.

`send` and `publish` write an outbox row in the caller's transaction. After that transaction
commits, the relay hands the envelope to the transport, once per consumer, and deletes the row
when every receipt has resolved. Rows left behind by a crash are swept at start-up and then
periodically, so a message written is a message delivered, at least once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence

import msgspec
import sqlalchemy as sa

from shop.bus import context
from shop.bus.messages import Envelope, decode_envelope, encode
from shop.bus.tables import outbox
from shop.db import Database, Prepared, UnitOfWork, unit_of_work
from shop.observability import metrics
from shop.observability.logcontext import enter_module
from shop.observability.loggers import get_logger

log = get_logger("shop.bus.outbox")

Route = tuple[str, str]  # (queue, consumer)
Deliver = Callable[[str, Envelope], Awaitable[Awaitable[None]]]
# A transport's hand-over that never waits (in process): the receipt, at once.
HandOver = Callable[[str, Envelope], "asyncio.Future[None]"]


_INSERT = Prepared(outbox.insert())


async def write(uow: UnitOfWork, envelope: Envelope, relay: Relay | None) -> None:
    """Add an envelope to the outbox of the unit of work's module; relay it after commit.

    An envelope that names its `consumer` goes to that consumer only (a redriven message).
    Without a relay (a CLI process) the row waits for the running shop's sweep.

    An event that no module subscribes to is not written: the routes come from the module
    list every process shares, so no relay or sweep anywhere would deliver it (the row would
    only be deleted again); its producer span, metrics and logs are the publisher's as usual."""
    if relay is not None and not relay.routes(envelope):
        return
    await _INSERT.execute(
        uow,
        {
            "id": envelope.message_id,
            "message_type": envelope.type,
            "envelope": encode(envelope),
            "traceparent": envelope.traceparent,
            "created_at": envelope.sent_at,
        },
    )
    if relay is None:
        return
    pending: list[Envelope] | None = uow.items.get("outbox")
    if pending is None:
        pending = uow.items["outbox"] = []
        database = uow.database

        async def relay_after_commit() -> None:
            relay.relay(database, pending)

        uow.after_commit(relay_after_commit)
    pending.append(envelope)


STOP_GRACE_S = 1.0  # how long `Relay.stop` lets a flush in progress finish


class Relay:
    """Relays committed outbox rows and forgets them once delivered."""

    def __init__(
        self,
        databases: Mapping[str, Database],
        routes: Callable[[Envelope], Sequence[Route]],
        deliver: Deliver,
        *,
        hand_over: HandOver | None = None,
        sweep_interval: float = 5.0,
        sweep_grace: float = 5.0,
        batch_delay: float = 0.01,
    ) -> None:
        self.databases = dict(databases)
        self.routes = routes
        self.deliver = deliver
        self.hand_over = hand_over
        self.sweep_interval = sweep_interval
        self.sweep_grace = sweep_grace
        self.batch_delay = batch_delay
        self._in_flight: set[tuple[str, uuid.UUID]] = set()
        self._done: dict[str, list[uuid.UUID]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._flusher: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._flush_wanted = asyncio.Event()
        self._stopping = False  # set by stop: the flush loop ends after its flush

    async def start(self) -> None:
        self._stopping = False
        await self.sweep(grace=0.0)
        self._flusher = asyncio.create_task(self._flush_loop(), name="outbox:flush")
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="outbox:sweep")

    async def stop(self) -> None:
        for task in (self._sweeper, *self._tasks):
            if task is not None:
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._sweeper is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._flusher is not None:
            # The flush loop ends after the flush it is in (or one more, at once): cancelling it
            # inside a unit of work interrupted a database call (on PostgreSQL, a connection
            # being opened). Cancelled only if it does not end within STOP_GRACE_S.
            self._stopping = True
            self._flush_wanted.set()
            try:
                await asyncio.wait_for(asyncio.shield(self._flusher), STOP_GRACE_S)
            except TimeoutError:
                self._flusher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._flusher
        await self.flush()

    def relay(self, database: Database, envelopes: Sequence[Envelope]) -> None:
        """Deliver freshly committed envelopes in the background: one task hands the lot (a
        unit of work's messages, or a sweep's) to the transport, or, when the transport hands
        over without waiting (`hand_over`, in process), this call does; each envelope's
        receipts are then followed by callbacks (`_when_received`)."""
        module = database.module
        fresh = []
        for envelope in envelopes:
            key = (module, envelope.message_id)
            if key in self._in_flight:
                continue
            self._in_flight.add(key)
            fresh.append(envelope)
        if not fresh:
            return
        if self.hand_over is not None:
            self._hand_over(module, fresh, self.hand_over)
            return
        task = asyncio.create_task(self._deliver(module, fresh))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, module: str, envelopes: list[Envelope]) -> None:
        # A task of its own: what it logs is about the sending module and these messages.
        enter_module(module)
        for envelope in envelopes:
            context.enter(context.of_envelope(envelope, handling=False))
            try:
                receipts = [
                    asyncio.ensure_future(await self.deliver(queue, copy))
                    for queue, copy in self._copies(envelope)
                ]
            except Exception as exc:
                self._failed(module, envelope, exc)
                continue
            self._when_received(module, envelope, receipts)

    def _hand_over(self, module: str, envelopes: list[Envelope], hand_over: HandOver) -> None:
        # No task and no context of its own (ADR 0031): in the committing handler's, whose
        # module is the sending one; a receiver runs in its own worker's context.
        for envelope in envelopes:
            try:
                receipts = [hand_over(queue, copy) for queue, copy in self._copies(envelope)]
            except Exception as exc:
                self._failed(module, envelope, exc)
                continue
            self._when_received(module, envelope, receipts)

    def _copies(self, envelope: Envelope) -> list[tuple[str, Envelope]]:
        """(queue, the envelope addressed to that consumer) for each of its routes."""
        return [
            (queue, msgspec.structs.replace(envelope, consumer=consumer))
            for queue, consumer in self.routes(envelope)
        ]

    def _when_received(
        self, module: str, envelope: Envelope, receipts: Sequence[asyncio.Future[None]]
    ) -> None:
        """Forget the row once every receipt has resolved; on the first that fails, leave it
        to the sweep. Callbacks on the receipts, not a task and a gather an envelope."""
        pending = len(receipts)
        failed = False

        def received(receipt: asyncio.Future[None]) -> None:
            nonlocal pending, failed
            pending -= 1
            error = receipt.exception() if not receipt.cancelled() else asyncio.CancelledError()
            if failed:
                return
            if error is not None:
                failed = True
                self._failed(module, envelope, error)
            elif pending == 0:
                self._delivered(module, envelope)

        if not receipts:
            self._delivered(module, envelope)
        for receipt in receipts:
            receipt.add_done_callback(received)

    def _delivered(self, module: str, envelope: Envelope) -> None:
        metrics.OUTBOX_LAG.observe(max(0.0, time.time() - envelope.sent_at))
        self._done.setdefault(module, []).append(envelope.message_id)
        self._flush_wanted.set()

    def _failed(self, module: str, envelope: Envelope, exc: BaseException) -> None:
        """Left in the outbox: the sweep tries again."""
        log.warning("outbox.relay_failed", message_id=str(envelope.message_id), error=repr(exc))
        self._in_flight.discard((module, envelope.message_id))

    async def _flush_loop(self) -> None:
        while not self._stopping:
            await self._flush_wanted.wait()
            if not self._stopping:
                await asyncio.sleep(self.batch_delay)
            self._flush_wanted.clear()
            try:
                await self.flush()
            except Exception as exc:
                _unless_cancelled(exc)
                log.warning("outbox.flush_failed", error=repr(exc))

    async def flush(self) -> None:
        """Delete delivered rows, one statement per module."""
        done, self._done = self._done, {}
        for module, ids in done.items():
            try:
                async with unit_of_work(self.databases[module]) as uow:
                    await uow.session.execute(outbox.delete().where(outbox.c.id.in_(ids)))
            except Exception:
                self._done.setdefault(module, []).extend(ids)
                raise
            self._in_flight.difference_update((module, i) for i in ids)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            try:
                await self.sweep(grace=self.sweep_grace)
            except Exception as exc:
                _unless_cancelled(exc)
                log.warning("outbox.sweep_failed", error=repr(exc))

    async def sweep(self, *, grace: float) -> int:
        """Relay rows older than `grace` seconds that are not in flight; return how many."""
        count = 0
        cutoff = time.time() - grace
        for database in self.databases.values():
            async with unit_of_work(database, write=False) as uow:
                rows = await uow.session.execute(
                    sa.select(outbox.c.envelope)
                    .where(outbox.c.created_at <= cutoff)
                    .order_by(outbox.c.created_at)
                )
                envelopes = [decode_envelope(row[0]) for row in rows]
            fresh = [e for e in envelopes if (database.module, e.message_id) not in self._in_flight]
            if fresh:
                log.info("outbox.swept", module=database.module, count=len(fresh))
                self.relay(database, fresh)
                count += len(fresh)
        return count

    async def pending(self) -> int:
        """Rows still in every local outbox (for tests and metrics)."""
        total = 0
        for database in self.databases.values():
            async with unit_of_work(database, write=False) as uow:
                total += (
                    await uow.session.execute(sa.select(sa.func.count()).select_from(outbox))
                ).scalar_one()
        return total


def _unless_cancelled(exc: Exception) -> None:
    """Raise CancelledError if the running task is being cancelled: a cancellation that landed
    in a database call can come out as another error (a rollback that failed on the interrupted
    connection), and a loop that logged it and went on would never end (`Relay.stop` waits for
    it)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from exc
