"""The gateway's own HTTP/1.1 client to the instances (shop.gateway.upstream.UpstreamPool), on
real sockets: keep-alive reuse, HEAD, chunked answers, flow control, timeouts, pool limits, and the
retry of an idempotent request on a kept-alive connection the instance closed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import pytest
import uvicorn

from shop.gateway.upstream import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamPool,
    UpstreamPoolTimeout,
    UpstreamProtocolError,
    UpstreamTimeout,
)

Scope = MutableMapping[str, Any]
BIG = bytes(range(256)) * 16384  # 4 MiB


async def app(scope: Scope, receive: Any, send: Any) -> None:
    """Echo the request; /slow waits 1.2 s; /chunked and /big answer without a Content-Length."""
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    path = scope["path"]
    if path == "/slow":
        await asyncio.sleep(1.2)
    if path in ("/chunked", "/big"):
        payload = b"abc" * 10 if path == "/chunked" else BIG
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-kind", b"chunked")]})
        for start in range(0, len(payload), 65536 if path == "/big" else 7):
            step = 65536 if path == "/big" else 7
            await send(
                {"type": "http.response.body", "body": payload[start : start + step], "more_body": True}
            )
        await send({"type": "http.response.body", "body": b""})
        return
    payload = json.dumps(
        {
            "method": scope["method"],
            "path": scope["path"],
            "query": scope["query_string"].decode(),
            "body": body.decode(),
            "client_port": scope["client"][1],
            "headers": [[k.decode(), v.decode()] for k, v in scope["headers"]],
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 201 if scope["method"] == "POST" else 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    if scope["method"] != "HEAD":
        await send({"type": "http.response.body", "body": payload})
    else:
        await send({"type": "http.response.body", "body": b""})


@contextlib.asynccontextmanager
async def serve(asgi: Any = app) -> AsyncIterator[str]:
    server = uvicorn.Server(
        uvicorn.Config(asgi, host="127.0.0.1", port=0, lifespan="off", log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 10
    while not server.started:
        if task.done():
            task.result()
        assert time.monotonic() < deadline, "uvicorn did not start"
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


@pytest.fixture
async def pool() -> AsyncIterator[UpstreamPool]:
    pool = UpstreamPool(read_timeout_s=0.5, connect_timeout_s=0.5, pool_timeout_s=0.3)
    yield pool
    await pool.aclose()


async def get_json(pool: UpstreamPool, origin: str, method: str, target: str, body: bytes = b"") -> Any:
    response = await pool.request(origin, method, target, [(b"x-test", b"1")], body)
    try:
        return response.status, json.loads(await response.read())
    finally:
        await response.aclose()


async def test_requests_reuse_a_kept_alive_connection(pool: UpstreamPool) -> None:
    async with serve() as origin:
        first = await get_json(pool, origin, "GET", "/a?x=1")
        second = await get_json(pool, origin, "POST", "/b", b'{"n": 1}')

    assert first[0] == 200
    assert (first[1]["path"], first[1]["query"]) == ("/a", "x=1")
    assert second[0] == 201
    assert second[1]["body"] == '{"n": 1}'
    assert ["content-length", "8"] in second[1]["headers"]
    assert ["x-test", "1"] in second[1]["headers"]
    assert first[1]["client_port"] == second[1]["client_port"]  # one connection, kept alive


async def test_a_head_answer_has_no_body_and_the_next_request_still_works(pool: UpstreamPool) -> None:
    async with serve() as origin:
        response = await pool.request(origin, "HEAD", "/h", [], b"")
        assert response.status == 200
        assert response.content_length is not None
        assert response.content_length > 0
        assert await response.read() == b""
        await response.aclose()

        assert (await get_json(pool, origin, "GET", "/after"))[0] == 200


async def test_a_chunked_answer_is_read_whole(pool: UpstreamPool) -> None:
    async with serve() as origin:
        response = await pool.request(origin, "GET", "/chunked", [], b"")
        try:
            assert response.content_length is None
            assert (b"x-kind", b"chunked") in response.headers
            assert await response.read() == b"abc" * 10
        finally:
            await response.aclose()


async def test_a_large_answer_read_slowly_arrives_intact(pool: UpstreamPool) -> None:
    async with serve() as origin:
        response = await pool.request(origin, "GET", "/big", [], b"")
        received = bytearray()
        try:
            async for chunk in response.chunks():
                received += chunk
                if len(received) < 1_000_000:
                    await asyncio.sleep(0.001)  # a slow reader: the socket is paused, not the answer lost
        finally:
            await response.aclose()

    assert bytes(received) == BIG


async def test_an_instance_that_does_not_answer_in_time_is_a_timeout(pool: UpstreamPool) -> None:
    async with serve() as origin:
        with pytest.raises(UpstreamTimeout) as caught:
            await pool.request(origin, "GET", "/slow", [], b"")
        assert caught.value.sent  # it may have been processed


async def test_a_refused_connection_was_never_sent() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    pool = UpstreamPool()
    try:
        with pytest.raises(UpstreamConnectError) as caught:
            await pool.request(f"http://127.0.0.1:{port}", "POST", "/x", [], b"{}")
        assert not caught.value.sent
    finally:
        await pool.aclose()


async def test_a_full_pool_times_out_waiting_for_a_connection() -> None:
    pool = UpstreamPool(max_connections_per_origin=1, pool_timeout_s=0.2, read_timeout_s=5)
    try:
        async with serve() as origin:
            slow = asyncio.create_task(pool.request(origin, "GET", "/slow", [], b""))
            await asyncio.sleep(0.1)
            with pytest.raises(UpstreamPoolTimeout) as caught:
                await pool.request(origin, "GET", "/fast", [], b"")
            assert not caught.value.sent
            response = await slow
            await response.read()
            await response.aclose()
            # the connection went back to the pool: the next request gets it
            assert (await get_json(pool, origin, "GET", "/fast"))[0] == 200
    finally:
        await pool.aclose()


@contextlib.asynccontextmanager
async def closes_second_request() -> AsyncIterator[tuple[str, list[int]]]:
    """A raw server: on each connection it answers the first request (keep-alive) and closes
    on the second without a byte of answer -- an instance closing an idle connection."""
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            await reader.readuntil(b"\r\n\r\n")
            body = b'{"ok": true}'
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
            await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", connections
    finally:
        server.close()
        await server.wait_closed()


async def test_an_idempotent_request_on_a_connection_closed_under_it_is_retried_once(
    pool: UpstreamPool,
) -> None:
    async with closes_second_request() as (origin, connections):
        assert (await get_json(pool, origin, "GET", "/1"))[1] == {"ok": True}

        status, body = await get_json_idempotent(pool, origin)

        assert (status, body) == (200, {"ok": True})
        assert len(connections) == 2  # the retry went over a fresh connection


async def get_json_idempotent(pool: UpstreamPool, origin: str) -> tuple[int, Any]:
    response = await pool.request(origin, "GET", "/2", [], b"", idempotent=True)
    try:
        return response.status, json.loads(await response.read())
    finally:
        await response.aclose()


async def test_a_non_idempotent_request_on_a_connection_closed_under_it_is_not_retried(
    pool: UpstreamPool,
) -> None:
    async with closes_second_request() as (origin, connections):
        assert (await get_json(pool, origin, "GET", "/1"))[0] == 200

        with pytest.raises(UpstreamProtocolError) as caught:
            await pool.request(origin, "POST", "/2", [], b"{}")

        assert isinstance(caught.value, UpstreamError)
        assert caught.value.sent
        assert len(connections) == 1
