"""Structured JSON logs: one line per event with module, trace and correlation ids."""

from __future__ import annotations

import asyncio
import atexit
import functools
import logging
import re
import sys
import threading
import time
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any, TextIO, cast

import msgspec
import structlog

from shop.bus import context
from shop.bus.middleware import set_debug
from shop.observability.logcontext import current_module

#: The keys every line carries (None where nothing is known, e.g. at start-up).
CONTEXT_KEYS = ("module", "trace_id", "span_id", "correlation_id", "request_id")


def _add_message_context(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    ctx = context.current()
    if ctx.traceparent and "trace_id" not in event:
        parts = ctx.traceparent.split("-")
        if len(parts) == 4:
            event["trace_id"], event["span_id"] = parts[1], parts[2]
    if ctx.correlation_id and "correlation_id" not in event:
        event["correlation_id"] = str(ctx.correlation_id)
    if ctx.request_id and "request_id" not in event:
        event["request_id"] = ctx.request_id
    if event.get("module") is None:
        event["module"] = current_module()
    for key in CONTEXT_KEYS:
        event.setdefault(key, None)
    return event


_SECRET_KEYS = ("password", "token", "authorization", "secret", "private_key", "cookie")
# A JWT (three base64url parts, the first a JSON header) or the credential of a bearer header.
_SECRET_VALUES = re.compile(
    r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*|(?i:bearer\s+)[^\s'\",;]+"
)


@functools.lru_cache(maxsize=4096)
def _secret_key(key: str) -> bool:
    """Whether a key sounds secret (decided once per key: keys are the code's own names)."""
    lowered = key.lower()
    return any(s in lowered for s in _SECRET_KEYS)


def _redact(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Blank values under secret-sounding keys, and tokens wherever they appear in a string."""
    for key, value in event.items():
        if _secret_key(key):
            event[key] = "[redacted]"
        elif isinstance(value, str) and ("eyJ" in value or "earer" in value):
            event[key] = _SECRET_VALUES.sub("[redacted]", value)
    return event


def _clean(value: str) -> str:
    """`value` with any token in it blanked (as `_redact` does to every string of a line)."""
    if "eyJ" in value or "earer" in value:
        return _SECRET_VALUES.sub("[redacted]", value)
    return value


_encoder = msgspec.json.Encoder(enc_hook=str)


class _Stderr:
    """Whatever `sys.stderr` is at the moment of writing (test runners swap it).

    On a thread that runs an event loop, the lines written during one turn of the loop go out
    in one write at the end of that turn (a callback the turn's first line schedules): a server
    under load answers many requests a turn, and each write is a system call (ADR 0030). Off a
    loop a line goes out at once, after any still pending; at exit what is pending goes out. A
    process killed outright loses the lines of the turn it was in."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[str] = []
        # the loop a write of the pending lines is scheduled on (a loop closed before it ran
        # it, or another thread's loop, schedules one of its own: a write of nothing is none)
        self._scheduled_on: asyncio.AbstractEventLoop | None = None
        atexit.register(self.drain)

    def write(self, text: str) -> int:
        loop = _running_loop()
        with self._lock:
            self._pending.append(text)
            schedule = loop is not None and loop is not self._scheduled_on
            if schedule:
                self._scheduled_on = loop
        if loop is None:
            self.drain()
        elif schedule:
            try:
                loop.call_soon(self.drain)
            except RuntimeError:  # the loop is closing: no later turn to wait for
                self.drain()
        return len(text)

    def flush(self) -> None:
        """Off a loop: write what is pending now. On a loop: the turn's end does."""
        if _running_loop() is None:
            self.drain()

    def drain(self) -> None:
        """Write every pending line, in one write."""
        with self._lock:
            pending, self._pending = self._pending, []
            self._scheduled_on = None
        if pending:
            stream = sys.stderr
            stream.write("".join(pending))
            stream.flush()


_running_loop = asyncio.events._get_running_loop


def _dumps(obj: Any, **_kwargs: Any) -> str:
    return _encoder.encode(obj).decode()


class _Second:
    """The ISO-8601 text of the current second, made once per second."""

    at = -1
    text = ""


_second = _Second()


def _timestamp() -> str:
    """Now, as structlog's TimeStamper(fmt="iso", utc=True) writes it, at a fifth of its cost."""
    now = time.time()
    second = int(now)
    if second != _second.at:
        _second.text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second.at = second
    micro = int((now - second) * 1_000_000)
    return f"{_second.text}.{micro:06d}Z" if micro else f"{_second.text}Z"


def _add_timestamp(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog's TimeStamper(fmt="iso", utc=True), the same text, at a fifth of its cost."""
    event["timestamp"] = _timestamp()
    return event


class _AccessLog:
    """Where access lines go, and whether they are written at all (set by `configure`)."""

    enabled: bool = True
    stream: Any = _Stderr()


_access = _AccessLog()


def access_enabled() -> bool:
    """Whether `access` writes anything (the level is INFO or lower)."""
    return _access.enabled


def access(module: str | None, method: str, path: str, route: str, status: int, duration_ms: float) -> None:
    """One access line (`http.request`, at INFO) for an answered HTTP request.

    The hot path of every request, so it skips structlog's processor chain: the line is built
    as one dict, encoded once by msgspec and written with one write, with the keys of any other
    line in the same order (the five context keys included) and the same redaction of tokens
    in what the client chose (method, path, request id). Structlog's contextvars are not merged
    in: the shop binds none (its context is `shop.bus.context` and the bound module)."""
    if not _access.enabled:
        return
    ctx = context.current()
    trace_id = span_id = None
    traceparent = ctx.traceparent
    if traceparent:
        parts = traceparent.split("-")
        if len(parts) == 4:
            trace_id, span_id = parts[1], parts[2]
    request_id = ctx.request_id
    line = {
        "module": module if module is not None else current_module(),
        "method": _clean(method),
        "path": _clean(path),
        "route": route,
        "status": status,
        "duration_ms": duration_ms,
        "event": "http.request",
        "level": "info",
        "timestamp": _timestamp(),
        "trace_id": trace_id,
        "span_id": span_id,
        "correlation_id": None if ctx.correlation_id is None else str(ctx.correlation_id),
        "request_id": request_id if request_id is None else _clean(request_id),
    }
    stream = _access.stream
    stream.write(_encoder.encode(line).decode() + "\n")
    stream.flush()


def configure(level: str = "INFO", *, stream: Any = None) -> None:
    """JSON lines to stderr (or `stream`), at `level`; stdlib logging routed through too."""
    numeric = logging.getLevelName(level.upper())
    set_debug(numeric <= logging.DEBUG)
    _access.enabled = numeric <= logging.INFO
    default = _Stderr() if stream is None else None  # one for all three: lines keep their order
    _access.stream = stream or default
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _add_timestamp,
        _add_message_context,
        structlog.processors.format_exc_info,
        _redact,
        structlog.processors.JSONRenderer(serializer=_dumps),
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # one write per line (print() writes the line and its newline apart)
        logger_factory=structlog.WriteLoggerFactory(file=cast(TextIO, stream or default)),
        cache_logger_on_first_use=False,
    )
    # Libraries' stdlib logging (alembic, sqlalchemy, granian …) in the same JSON shape.
    handler = logging.StreamHandler(stream or default)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                structlog.processors.add_log_level,
                _add_timestamp,
                _add_message_context,
                structlog.processors.format_exc_info,
                _redact,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(serializer=_dumps),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.WARNING))
    logging.getLogger("shop").setLevel(numeric)
