"""The context a message is sent in: correlation, causation and W3C trace context.

HTTP middleware opens one per request; the dispatcher opens one per handled message; every
envelope created inside inherits the trace id and correlation id and names its cause.
"""

from __future__ import annotations

import os
import random
import re
import uuid
from collections.abc import Callable
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


# The context variable's own methods (no Python frame around each: these run several times a
# message and a request).
current: Callable[[], MessageContext] = _context.get
"""The current context."""
enter: Callable[[MessageContext], Token[MessageContext]] = _context.set
"""Make a context current; `leave` with the token restores the previous one."""
leave: Callable[[Token[MessageContext]], None] = _context.reset


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


class AskContext(MessageContext):
    """The context a local query's handler runs in (ADR 0027): what `of_envelope(envelope,
    handling=True)` gives for the envelope an `ask` made in `parent` -- the parent's
    correlation id (else the query's own id), the query's id as the cause, a child span of the
    parent's trace, the parent's request id -- except that the query's id and its span id are
    made when something first reads them (a log line, a message sent, a nested ask). Most reads
    log nothing and send nothing: they pay for no uuid and no traceparent.

    Constructed with field values (as `dataclasses.replace` does), it holds those values."""

    __slots__ = ("_message_id", "_parent", "_traceparent")
    _parent: MessageContext
    _message_id: uuid.UUID | None
    _traceparent: str | None

    def __init__(
        self,
        correlation_id: uuid.UUID | None = None,
        causation_id: uuid.UUID | None = None,
        traceparent: str | None = None,
        request_id: str | None = None,
    ) -> None:
        parent = MessageContext(correlation_id=correlation_id, request_id=request_id)
        object.__setattr__(self, "_parent", parent)
        object.__setattr__(self, "_message_id", causation_id)
        object.__setattr__(self, "_traceparent", traceparent)

    @property
    def causation_id(self) -> uuid.UUID | None:
        """The query's message id (made on first read)."""
        try:
            return self._message_id
        except AttributeError:
            mid = new_id()
            object.__setattr__(self, "_message_id", mid)
            return mid

    @property
    def correlation_id(self) -> uuid.UUID | None:
        correlation = self._parent.correlation_id
        return self.causation_id if correlation is None else correlation

    @property
    def traceparent(self) -> str | None:
        """A fresh span id in the parent's trace (made on first read)."""
        try:
            return self._traceparent
        except AttributeError:
            value = child_traceparent(self._parent.traceparent)
            object.__setattr__(self, "_traceparent", value)
            return value

    @property
    def request_id(self) -> str | None:
        return self._parent.request_id


_new_ask_context = AskContext.__new__
_set_parent = AskContext._parent.__set__  # type: ignore[attr-defined]


def ask_context(parent: MessageContext) -> AskContext:
    """The context to handle a query asked in `parent` (see `AskContext`); one allocation."""
    ctx = _new_ask_context(AskContext)
    _set_parent(ctx, parent)
    return ctx


_new_uuid = object.__new__
_set_slot = object.__setattr__
_V4_CLEAR = ~((0xC000 << 48) | (0xF000 << 64))
_V4_SET = (0x8000 << 48) | (4 << 76)
_UNKNOWN = uuid.SafeUUID.unknown


def new_id() -> uuid.UUID:
    """A version-4 UUID from this module's PRNG, the one trace and span ids come from (seeded
    from os.urandom, and again in every forked worker): for ids that name a request or a local
    query in logs and traces (ADR 0027). `uuid.uuid4()` costs a getrandom syscall and
    `UUID.__init__`'s checks, several µs a request on a VM; this costs a fraction of that.
    Ids that must stay unguessable or that key idempotency (envelopes' message ids, tokens)
    come from os.urandom (`new_secret_id`, `uuid.uuid4()`)."""
    value = _new_uuid(uuid.UUID)
    _set_slot(value, "int", _random.getrandbits(128) & _V4_CLEAR | _V4_SET)
    _set_slot(value, "is_safe", _UNKNOWN)
    return value


def new_secret_id() -> uuid.UUID:
    """`uuid.uuid4()` (16 bytes of os.urandom, unguessable) without `UUID.__init__`'s checks of
    arguments it does not take: half its cost, for the ids an order makes most of (every
    envelope's message id)."""
    value = _new_uuid(uuid.UUID)
    _set_slot(value, "int", int.from_bytes(os.urandom(16)) & _V4_CLEAR | _V4_SET)
    _set_slot(value, "is_safe", _UNKNOWN)
    return value


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
