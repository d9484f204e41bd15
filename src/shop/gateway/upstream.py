"""The gateway's HTTP/1.1 client to the instances: keep-alive pools, timeouts, raw bodies.

Why not httpx on the hot path: measured under 64 concurrent requests, httpcore's pool spends
~0.7 ms of CPU per request scanning every pooled connection (and polling each socket) to hand out
one, which caps a gateway at a fraction of what the service behind it answers (docs/adr/0008).
This client is an asyncio Protocol per connection with httptools (llhttp, C) parsing the
answers -- the parser uvicorn uses -- and one LIFO pool of idle connections per origin.

* Timeouts: connect (`connect_timeout_s`), waiting for a pooled connection (`pool_timeout_s`),
  and read (`read_timeout_s`): the longest silence allowed between sending the request and the
  answer's headers, and between two pieces of its body. Writes go to the transport's buffer;
  an instance that does not read its request is caught by the read timeout.
* Errors say whether the request may have reached the instance (`UpstreamError.sent`): a
  connect failure or a pool timeout never sent anything. A reused keep-alive connection that
  closes before a single byte of answer (the instance closed it while idle) is retried once on
  a fresh connection when the caller says the request is idempotent.
* Bodies are relayed as sent (no decoding); a slow reader pauses the socket (flow control).

`HttpxUpstream` wraps an `httpx.AsyncClient` behind the same interface (tests use it with an
`httpx.MockTransport`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
from collections.abc import AsyncIterator, Sequence
from typing import Protocol, cast
from urllib.parse import urlsplit

import httptools
import httpx

Headers = list[tuple[bytes, bytes]]

_HIGH_WATER = 256 * 1024  # buffered answer bytes before the socket is paused
_LOW_WATER = 64 * 1024


class UpstreamError(Exception):
    """A call to an instance failed; `sent`: the request may have reached it."""

    sent = True


class UpstreamConnectError(UpstreamError):
    sent = False


class UpstreamTimeout(UpstreamError):
    pass


class UpstreamConnectTimeout(UpstreamConnectError, UpstreamTimeout):
    pass


class UpstreamPoolTimeout(UpstreamConnectError, UpstreamTimeout):
    pass


class UpstreamProtocolError(UpstreamError):
    pass


class UpstreamResponse(Protocol):
    status: int
    headers: Headers  # lower-case names, hop-by-hop ones included
    content_length: int | None

    async def read(self) -> bytes: ...

    def chunks(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


class Upstream(Protocol):
    async def request(
        self,
        origin: str,
        method: str,
        target: str,
        headers: Headers,
        body: bytes,
        *,
        idempotent: bool = False,
    ) -> UpstreamResponse: ...

    async def aclose(self) -> None: ...


# -- the native client ---------------------------------------------------------------------------


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self, pool: _OriginPool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.counted = True  # in its pool's size until discarded
        self.reused = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: Headers = []
        self.content_length: int | None = None
        self._head: asyncio.Future[None] | None = None
        self._body: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._complete = False
        self._paused = False
        self._wake: asyncio.Future[None] | None = None
        self._error: UpstreamError | None = None
        self._got_bytes = False
        self._head_only = False
        self._keep_alive = False
        self._activity = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        self._activity = self.loop.time()
        if self._complete and self._head_only:
            return  # a body sent after the headers of a HEAD answer: ignored (never reused)
        if self._complete or self._head is None:  # nothing is expected: the instance misbehaves
            self._fail(UpstreamProtocolError("data from the instance outside of an answer"))
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamProtocolError(f"malformed answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.discard(self)
        if not self._complete and self._head is not None:
            if self._got_bytes or not self.reused:
                error: UpstreamError = UpstreamProtocolError(f"the instance closed the connection ({exc!r})")
            else:
                error = _StaleConnection("a reused connection was closed before any answer")
            self._fail(error)

    # httptools callbacks -------------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-length" and value.isdigit():
            self.content_length = int(value)
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self._keep_alive = self.parser.should_keep_alive()
        if self._head is not None and not self._head.done():
            self._head.set_result(None)
        if self._head_only:  # an answer to HEAD has no body, whatever Content-Length says
            self._keep_alive = False
            self.on_message_complete()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wakeup()

    def on_message_complete(self) -> None:
        if self._complete:
            return
        self._complete = True
        self._cancel_timer()
        self._wakeup()

    # the request ---------------------------------------------------------------------------------

    async def send(self, head: bytes, body: bytes, read_timeout: float, head_only: bool) -> None:
        """Write the request; wait for the answer's status and headers."""
        transport = self.transport
        if transport is None or not self.writable():
            raise _StaleConnection("the connection closed before the request was written")
        self._head = self.loop.create_future()
        self._head_only = head_only
        self._activity = self.loop.time()
        self._timer = self.loop.call_later(read_timeout, self._check_timeout, read_timeout)
        if body:
            transport.writelines((head, body))
        else:
            transport.write(head)
        await self._head
        if self._error is not None and not self.status:
            raise self._error

    def writable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    async def next_chunk(self) -> bytes | None:
        """The next piece of body, None at its end."""
        while True:
            if self._body:
                chunk = self._body.popleft()
                self._buffered -= len(chunk)
                if self._paused and self._buffered < _LOW_WATER and self.transport is not None:
                    self._paused = False
                    self.transport.resume_reading()
                return chunk
            if self._complete:
                return None
            if self._error is not None:
                raise self._error
            self._wake = self.loop.create_future()
            await self._wake

    def release(self) -> None:
        """The caller is done with the answer: back to the pool, or closed."""
        reusable = self._complete and self._keep_alive and self._error is None and not self.closed
        self._cancel_timer()
        if reusable:
            if self._paused and self.transport is not None:
                self.transport.resume_reading()  # the answer was left partly unread
            self._reset()  # llhttp itself is ready for the next answer on this connection
            self.pool.give_back(self)
        else:
            self.close()

    def close(self) -> None:
        self._cancel_timer()
        if not self.closed:
            self.closed = True
            self.pool.discard(self)
            if self.transport is not None:
                self.transport.close()

    # internals -------------------------------------------------------------------------------------

    def _check_timeout(self, read_timeout: float) -> None:
        self._timer = None
        if self._complete:
            return
        silent = self.loop.time() - self._activity
        if silent < read_timeout and not self._paused:
            self._timer = self.loop.call_later(read_timeout - silent, self._check_timeout, read_timeout)
            return
        if self._paused:  # the reader is slow, not the instance
            self._timer = self.loop.call_later(read_timeout, self._check_timeout, read_timeout)
            return
        self._fail(UpstreamTimeout(f"no answer from the instance within {read_timeout} s"))
        self.close()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fail(self, error: UpstreamError) -> None:
        if self._error is None:
            self._error = error
        if self._head is not None and not self._head.done():
            self._head.set_result(None)
        self._wakeup()
        if not self.closed and self.transport is not None:
            self.closed = True
            self.pool.discard(self)
            self.transport.close()

    def _wakeup(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)


class _StaleConnection(UpstreamProtocolError):
    """A reused connection closed under us before any answer: safe to retry if idempotent."""


class _OriginPool:
    def __init__(self, client: UpstreamPool, origin: str) -> None:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UpstreamConnectError(f"expected an http(s):// instance URL, got {origin!r}")
        self.ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self.client = client
        self.loop = asyncio.get_running_loop()
        self.host = parts.hostname
        self.port = parts.port or (443 if self.ssl else 80)
        self.host_header = (parts.netloc or self.host).encode()
        self.idle: list[_Connection] = []
        self.size = 0
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self) -> _Connection:
        now = self.loop.time()
        expiry = self.client.keepalive_expiry_s
        while self.idle:
            connection = self.idle.pop()
            if not connection.closed and now - connection.idle_since < expiry:
                connection.reused = True
                return connection
            connection.close()
        if self.size >= self.client.max_connections_per_origin:
            waiter = self.loop.create_future()
            self.waiters.append(waiter)
            try:
                async with asyncio.timeout(self.client.pool_timeout_s):
                    await waiter
            except TimeoutError:
                raise UpstreamPoolTimeout(f"no free connection to {self.host}:{self.port}") from None
            finally:
                with contextlib.suppress(ValueError):
                    self.waiters.remove(waiter)
            return await self.acquire()
        return await self._connect()

    async def _connect(self) -> _Connection:
        self.size += 1
        try:
            async with asyncio.timeout(self.client.connect_timeout_s):
                _, protocol = await self.loop.create_connection(
                    lambda: _Connection(self), self.host, self.port, ssl=self.ssl
                )
        except TimeoutError:
            self.size -= 1
            self._wake_one()
            raise UpstreamConnectTimeout(f"connecting to {self.host}:{self.port} timed out") from None
        except OSError as exc:
            self.size -= 1
            self._wake_one()
            raise UpstreamConnectError(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        except BaseException:
            self.size -= 1
            self._wake_one()
            raise
        return protocol

    def give_back(self, connection: _Connection) -> None:
        connection.idle_since = self.loop.time()
        self.idle.append(connection)
        self._wake_one()

    def discard(self, connection: _Connection) -> None:
        if connection in self.idle:
            self.idle.remove(connection)
        if connection.counted:
            connection.counted = False
            self.size -= 1
            self._wake_one()

    def _wake_one(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        for connection in list(self.idle):
            connection.close()


class _Response:
    __slots__ = ("_connection", "content_length", "headers", "status")

    def __init__(self, connection: _Connection) -> None:
        self._connection: _Connection | None = connection
        self.status = connection.status
        self.headers = connection.headers
        self.content_length = connection.content_length

    async def read(self) -> bytes:
        parts = [chunk async for chunk in self.chunks()]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def chunks(self) -> AsyncIterator[bytes]:
        connection = self._connection
        if connection is None:
            return
        while True:
            chunk = await connection.next_chunk()
            if chunk is None:
                return
            yield chunk

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.release()


class UpstreamPool:
    """Keep-alive connections per origin (`http://host:port`), shared by every request."""

    def __init__(
        self,
        *,
        connect_timeout_s: float = 1.0,
        read_timeout_s: float = 15.0,
        pool_timeout_s: float = 2.0,
        max_connections_per_origin: int = 256,
        keepalive_expiry_s: float = 2.0,
    ) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.pool_timeout_s = pool_timeout_s
        self.max_connections_per_origin = max_connections_per_origin
        self.keepalive_expiry_s = keepalive_expiry_s
        self._origins: dict[str, _OriginPool] = {}

    async def request(
        self,
        origin: str,
        method: str,
        target: str,
        headers: Headers,
        body: bytes,
        *,
        idempotent: bool = False,
    ) -> UpstreamResponse:
        pool = self._origins.get(origin)
        if pool is None or pool.loop is not asyncio.get_running_loop():
            pool = self._origins[origin] = _OriginPool(self, origin)
        head = _request_head(method, target, pool.host_header, headers, body, method == "HEAD")
        for attempt in (1, 2):
            connection = await pool.acquire()
            if not connection.writable():  # closed under us before anything was written
                connection.close()
                if attempt == 1:
                    continue
                raise UpstreamConnectError(f"no usable connection to {origin}")
            try:
                await connection.send(head, body, self.read_timeout_s, method == "HEAD")
            except _StaleConnection:
                connection.close()
                if idempotent and attempt == 1:
                    continue
                raise UpstreamProtocolError("the instance closed a kept-alive connection") from None
            except BaseException:
                connection.close()
                raise
            return _Response(connection)
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        for pool in self._origins.values():
            pool.close()
        self._origins.clear()


def _request_head(
    method: str, target: str, host: bytes, headers: Sequence[tuple[bytes, bytes]], body: bytes, head: bool
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1\r\n".encode("latin-1"), b"host: ", host, b"\r\n"]
    for name, value in headers:
        lines += (name, b": ", value, b"\r\n")
    if body or method in ("POST", "PUT", "PATCH"):
        lines += (b"content-length: ", str(len(body)).encode(), b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


# -- httpx behind the same interface -------------------------------------------------------------


class _HttpxResponse:
    __slots__ = ("_response", "content_length", "headers", "status")

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status = response.status_code
        self.headers = [(name.lower(), value) for name, value in response.headers.raw]
        length = response.headers.get("content-length")
        self.content_length = int(length) if length is not None and length.isdigit() else None

    async def read(self) -> bytes:
        parts = [chunk async for chunk in self.chunks()]
        return b"".join(parts)

    async def chunks(self) -> AsyncIterator[bytes]:
        if self._response.is_stream_consumed:  # read already by a transport answering from memory
            yield self._response.content
            return
        try:
            async for chunk in self._response.aiter_raw():
                yield chunk
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(str(exc) or type(exc).__name__) from exc
        except httpx.TransportError as exc:
            raise UpstreamProtocolError(str(exc) or type(exc).__name__) from exc

    async def aclose(self) -> None:
        await self._response.aclose()


class HttpxUpstream:
    """An `httpx.AsyncClient` as the gateway's upstream client (its errors mapped to ours)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def request(
        self,
        origin: str,
        method: str,
        target: str,
        headers: Headers,
        body: bytes,
        *,
        idempotent: bool = False,
    ) -> UpstreamResponse:
        # Not client.build_request: the client's default headers (Accept-Encoding above all: the
        # answer is relayed as sent) must not be added to the caller's.
        request = httpx.Request(method, origin + target, headers=headers, content=body)
        try:
            response = await self.client.send(request, stream=True)
        except httpx.PoolTimeout as exc:
            raise UpstreamPoolTimeout(str(exc) or "pool timeout") from exc
        except httpx.ConnectTimeout as exc:
            raise UpstreamConnectTimeout(str(exc) or "connect timeout") from exc
        except httpx.ConnectError as exc:
            raise UpstreamConnectError(str(exc) or "connect error") from exc
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(str(exc) or type(exc).__name__) from exc
        except httpx.TransportError as exc:
            raise UpstreamProtocolError(str(exc) or type(exc).__name__) from exc
        return _HttpxResponse(response)

    async def aclose(self) -> None:
        return None  # the caller's client: the caller closes it
