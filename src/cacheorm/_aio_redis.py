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
import contextlib
import functools
import importlib
import math
import socket
import ssl as _ssl
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal, Protocol, overload

from typing_extensions import Self

from cacheorm import _redis_ops as ops
from cacheorm._aio import require_asyncio
from cacheorm._backend import (
    AsyncBackend,
    AsyncClosing,
    AsyncCounterBackend,
    AsyncScanBackend,
    AsyncTTLBackend,
    CasToken,
)
from cacheorm._checks import as_bytes as _as_bytes
from cacheorm._checks import as_items as _as_items
from cacheorm._checks import check_batch as _check_batch
from cacheorm._checks import check_delta as _check_delta
from cacheorm._checks import check_key as _check_key
from cacheorm._errors import BackendError, BackendUnavailable, ConfigurationError, safe_repr
from cacheorm._redis_ops import key_list, mask, masked_url, px, type_name, url_password
from cacheorm._resp import Arg, ProtocolError, Reader, ReplyError, encode, make_reader
from cacheorm._ttl import BackendTTL

_running_loop = asyncio.get_running_loop

__all__ = ["AsyncRedisBackend", "ConnectionLost", "RedisConnection", "RequestTimeout"]


class ConnectionLost(Exception):
    """A request failed because its connection failed (or could not be made).

    Attributes:
        sent: False if no byte of the request reached the socket (resending is
            safe); True if it was written, so it may have run (outcome unknown).
        server: the server's address.
        replies: the replies of the request's first commands that did arrive
            before the failure, in order (empty for most failures).
    """

    def __init__(
        self, message: str, *, sent: bool, server: str, replies: Sequence[object] = ()
    ) -> None:
        super().__init__(message)
        self.sent = sent
        self.server = server
        self.replies = list(replies)


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
        self._last = self._loop.time()  # the server is reading: it is alive
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
        try:
            loop = _running_loop()
        except RuntimeError:  # no asyncio loop (trio, say): say what to do instead
            loop = require_asyncio("AsyncRedisBackend")
        while (
            protocol is None or not protocol.alive or protocol.paused or protocol.loop is not loop
        ):
            if protocol is not None and protocol.loop is not loop:
                self._abandon(protocol)
                protocol = None
            elif protocol is None or not protocol.alive:
                protocol = await self._connect()
            else:
                await protocol.drained()
                protocol = self._protocol
        future: asyncio.Future[list[object]] = loop.create_future()
        protocol.push(data, _Request(future, len(commands)))
        return await future

    def _abandon(self, protocol: _Protocol) -> None:
        """Drop a connection made in another event loop (an ``asyncio.run`` per test, say),
        which that loop alone can serve; the next request connects in the running loop."""
        self.forget(protocol)
        self._connecting = None
        protocol.alive = False
        transport = protocol.transport
        if transport is None:
            return
        if not protocol.loop.is_closed():
            protocol.loop.call_soon_threadsafe(transport.abort)
            return
        # A closed loop runs no callback: close the socket here (asyncio's selector
        # transports keep it in ``_sock``), and tell the transport it is gone.
        sock = getattr(transport, "_sock", None)
        if isinstance(sock, socket.socket):
            sock.close()
            setattr(transport, "_sock", None)  # noqa: B010

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
        if protocol.loop is not _running_loop():
            self._abandon(protocol)
            return
        if protocol.alive:
            protocol.fail("the connection was closed by aclose()")
        await asyncio.shield(protocol.closed)

    def __repr__(self) -> str:
        return f"RedisConnection({self.server!r}, db={self.db})"


# -- the backend -------------------------------------------------------------------------

#: The options ``from_url`` accepts.
_OPTIONS = frozenset({"connect_timeout", "timeout", "username", "password", "db", "ssl_context"})


class _AsyncRedisLike(
    AsyncBackend, AsyncTTLBackend, AsyncCounterBackend, AsyncScanBackend, Protocol
):
    """What ``from_url(..., cluster=True)`` and ``from_cluster`` return: a Redis async backend."""

    @property
    def server(self) -> str:
        """The address (``"cluster "`` and the startup nodes for a cluster)."""
        ...


def _cluster_class() -> Any:
    """``AsyncRedisClusterBackend``, imported on first use (it lives in its own module)."""
    return importlib.import_module("cacheorm._aio_redis_cluster").AsyncRedisClusterBackend


def _seconds(name: str, value: object) -> float:
    """``value`` if it is a finite positive number of seconds; else ConfigurationError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ConfigurationError(
            f"AsyncRedisBackend: {name} must be a positive number of seconds, "
            f"not {safe_repr(value)}"
        )
    return float(value)


class AsyncRedisBackend(AsyncClosing):
    """Stores bytes in one Redis server from asyncio, on one auto-pipelined connection.

    Every operation sends exactly the commands of :class:`~cacheorm.RedisBackend`
    (``SET NX`` / ``SET XX GET`` with the expiry, ``KEEPTTL`` for
    ``ttl=KEEP_TTL``, INCRBY, the same Lua scripts for ``cas``, ``touch``,
    ``ttl_of`` and ``counter_add``, MGET then EXISTS of the misses in
    ``get_many``...), reads their replies the same way and raises the same
    errors with the same messages: both backends call one sans-I/O module.

    **Pipelining.** All tasks share one connection: the commands of every
    call made in one event-loop iteration go out in one write, and the
    replies, which Redis sends in order, are matched to the calls in order.
    Many concurrent calls thus cost about one round trip and one system call.
    The connection is made on first use (``connect_timeout``), with ``AUTH``
    (user and password, ACL) and ``SELECT``; after a failure (a server
    restart) the next call reconnects. Writers wait while the socket's
    buffer is full (backpressure).

    **Timeouts.** A server that sends nothing for ``timeout`` seconds while
    calls wait is declared dead: the connection is closed and every waiting
    call fails (:class:`~cacheorm.BackendUnavailable`, or
    :class:`~cacheorm.OutcomeUnknown` for a write that must not be resent).

    **Retries.** An idempotent operation (``get``, ``get_many``, ``set``,
    ``set_many``, ``replace``, ``replace_many``, ``delete``, ``delete_many``,
    ``exists``, ``gets``, ``touch``, ``ttl_of``, ``scan``) whose connection
    broke is sent once more on a new connection, unless it timed out.
    ``add``, ``add_many``, ``incr``, ``cas`` and ``counter_add`` are never
    resent: if the connection failed before they were written,
    :class:`~cacheorm.BackendUnavailable`; after,
    :class:`~cacheorm.OutcomeUnknown`. A batch write that fails part-way
    raises :class:`~cacheorm.BatchWriteError` (``written`` / ``not_written``
    / ``unknown``).

    **Event loops.** asyncio, and uvloop (the connection is a plain asyncio
    ``Protocol``); trio needs an asyncio loop (anyio on its asyncio backend).
    The connection belongs to the loop that made it: a backend then used from
    another loop (a second ``asyncio.run``) connects again in that one.

    **Cancellation** is an interrupted request: the call raises
    ``CancelledError`` (a write may or may not have happened), its reply is
    read and dropped by the connection, never handed to another call, and
    the backend stays usable.

    Args:
        host: the server's host name or address.
        port: its port.
        path: a unix socket path, instead of ``host`` and ``port``.
        username: the ACL user (with ``password``).
        password: the password for ``AUTH``.
        db: the database number.
        ssl_context: a TLS context: the server is reached over TLS.
        connect_timeout: seconds to connect (TLS, AUTH and SELECT included).
        timeout: seconds calls may wait without hearing from the server.

    Raises:
        ConfigurationError: a timeout that is not a positive number, or a bad ``db``.
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
        ssl_context: _ssl.SSLContext | None = None,
        connect_timeout: float = 5.0,
        timeout: float = 5.0,
    ) -> None:
        if isinstance(db, bool) or not isinstance(db, int) or db < 0:
            raise ConfigurationError(
                f"AsyncRedisBackend: db must be a database number (an int >= 0), "
                f"not {safe_repr(db)}"
            )
        self._connection = RedisConnection(
            host,
            port,
            path=path,
            username=username,
            password=password,
            db=db,
            ssl=ssl_context,
            connect_timeout=_seconds("connect_timeout", connect_timeout),
            timeout=_seconds("timeout", timeout),
        )
        self._execute = self._connection.execute
        self._server = self._connection.server
        self._password = password or None
        self._db = db

    @classmethod
    @overload
    def from_url(cls, url: str, *, cluster: Literal[False] = False, **options: Any) -> Self: ...

    @classmethod
    @overload
    def from_url(cls, url: str, *, cluster: Literal[True], **options: Any) -> _AsyncRedisLike: ...

    @classmethod
    def from_url(cls, url: str, *, cluster: bool = False, **options: Any) -> Any:
        """A backend for ``url``; nothing connects until the first operation.

        ``redis://[[user]:[password]@]host[:port][/db]``, ``rediss://...``
        (TLS: ``ssl_context``, or a default context that verifies the server)
        and ``unix:///path/to/redis.sock[?db=N]``. User, password and db in the
        URL are used unless given as options.

        Args:
            url: the server's URL; with ``cluster=True``, any node of a cluster.
            cluster: build an ``AsyncRedisClusterBackend`` that discovers the
                cluster from this node (``redis://`` and ``rediss://`` only).
            **options: ``connect_timeout`` (5.0), ``timeout`` (5.0),
                ``username``, ``password``, ``db``, ``ssl_context``.

        Raises:
            ConfigurationError: another scheme, a URL that cannot be parsed, a
                bad port, db or option (the message names it; the password
                is masked).
        """
        if cluster:
            return _cluster_class().from_url(url, **options)
        shown = masked_url(url)
        unknown_options = sorted(set(options) - _OPTIONS)
        if unknown_options:
            raise ConfigurationError(
                f"AsyncRedisBackend.from_url({shown!r}): unknown option "
                f"{unknown_options[0]!r}; the options are {', '.join(sorted(_OPTIONS))}"
            )
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError as exc:
            detail = mask(str(exc), url_password(url))
            raise ConfigurationError(
                f"AsyncRedisBackend.from_url({shown!r}): not a URL this backend can use: {detail}"
            ) from None
        scheme = parts.scheme.lower()
        if scheme not in ("redis", "rediss", "unix"):
            raise ConfigurationError(
                f"AsyncRedisBackend.from_url({shown!r}): the URL must start with redis://, "
                "rediss:// or unix://, e.g. 'redis://localhost:6379/0'"
            )
        query = urllib.parse.parse_qs(parts.query)
        db_text = query.get("db", [""])[-1] if scheme == "unix" else parts.path.strip("/")
        if "db" not in options and db_text:
            if not db_text.isdigit():
                raise ConfigurationError(
                    f"AsyncRedisBackend.from_url({shown!r}): the database must be a number, "
                    f"not {db_text!r}"
                )
            options["db"] = int(db_text)
        if parts.username and "username" not in options:
            options["username"] = urllib.parse.unquote(parts.username)
        if parts.password and "password" not in options:
            options["password"] = urllib.parse.unquote(parts.password)
        if scheme == "unix":
            if not parts.path:
                raise ConfigurationError(
                    f"AsyncRedisBackend.from_url({shown!r}): a unix:// URL needs a socket path"
                )
            return cls(path=parts.path, **options)
        if scheme == "rediss" and options.get("ssl_context") is None:
            options["ssl_context"] = _ssl.create_default_context()
        return cls(parts.hostname or "localhost", port or 6379, **options)

    @classmethod
    def from_cluster(cls, nodes: Sequence[str] | str, **options: Any) -> _AsyncRedisLike:
        """An ``AsyncRedisClusterBackend`` on the cluster of ``nodes`` (``"host:port"``).

        Args:
            nodes: one or more nodes of the cluster; the others are discovered.
            **options: ``connect_timeout``, ``timeout``, ``username``,
                ``password``, ``ssl_context``.
        """
        backend: _AsyncRedisLike = _cluster_class().from_cluster(nodes, **options)
        return backend

    @property
    def server(self) -> str:
        """The server's ``host:port`` (or unix socket path); never a password."""
        return self._server

    def __repr__(self) -> str:
        """The class, server address and database; never a password."""
        return f"AsyncRedisBackend(server={self._server!r}, db={self._db!r})"

    async def aclose(self) -> None:
        """Close the connection; calls in flight fail, and the backend is not used after this."""
        await self._connection.aclose()

    # -- sending and error translation ----------------------------------------------

    def _detail(self, exc: BaseException) -> str:
        """The failure's text for a message, the password masked (error replies as redis-py
        shows them, so the messages are the sync backend's)."""
        text = ops.reply_text(exc.message) if isinstance(exc, ReplyError) else str(exc)
        return mask(text or type(exc).__name__, self._password)

    def _refused(self, op: str, keys: str | Sequence[str], reply: BaseException) -> Exception:
        """The cacheorm exception for the server's error reply to ``op`` on ``keys``."""
        detail = self._detail(reply)
        if (
            isinstance(reply, ReplyError) and reply.code == "LOADING"
        ):  # refused unapplied while the server loads its data
            return ops.unavailable(op, keys, detail, self._server, "BusyLoadingError")
        return ops.refused(op, keys, detail, self._server)

    def _lost(
        self, op: str, keys: str | Sequence[str], exc: ConnectionLost, idempotent: bool
    ) -> Exception:
        """BackendUnavailable, or OutcomeUnknown for a sent write that must not be resent."""
        detail = self._detail(exc)
        if exc.sent and not idempotent:
            key = keys if isinstance(keys, str) else ops.describe(keys)[1] or ""
            return ops.unknown(op, key, detail, self._server, type(exc).__name__)
        return ops.unavailable(op, keys, detail, self._server, type(exc).__name__)

    async def _call(
        self,
        op: str,
        keys: str | Sequence[str],
        commands: Sequence[tuple[Any, ...]],
        idempotent: bool = True,
    ) -> list[Any]:
        """Send ``commands``; their replies (error replies as values).

        An idempotent request whose connection broke (not timed out) is sent
        once more, on a new connection.
        """
        try:
            return await self._execute(commands)
        except ConnectionLost as exc:
            return await self._again(op, keys, commands, exc, idempotent)
        except UnicodeEncodeError as exc:
            raise ops.failed(op, keys, self._detail(exc), self._server) from exc

    async def _again(
        self,
        op: str,
        keys: str | Sequence[str],
        commands: Sequence[tuple[Any, ...]],
        exc: ConnectionLost,
        idempotent: bool = True,
    ) -> list[Any]:
        """After ``exc``: send an idempotent request once more, unless it timed out; or raise."""
        if not idempotent or isinstance(exc, RequestTimeout):
            raise self._lost(op, keys, exc, idempotent) from exc
        try:
            return await self._execute(commands)
        except ConnectionLost as again:
            raise self._lost(op, keys, again, idempotent) from again

    async def _one(
        self, op: str, key: str, command: tuple[Any, ...], idempotent: bool = True
    ) -> Any:
        """Send one command; its reply, or the error its error reply means."""
        (reply,) = await self._call(op, key, (command,), idempotent)
        if isinstance(reply, ReplyError):
            raise self._refused(op, key, reply) from reply
        return reply

    async def _once(
        self,
        op: str,
        key: str,
        command: tuple[Any, ...],
        fallback: tuple[Any, ...] | None = None,
    ) -> Any:
        """Send a non-idempotent command once; ``fallback`` instead after NOSCRIPT."""
        (reply,) = await self._call(op, key, (command,), idempotent=False)
        if isinstance(reply, ReplyError) and fallback is not None and reply.code == "NOSCRIPT":
            (reply,) = await self._call(op, key, (fallback,), idempotent=False)
        if isinstance(reply, ReplyError):
            raise self._refused(op, key, reply) from reply
        return reply

    def _first_error(self, op: str, replies: Sequence[Any], keys: Sequence[str]) -> None:
        """Raise the cacheorm error for the first error reply among ``replies``, if any."""
        for key, reply in zip(keys, replies, strict=True):
            if isinstance(reply, ReplyError):
                raise self._refused(op, key, reply) from reply

    async def _write_batch(
        self,
        op: str,
        commands: list[tuple[Any, ...]],
        command_keys: Sequence[Sequence[str]],
        idempotent: bool,
        conditional: bool = False,
    ) -> list[Any]:
        """Run a write pipeline; its replies, or BatchWriteError saying what was written.

        When ``idempotent``, a broken connection (not a timeout) gets the
        commands whose replies were lost once more.
        """
        known: list[Any] = []
        sent = False
        rest = commands
        for attempt in range(2):
            try:
                return [*known, *await self._execute(rest)]
            except ConnectionLost as exc:
                known.extend(exc.replies)
                sent = sent or exc.sent
                if attempt or not idempotent or isinstance(exc, RequestTimeout):
                    outcome = ops.outcome_after(known, len(commands) if sent else 0, len(commands))
                    failures = [(self._server, self._detail(exc))]
                    raise ops.batch_error(
                        op, command_keys, outcome, failures, self._server, conditional
                    ) from exc
                rest = commands[len(known) :]
            except UnicodeEncodeError as exc:
                keys = [key for keys in command_keys for key in keys]
                raise ops.failed(op, keys, self._detail(exc), self._server) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    # -- the AsyncBackend protocol -------------------------------------------------

    async def get(self, key: str, /) -> bytes | None:
        """The value under ``key`` (GET), or None if absent or expired."""
        command = ("GET", _check_key(key))
        try:
            (reply,) = await self._execute((command,))
        except ConnectionLost as exc:
            (reply,) = await self._again("GET", key, (command,), exc)
        except UnicodeEncodeError as exc:
            raise ops.failed("GET", key, self._detail(exc), self._server) from exc
        if isinstance(reply, ReplyError):
            raise self._refused("GET", key, reply) from reply
        return reply  # type: ignore[return-value]

    async def get_many(self, keys: Sequence[str], /) -> list[bytes | None]:
        """The values under ``keys`` (one MGET), in order; EXISTS of the misses, if any."""
        keys = key_list(keys)
        if not keys:
            return []
        values: list[bytes | None] = await self._one("MGET", keys[0], ("MGET", *keys))
        if None in values:
            await self._foreign_misses([k for k, v in zip(keys, values, strict=True) if v is None])
        return values

    async def _foreign_misses(self, keys: list[str]) -> None:
        """Raise BackendError if a key MGET answered nil for holds another Redis type."""
        keys = list(dict.fromkeys(keys))
        (found,) = await self._call("EXISTS", keys, (("EXISTS", *keys),))
        if isinstance(found, ReplyError):
            raise self._refused("EXISTS", keys, found) from found
        if found:
            await self._refuse_foreign("TYPE", keys)

    async def _refuse_foreign(self, op: str, keys: list[str]) -> None:
        """Raise BackendError naming the first of ``keys`` that holds another Redis type."""
        replies = await self._call(op, keys, [("TYPE", key) for key in keys])
        self._first_error(op, replies, keys)
        kinds = [type_name(reply) for reply in replies]
        ops.first_foreign(op, keys, kinds, lambda _: self._server)

    async def set(self, key: str, value: bytes, /, ttl: float | None = None) -> None:
        """Store ``value`` under ``key`` (SET, PX when ``ttl``), replacing any value and TTL."""
        data = _as_bytes(_check_key(key), value)
        await self._one("SET", key, ops.set_command(key, data, ttl))

    async def set_many(
        self, items: Sequence[tuple[str, bytes]], /, ttl: float | None = None
    ) -> None:
        """Store every pair: one MSET, or with ``ttl`` a ``SET PX`` per pair, in one request.

        Raises:
            BatchWriteError: the connection failed part-way (``written``,
                ``not_written``, ``unknown``).
        """
        pairs = _as_items(items)
        ms = px(ttl)
        if not pairs:
            return
        op, commands, command_keys = ops.set_many_commands(pairs, ms)
        replies = await self._write_batch(op, commands, command_keys, idempotent=True)
        self._first_error(op, replies, [keys[0] for keys in command_keys])

    async def add(self, key: str, value: bytes, /, ttl: float | None = None) -> bool:
        """Store only if ``key`` is absent (``SET NX``, expiry included); True if stored.

        Never resent.

        Raises:
            BackendUnavailable: the server could not be reached; nothing was written.
            OutcomeUnknown: the command was sent and its reply lost.
        """
        data = _as_bytes(_check_key(key), value)
        if await self._once("SET NX", key, ops.add_command(key, data, ttl)) is not None:
            return True
        await self._refused_add_check([key])
        return False

    async def _refused_add_check(self, keys: list[str]) -> None:
        """After SET NX refused ``keys``: BackendError if one holds another Redis type."""
        with contextlib.suppress(BackendUnavailable):
            await self._refuse_foreign("SET NX", keys)

    async def add_many(
        self, items: Sequence[tuple[str, bytes]], /, ttl: float | None = None
    ) -> list[bool]:
        """``add`` for each pair, in order, in one pipeline; never resent.

        Raises:
            BatchWriteError: the connection failed part-way.
        """
        pairs = _as_items(items)
        ms = px(ttl)
        return await self._write_many("NX", pairs, () if ms is None else ("PX", ms), False)

    async def replace(self, key: str, value: bytes, /, ttl: BackendTTL = None) -> bool:
        """Store only if ``key`` holds a string value (``SET XX GET``); True if stored.

        Raises:
            BackendError: the key holds another Redis type (a hash, a list...).
        """
        data = _as_bytes(_check_key(key), value)
        command = ("SET", key, data, "XX", "GET", *ops.expiry(ttl))
        return await self._one("SET XX", key, command) is not None

    async def replace_many(
        self, items: Sequence[tuple[str, bytes]], /, ttl: BackendTTL = None
    ) -> list[bool]:
        """``replace`` for each pair, in order, in one pipeline (``KEEP_TTL`` too).

        Raises:
            BatchWriteError: the connection failed part-way, or a key holds
                another Redis type while other pairs were written.
            BackendError: a key holds another Redis type (nothing written).
        """
        pairs = _as_items(items)
        return await self._write_many("XX", pairs, ("GET", *ops.expiry(ttl)), True)

    async def _write_many(
        self,
        condition: str,
        pairs: list[tuple[str, bytes]],
        options: tuple[Any, ...],
        idempotent: bool,
    ) -> list[bool]:
        """One pipeline of ``SET key value NX|XX [options]``; which pairs were stored."""
        if not pairs:
            return []
        op = f"SET {condition}"
        keys = [key for key, _ in pairs]
        commands = ops.write_many_commands(condition, pairs, options)
        replies = await self._write_batch(
            op, commands, [[key] for key in keys], idempotent, conditional=True
        )
        stored = ops.stored_of(op, keys, replies, functools.partial(self._refused, op))
        if condition == "NX" and not all(stored):
            try:
                await self._refused_add_check(ops.refused_keys(keys, stored))
            except BackendError as exc:
                raise ops.partly_written(op, keys, stored, exc) from None
        return stored

    async def delete(self, key: str, /) -> bool:
        """Remove ``key`` (DEL); True if it existed."""
        removed: int = await self._one("DEL", key, ("DEL", _check_key(key)))
        return removed > 0

    async def delete_many(self, keys: Sequence[str], /) -> int:
        """Remove ``keys`` (one DEL); the number that existed."""
        keys = key_list(keys)
        if not keys:
            return 0
        (removed,) = await self._call("DEL", keys, (("DEL", *keys),))
        if isinstance(removed, ReplyError):
            raise self._refused("DEL", keys, removed) from removed
        return int(removed)

    async def exists(self, key: str, /) -> bool:
        """True if ``key`` holds a live value (TYPE).

        Raises:
            BackendError: the key holds another Redis type (a hash, a list...).
        """
        kind = type_name(await self._one("TYPE", key, ("TYPE", _check_key(key))))
        found = ops.exists_of(kind)
        if found is None:
            raise ops.foreign("TYPE", key, kind, self._server)
        return found

    async def incr(self, key: str, delta: int = 1, /) -> int:
        """Add ``delta`` to the counter under ``key`` (INCRBY), starting from 0; never resent.

        Raises:
            TypeError: ``delta`` is not an int.
            OutcomeUnknown: the command was sent and its reply lost.
        """
        result: int = await self._once("INCRBY", key, ops.incr_command(_check_key(key), delta))
        return result

    async def gets(self, key: str, /) -> tuple[bytes, CasToken] | None:
        """The value (GET) and a token for :meth:`cas` (its SHA-1), or None if absent."""
        value: bytes | None = await self._one("GET", key, ("GET", _check_key(key)))
        if value is None:
            return None
        return value, ops.token_of(value)

    async def cas(self, key: str, value: bytes, token: CasToken, /, ttl: BackendTTL = None) -> bool:
        """Store ``value`` only if ``key`` still holds what ``gets`` read (a Lua script); never
        resent.

        Raises:
            BackendError: the key holds another Redis type.
            OutcomeUnknown: the script was sent and its reply lost.
        """
        data = _as_bytes(_check_key(key), value)
        commands = ops.cas_commands(key, data, token, ttl)
        if commands is None:
            return False
        return bool(await self._once("CAS script", key, *commands) == 1)

    # -- AsyncTTLBackend, AsyncCounterBackend, AsyncScanBackend -------------------------

    async def _each_key(
        self,
        op: str,
        commands: list[tuple[Any, ...]],
        keys: list[str],
        fallbacks: list[tuple[Any, ...]],
    ) -> list[Any]:
        """Run one idempotent script call per key in one pipeline; NOSCRIPT ones again as EVAL."""
        replies = await self._call(op, keys, commands)
        redo = [
            i
            for i, reply in enumerate(replies)
            if isinstance(reply, ReplyError) and reply.code == "NOSCRIPT"
        ]
        if redo:
            again = await self._call(op, keys, [fallbacks[i] for i in redo])
            for i, reply in zip(redo, again, strict=True):
                replies[i] = reply
        self._first_error(op, replies, keys)
        return replies

    async def touch(self, key: str, /, ttl: float | None = None) -> bool:
        """Give ``key`` a new TTL (PEXPIRE; PERSIST for None); True if it existed."""
        return (await self.touch_many([key], ttl))[0]

    async def touch_many(self, keys: Sequence[str], /, ttl: float | None = None) -> list[bool]:
        """``touch`` each key: a script per key, in one pipeline.

        Raises:
            BackendError: a key holds another Redis type.
        """
        keys = key_list(keys)
        commands, fallbacks = ops.touch_commands(keys, ttl)
        if not keys:
            return []
        return [reply == 1 for reply in await self._each_key("touch", commands, keys, fallbacks)]

    async def ttl_of(self, key: str, /) -> float | None:
        """Seconds ``key`` has left (PTTL, to the ms); ``math.inf`` if none, None if absent."""
        command, fallback = ops.ttl_commands(_check_key(key))
        return ops.ttl_seconds((await self._each_key("PTTL", [command], [key], [fallback]))[0])

    async def counter_add(self, key: str, delta: int, /, ttl: float | None = None) -> int:
        """Add ``delta`` to the counter under ``key``, never below 0; TTL set at creation.

        Never resent.

        Raises:
            BackendError: the key holds a non-integer or another Redis type.
            OutcomeUnknown: the script was sent and its reply lost.
        """
        _check_key(key)
        _check_delta(delta)
        value = await self._once("counter script", key, *ops.counter_commands(key, delta, ttl))
        return int(value)

    def scan(self, prefix: str, /, batch: int = 500) -> AsyncIterator[list[str]]:
        """The string keys starting with ``prefix`` (``SCAN ... MATCH ... TYPE string``), in
        batches of about ``batch``."""
        _check_key(prefix)
        _check_batch(batch)
        return self._scan(prefix, batch)

    async def _scan(self, prefix: str, batch: int) -> AsyncIterator[list[str]]:
        pattern = ops.scan_pattern(prefix)
        cursor: Any = 0
        while True:
            reply = await self._one("SCAN", prefix, ops.scan_command(cursor, pattern, batch))
            cursor, found = reply
            keys = ops.scan_keys(found)
            if keys:
                yield keys
            if int(cursor) == 0:
                break
