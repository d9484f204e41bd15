"""The Transport protocol every adapter implements, and what it calls back into (the Host)."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Collection
from dataclasses import dataclass
from typing import Any, Protocol

from shop.bus.messages import Envelope, Message, Query


def is_query(envelope: Envelope, message: Message | None = None) -> bool:
    """Whether a request asks a query (a read) rather than a command: the two go through
    separate bulkheads, in process and across processes (ADR 0020)."""
    if message is not None:
        return isinstance(message, Query)
    kind = Message.registry.get(envelope.type)
    return kind is not None and issubclass(kind, Query)


class Outcome(enum.Enum):
    """What became of one delivery attempt."""

    DONE = "done"  # handled (or a duplicate); acknowledge
    RETRY = "retry"  # failed; deliver again after `delay`
    DEAD = "dead"  # failed for the last time; already in the dead-letter store


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    delay: float = 0.0


class Host(Protocol):
    """The kernel side of a transport: runs handlers for envelopes that arrive."""

    async def process(self, queue: str, envelope: Envelope) -> Result:
        """Handle one delivery of an asynchronous message (command or event)."""
        ...

    async def answer(self, queue: str, envelope: Envelope, message: Message | None = None) -> Any:
        """Handle a request; return the handler's reply (raise on failure)."""
        ...


class Transport(Protocol):
    """Moves envelopes to module queues; request/reply; delayed redelivery.

    A transport whose enqueuing never waits may also offer `hand_over(queue, envelope)`, which
    returns `deliver`'s receipt without a coroutine (the in-process one does): the outbox relay
    then hands a unit of work's messages over in its after-commit hook, without a task."""

    name: str

    async def start(self, host: Host, queues: Collection[str]) -> None:
        """Begin consuming the given module queues (the local modules)."""
        ...

    async def stop(self) -> None: ...

    async def deliver(self, queue: str, envelope: Envelope, *, delay: float = 0.0) -> Awaitable[None]:
        """Enqueue; the returned receipt resolves when the message is safe to forget (for a
        durable broker: accepted; in process: handled or dead-lettered)."""
        ...

    async def request(
        self, queue: str, envelope: Envelope, *, timeout: float, message: Message | None = None
    ) -> Any:
        """Ask the queue's owner; return its reply or raise HandlerFailed / AskTimeout."""
        ...

    async def depths(self, queues: Collection[str]) -> dict[str, int]:
        """How many messages wait in each of these queues, not yet taken by a consumer; cheap
        enough to ask at every metrics scrape."""
        ...
