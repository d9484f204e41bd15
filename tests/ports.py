"""Loopback ports for the shop servers the tests start.

A port picked by binding port 0 and closing the socket is free now, and the next pick may be the
same port. Granian binds its listening socket with SO_REUSEPORT: two servers of one deployment
that drew the same port can both listen on it when they start together (each passes `shop`'s
"is the port free" check before the other binds), and the kernel then splits connections between
them -- the gateway's POST to "orders" meets delivery's 404. `server_port()` never hands out a
port twice in a test session.
"""

from __future__ import annotations

import socket

_HANDED_OUT: set[int] = set()


def server_port() -> int:
    """A port of 127.0.0.1 that is free now and that no earlier call of this session returned."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
