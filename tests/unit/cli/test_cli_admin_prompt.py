"""`shop admin create` at a real terminal: the password is asked twice and never echoed."""

from __future__ import annotations

import os
import pty
import select
import time
from pathlib import Path

from .clitools import SHOP


def _read_until(fd: int, seen: bytearray, token: bytes, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while token not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 1024)
            except OSError:  # the child closed the terminal
                return
            if not chunk:
                return
            seen.extend(chunk)


def test_admin_create_asks_for_the_password_twice_at_a_terminal_without_echoing_it(
    shop_env: dict[str, str], tmp_path: Path
) -> None:
    password = b"typed-at-the-terminal"
    pid, fd = pty.fork()
    if pid == 0:  # the child: `shop` on the pseudo-terminal as its controlling terminal
        try:
            os.chdir(tmp_path)
            os.execve(SHOP, [SHOP, "admin", "create", "--email", "tty@example.com"], shop_env)
        finally:
            os._exit(127)  # never back into the test runner
    seen = bytearray()
    try:
        _read_until(fd, seen, b"Password: ")
        os.write(fd, password + b"\n")
        _read_until(fd, seen, b"(again): ")
        os.write(fd, password + b"\n")
        _read_until(fd, seen, b"}")
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)

    assert os.waitstatus_to_exitcode(status) == 0, bytes(seen)
    assert b'"email": "tty@example.com", "role": "admin"' in seen
    assert password not in seen
