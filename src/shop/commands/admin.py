"""`shop admin create`: the new admin's password, never from the command line.

A command line is visible to every user of the machine (`ps`, /proc) and lands in shell
history, so the password comes from, in this order: standard input with `--password-stdin`
(its first line), the environment variable SHOP_ADMIN_PASSWORD, or a prompt on the terminal,
asked twice.
"""

from __future__ import annotations

import getpass
from collections.abc import Callable, Mapping
from typing import TextIO

from shop.commands.failures import USAGE, CommandFailed

PASSWORD_VAR = "SHOP_ADMIN_PASSWORD"
EMAIL_VAR = "SHOP_ADMIN_EMAIL"
MIN_LENGTH = 8
NO_SOURCE = (
    "no password: type it at the prompt (run from a terminal), pipe it with --password-stdin, "
    f"or set {PASSWORD_VAR}"
)


def read_password(
    *,
    from_stdin: bool,
    env: Mapping[str, str],
    stdin: TextIO,
    prompt: Callable[[str], str] | None = None,
) -> str:
    """The password, from the first source given; CommandFailed (usage) if none or too short.
    `prompt` asks without echo (default: getpass.getpass)."""
    prompt = prompt or getpass.getpass
    if from_stdin:
        password = stdin.readline().rstrip("\r\n")
        if not password:
            raise CommandFailed("--password-stdin: standard input holds no password", USAGE)
        where = "the password on standard input"
    elif env.get(PASSWORD_VAR):
        password, where = env[PASSWORD_VAR], PASSWORD_VAR
    elif stdin.isatty():
        password = prompt("Password: ")
        if password != prompt("Password (again): "):
            raise CommandFailed("the two passwords differ; nothing was created", USAGE)
        where = "the password"
    else:
        raise CommandFailed(NO_SOURCE, USAGE)
    if len(password) < MIN_LENGTH:
        raise CommandFailed(f"{where} must be at least {MIN_LENGTH} characters", USAGE)
    return password
