"""`shop run`, `shop serve`, `shop gateway`: check what the process needs, then serve its app.

Before the server starts, the databases of the modules the process runs and (when it uses it)
Redis must answer: otherwise one line says which does not, and the command exits 1. Once the
server accepts connections, one structured log line, event `shop.listening`, gives its URL.
"""

from __future__ import annotations

import gc
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shop.commands.checks import databases_answer, databases_migrated, redis_answers
from shop.commands.failures import USAGE, CommandFailed, reason
from shop.observability import logging as shop_logging
from shop.observability.logcontext import set_process_module
from shop.observability.loggers import get_logger
from shop.security.keys import load_keys
from shop.settings import Settings

SERVERS = ("granian", "uvicorn")
DEFAULT_SERVER = "granian"
UVICORN_MISSING = (
    "--server uvicorn: uvicorn is not installed; install the extra `shop[uvicorn]` "
    "(e.g. pip install 'shop[uvicorn]'), or use the default server, granian"
)

ANNOUNCE_POLL_S = 0.05
log = get_logger("shop.cli")


@dataclass(frozen=True, slots=True)
class Role:
    """What one server process is: its app factory and what it needs before it starts."""

    name: str  # run | serve | gateway
    factory: str  # "module:function" for the server to import in its worker
    process_module: str  # what its log lines outside any module's work say they are about
    databases: tuple[str, ...] = ()  # modules whose databases must answer
    needs_redis: bool = False
    modules: tuple[str, ...] = ()
    signs_tokens: bool = False  # runs users: may generate the dev key pair; else verifies only
    migrates: bool = False  # migrates its databases at start (`shop run`); else they must be at head


def require_server(server: str) -> None:
    """Refuse a server that is not installed, before anything else happens."""
    if server == "uvicorn":
        try:
            import uvicorn  # noqa: F401
        except ImportError:
            raise CommandFailed(UVICORN_MISSING, USAGE) from None


async def preflight(settings: Settings, role: Role) -> None:
    """Raise CommandFailed unless the port is free, the token keys are there, the role's
    databases answer (and are migrated, unless it migrates them) and Redis answers
    (SettingsError for keys that are missing or unusable)."""
    port_free(settings.host, settings.port)
    load_keys(settings, generate=role.signs_tokens)
    await databases_answer(settings, role.databases)
    if not role.migrates:
        await databases_migrated(settings, role.databases)
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
    os.environ.setdefault("SHOP_GC_FREEZE", "1")  # see shop.process.freeze_heap_after_start
    shop_logging.configure(settings.log_level)
    set_process_module(role.process_module)
    url = listen_url(settings.host, settings.port)

    def listening() -> None:
        extra: dict[str, Any] = {"modules": list(role.modules)} if role.modules else {}
        log.info("shop.listening", url=url, role=role.name, server=server, pid=os.getpid(), **extra)

    stopped = threading.Event()
    threading.Thread(
        target=_announce_when_listening,
        args=(settings.host, settings.port, listening, stopped),
        name="shop-listening",
        daemon=True,
    ).start()
    try:
        if server == "uvicorn":
            _uvicorn(settings, role.factory)
        else:
            _granian(settings, role.factory)
    except OSError as exc:  # the address is taken, or not this machine's
        raise CommandFailed(f"cannot listen on {url}: {reason(exc)}") from exc
    except SystemExit as exc:  # the server exits when its app could not start or died
        if exc.code in (None, 0):
            return
        raise CommandFailed(
            f"the server on {url} stopped: its app failed (the log line above says why)"
        ) from exc
    finally:
        stopped.set()


def _announce_when_listening(
    host: str, port: int, announce: Callable[[], None], stopped: threading.Event
) -> None:
    """Call `announce` once a connection to host:port succeeds: the servers bind in a worker,
    after the point where they could tell us."""
    target = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}.get(host, host.strip("[]"))
    while not stopped.wait(ANNOUNCE_POLL_S):
        try:
            with socket.create_connection((target, port), timeout=1.0):
                pass
        except OSError:
            continue
        if not stopped.is_set():
            announce()
        return


def _granian(settings: Settings, factory: str) -> None:
    from granian.constants import Interfaces, Loops
    from granian.server import Server

    # granian forks its worker: what this process has made so far stays shared with it only as
    # long as nobody writes those pages, and a cyclic collection in the worker writes every
    # object it walks (its header). Frozen objects are never walked.
    gc.collect()
    gc.freeze()
    Server(
        target=factory,
        factory=True,
        address=settings.host,
        port=settings.port,
        interface=Interfaces.ASGI,
        workers=1,
        loop=Loops.uvloop,
        log_enabled=False,
        respawn_failed_workers=False,
    ).serve()


def _uvicorn(settings: Settings, factory: str) -> None:
    import uvicorn

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
    server = uvicorn.Server(config)
    server.run()  # SystemExit when it cannot bind: serve() turns it into one line
    if not server.started:  # the app's start-up failed; its lifespan logged why
        raise CommandFailed(f"the app did not start on {listen_url(settings.host, settings.port)}")
