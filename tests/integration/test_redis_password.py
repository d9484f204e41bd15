"""A Redis that asks for a password: the URL's credentials reach every Redis client of the shop.

Production Redis is protected (the compose file and the manifests give `redis://:<password>@...`,
or `rediss://` for TLS, which redis-py and Dramatiq take from the URL as they are). Here a
`redis-server --requirepass` of the test's own, on a free loopback port: the Dramatiq transport
asks and sends through it, the registry registers and lists, and a URL without the password is
refused.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from shop.discovery.base import Instance
from shop.discovery.redis_registry import RedisRegistry

from .conftest import ConfBalance, ConfDeposit, WorldFactory

pytestmark = pytest.mark.redis
PASSWORD = "s3cret-for-the-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def protected_redis() -> Iterator[int]:
    binary = shutil.which("redis-server")
    if binary is None:
        from tests.conftest import _unavailable  # skip, or fail under CI=true

        _unavailable("redis-server is not installed")
    port = _free_port()
    server = subprocess.Popen(
        [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--requirepass",
            PASSWORD,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if redis.Redis(port=port, password=PASSWORD, socket_timeout=1).ping():
                    break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def redis_url(protected_redis: int) -> str:
    """Overrides the suite's Redis: every fixture that takes `redis_url` gets the protected one."""
    return f"redis://:{PASSWORD}@127.0.0.1:{protected_redis}/0"


@pytest.fixture
def transport_name() -> str:
    return "dramatiq"


async def test_the_dramatiq_transport_works_through_a_password_protected_redis(
    world_factory: WorldFactory, protected_redis: int
) -> None:
    world = await world_factory()
    assert f":{protected_redis}/" in world.bus.transport.redis_url  # type: ignore[attr-defined]

    assert await world.bus.ask(ConfDeposit(account="pw", amount=3)) == 3
    assert await world.bus.ask(ConfBalance(account="pw")) == 3
    # the messages went through the protected server
    assert redis.Redis(port=protected_redis, password=PASSWORD).dbsize() > 0


async def test_the_registry_registers_and_lists_through_a_password_protected_redis(redis_url: str) -> None:
    registry = RedisRegistry(redis_url, f"pwtest-{uuid.uuid4().hex[:8]}")
    instance = Instance(module="catalog", instance_id="i-1", url="http://127.0.0.1:1", routes=("/p",))

    await registry.register(instance, ttl_s=5)

    assert [view.instance_id for view in await registry.instances("catalog")] == ["i-1"]


def test_a_url_without_the_password_is_refused(protected_redis: int) -> None:
    client = redis.Redis.from_url(f"redis://127.0.0.1:{protected_redis}/0", socket_timeout=2)
    with pytest.raises(redis.AuthenticationError):
        client.ping()
