"""A TCP proxy on 127.0.0.1 that injects network faults between a client and a server.

Tests put a :class:`FaultProxy` in front of a real redis-server or memcached
and point the client at the proxy. The proxy forwards bytes both ways until a
test switches its mode; the mode applies at once to the connections already
open and to the ones opened later:

``pass``
    forward both ways.
``drop_replies``
    forward client -> server, swallow server -> client: the server applies
    the command and the client never sees the reply (it times out).
``cut_replies_after`` (``n`` bytes)
    forward the first ``n`` reply bytes of each connection, counted from when
    the mode was set, then close that connection (client and server side) as
    soon as the server sends more: a pipeline whose first replies arrived and
    whose others were lost.
``reset``
    reset a client connection (TCP RST) as soon as it sends anything, and
    forward nothing: the command never reaches the server.
``refuse``
    stop listening (new connections are refused) and reset every open
    connection; ``pass`` (or any other mode) listens again on the same port.

Threads and blocking sockets only: one thread accepts, two threads pump each
connection. :meth:`FaultProxy.close` stops and joins every thread and closes
every socket.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import struct
import threading
from types import TracebackType
from typing import Literal

Mode = Literal["pass", "drop_replies", "cut_replies_after", "reset", "refuse"]

MODES: tuple[Mode, ...] = ("pass", "drop_replies", "cut_replies_after", "reset", "refuse")

#: How often a blocked accept / send wakes up to look for a shutdown.
_POLL = 0.05
_CHUNK = 65536
#: SO_LINGER on, 0 seconds: close() then sends RST instead of FIN.
_LINGER_RESET = struct.pack("ii", 1, 0)


@dataclasses.dataclass(frozen=True)
class _Setting:
    mode: Mode
    limit: int
    generation: int


class _Connection:
    """One client connection and its connection to the target server."""

    def __init__(self, proxy: FaultProxy, client: socket.socket, upstream: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.closing = threading.Event()
        self._lock = threading.Lock()
        self._running = 2
        self._generation = -1
        self._replied = 0
        self.threads = [
            threading.Thread(target=self._pump_requests, name="proxy-requests", daemon=True),
            threading.Thread(target=self._pump_replies, name="proxy-replies", daemon=True),
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def abort(self, *, reset: bool) -> None:
        """Close both sides; ``reset`` sends the client an RST instead of a FIN."""
        with self._lock:
            if self.closing.is_set():
                return
            self.closing.set()
        try:
            if reset:
                self.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                # SHUT_RD wakes our own blocked recv without sending a FIN; the
                # final close() then sends the RST.
                self.client.shutdown(socket.SHUT_RD)
            else:
                self.client.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            self.upstream.shutdown(socket.SHUT_RDWR)

    def _finished(self) -> None:
        """Called by each pump as it ends; the last one closes the sockets."""
        self.abort(reset=False)
        with self._lock:
            self._running -= 1
            last = self._running == 0
        if last:
            self.client.close()
            self.upstream.close()
            self.proxy._forget(self)

    def _send(self, sock: socket.socket, data: bytes) -> bool:
        """Send all of ``data`` unless the connection closes first; False if it did."""
        view = memoryview(data)
        while view:
            if self.closing.is_set():
                return False
            try:
                sent = sock.send(view)
            except TimeoutError:
                continue
            except OSError:
                return False
            view = view[sent:]
        return True

    def _recv(self, sock: socket.socket) -> bytes | None:
        """The next chunk from ``sock``; None at end of stream, on error or when closing."""
        while not self.closing.is_set():
            try:
                data = sock.recv(_CHUNK)
            except TimeoutError:
                continue
            except OSError:
                return None
            return data or None
        return None

    def _pump_requests(self) -> None:
        try:
            while (data := self._recv(self.client)) is not None:
                setting = self.proxy._setting
                if setting.mode in ("reset", "refuse"):
                    self.abort(reset=True)
                    return
                if not self._send(self.upstream, data):
                    return
                self.proxy._count(to_server=len(data))
        finally:
            self._finished()

    def _pump_replies(self) -> None:
        try:
            while (data := self._recv(self.upstream)) is not None:
                setting = self.proxy._setting
                if setting.mode == "drop_replies":
                    self.proxy._count(dropped=len(data))
                    continue
                if setting.mode == "cut_replies_after":
                    if self._generation != setting.generation:
                        self._generation = setting.generation
                        self._replied = 0
                    allowed = setting.limit - self._replied
                    if len(data) > allowed:
                        if allowed > 0 and self._send(self.client, data[:allowed]):
                            self.proxy._count(to_client=allowed)
                        self.proxy._count(dropped=len(data) - max(allowed, 0))
                        self.abort(reset=False)
                        return
                    self._replied += len(data)
                if not self._send(self.client, data):
                    return
                self.proxy._count(to_client=len(data))
        finally:
            self._finished()


class FaultProxy:
    """A loopback TCP proxy to ``host:port`` whose faults a test switches on and off.

    Args:
        host: the target server's host.
        port: the target server's port.
        listen_port: the port to listen on; a free one when 0.

    Attributes:
        host: where clients connect (always ``127.0.0.1``).
        port: the port clients connect to; it stays the same across ``refuse``.
        target: the ``(host, port)`` forwarded to.
        bytes_to_server: request bytes forwarded so far.
        bytes_to_client: reply bytes forwarded so far.
        bytes_dropped: reply bytes swallowed or cut so far.
    """

    def __init__(self, host: str, port: int, *, listen_port: int = 0) -> None:
        self.host = "127.0.0.1"
        self.target = (host, port)
        self.bytes_to_server = 0
        self.bytes_to_client = 0
        self.bytes_dropped = 0
        self._lock = threading.Lock()
        # Serialises mode changes and close(), which open and close the listener.
        self._mode_lock = threading.Lock()
        self._setting = _Setting("pass", 0, 0)
        self._connections: set[_Connection] = set()
        self._closed = False
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._stop_accepting = threading.Event()
        self.port = listen_port
        self._listen()

    @property
    def address(self) -> str:
        """``host:port`` clients connect to."""
        return f"{self.host}:{self.port}"

    @property
    def mode(self) -> Mode:
        """The current mode."""
        return self._setting.mode

    @property
    def connection_count(self) -> int:
        """How many client connections are open through the proxy."""
        with self._lock:
            return len(self._connections)

    def set_mode(self, mode: Mode, limit: int = 0) -> None:
        """Switch to ``mode``; ``limit`` is the byte count of ``cut_replies_after``.

        Raises:
            ValueError: an unknown mode, a negative limit, or a closed proxy.
        """
        if mode not in MODES:
            raise ValueError(f"unknown proxy mode {mode!r}; expected one of {MODES}")
        if limit < 0:
            raise ValueError(f"cut_replies_after needs a byte count >= 0, not {limit}")
        with self._mode_lock:
            with self._lock:
                if self._closed:
                    raise ValueError(f"the proxy on {self.address} is closed")
                self._setting = _Setting(mode, limit, self._setting.generation + 1)
                connections = list(self._connections)
            if mode == "refuse":
                self._unlisten()
                for connection in connections:
                    connection.abort(reset=True)
            elif self._listener is None:
                self._listen()

    def pass_through(self) -> None:
        """Forward both ways (and listen again after ``refuse``)."""
        self.set_mode("pass")

    def drop_replies(self) -> None:
        """Forward requests, swallow every reply."""
        self.set_mode("drop_replies")

    def cut_replies_after(self, n: int) -> None:
        """Forward ``n`` more reply bytes per connection, then close it."""
        self.set_mode("cut_replies_after", n)

    def reset(self) -> None:
        """Reset each connection when it next sends; nothing reaches the server."""
        self.set_mode("reset")

    def refuse(self) -> None:
        """Refuse new connections and reset the open ones."""
        self.set_mode("refuse")

    def close(self) -> None:
        """Stop listening, close every connection and join every thread. Idempotent."""
        with self._mode_lock:
            with self._lock:
                self._closed = True
                connections = list(self._connections)
            self._unlisten()
        for connection in connections:
            connection.abort(reset=False)
        for connection in connections:
            for thread in connection.threads:
                thread.join(5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        host, port = self.target
        return f"<FaultProxy {self.address} -> {host}:{port} mode={self.mode}>"

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self.port))
            listener.listen(64)
            listener.settimeout(_POLL)
        except OSError:
            listener.close()
            raise
        self.port = int(listener.getsockname()[1])
        self._listener = listener
        self._stop_accepting = threading.Event()
        self._acceptor = threading.Thread(
            target=self._accept, args=(listener, self._stop_accepting), name="proxy-accept"
        )
        self._acceptor.daemon = True
        self._acceptor.start()

    def _unlisten(self) -> None:
        if self._acceptor is not None:
            self._stop_accepting.set()
            self._acceptor.join(5)
            self._acceptor = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def _accept(self, listener: socket.socket, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=2.0)
            except OSError:
                # The target is down: look like it to the client.
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                client.close()
                continue
            client.settimeout(_POLL)
            upstream.settimeout(_POLL)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection = _Connection(self, client, upstream)
            with self._lock:
                closed = self._closed
                if not closed:
                    self._connections.add(connection)
            if closed:
                client.close()
                upstream.close()
                return
            connection.start()

    def _forget(self, connection: _Connection) -> None:
        with self._lock:
            self._connections.discard(connection)

    def _count(self, *, to_server: int = 0, to_client: int = 0, dropped: int = 0) -> None:
        with self._lock:
            self.bytes_to_server += to_server
            self.bytes_to_client += to_client
            self.bytes_dropped += dropped
