"""The context a message is sent in: correlation, causation and W3C trace context.

HTTP middleware opens one per request; the dispatcher opens one per handled message; every
envelope created inside inherits the trace id and correlation id and names its cause.
"""

from __future__ import annotations

import os
import random
import re
import uuid
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shop.bus.messages import Envelope

_random = random.Random()
# A forked worker (granian, Dramatiq) would otherwise draw the same ids as its parent and siblings.
os.register_at_fork(after_in_child=_random.seed)
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


@dataclass(frozen=True, slots=True)
class MessageContext:
    correlation_id: uuid.UUID | None = None
    causation_id: uuid.UUID | None = None
    traceparent: str | None = None
    request_id: str | None = None


_context: ContextVar[MessageContext] = ContextVar("shop_message_context", default=MessageContext())


def current() -> MessageContext:
    return _context.get()


def enter(ctx: MessageContext) -> Token[MessageContext]:
    return _context.set(ctx)


def leave(token: Token[MessageContext]) -> None:
    _context.reset(token)


def of_envelope(envelope: Envelope, *, handling: bool) -> MessageContext:
    """The context an envelope carries.

    `handling=False`: the one it was sent in (its own cause), for relaying it. `handling=True`:
    the one to handle it in, where the message is the cause of whatever the handler sends, and
    the request it came from (else the current one's) stays in the logs."""
    if not handling:
        return MessageContext(
            correlation_id=envelope.correlation_id,
            causation_id=envelope.causation_id,
            traceparent=envelope.traceparent,
            request_id=envelope.request_id,
        )
    return MessageContext(
        correlation_id=envelope.correlation_id,
        causation_id=envelope.message_id,
        traceparent=envelope.traceparent,
        request_id=envelope.request_id or current().request_id,
    )


def parse_traceparent(value: str | None) -> tuple[str, str] | None:
    """(trace_id, span_id) of a valid W3C traceparent, else None."""
    if not value:
        return None
    match = _TRACEPARENT.match(value.strip().lower())
    if not match or match.group(1) == "0" * 32 or match.group(2) == "0" * 16:
        return None
    return match.group(1), match.group(2)


def child_traceparent(parent: str | None) -> str:
    """A traceparent for a new hop: the parent's trace id (or a new one) and a fresh span id.

    Trace and span ids need to be unique, not secret: a fast PRNG is enough (as OpenTelemetry's
    own id generator does)."""
    if parent is not None and len(parent) == 55 and parent.startswith("00-"):
        trace_id = parent[3:35]  # a traceparent we made or validated before
    else:
        parsed = parse_traceparent(parent)
        trace_id = parsed[0] if parsed else f"{_random.getrandbits(128) or 1:032x}"
    return f"00-{trace_id}-{_random.getrandbits(64) or 1:016x}-01"


def trace_id_of(traceparent: str | None) -> str | None:
    parsed = parse_traceparent(traceparent)
    return parsed[0] if parsed else None
