"""The ports the tests give their shop servers: free when handed out, never handed out twice."""

from __future__ import annotations

import socket

from ..ports import server_port


def test_a_server_port_is_never_handed_out_twice_in_a_session() -> None:
    ports = [server_port() for _ in range(500)]
    assert len(set(ports)) == len(ports)


def test_a_server_port_is_free_to_listen_on() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", server_port()))
        server.listen()
