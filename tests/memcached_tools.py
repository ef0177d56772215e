"""Helpers shared by the memcached test modules: server stats and send counting."""

from __future__ import annotations

import socket
from typing import Any

from pymemcache.client.base import Client


def stat(client: Client, name: bytes) -> int:
    """One counter of the server's ``stats``."""
    return int(client.stats()[name])


class CountingSocket:
    """A socket wrapper that records every ``send`` and ``sendall``."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> int:
        count = self.sock.send(data)
        self.sent.append(bytes(data[:count]))
        return count

    def sendall(self, data: bytes) -> None:
        self.sent.append(bytes(data))
        self.sock.sendall(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)
