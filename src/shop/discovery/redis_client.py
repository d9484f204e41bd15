"""A redis asyncio client created lazily on the running loop, with explicit timeouts.

A redis asyncio client belongs to the loop it first ran on; a holder built at import or
composition time (before the server's loop exists) creates it on first use, and makes a fresh one
if it is ever used from another loop. redis-py 8 defaults sockets to a 5 s timeout and retries
failed commands with a backoff of up to seconds: here both are explicit and short, so a Redis that
is down costs a request a bounded, small delay.
"""

from __future__ import annotations

import asyncio
import contextlib

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError


class LazyRedis:
    def __init__(
        self,
        url: str,
        *,
        socket_timeout_s: float = 1.0,
        connect_timeout_s: float = 1.0,
        retries: int = 1,
        max_connections: int = 128,
    ) -> None:
        self.url = url
        self._socket_timeout_s = socket_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._retries = retries
        self._max_connections = max_connections
        self._client: Redis | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def get(self) -> Redis:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            # A blocking pool: past `max_connections` a command waits (bounded) for a free
            # connection instead of failing with "Too many connections".
            pool = BlockingConnectionPool.from_url(
                self.url,
                max_connections=self._max_connections,
                timeout=self._socket_timeout_s,
                socket_timeout=self._socket_timeout_s,
                socket_connect_timeout=self._connect_timeout_s,
                # One immediate retry (a stale pooled connection), never a backoff of seconds.
                retry=Retry(NoBackoff(), self._retries),
                retry_on_error=[RedisConnectionError, RedisTimeoutError],
            )
            self._client = Redis(connection_pool=pool)
            self._loop = loop
        return self._client

    async def aclose(self) -> None:
        client, loop = self._client, self._loop
        self._client = self._loop = None
        if client is None:
            return
        with contextlib.suppress(RuntimeError):
            if loop is asyncio.get_running_loop():
                await client.aclose(close_connection_pool=True)
