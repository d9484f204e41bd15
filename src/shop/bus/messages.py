"""Message bases (frozen msgspec Structs), the Envelope that carries them, and the codec.

Commands are imperative (`ReserveStock`), events past tense (`PaymentCaptured`), queries ask
(`GetAddress`). Every concrete message class registers itself under its wire name, so an Envelope
names its body's type and any process running the same code can decode it.

Wire names: a published message (one in `shop.contracts`, or the bus's own `Rejected`) declares
`wire_name: ClassVar[str] = "<module>.<Name>.v<N>"`; renaming the Python class leaves the wire
alone. A `.v1` message also answers to its bare name (`ReserveStock`), the form envelopes carried
before wire names existed, so outbox rows, retries and dead letters written then still decode and
route. A message that declares none (tests' throwaway ones) is named by its class name;
tests/contracts fails for such a message in `shop`. The rules for
changing a published message are in README.md, "Evolving a message".
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any, ClassVar, TypeVar

import msgspec

from shop.bus.context import new_secret_id

M = TypeVar("M", bound="Message")


WIRE_NAME = re.compile(
    r"^(?P<module>[a-z][a-z0-9_]*)\.(?P<name>[A-Z][A-Za-z0-9]*)\.v(?P<version>[1-9][0-9]*)$"
)
_BASES = frozenset({"Message", "Command", "Event", "Query"})


class Message(msgspec.Struct, frozen=True, kw_only=True):
    """Base of everything that travels on the bus."""

    kind: ClassVar[str] = "message"
    wire_name: ClassVar[str] = ""
    registry: ClassVar[dict[str, type[Message]]] = {}  # wire names and legacy aliases
    published: ClassVar[dict[str, type[Message]]] = {}  # wire names of the declared ones only

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__module__ == __name__ and cls.__name__ in _BASES:
            return
        declared = cls.__dict__.get("wire_name")
        if declared is None:  # tests/contracts requires one of every message in `shop`
            cls.wire_name = cls.__name__
            _register(cls.__name__, cls)
            return
        match = WIRE_NAME.match(declared)
        if match is None:
            raise TypeError(f"{cls.__qualname__}.wire_name {declared!r} is not <module>.<Name>.v<N>")
        _register(declared, cls)
        Message.published[declared] = cls
        if match["version"] == "1":
            _register(match["name"], cls)

    @classmethod
    def type_name(cls) -> str:
        """The name envelopes carry for this message."""
        return cls.wire_name


def _register(name: str, cls: type[Message]) -> None:
    known = Message.registry.get(name)
    if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
        raise TypeError(
            f"message type name {name!r} is already used by {known.__module__}.{known.__qualname__}"
        )
    Message.registry[name] = cls


def aliases(cls: type[Message]) -> tuple[str, ...]:
    """Every name `cls` is decoded and routed under: its wire name first, then legacy names."""
    return (cls.type_name(), *(n for n, c in Message.registry.items() if c is cls and n != cls.type_name()))


class Command(Message, frozen=True, kw_only=True):
    """Asks its one owner to do something."""

    kind: ClassVar[str] = "command"


class Event(Message, frozen=True, kw_only=True):
    """Says something happened; zero or more subscribers."""

    kind: ClassVar[str] = "event"


class Query(Message, frozen=True, kw_only=True):
    """Asks its one owner for an answer, changing nothing."""

    kind: ClassVar[str] = "query"


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    """What the transports carry: a message's body and its routing and tracing metadata."""

    message_id: uuid.UUID
    type: str
    body: bytes
    correlation_id: uuid.UUID
    causation_id: uuid.UUID | None = None
    traceparent: str | None = None
    sent_at: float
    attempt: int = 1
    reply_to: str | None = None
    deadline: float | None = None
    consumer: str | None = None
    sender: str | None = None
    request_id: str | None = None  # the HTTP request that caused it (for logs), if any


class Reply(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to an `ask`: a message, None, or an error description."""

    type: str | None = None
    body: bytes | None = None
    error: str | None = None
    error_type: str | None = None
    fault: str | None = None  # whose fault a handler error was (shop.bus.errors.HandlerFailed.fault)


_encoder = msgspec.msgpack.Encoder()
_envelope_decoder = msgspec.msgpack.Decoder(Envelope)
_reply_decoder = msgspec.msgpack.Decoder(Reply)
_body_decoders: dict[type[Message], msgspec.msgpack.Decoder[Any]] = {}


def encode(obj: Any) -> bytes:
    return _encoder.encode(obj)


def decode_envelope(data: bytes) -> Envelope:
    return _envelope_decoder.decode(data)


def decode_reply(data: bytes) -> Reply:
    return _reply_decoder.decode(data)


class UnknownMessageType(LookupError):
    """An envelope names a message type this process does not know."""


def message_class(type_name: str) -> type[Message]:
    try:
        return Message.registry[type_name]
    except KeyError:
        raise UnknownMessageType(type_name) from None


def decode_body(type_name: str, body: bytes) -> Message:
    cls = message_class(type_name)
    decoder = _body_decoders.get(cls)
    if decoder is None:
        decoder = _body_decoders[cls] = msgspec.msgpack.Decoder(cls)
    message: Message = decoder.decode(body)
    return message


def new_envelope(
    message: Message,
    *,
    correlation_id: uuid.UUID | None = None,
    causation_id: uuid.UUID | None = None,
    traceparent: str | None = None,
    message_id: uuid.UUID | None = None,
    deadline: float | None = None,
    sender: str | None = None,
    consumer: str | None = None,
    encode_body: bool = True,
    request_id: str | None = None,
) -> Envelope:
    """An envelope for `message`. `encode_body=False` leaves the body empty, for a message
    that is handed over as an object and never leaves the process (a local `ask`)."""
    mid = message_id or new_secret_id()
    return Envelope(
        message_id=mid,
        type=type(message).type_name(),
        body=_encoder.encode(message) if encode_body else b"",
        correlation_id=correlation_id or mid,
        causation_id=causation_id,
        traceparent=traceparent,
        sent_at=time.time(),
        deadline=deadline,
        consumer=consumer,
        sender=sender,
        request_id=request_id,
    )


SECRET_FIELDS = ("token", "password", "secret")
REDACTED = "[redacted]"


def redacted(value: Any) -> Any:
    """`value` (JSON-like) with the value of every field whose name names a secret (a payment
    token, a password) replaced by "[redacted]", at any depth."""
    if isinstance(value, dict):
        return {
            k: REDACTED if any(s in str(k).lower() for s in SECRET_FIELDS) else redacted(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redacted(v) for v in value]
    return value


def to_json(envelope: Envelope) -> dict[str, Any]:
    """The envelope with its body decoded and its secrets redacted, for logs and operator views
    (the stored envelope keeps them: a redriven TakePayment still needs its payment token)."""
    data: dict[str, Any] = msgspec.to_builtins(envelope)
    try:
        data["body"] = redacted(msgspec.to_builtins(decode_body(envelope.type, envelope.body)))
    except (UnknownMessageType, msgspec.DecodeError):
        data["body"] = f"[undecodable: {len(envelope.body)} bytes]"
    return data


class Rejected(Message, frozen=True, kw_only=True):
    """A handler's business refusal (out of stock, duplicate email …): a reply, not a failure.

    Breakers never count it; HTTP layers map `code` to a status."""

    wire_name: ClassVar[str] = "bus.Rejected.v1"

    code: str
    detail: str = ""
    field: str | None = None
