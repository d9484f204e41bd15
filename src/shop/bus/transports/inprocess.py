"""The in-process transport: asyncio queues and workers, one pool per module.

Each module queue has its own bounded pool of workers, so a slow or hanging module cannot
starve another. Nothing here is durable: the outbox keeps a message until its receipt says it
was handled, and a restart redelivers what was in flight.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import msgspec

from shop.bus.errors import AskTimeout
from shop.bus.messages import Envelope, Message
from shop.bus.transports.base import Host, Outcome, is_query

_Item = tuple[Envelope, "asyncio.Future[None]"]


class Bulkhead:
    """At most `limit` requests at once; the others wait in arrival order. An asyncio.Semaphore
    with the free slot taken in two attribute operations instead of two coroutine calls (ADR
    0027): `try_enter()` when no one waits and a slot is free, else `await enter()`; `leave()`
    always, which hands the slot to the first waiter still waiting."""

    __slots__ = ("_waiters", "busy", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.busy = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    def try_enter(self) -> bool:
        if self.busy < self.limit and not self._waiters:
            self.busy += 1
            return True
        return False

    async def enter(self) -> None:
        if self.try_enter():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.leave()  # handed a slot just as the wait was cancelled: pass it on
            raise

    def leave(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot goes straight to it: `busy` stays
                return
        self.busy -= 1


class Deadline:
    """Cancels the current task `delay` seconds from now, unless cancelled first: a bare timer,
    as asyncio.timeout() with less bookkeeping (it costs more than a whole local request/reply).
    After a CancelledError, `expired()` tells whether it was this deadline's."""

    __slots__ = ("_fired", "_task", "_timer")

    def __init__(self, delay: float) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._fired = False
        self._timer = asyncio.get_running_loop().call_later(delay, self._expire)

    def _expire(self) -> None:
        self._fired = True
        self._task.cancel()

    def expired(self) -> bool:
        """Whether this deadline cancelled the task (and nothing else did: then it is not
        swallowed)."""
        return self._fired and self._task.uncancel() == 0

    def cancel(self) -> None:
        self._timer.cancel()


Answer = Callable[[str, Envelope, Message | None], Awaitable[Any]]


class LocalRequests:
    """Request/reply to handlers in this process: a bounded number at once per module and kind
    (queries and commands are separate bulkheads: saturated writes leave reads their slots),
    each under a timeout. Used by the in-process transport, and by every bus for its local modules."""

    def __init__(self, host: Host, *, per_queue: int = 64, answer: Answer | None = None) -> None:
        self.host = host
        self.per_queue = per_queue
        # what hands a request to its handler: the host's `answer`, or the bus's own for the
        # asks it made itself (see Bus._answer_own_ask)
        self._answer: Answer = answer or host.answer
        self._slots: dict[tuple[str, bool], Bulkhead] = {}

    def bulkhead(self, queue: str, query: bool) -> Bulkhead:
        """The slots of one module's queries (`query`) or commands."""
        slots = self._slots.get((queue, query))
        if slots is None:
            slots = self._slots[(queue, query)] = Bulkhead(self.per_queue)
        return slots

    async def request(
        self, queue: str, envelope: Envelope, *, timeout: float, message: Message | None = None
    ) -> Any:
        slots = self.bulkhead(queue, is_query(envelope, message))
        deadline = Deadline(timeout)
        try:
            await slots.enter()
            try:
                return await self._answer(queue, envelope, message)
            finally:
                slots.leave()
        except asyncio.CancelledError:
            if deadline.expired():
                raise AskTimeout(f"no reply from {queue} to {envelope.type} within {timeout}s") from None
            raise
        finally:
            deadline.cancel()


class InProcessTransport:
    name = "inprocess"

    def __init__(self, *, workers_per_queue: int = 16, requests_per_queue: int = 64) -> None:
        self.workers_per_queue = workers_per_queue
        self.requests_per_queue = requests_per_queue
        self._host: Host | None = None
        self._queues: dict[str, asyncio.Queue[_Item]] = {}
        self._requests: LocalRequests | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._timers: set[asyncio.TimerHandle] = set()

    async def start(self, host: Host, queues: Collection[str]) -> None:
        self._host = host
        self._requests = LocalRequests(host, per_queue=self.requests_per_queue)
        for queue in queues:
            self._queues[queue] = asyncio.Queue()
            for n in range(self.workers_per_queue):
                self._workers.append(asyncio.create_task(self._work(queue), name=f"bus:{queue}:{n}"))

    async def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()
        for queue in self._queues.values():
            while not queue.empty():
                _, receipt = queue.get_nowait()
                if not receipt.done():
                    receipt.cancel()
        self._queues.clear()

    async def deliver(self, queue: str, envelope: Envelope, *, delay: float = 0.0) -> Awaitable[None]:
        return self.hand_over(queue, envelope, delay=delay)

    def hand_over(self, queue: str, envelope: Envelope, *, delay: float = 0.0) -> asyncio.Future[None]:
        """`deliver` without a coroutine: enqueuing never waits here, so the outbox relay hands
        a unit of work's messages over in its after-commit hook, with no task of its own."""
        receipt: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._enqueue(queue, envelope, receipt, delay)
        return receipt

    def _enqueue(self, queue: str, envelope: Envelope, receipt: asyncio.Future[None], delay: float) -> None:
        target = self._queues.get(queue)
        if target is None:
            receipt.set_exception(LookupError(f"no local consumer for queue {queue!r}"))
            return
        if delay <= 0:
            target.put_nowait((envelope, receipt))
            return

        def fire() -> None:
            self._timers.discard(handle)
            target.put_nowait((envelope, receipt))

        handle = asyncio.get_running_loop().call_later(delay, fire)
        self._timers.add(handle)

    async def _work(self, queue: str) -> None:
        assert self._host is not None
        source = self._queues[queue]
        while True:
            envelope, receipt = await source.get()
            try:
                result = await self._host.process(queue, envelope)
            except Exception as exc:  # the host records its own failures; this is a kernel bug
                if not receipt.done():
                    receipt.set_exception(exc)
                continue
            if result.outcome is Outcome.RETRY:
                again = msgspec.structs.replace(envelope, attempt=envelope.attempt + 1)
                self._enqueue(queue, again, receipt, result.delay)
            elif not receipt.done():
                receipt.set_result(None)

    async def depths(self, queues: Collection[str]) -> dict[str, int]:
        return {name: self._queues[name].qsize() for name in queues if name in self._queues}

    async def request(
        self, queue: str, envelope: Envelope, *, timeout: float, message: Message | None = None
    ) -> Any:
        if self._requests is None or queue not in self._queues:
            raise LookupError(f"no local consumer for queue {queue!r}")
        return await self._requests.request(queue, envelope, timeout=timeout, message=message)
