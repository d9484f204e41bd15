"""`shop run`, `shop serve`, `shop gateway`: check what the process needs, then serve its app.

Before the server starts, the databases of the modules the process runs and (when it uses it)
Redis must answer: otherwise one line says which does not, and the command exits 1. Once the
server's socket is bound, one structured log line, event `shop.listening`, gives its URL.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from shop.commands.checks import databases_answer, redis_answers
from shop.commands.failures import USAGE, CommandFailed, reason
from shop.observability import logging as shop_logging
from shop.observability.logcontext import set_process_module
from shop.settings import Settings

SERVERS = ("granian", "uvicorn")
DEFAULT_SERVER = "granian"
UVICORN_MISSING = (
    "--server uvicorn: uvicorn is not installed; install the extra `shop[uvicorn]` "
    "(e.g. pip install 'shop[uvicorn]'), or use the default server, granian"
)

log = structlog.get_logger("shop.cli")


@dataclass(frozen=True, slots=True)
class Role:
    """What one server process is: its app factory and what it needs before it starts."""

    name: str  # run | serve | gateway
    factory: str  # "module:function" for the server to import in its worker
    process_module: str  # what its log lines outside any module's work say they are about
    databases: tuple[str, ...] = ()  # modules whose databases must answer
    needs_redis: bool = False
    modules: tuple[str, ...] = ()


def require_server(server: str) -> None:
    """Refuse a server that is not installed, before anything else happens."""
    if server == "uvicorn":
        try:
            import uvicorn  # noqa: F401
        except ImportError:
            raise CommandFailed(UVICORN_MISSING, USAGE) from None


async def preflight(settings: Settings, role: Role) -> None:
    """Raise CommandFailed unless the port is free and the role's databases and Redis answer."""
    port_free(settings.host, settings.port)
    await databases_answer(settings, role.databases)
    if role.needs_redis:
        await redis_answers(settings.redis_url)


def port_free(host: str, port: int) -> None:
    """Raise CommandFailed if the server could not bind host:port (taken, or not this machine's)."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
            probe.bind(address)
    except OSError as exc:
        raise CommandFailed(f"cannot listen on {listen_url(host, port)}: {reason(exc)}") from exc


def listen_url(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal
    return f"http://{host}:{port}"


def serve(settings: Settings, role: Role, *, server: str = DEFAULT_SERVER) -> None:
    """Serve the role's app factory on one worker of the chosen ASGI server (blocks)."""
    os.environ["SHOP_DIE_WITH_PARENT"] = "1"  # see shop.process.die_with_parent
    shop_logging.configure(settings.log_level)
    set_process_module(role.process_module)
    url = listen_url(settings.host, settings.port)

    def listening() -> None:
        extra: dict[str, Any] = {"modules": list(role.modules)} if role.modules else {}
        log.info("shop.listening", url=url, role=role.name, server=server, pid=os.getpid(), **extra)

    try:
        if server == "uvicorn":
            _uvicorn(settings, role.factory, listening)
        else:
            _granian(settings, role.factory, listening)
    except OSError as exc:  # the address is taken, or not this machine's
        raise CommandFailed(f"cannot listen on {url}: {reason(exc)}") from exc
    except SystemExit as exc:  # granian exits when its worker could not start or died
        if exc.code in (None, 0):
            return
        raise CommandFailed(
            f"the server on {url} stopped: its app failed (the log line above says why)"
        ) from exc


def _granian(settings: Settings, factory: str, listening: Callable[[], None]) -> None:
    from granian.constants import Interfaces, Loops
    from granian.server import Server

    granian = Server(
        target=factory,
        factory=True,
        address=settings.host,
        port=settings.port,
        interface=Interfaces.ASGI,
        workers=1,
        loop=Loops.uvloop,
        log_enabled=False,
        respawn_failed_workers=False,
    )
    granian.on_startup(listening)  # called once the socket is bound, before the worker starts
    granian.serve()


def _uvicorn(settings: Settings, factory: str, listening: Callable[[], None]) -> None:
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if not self.should_exit:  # the app started and the socket is bound
                listening()

    config = uvicorn.Config(
        factory,
        factory=True,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        log_config=None,  # its lines go through the JSON logging configured above
        access_log=False,
        lifespan="on",
    )
    server = Server(config)
    server.run()  # SystemExit when it cannot bind: serve() turns it into one line
    if not server.started:  # the app's start-up failed; its lifespan logged why
        raise CommandFailed(f"the app did not start on {listen_url(settings.host, settings.port)}")
