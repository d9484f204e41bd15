"""The `shop` command: run | serve | gateway | migrate [status | revision] | admin create | dlq.

This file parses the command line; `shop.commands` does the work. An expected failure (bad
settings or arguments, a database or Redis that does not answer, a migration that fails) is one
line on stderr, `shop: <what went wrong>`, and exit code 2 (refused before trying) or 1 (tried
and failed): never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from collections.abc import Sequence
from importlib import metadata
from typing import Any

import msgspec

from shop.commands.failures import FAILED, USAGE, CommandFailed
from shop.commands.serving import DEFAULT_SERVER, SERVERS, Role
from shop.settings import MODULE_NAMES, Settings, SettingsError

__all__ = ["DEFAULT_SERVER", "SERVERS", "main", "parser", "serve"]

# `shop migrate status` and `shop migrate revision` next to `shop migrate [MODULE...]`: argparse
# cannot tell a subcommand from a positional, so these two words are routed to their own parsers.
_MIGRATE_TOOLS = {"status": "migrate-status", "revision": "migrate-revision"}


def _settings(args: argparse.Namespace, env: dict[str, str] | None = None) -> Settings:
    overrides: dict[str, Any] = {}
    if getattr(args, "host", None):
        overrides["host"] = args.host
    if getattr(args, "port", None) is not None:
        overrides["port"] = args.port
    return Settings.from_env(env, **overrides)


def _modules(names: Sequence[str]) -> list[str]:
    unknown = [n for n in names if n not in MODULE_NAMES]
    if unknown:
        raise SettingsError(f"unknown module(s) {', '.join(unknown)}; choose from {', '.join(MODULE_NAMES)}")
    return list(dict.fromkeys(names)) or list(MODULE_NAMES)


def _say(line: str) -> None:
    print(line, flush=True)


def version() -> str:
    try:
        return metadata.version("shop")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


# --------------------------------------------------------------------------- servers


def serve(
    settings: Settings, factory: str, *, server: str = DEFAULT_SERVER, role: Role | None = None
) -> None:
    """Serve an app factory on one worker of the chosen ASGI server, as `shop run` does (the
    benchmarks serve their reference apps with it too)."""
    from shop.commands import serving

    serving.serve(settings, role or Role("app", factory, "shop"), server=server)


def _serve(args: argparse.Namespace, role: Role) -> int:
    from shop.commands import serving

    settings = _settings(args)
    if "payments" in role.databases:  # here, not only in the server's worker: a clear exit 2
        settings.check_payment_provider()
    serving.require_server(args.server)
    asyncio.run(serving.preflight(settings, role))
    # The server imports the app factory in its own worker; hand it the resolved settings.
    os.environ["SHOP_HOST"], os.environ["SHOP_PORT"] = settings.host, str(settings.port)
    serve(settings, role.factory, server=args.server, role=role)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    role = Role(
        "run", "shop.app:create_app", "shop", databases=MODULE_NAMES, signs_tokens=True, migrates=True
    )
    return _serve(args, role)


def cmd_serve(args: argparse.Namespace) -> int:
    from shop.discovery.factory import SERVICE_URLS_VAR

    modules = tuple(_modules(args.modules))
    os.environ["SHOP_SERVE_MODULES"] = ",".join(modules)
    in_process = _settings(args).service_transport == "inprocess"
    role = Role(
        "serve",
        "shop.app:create_service_app",
        modules[0] if len(modules) == 1 else "shop",
        databases=modules,
        needs_redis=not (in_process and os.environ.get(SERVICE_URLS_VAR)),
        modules=modules,
        signs_tokens="users" in modules,
    )
    return _serve(args, role)


def cmd_gateway(args: argparse.Namespace) -> int:
    from shop.discovery.factory import SERVICE_URLS_VAR

    # With static service URLs Redis only shares the rate limits (each gateway counts alone
    # while it is away); with the Redis registry the gateway cannot route without it.
    role = Role(
        "gateway", "shop.app:create_gateway", "gateway", needs_redis=not os.environ.get(SERVICE_URLS_VAR)
    )
    return _serve(args, role)


# --------------------------------------------------------------------------- migrations


def cmd_migrate(args: argparse.Namespace) -> int:
    from shop.commands import migrations

    settings = _settings(args)
    modules = _modules(args.modules)
    asyncio.run(migrations.run(settings, modules, _say, downgrade_to=args.downgrade))
    return 0


def cmd_migrate_status(args: argparse.Namespace) -> int:
    from shop.commands import migrations

    asyncio.run(migrations.status(_settings(args), _modules(args.modules), _say))
    return 0


def cmd_migrate_revision(args: argparse.Namespace) -> int:
    from shop.commands import migrations

    module = _modules([args.module])[0]
    asyncio.run(migrations.revision(module, args.message, _say, empty=args.empty))
    return 0


# --------------------------------------------------------------------------- admin


def cmd_admin_create(args: argparse.Namespace) -> int:
    from shop.commands.admin import EMAIL_VAR, PASSWORD_VAR, read_password

    # SHOP_ADMIN_PASSWORD alone is a password source here, not half of the start-up admin pair.
    env = {k: v for k, v in os.environ.items() if k not in (EMAIL_VAR, PASSWORD_VAR)}
    settings = _settings(args, env)
    email = (args.email or os.environ.get(EMAIL_VAR) or "").strip().lower()
    if not email:
        raise CommandFailed(f"--email is required (or set {EMAIL_VAR})", USAGE)
    password = read_password(from_stdin=args.password_stdin, env=os.environ, stdin=sys.stdin)

    async def create() -> int:
        from shop.app import build_shop
        from shop.bus.messages import Rejected
        from shop.commands import migrations
        from shop.contracts.users import CreateAdmin

        await migrations.run(settings, ["users"], lambda _line: None)
        shop = build_shop(settings, local=["users"])
        await shop.bus.start()
        try:
            reply = await shop.bus.ask(
                CreateAdmin(email=email, password=password, name=args.name), timeout=30
            )
        finally:
            await shop.stop()
        if isinstance(reply, Rejected):
            raise CommandFailed(f"{email}: {reply.detail}")
        print(json.dumps({"id": str(reply.id), "email": reply.email, "role": reply.role}))
        return 0

    return asyncio.run(create())


# --------------------------------------------------------------------------- dead letters


def cmd_dlq(args: argparse.Namespace) -> int:
    from shop.bus import inbox, messages
    from shop.commands.checks import databases_answer
    from shop.db import Database

    settings = _settings(args)
    modules = _modules(getattr(args, "modules", None) or [])

    async def run() -> int:
        await databases_answer(settings, modules)
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
            entry_id: uuid.UUID = args.id
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
            raise CommandFailed(f"no dead letter {entry_id}")
        finally:
            for database in databases:
                await database.dispose()

    return asyncio.run(run())


# --------------------------------------------------------------------------- the parser


class _Parser(argparse.ArgumentParser):
    """The top-level parser: routes `migrate status|revision` to their own subcommands."""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        argv = list(sys.argv[1:] if args is None else args)
        if len(argv) >= 2 and argv[0] == "migrate" and argv[1] in _MIGRATE_TOOLS:
            argv = [_MIGRATE_TOOLS[argv[1]], *argv[2:]]
        return super().parse_known_args(argv, namespace)


class _NoPasswordOnTheCommandLine(argparse.Action):
    """`--password P` is refused without repeating P (argv is visible to every local user)."""

    def __call__(self, parser: argparse.ArgumentParser, *_args: Any, **_kwargs: Any) -> None:
        parser.error(
            "--password is not accepted: a command line is visible to other users; pipe the "
            "password to --password-stdin, set SHOP_ADMIN_PASSWORD, or type it at the prompt"
        )


def _quiet_logs() -> None:
    """Commands other than the servers: only warnings and errors in the log (on stderr), so
    that stdout carries the command's own output."""
    from shop.observability import logging as shop_logging

    shop_logging.configure("WARNING")


def _server_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--host", help="address to listen on (default: SHOP_HOST, else 127.0.0.1)")
    command.add_argument("--port", type=int, help="port to listen on (default: SHOP_PORT, else 8000)")
    command.add_argument(
        "--server",
        choices=SERVERS,
        default=DEFAULT_SERVER,
        help="ASGI server (default: granian; uvicorn needs the extra shop[uvicorn])",
    )


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog="shop", description="Shop: one process or many, the same code.")
    top.add_argument("--version", action="version", version=f"shop {version()}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="everything in one process on the embedded databases")
    _server_options(run)
    run.set_defaults(func=cmd_run)

    srv = sub.add_parser(
        "serve", help="some modules as one service (Redis transport, registered in discovery)"
    )
    srv.add_argument("modules", nargs="+", metavar="MODULE")
    _server_options(srv)
    srv.set_defaults(func=cmd_serve)

    gw = sub.add_parser("gateway", help="the API gateway alone, routing to registered instances")
    _server_options(gw)
    gw.set_defaults(func=cmd_gateway)

    mig = sub.add_parser(
        "migrate",
        help="upgrade each module's schema to head; `migrate status`, `migrate revision`",
        usage="shop migrate [MODULE ...] [--downgrade REVISION]\n"
        "       shop migrate status [MODULE ...]\n"
        "       shop migrate revision MODULE -m MESSAGE [--empty]",
        epilog="`shop migrate status --help` and `shop migrate revision --help` tell more.",
    )
    mig.add_argument("modules", nargs="*", metavar="MODULE", help="default: every module")
    mig.add_argument("--downgrade", metavar="REVISION", help="downgrade instead (e.g. base)")
    mig.set_defaults(func=cmd_migrate)

    status = sub.add_parser(
        "migrate-status",
        prog="shop migrate status",
        description="Each module's database revision next to its head revision.",
    )
    status.add_argument("modules", nargs="*", metavar="MODULE", help="default: every module")
    status.set_defaults(func=cmd_migrate_status)

    revision = sub.add_parser(
        "migrate-revision",
        prog="shop migrate revision",
        description="Draft a module's next revision with Alembic autogenerate (its tables against "
        "its migrations) into migrations/<module>/versions/. Review the draft before committing.",
    )
    revision.add_argument("module", metavar="MODULE", choices=MODULE_NAMES)
    revision.add_argument("-m", "--message", required=True, help="what the revision does")
    revision.add_argument(
        "--empty", action="store_true", help="write the revision even without changes (to fill in by hand)"
    )
    revision.set_defaults(func=cmd_migrate_revision)

    admin = sub.add_parser("admin", help="administration")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True)
    create = admin_sub.add_parser(
        "create",
        allow_abbrev=False,  # `--password` must not pass for `--password-stdin`
        help="create an admin user",
        description="Create an admin user. The password is read from standard input "
        "(--password-stdin), else from SHOP_ADMIN_PASSWORD, else asked twice at the terminal; "
        "never from the command line.",
    )
    create.add_argument("--email", help="the admin's email (default: SHOP_ADMIN_EMAIL)")
    create.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input's first line"
    )
    create.add_argument("--name", default="Administrator")
    create.add_argument("--password", nargs="?", action=_NoPasswordOnTheCommandLine, help=argparse.SUPPRESS)
    create.set_defaults(func=cmd_admin_create)

    dlq = sub.add_parser("dlq", help="dead letters")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    dlq_list = dlq_sub.add_parser("list", help="list dead letters of every (or the named) module")
    dlq_list.add_argument("modules", nargs="*", metavar="MODULE")
    for name in ("show", "redrive"):
        one = dlq_sub.add_parser(name, help=f"{name} one dead letter")
        one.add_argument("id", type=uuid.UUID)
    dlq.set_defaults(func=cmd_dlq)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.func not in (cmd_run, cmd_serve, cmd_gateway):
        _quiet_logs()
    try:
        code: int = args.func(args)
    except (SettingsError, ValueError) as exc:
        return _fail(str(exc), USAGE)
    except CommandFailed as exc:
        return _fail(str(exc), exc.code)
    except KeyboardInterrupt:
        return _fail("interrupted", FAILED)
    return code


def _fail(message: str, code: int) -> int:
    print(f"shop: {message}", file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
