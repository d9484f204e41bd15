"""The `shop` command: run | serve | gateway | migrate | admin create | dlq list/show/redrive."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from collections.abc import Sequence
from typing import Any

import msgspec

from shop.settings import MODULE_NAMES, Settings, SettingsError

SERVERS = ("granian", "uvicorn")
DEFAULT_SERVER = "granian"


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if getattr(args, "host", None):
        overrides["host"] = args.host
    if getattr(args, "port", None) is not None:
        overrides["port"] = args.port
    return Settings.from_env(**overrides)


def _modules(names: Sequence[str]) -> list[str]:
    unknown = [n for n in names if n not in MODULE_NAMES]
    if unknown:
        raise SettingsError(f"unknown module(s) {', '.join(unknown)}; choose from {', '.join(MODULE_NAMES)}")
    return list(names) or list(MODULE_NAMES)


def cmd_run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    settings.check_payment_provider()  # here, not only in the server's worker: a clear exit 2
    # The server imports the app factory in its own worker; hand it the resolved settings.
    os.environ["SHOP_HOST"], os.environ["SHOP_PORT"] = settings.host, str(settings.port)
    serve(settings, "shop.app:create_app", server=args.server)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    modules = _modules(args.modules)
    if "payments" in modules:
        settings.check_payment_provider()
    os.environ["SHOP_HOST"], os.environ["SHOP_PORT"] = settings.host, str(settings.port)
    os.environ["SHOP_SERVE_MODULES"] = ",".join(modules)
    serve(settings, "shop.app:create_service_app", server=args.server)
    return 0


def cmd_gateway(args: argparse.Namespace) -> int:
    settings = _settings(args)
    os.environ["SHOP_HOST"], os.environ["SHOP_PORT"] = settings.host, str(settings.port)
    serve(settings, "shop.app:create_gateway", server=args.server)
    return 0


def serve(settings: Settings, factory: str, *, server: str = DEFAULT_SERVER) -> None:
    """Serve an app factory on one worker with the chosen ASGI server."""
    os.environ["SHOP_DIE_WITH_PARENT"] = "1"  # see shop.process.die_with_parent
    if server == "uvicorn":
        import uvicorn

        uvicorn.run(
            factory,
            factory=True,
            host=settings.host,
            port=settings.port,
            loop="uvloop",
            http="httptools",
            log_level="warning",
            access_log=False,
            lifespan="on",
        )
        return
    from granian.constants import Interfaces, Loops
    from granian.server import Server

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


def cmd_migrate(args: argparse.Namespace) -> int:
    from shop import migrate

    settings = _settings(args)
    modules = _modules(args.modules)
    if args.downgrade:
        asyncio.run(migrate.downgrade(settings, modules, args.downgrade))
    else:
        asyncio.run(migrate.upgrade(settings, modules))
    print(f"migrated {', '.join(modules)}")
    return 0


def cmd_admin_create(args: argparse.Namespace) -> int:
    from shop.app import build_shop
    from shop.bus.messages import Rejected
    from shop.contracts.users import CreateAdmin
    from shop.migrate import upgrade

    settings = _settings(args)
    if len(args.password) < 8:
        raise SettingsError("--password: must be at least 8 characters")

    async def create() -> int:
        await upgrade(settings, ["users"])
        shop = build_shop(settings, local=["users"])
        await shop.bus.start()
        try:
            reply = await shop.bus.ask(
                CreateAdmin(email=args.email.strip().lower(), password=args.password, name=args.name),
                timeout=30,
            )
        finally:
            await shop.stop()
        if isinstance(reply, Rejected):
            print(f"shop: {reply.detail}", file=sys.stderr)
            return 1
        print(json.dumps({"id": str(reply.id), "email": reply.email, "role": reply.role}))
        return 0

    return asyncio.run(create())


def cmd_dlq(args: argparse.Namespace) -> int:
    from shop.bus import inbox, messages
    from shop.db import Database

    settings = _settings(args)
    modules = _modules(getattr(args, "modules", None) or [])

    async def run() -> int:
        databases = [Database(m, settings.database_url_for(m)) for m in modules]
        try:
            if args.dlq_command == "list":
                for database in databases:
                    for entry in await inbox.list_dead(database):
                        print(
                            json.dumps(
                                {
                                    "id": str(entry.id),
                                    "module": entry.module,
                                    "message_type": entry.message_type,
                                    "consumer": entry.consumer,
                                    "attempts": entry.attempts,
                                    "failed_at": entry.failed_at.isoformat(),
                                    "error": entry.error.strip().splitlines()[-1],
                                }
                            )
                        )
                return 0
            entry_id = uuid.UUID(args.id)
            for database in databases:
                if args.dlq_command == "show":
                    found = await inbox.get_dead(database, entry_id)
                    if found is not None:
                        data = msgspec.to_builtins(
                            {k: getattr(found, k) for k in ("id", "module", "consumer", "attempts", "error")}
                        )
                        data["envelope"] = msgspec.to_builtins(messages.to_json(found.envelope))
                        print(json.dumps(data, indent=2, default=str))
                        return 0
                elif await inbox.redrive(database, entry_id):
                    print(f"redriven {entry_id} ({database.module}); the running shop delivers it again")
                    return 0
            print(f"shop: no dead letter {entry_id}", file=sys.stderr)
            return 1
        finally:
            for database in databases:
                await database.dispose()

    return asyncio.run(run())


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="shop", description="Shop: one process or many, the same code.")
    sub = top.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="everything in one process on the embedded databases")
    run.add_argument("--host")
    run.add_argument("--port", type=int)
    run.add_argument("--server", choices=SERVERS, default=DEFAULT_SERVER)
    run.set_defaults(func=cmd_run)

    srv = sub.add_parser(
        "serve", help="some modules as one service (Redis transport, registered in discovery)"
    )
    srv.add_argument("modules", nargs="+", metavar="MODULE")
    srv.add_argument("--host")
    srv.add_argument("--port", type=int)
    srv.add_argument("--server", choices=SERVERS, default=DEFAULT_SERVER)
    srv.set_defaults(func=cmd_serve)

    gw = sub.add_parser("gateway", help="the API gateway alone, routing to registered instances")
    gw.add_argument("--host")
    gw.add_argument("--port", type=int)
    gw.add_argument("--server", choices=SERVERS, default=DEFAULT_SERVER)
    gw.set_defaults(func=cmd_gateway)

    mig = sub.add_parser("migrate", help="upgrade each module's schema to head")
    mig.add_argument("modules", nargs="*", metavar="MODULE")
    mig.add_argument("--downgrade", metavar="REVISION", help="downgrade instead (e.g. base)")
    mig.set_defaults(func=cmd_migrate)

    admin = sub.add_parser("admin", help="administration")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True)
    create = admin_sub.add_parser("create", help="create an admin user")
    create.add_argument("--email", required=True)
    create.add_argument("--password", required=True)
    create.add_argument("--name", default="Administrator")
    create.set_defaults(func=cmd_admin_create)

    dlq = sub.add_parser("dlq", help="dead letters")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    dlq_list = dlq_sub.add_parser("list", help="list dead letters of every (or the named) module")
    dlq_list.add_argument("modules", nargs="*", metavar="MODULE")
    for name in ("show", "redrive"):
        one = dlq_sub.add_parser(name, help=f"{name} one dead letter")
        one.add_argument("id")
    dlq.set_defaults(func=cmd_dlq)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except SettingsError as exc:
        print(f"shop: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"shop: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
