"""An asyncio backend on memcached: one server or a pool, with its own pipelined connections.

Connections and pipelining:
    Each server gets one connection (an asyncio ``Protocol``), made on first
    use within ``connect_timeout``. Every request of every task goes onto it:
    the requests issued in one iteration of the event loop are written
    together, in one ``transport.write``, and memcached answers them in
    order, so the connection reads the replies in order and hands each to the
    request it belongs to. Nothing is ever matched by guessing: every reply
    that names a key (``VALUE <key>``, the meta flag ``k``) must name the key
    its request asked for, or the connection is closed and the request fails
    with :class:`~cacheorm.BackendError`.

Cancellation and timeouts:
    A request whose task is cancelled (or whose ``asyncio.wait_for`` /
    ``asyncio.timeout`` runs out) stays in the connection's queue: its reply
    is still read, and dropped, so it can never reach another request. The
    connection stays usable. Each request also has the backend's ``timeout``:
    when it runs out the request fails (:class:`~cacheorm.BackendUnavailable`
    for a read, :class:`~cacheorm.OutcomeUnknown` for a write that was
    written) and its late reply is dropped the same way; if the server sent
    nothing at all for ``timeout`` seconds while a request waited, the
    connection is closed and the next request makes a new one.

Failures:
    Exactly as :class:`~cacheorm.MemcachedBackend` reports them, by the same
    code: a connection that cannot be made is
    :class:`~cacheorm.BackendUnavailable` (in a pool, the server is not tried
    again for ``retry_timeout`` seconds); a connection lost with a request
    written and unanswered is ``OutcomeUnknown`` for a write and
    ``BackendUnavailable`` for a read; reads, ``set``, ``replace`` and
    ``touch`` are sent once more on a new connection when a connection that
    was already open turns out closed (a server restart); a batch that does
    not complete raises :class:`~cacheorm.BatchWriteError` with ``written``,
    ``not_written`` and ``unknown``. When the transport's buffer is full
    (``pause_writing``), new requests wait until it drains.

Pools:
    Several servers are placed by the same ring, the same server names and
    the same key mapping as :class:`~cacheorm.MemcachedBackend` over a
    pymemcache ``HashClient`` of the same addresses, so sync and async
    processes share data. A batch sends one request per server, to all
    servers concurrently.

Keys, TTLs, value sizes, counters, ``KEEP_TTL`` and the ``-C`` / ``-M`` server
modes behave exactly as in :mod:`cacheorm._memcached`, whose operations this
backend runs. The backend belongs to one event loop at a time; a connection
made on a loop that is no longer running is dropped and made again.
"""

from __future__ import annotations

import asyncio
import collections
import importlib
from collections.abc import Callable, Sequence
from typing import Any, TypedDict, TypeVar, cast

from typing_extensions import Unpack

from cacheorm._aio import require_asyncio
from cacheorm._backend import AsyncClosing, CasToken
from cacheorm._errors import ConfigurationError, MissingDependency
from cacheorm._mcproto import (
    NEED_MORE,
    Closed,
    Failure,
    ReplyParser,
    check_max_value_size,
    check_seconds,
    describe_server,
    mark_down,
    parse_servers,
    ring_name,
    skipped_failure,
)
from cacheorm._memcached import MemcachedCore, Ops, Step
from cacheorm._observe import get_logger
from cacheorm._ttl import BackendTTL

__all__ = ["AsyncMemcachedBackend"]

_T = TypeVar("_T")

_log = get_logger("memcached")

#: A request in a connection's queue: future, reader, what was asked, sequence number,
#: request length.
_Waiter = tuple["asyncio.Future[Any]", Callable[[Any], Any], Any, int, int]


class _Connection(asyncio.Protocol):
    """One connection to a memcached server, carrying the requests of every task in order."""

    def __init__(self, node: _Server, loop: asyncio.AbstractEventLoop) -> None:
        self.node = node
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = ReplyParser()
        #: Requests written or to be written, oldest first, each answered in turn.
        self.waiters: collections.deque[_Waiter] = collections.deque()
        #: Request bytes not written yet (one write per loop iteration).
        self.out: list[bytes] = []
        self.scheduled = False
        #: Requests queued so far, and how many of them were handed to the transport.
        self.queued = 0
        self.flushed = 0
        self.closed = False
        #: Why the connection failed, for the requests it leaves unanswered.
        self.cause: BaseException | None = None
        self.paused = False
        self.drain: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        #: Each write: the sequence number after its last request, and when it was made.
        self.batches: collections.deque[tuple[int, float]] = collections.deque()
        self.lost: asyncio.Future[None] = loop.create_future()
        #: How many transport.write calls were made, and how many replies were
        #: read for requests no longer waiting (cancelled) and dropped.
        self.writes = 0
        self.dropped = 0

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport."""
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        """Read every complete reply and hand it to its request (dropped if abandoned)."""
        parser = self.parser
        parser.feed(data)
        waiters = self.waiters
        while waiters:
            waiter = waiters[0]
            try:
                reply = parser.next_reply(waiter[1], waiter[2])
            except Exception as exc:  # a bad reply: the stream is out of step
                waiters.popleft()
                self._settle(waiter, exc)
                self.abort(ConnectionError(f"memcached at {self.node.address}: {exc}"))
                return
            if reply is NEED_MORE:
                return
            waiters.popleft()
            future = waiter[0]
            if future.done():  # cancelled or timed out: the reply is read and dropped
                self.dropped += 1
            else:
                future.set_result(reply)
        if parser.pending:
            self.abort(
                ConnectionError(
                    f"memcached at {self.node.address} sent {parser.pending} bytes nothing "
                    "asked for; the connection was closed"
                )
            )

    def eof_received(self) -> bool:
        """Close on end of stream (memcached closed the connection)."""
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail every request still waiting: sent ones may have been applied."""
        self.closed = True
        if self.cause is None:
            self.cause = exc if exc is not None else Closed()
        if self.node.conn is self:
            self.node.conn = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.out = []
        waiters, self.waiters = self.waiters, collections.deque()
        first = True
        for waiter in waiters:
            partial = self.parser.partial(waiter[1], waiter[2]) if first else None
            first = False
            self._settle(waiter, self.cause, partial)
        if self.drain is not None and not self.drain.done():
            self.drain.set_result(None)
        if not self.lost.done():
            self.lost.set_result(None)

    def pause_writing(self) -> None:
        """The transport's buffer is full: new requests wait."""
        self.paused = True

    def resume_writing(self) -> None:
        """The buffer drained: let waiting requests go."""
        self.paused = False
        if self.drain is not None and not self.drain.done():
            self.drain.set_result(None)

    # -- requests ----------------------------------------------------------------------

    def request(
        self, request: bytes, read: Callable[[Any], Any], expect: Any
    ) -> asyncio.Future[Any]:
        """Queue ``request``; the future of its reply (a :class:`Failure` if it fails)."""
        loop = self.loop
        future = loop.create_future()
        if self.closed:
            future.set_exception(Failure(self.node, self.cause or Closed(), 0))
            return future
        idle = not self.waiters
        self.waiters.append((future, read, expect, self.queued, len(request)))
        self.queued += 1
        self.out.append(request)
        if idle and not self.paused:
            # Nothing in flight: write at once (a lone request waits for no one);
            # requests made while it is out go together in the next write.
            self.flush()
        elif not self.scheduled:
            self.scheduled = True
            loop.call_soon(self.flush)
        return future

    def flush(self) -> None:
        """Write every queued request in one write."""
        self.scheduled = False
        out = self.out
        if not out or self.closed or self.transport is None:
            return
        self.out = []
        self.writes += 1
        self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        self.flushed = self.queued
        now = self.loop.time()
        self.batches.append((self.queued, now))
        if self.timer is None:
            self.timer = self.loop.call_at(now + self.node.timeout, self.expire)

    async def writable(self) -> None:
        """Wait while the transport's buffer is full."""
        while self.paused and not self.closed:
            if self.drain is None or self.drain.done():
                self.drain = self.loop.create_future()
            await asyncio.shield(self.drain)

    def expire(self) -> None:
        """Close the connection if its oldest request waited ``timeout`` seconds for its reply.

        Every request on it then fails: later replies wait behind that one, and
        one that never comes leaves the order of the rest in doubt.
        """
        self.timer = None
        waiters, batches = self.waiters, self.batches
        if not waiters:
            batches.clear()
            return
        oldest = waiters[0][3]
        while batches and batches[0][0] <= oldest:  # every request of that write was answered
            batches.popleft()
        if not batches:  # the oldest is not written yet: its write starts the clock
            return
        deadline = batches[0][1] + self.node.timeout
        if deadline > self.loop.time():
            self.timer = self.loop.call_at(deadline, self.expire)
            return
        timeout = self.node.timeout
        _log.warning(
            "memcached at %s: no reply within timeout=%gs; connection closed",
            self.node.address,
            timeout,
        )
        self.abort(TimeoutError(f"no reply within timeout={timeout:g}s"))

    def abort(self, cause: BaseException) -> None:
        """Close the connection at once; its waiting requests fail with ``cause``."""
        if self.cause is None:
            self.cause = cause
        if self.node.conn is self:
            self.node.conn = None
        if self.transport is not None and not self.closed:
            self.closed = True  # nothing more is written; connection_lost fails the waiters
            self.transport.abort()

    def _settle(
        self, waiter: _Waiter, cause: BaseException, partial: list[Any] | None = None
    ) -> None:
        """Fail ``waiter`` with ``cause`` (unless it was cancelled or settled already)."""
        future = waiter[0]
        if future.done():
            return
        sent = waiter[4] if waiter[3] < self.flushed else 0
        future.set_exception(Failure(self.node, cause, sent, partial=partial))


class _Server:
    """One server of an :class:`AsyncMemcachedBackend`: where it is, its connection, its state."""

    __slots__ = (
        "address",
        "conn",
        "connect_timeout",
        "connecting",
        "down_error",
        "down_until",
        "host",
        "item_size_max",
        "port",
        "retry_timeout",
        "timeout",
    )

    def __init__(
        self, spec: object, connect_timeout: float, timeout: float, retry_timeout: float
    ) -> None:
        #: The host and port, or the socket path and None.
        self.host: str
        self.port: int | None
        if isinstance(spec, tuple):
            self.host, self.port = cast("tuple[str, int]", spec)
            self.address = describe_server((self.host, self.port))
        else:
            self.host, self.port = f"{spec}", None
            self.address = describe_server(self.host)
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.retry_timeout = retry_timeout
        self.conn: _Connection | None = None
        self.connecting: asyncio.Task[_Connection] | None = None
        self.item_size_max: int | None = None
        self.down_until = 0.0
        self.down_error: BaseException | None = None

    def __repr__(self) -> str:
        return f"<memcached {self.address}>"

    async def connection(self) -> _Connection:
        """The open connection, made if needed (one attempt shared by concurrent requests)."""
        skip = skipped_failure(self)
        if skip is not None:
            raise skip
        task = self.connecting
        if task is None:
            task = asyncio.get_running_loop().create_task(self._connect())
            task.add_done_callback(_retrieve)
            self.connecting = task
        # Not cancelled with this caller (others may wait for it), nor by it.
        await asyncio.wait([task])
        if task.cancelled():  # aclose() stopped it
            raise Failure(self, ConnectionAbortedError("the backend was closed"), 0)
        return task.result()

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            if self.port is None:
                made = loop.create_unix_connection(lambda: _Connection(self, loop), self.host)
            else:
                made = loop.create_connection(lambda: _Connection(self, loop), self.host, self.port)
            try:
                _, conn = await asyncio.wait_for(made, self.connect_timeout)
            except asyncio.TimeoutError as exc:
                raise TimeoutError(
                    f"connect timed out after connect_timeout={self.connect_timeout:g}s"
                ) from exc
        except OSError as exc:
            mark_down(self, exc)
            raise Failure(self, exc, 0) from exc
        finally:
            self.connecting = None
        self.conn = conn
        return conn


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a connect task's failure as seen (every request that waited got it already)."""
    if not task.cancelled():
        task.exception()


class AsyncMemcachedOptions(TypedDict, total=False):
    """The keyword options of :class:`AsyncMemcachedBackend` (see its arguments)."""

    max_value_size: int | None
    down_server_reads_miss: bool
    connect_timeout: float
    timeout: float
    key_prefix: bytes | str
    retry_timeout: float


class AsyncMemcachedBackend(MemcachedCore, AsyncClosing):
    """An asyncio backend on one memcached server or a pool, with pipelined connections.

    The async twin of :class:`~cacheorm.MemcachedBackend`: the same keys,
    placement, TTL rules, size checks, errors and operations (run by the same
    code), on one asyncio connection per server that carries the requests of
    every task, written together and answered in order. See the module
    documentation for cancellation, timeouts and failures.

    Args:
        servers: addresses, ``"host:port"``, ``"[ipv6]:port"``,
            ``"unix:/path"`` or ``"/path"``: one string, or a list (a pool).
        max_value_size: the largest value accepted, in bytes; None to use the
            server's ``item_size_max`` less the key and ``ITEM_OVERHEAD``.
        down_server_reads_miss: if True, reads of keys whose server cannot be
            reached answer "absent" instead of raising BackendUnavailable.
        connect_timeout: seconds to make a connection.
        timeout: seconds each request waits for its reply.
        key_prefix: bytes put before every key (as pymemcache's ``key_prefix``).
        retry_timeout: in a pool, how long a server that could not be
            reached is not tried again (requests for its keys fail at once).

    Raises:
        MissingDependency: pymemcache (for its server parsing and its ring) is
            not installed.
        ConfigurationError: a bad address, option or ``key_prefix``.
    """

    def __init__(
        self,
        servers: str | Sequence[str],
        /,
        *,
        max_value_size: int | None = None,
        down_server_reads_miss: bool = False,
        connect_timeout: float = 5.0,
        timeout: float = 5.0,
        key_prefix: bytes | str = b"",
        retry_timeout: float = 1.0,
    ) -> None:
        try:
            hashing = importlib.import_module("pymemcache.client.hash")
        except ImportError as exc:
            raise MissingDependency("AsyncMemcachedBackend", "memcached") from exc
        check_max_value_size(max_value_size)
        connect = check_seconds("connect_timeout", connect_timeout)
        each = check_seconds("timeout", timeout)
        if isinstance(key_prefix, str):
            key_prefix = key_prefix.encode("utf-8")
        if not isinstance(key_prefix, bytes):
            raise ConfigurationError(f"key_prefix must be bytes, not {type(key_prefix).__name__}")
        specs = parse_servers(servers, "AsyncMemcachedBackend")
        pool = len(specs) > 1
        retry = check_seconds("retry_timeout", retry_timeout) if pool else 0.0
        nodes = [_Server(spec, connect, each, retry) for spec in specs]
        ring = {ring_name(spec): node for spec, node in zip(specs, nodes, strict=True)}
        self._setup(
            nodes,
            ring if pool else None,
            hashing.RendezvousHash,
            key_prefix,
            max_value_size,
            down_server_reads_miss,
        )

    @classmethod
    def from_servers(
        cls, servers: str | Sequence[str], /, **options: Unpack[AsyncMemcachedOptions]
    ) -> AsyncMemcachedBackend:
        """A backend on the server(s) at ``servers``; the options are the constructor's.

        Nothing connects until the first request.

        Raises:
            ConfigurationError: no address, a repeated address, one that cannot
                be parsed, or a bad option.
            MissingDependency: pymemcache is not installed.
        """
        return cls(servers, **options)

    # -- the driver: operations run on the connections ------------------------------------

    async def _arun(self, ops: Ops[_T]) -> _T:
        """Run the operation ``ops``, awaiting each request it yields."""
        reply: Any = None
        failure: Failure | None = None
        while True:
            try:
                step = ops.send(reply) if failure is None else ops.throw(failure)
            except StopIteration as done:
                result: _T = done.value
                return result
            failure = None
            if isinstance(step, tuple):
                try:
                    reply = await self._acall(*step)
                except Failure as exc:
                    failure = exc
            else:
                reply = await self._fan_out(step)

    async def _fan_out(self, steps: list[Step]) -> list[Any]:
        """Each request (one per server) sent concurrently; the reply or the error of each."""
        return list(await asyncio.gather(*[self._outcome(*step) for step in steps]))

    async def _outcome(
        self, node: _Server, request: bytes, read: Callable[[Any], Any], resend: bool, expect: Any
    ) -> Any:
        """:meth:`_acall`, with an error returned instead of raised (one server of a batch)."""
        try:
            return await self._acall(node, request, read, resend, expect)
        except Exception as exc:
            return exc

    async def _acall(
        self, node: _Server, request: bytes, read: Callable[[Any], _T], resend: bool, expect: Any
    ) -> _T:
        """Send ``request`` to ``node`` and read its reply; :class:`Failure` if that fails.

        With ``resend``, a request that failed because a connection that was
        already open turned out closed or reset is sent once more on a new one.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = require_asyncio(type(self).__name__)  # raises a clear ConfigurationError
        conn = node.conn
        reused = conn is not None and not conn.closed and conn.loop is loop
        if not reused:
            if conn is not None:
                node.conn = None  # made on another loop, which is gone
            conn = await node.connection()
        assert conn is not None
        if conn.paused:
            await conn.writable()
        try:
            reply: _T = await conn.request(request, read, expect)
        except Failure as failure:
            if not (resend and reused and isinstance(failure.cause, ConnectionError)):
                raise
            first = failure
        else:
            return reply
        _log.debug("memcached at %s: resending a request on a new connection", node.address)
        try:
            again_reply: _T = await (await node.connection()).request(request, read, expect)
        except Failure as again:
            if again.sent or not first.sent:
                raise
            # The first attempt was sent: the server may have seen it.
            raise Failure(node, again.cause, first.sent) from again.cause
        return again_reply

    # -- the AsyncBackend protocol --------------------------------------------------------

    async def get(self, key: str, /) -> bytes | None:
        """The value under ``key``, or None if absent or expired."""
        step = self._get_step(key)
        try:
            return await self._acall(*step)
        except Failure as failure:
            return self._read_miss(failure, key)

    async def get_many(self, keys: Sequence[str], /) -> list[bytes | None]:
        """The values under ``keys`` in order (None where absent); one request per server."""
        return await self._arun(self._op_get_many(keys))

    async def exists(self, key: str, /) -> bool:
        """Whether ``key`` holds a live value (a ``get``: the TTL is left alone)."""
        return (await self.get(key)) is not None

    async def gets(self, key: str, /) -> tuple[bytes, CasToken] | None:
        """The value and its CAS token for :meth:`cas`, or None if absent."""
        return await self._arun(self._op_gets(key))

    async def set(self, key: str, value: bytes, /, ttl: float | None = None) -> None:
        """Store ``value`` under ``key``, replacing any value and TTL it had.

        Raises:
            ValueTooLarge: ``value`` is over the size limit; nothing was sent.
            OutcomeUnknown: the reply was lost; the value may or may not be stored.
        """
        await self._arun(self._op_set(key, value, ttl))

    async def add(self, key: str, value: bytes, /, ttl: float | None = None) -> bool:
        """Store only if ``key`` is absent, atomically; True if stored (never resent)."""
        return await self._arun(self._store_if(b"add", key, value, ttl))

    async def replace(self, key: str, value: bytes, /, ttl: BackendTTL = None) -> bool:
        """Store only if ``key`` holds a live value; True if stored.

        ``ttl=KEEP_TTL`` keeps the old expiry (a meta get, then a ``cas``,
        again while other writers change the key; a deleted key is not
        recreated).
        """
        return await self._arun(self._op_replace(key, value, ttl))

    async def delete(self, key: str, /) -> bool:
        """Remove ``key``; True if it held a live value (never resent)."""
        return await self._arun(self._op_delete(key))

    async def incr(self, key: str, delta: int = 1, /) -> int:
        """Add ``delta`` to the counter under ``key`` (from 0), keeping its TTL; the new value.

        Raises:
            BackendError: the stored value is not an integer.
            OutcomeUnknown: an increment was sent and its reply lost (never resent).
        """
        return await self._arun(self._op_incr(key, delta))

    async def cas(self, key: str, value: bytes, token: CasToken, /, ttl: BackendTTL = None) -> bool:
        """Store ``value`` only if ``key`` is unwritten since :meth:`gets` gave ``token``."""
        return await self._arun(self._op_cas(key, value, token, ttl))

    async def set_many(
        self, items: Sequence[tuple[str, bytes]], /, ttl: float | None = None
    ) -> None:
        """Store every pair (a repeated key keeps its last value); servers concurrently.

        Raises:
            BatchWriteError: the batch failed part-way (written, not written, unknown).
        """
        await self._arun(self._op_set_many(items, ttl))

    async def add_many(
        self, items: Sequence[tuple[str, bytes]], /, ttl: float | None = None
    ) -> list[bool]:
        """:meth:`add` for each pair, in order; a later pair sees earlier ones."""
        return await self._arun(self._op_add_many(items, ttl))

    async def replace_many(
        self, items: Sequence[tuple[str, bytes]], /, ttl: BackendTTL = None
    ) -> list[bool]:
        """:meth:`replace` for each pair, in order (``KEEP_TTL``: rounds of meta get and cas)."""
        return await self._arun(self._op_replace_many(items, ttl))

    async def delete_many(self, keys: Sequence[str], /) -> int:
        """Remove ``keys``; how many held a live value."""
        return await self._arun(self._op_delete_many(keys))

    async def touch(self, key: str, /, ttl: float | None = None) -> bool:
        """Give ``key`` a new TTL (None: none); True if it existed."""
        return (await self._arun(self._op_touch_many([key], ttl)))[0]

    async def touch_many(self, keys: Sequence[str], /, ttl: float | None = None) -> list[bool]:
        """:meth:`touch` each key; one request per server."""
        return await self._arun(self._op_touch_many(keys, ttl))

    async def ttl_of(self, key: str, /) -> float | None:
        """Whole seconds ``key`` has left, ``math.inf`` if none, None if absent."""
        return await self._arun(self._op_ttl_of(key))

    async def counter_add(self, key: str, delta: int, /, ttl: float | None = None) -> int:
        """Add ``delta`` to a counter that never goes below 0; the new value."""
        return await self._arun(self._op_counter_add(key, delta, ttl))

    # -- life cycle ------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the connections (requests still waiting fail); a later request reconnects."""
        lost: list[asyncio.Future[None]] = []
        loop = asyncio.get_running_loop()
        for node in self._nodes:
            task, node.connecting = node.connecting, None
            if task is not None:
                task.cancel()
            conn, node.conn = node.conn, None
            if conn is not None and conn.loop is loop and not conn.closed:
                conn.cause = Closed()
                assert conn.transport is not None  # set before the connection was kept
                conn.transport.close()
                lost.append(conn.lost)
        if lost:
            await asyncio.wait(lost, timeout=1.0)

    def __repr__(self) -> str:
        """The class and the server address(es)."""
        if self._single is not None:
            return f"AsyncMemcachedBackend(server={self._single.address!r})"
        return f"AsyncMemcachedBackend(servers={self.servers!r})"
