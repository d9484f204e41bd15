"""Helpers and fixtures for the `shop` command: a clean environment on a tmp data dir, the command run as
a real process, and ports that nothing listens on."""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

SHOP = str(Path(sys.executable).parent / "shop")


def closed_port() -> int:
    """A loopback port nothing listens on (bound once by us, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture
def shop_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a `shop` process: no SHOP_* of ours, a data dir of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHOP_", "OTEL_"))}
    env["SHOP_DATA_DIR"] = str(tmp_path / "data")
    return env


@pytest.fixture
def clean_env(shop_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The same environment for `main()` called in this process."""
    for name in list(os.environ):
        if name.startswith(("SHOP_", "OTEL_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SHOP_DATA_DIR", shop_env["SHOP_DATA_DIR"])
    return shop_env


RunShop = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run_shop(shop_env: dict[str, str], tmp_path: Path) -> RunShop:
    """`run_shop(*args, env={...}, stdin="...")`: the `shop` command as a process, to its end."""

    def run(
        *args: str, env: dict[str, str] | None = None, stdin: str = ""
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SHOP, *args],
            env={**shop_env, **(env or {})},
            cwd=tmp_path,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )

    return run


def one_line_failure(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The command failed with `code` and said why in one `shop: ...` line on stderr; that line."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("shop: "), lines[0]
    return lines[0]


class Server:
    """A `shop` server process; its stderr lines as they come."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.process = subprocess.Popen(
            [SHOP, *args], env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.put(line)

    def wait_for(self, text: str, timeout: float = 60.0) -> str:
        """The first stderr line containing `text` (fails after `timeout` or when the process ends)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.process.poll() is not None and self.lines.empty():
                    break
                continue
            self.seen.append(line)
            if text in line:
                return line
        raise AssertionError(
            f"no line with {text!r}; exit {self.process.poll()}; stderr:\n{''.join(self.seen)}"
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


StartServer = Callable[..., Server]


@pytest.fixture
def start_server(shop_env: dict[str, str], tmp_path: Path) -> Iterator[StartServer]:
    servers: list[Server] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Server:
        server = Server(list(args), {**shop_env, **(env or {})}, tmp_path)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
