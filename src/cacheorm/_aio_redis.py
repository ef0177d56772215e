"""An asyncio Redis backend that owns its wire protocol, with automatic pipelining.

:class:`RedisConnection` is one connection to one server, shared by every task:
the commands of every request issued in one event-loop iteration go out in one
write, and the replies, which Redis sends in order, are matched to the requests
in order by the connection itself. A request whose waiter was cancelled keeps
its place in that order: its reply is read and dropped, never handed to
another request.
"""

from __future__ import annotations

import asyncio
import collections
import ssl as _ssl
from collections.abc import Sequence

from cacheorm._resp import Arg, ProtocolError, Reader, ReplyError, encode, make_reader

__all__ = ["ConnectionLost", "RedisConnection", "RequestTimeout"]


class ConnectionLost(Exception):
    """A request failed because its connection failed (or could not be made).

    Attributes:
        sent: False if no byte of the request reached the socket (resending is
            safe); True if it was written, so it may have run (outcome unknown).
        server: the server's address.
    """

    def __init__(self, message: str, *, sent: bool, server: str) -> None:
        super().__init__(message)
        self.sent = sent
        self.server = server


class RequestTimeout(ConnectionLost):
    """The server sent nothing for ``timeout`` seconds while requests waited (or the
    connection was not made within ``connect_timeout``); the connection was closed."""


class _Request:
    """One request in flight: its waiter and the replies read so far."""

    __slots__ = ("count", "future", "replies")

    def __init__(self, future: asyncio.Future[list[object]], count: int) -> None:
        self.future = future
        self.count = count
        self.replies: list[object] = []


class _Protocol(asyncio.Protocol):
    """One TCP (or unix, or TLS) connection: writes coalesced per loop iteration,
    replies matched to requests in order."""

    def __init__(self, owner: RedisConnection, loop: asyncio.AbstractEventLoop) -> None:
        self._owner = owner
        self._loop = self.loop = loop
        self._reader: Reader = make_reader()
        self.transport: asyncio.Transport | None = None
        #: Requests written or to be written, in order; the last ``unflushed`` are not written.
        self.pending: collections.deque[_Request] = collections.deque()
        self.out: list[bytes] = []
        self.unflushed = 0
        self.flush_scheduled = False
        self.alive = False
        self.paused = False
        self._drain: asyncio.Future[None] | None = None
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self.closed: asyncio.Future[None] = loop.create_future()
        self._error: ConnectionLost | None = None

    # -- asyncio callbacks ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.alive = True

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        self._last = self._loop.time()
        pending = self.pending
        gets = reader.gets
        while True:
            try:
                reply = gets()
            except ProtocolError as exc:
                self.fail(f"the server sent bytes that are not RESP ({exc})")
                return
            if reply is False:
                return
            if not pending:
                self.fail("the server sent a reply nothing asked for")
                return
            request = pending[0]
            replies = request.replies
            replies.append(reply)
            if len(replies) == request.count:
                pending.popleft()
                future = request.future
                if not future.done():  # a cancelled waiter's reply is dropped here
                    future.set_result(replies)

    def eof_received(self) -> bool | None:
        self._error = self._error or self._owner.lost("the server closed the connection", True)
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        error = self._error
        if error is None:
            reason = f"the connection was lost ({exc})" if exc else "the connection was closed"
            error = self._owner.lost(reason, True)
        self._fail_pending(error)
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        if not self.closed.done():
            self.closed.set_result(None)
        self._owner.forget(self)

    def pause_writing(self) -> None:
        self.paused = True
        self._owner.pauses += 1

    def resume_writing(self) -> None:
        self.paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._drain = None

    # -- used by RedisConnection ---------------------------------------------------

    async def drained(self) -> None:
        """Return when the transport's write buffer is below its high-water mark again."""
        if self._drain is None:
            self._drain = self._loop.create_future()
        await asyncio.shield(self._drain)

    def push(self, data: bytes, request: _Request) -> None:
        """Queue a request's bytes for the next flush and its waiter for its replies."""
        pending = self.pending
        if not pending:
            self._last = self._loop.time()
            if self._timer is None:
                self._timer = self._loop.call_at(self._last + self._owner.timeout, self._watch)
        pending.append(request)
        self.out.append(data)
        self.unflushed += 1
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write every queued request in one ``transport.write``."""
        self.flush_scheduled = False
        if not self.out or not self.alive:
            return
        out = self.out
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        self._owner.writes += 1
        self.unflushed = 0
        assert self.transport is not None
        self.transport.write(data)

    def _watch(self) -> None:
        """The timeout check: close the connection if pending requests heard nothing."""
        self._timer = None
        if not self.alive or not self.pending:
            return
        deadline = self._last + self._owner.timeout
        if self._loop.time() >= deadline:
            timeout = self._owner.timeout
            self.fail(f"no reply within {timeout:g}s (timeout)", timed_out=True)
            return
        self._timer = self._loop.call_at(deadline, self._watch)

    def fail(self, reason: str, *, timed_out: bool = False) -> None:
        """Close the connection; every pending request fails with ``reason``."""
        if self._error is None:
            self._error = self._owner.lost(reason, True, timed_out=timed_out)
        self.alive = False
        self._fail_pending(self._error)
        if self.transport is not None:
            self.transport.abort()

    def _fail_pending(self, error: ConnectionLost) -> None:
        pending = self.pending
        written = len(pending) - self.unflushed
        unsent: ConnectionLost | None = None
        for n, request in enumerate(pending):
            future = request.future
            if future.done():
                continue
            if n < written:
                if request.replies:  # the first request may have had some replies
                    future.set_exception(
                        type(error)(
                            str(error), sent=True, server=error.server, replies=request.replies
                        )
                    )
                else:
                    future.set_exception(error)
            else:
                if unsent is None:
                    unsent = self._owner.lost(str(error), False)
                future.set_exception(unsent)
        pending.clear()
        self.out.clear()
        self.unflushed = 0


class RedisConnection:
    """One auto-pipelined connection to one Redis server, for every task of one event loop.

    It connects on first use (and again after the connection failed), sends
    ``AUTH`` and ``SELECT`` when asked to, and speaks RESP2.

    Args:
        host: the server's host name or address (ignored with ``path``).
        port: its TCP port.
        path: a unix socket path instead of host and port.
        username: the ACL user for ``AUTH`` (needs ``password``).
        password: the password for ``AUTH``.
        db: the database ``SELECT``-ed after connecting.
        ssl: a TLS context (``rediss://``).
        connect_timeout: seconds to connect, TLS and ``AUTH`` / ``SELECT`` included.
        timeout: seconds a request waits without hearing from the server before
            the connection is declared dead and every request in flight fails.
    """

    def __init__(
        self,
        host: str = "localhost",
        port: int = 6379,
        *,
        path: str | None = None,
        username: str | None = None,
        password: str | None = None,
        db: int = 0,
        ssl: _ssl.SSLContext | None = None,
        connect_timeout: float = 5.0,
        timeout: float = 5.0,
    ) -> None:
        self.host = host
        self.port = port
        self.path = path
        self.username = username
        self.password = password
        self.db = db
        self.ssl = ssl
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        if path:
            self.server = path
        else:
            self.server = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        #: How many ``transport.write`` calls carried requests (for tests and benchmarks).
        self.writes = 0
        #: How many times the transport's write buffer filled and writing paused.
        self.pauses = 0
        #: How many connections were made.
        self.connects = 0
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        self._opening: asyncio.Task[_Protocol] | None = None
        self._closed = False

    def lost(self, reason: str, sent: bool, *, timed_out: bool = False) -> ConnectionLost:
        """The exception for a request on a failed connection."""
        kind = RequestTimeout if timed_out else ConnectionLost
        return kind(f"{self.server}: {reason}", sent=sent, server=self.server)

    def forget(self, protocol: _Protocol) -> None:
        """Called by a connection when it is gone: the next request reconnects."""
        if self._protocol is protocol:
            self._protocol = None

    @property
    def connected(self) -> bool:
        """True while a connection is open."""
        return self._protocol is not None and self._protocol.alive

    async def execute(self, commands: Sequence[Sequence[Arg]]) -> list[object]:
        """Send ``commands`` (contiguously, pipelined with other tasks'); their replies in order.

        An error reply is a :class:`~cacheorm._resp.ReplyError` in the list.
        Cancelling the call drops its replies when they arrive; the
        connection stays usable.

        Raises:
            ConnectionLost: the connection failed (``sent`` says whether the
                request may have reached the server) or could not be made.
            RequestTimeout: the server did not answer within ``timeout``.
            TypeError: an argument is not bytes, str, int or float.
        """
        data = encode(commands)
        protocol = self._protocol
        while protocol is None or not protocol.alive or protocol.paused:
            if protocol is None or not protocol.alive:
                protocol = await self._connect()
            else:
                await protocol.drained()
                protocol = self._protocol
        future: asyncio.Future[list[object]] = protocol.loop.create_future()
        protocol.push(data, _Request(future, len(commands)))
        return await future

    async def _connect(self) -> _Protocol:
        """The open connection, made by the first task that needs it and shared by the others."""
        if self._closed:
            raise self.lost("the connection is closed", False)
        connecting = self._connecting
        if connecting is None:
            loop = asyncio.get_running_loop()
            connecting = self._connecting = loop.create_future()
            task = self._opening = loop.create_task(self._open(loop))
            task.add_done_callback(self._opened)
        return await asyncio.shield(connecting)

    def _opened(self, task: asyncio.Task[_Protocol]) -> None:
        connecting, self._connecting = self._connecting, None
        assert connecting is not None
        if task.cancelled():
            connecting.set_exception(self.lost("connecting was cancelled", False))
        elif (exc := task.exception()) is not None:
            connecting.set_exception(exc)
        else:
            protocol = self._protocol = task.result()
            if self._closed:
                protocol.fail("the connection is closed")
                connecting.set_exception(self.lost("the connection is closed", False))
            else:
                connecting.set_result(protocol)
        connecting.exception()  # marks a failure retrieved: no "never retrieved" log

    async def _open(self, loop: asyncio.AbstractEventLoop) -> _Protocol:
        """Connect, then AUTH and SELECT; the connection, or ConnectionLost(sent=False)."""
        try:
            return await asyncio.wait_for(self._handshake(loop), self.connect_timeout)
        except asyncio.TimeoutError:
            raise RequestTimeout(
                f"{self.server}: could not connect within {self.connect_timeout:g}s "
                "(connect_timeout)",
                sent=False,
                server=self.server,
            ) from None
        except OSError as exc:
            raise self.lost(f"could not connect: {exc}", False) from exc

    async def _handshake(self, loop: asyncio.AbstractEventLoop) -> _Protocol:
        transport: asyncio.BaseTransport
        if self.path:
            transport, protocol = await loop.create_unix_connection(
                lambda: _Protocol(self, loop), self.path, ssl=self.ssl
            )
        else:
            transport, protocol = await loop.create_connection(
                lambda: _Protocol(self, loop),
                self.host,
                self.port,
                ssl=self.ssl,
                server_hostname=self.host if self.ssl is not None else None,
            )
        self.connects += 1
        try:
            commands: list[tuple[str, ...]] = []
            if self.password is not None:
                if self.username:
                    commands.append(("AUTH", self.username, self.password))
                else:
                    commands.append(("AUTH", self.password))
            if self.db:
                commands.append(("SELECT", str(self.db)))
            if commands:
                future: asyncio.Future[list[object]] = loop.create_future()
                protocol.push(encode(commands), _Request(future, len(commands)))
                try:
                    replies = await future
                except ConnectionLost as exc:
                    raise self.lost(
                        f"the connection failed while setting up: {exc}", False
                    ) from exc
                for command, reply in zip(commands, replies, strict=True):
                    if isinstance(reply, ReplyError):
                        message = reply.message
                        if self.password:
                            message = message.replace(self.password, "***")
                        raise self.lost(f"{command[0]} was refused: {message}", False)
        except BaseException:
            transport.abort()
            raise
        return protocol

    async def aclose(self) -> None:
        """Close the connection; requests in flight fail with ConnectionLost(sent=True).

        The connection is not used after this: requests then fail with
        ConnectionLost(sent=False).
        """
        self._closed = True
        opening = self._opening
        if opening is not None and not opening.done():
            opening.cancel()
            await asyncio.wait([opening])
            await asyncio.sleep(0)  # let its done-callback run
        protocol, self._protocol = self._protocol, None
        if protocol is None:
            return
        if protocol.alive:
            protocol.fail("the connection was closed by aclose()")
        await asyncio.shield(protocol.closed)

    def __repr__(self) -> str:
        return f"RedisConnection({self.server!r}, db={self.db})"
