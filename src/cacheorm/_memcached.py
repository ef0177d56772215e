"""A backend on memcached: one server or a pool, through pymemcache's clients.

The wire protocol (requests, reply readers, key mapping, expiry rules, error
messages) lives in :mod:`cacheorm._mcproto`, and every operation is written
once here, in :class:`MemcachedCore`, as a generator of requests: this
backend sends them on its sockets, :class:`~cacheorm.AsyncMemcachedBackend`
on its pipelined asyncio connections. Both place keys on the same ring.

Servers and pools:
    :class:`MemcachedBackend` takes a pymemcache ``Client`` (one server, one
    connection), a ``PooledClient`` (one server, a pool of connections) or a
    ``HashClient`` (several servers, each through a ``Client`` or, with
    ``use_pooling=True``, a ``PooledClient``). It uses the clients for their
    settings and sockets (address, timeouts, TLS, ``key_prefix``) and speaks
    memcached's text protocol on those sockets itself, so that it knows, reply
    by reply, what a server confirmed.

    In a pool each key lives on one server, chosen by the ``HashClient``'s
    hasher (rendezvous hashing by default) over *all* its servers, exactly as
    the ``HashClient`` would place it while every server is up; the key is
    hashed as text (after the mapping below, without ``key_prefix``), so a
    plain ``HashClient`` given the same ``str`` keys finds them. A server that
    fails is never taken out of the ring: its keys would move to another
    server, where reads would miss and writes would be lost when it returns.
    Batch operations send one request per server, to the servers concurrently
    (on a small thread pool the backend owns, started on first use and shut
    down by :meth:`MemcachedBackend.close`; a single-server backend never
    starts threads), and answer in input order. The ``HashClient``'s own
    failure handling is not used: ``retry_attempts`` and ``dead_timeout``
    (which drop a server from the ring) have no effect, and ``ignore_exc=True``
    (which turns failures into misses) is refused. Its ``retry_timeout`` is
    kept with this meaning: after a server refused a connection (or the
    connection attempt timed out), requests for its keys fail at once with
    :class:`~cacheorm.BackendUnavailable` for ``retry_timeout`` seconds before
    the next one tries to connect again; a one-server ``Client`` or
    ``PooledClient`` tries every time.

    A ``PooledClient`` (alone or in a ``HashClient`` with ``use_pooling=True``)
    lends each request a connection of its own from a pool the backend keeps
    with the client's settings, ``max_pool_size`` and ``pool_idle_timeout``.
    When all ``max_pool_size`` connections are busy, a request waits up to
    ``pool_timeout`` seconds (a backend argument, 5 by default) for one, then
    raises :class:`~cacheorm.BackendUnavailable` (nothing was sent).

Interrupted requests and replies for other keys:
    A request and its reply use a connection alone. If anything at all is
    raised while a request is in flight (sent, reply not fully read),
    including a ``BaseException`` such as ``KeyboardInterrupt``, ``SystemExit``
    or a gevent timeout, the connection is closed before the exception goes
    on: its reply may still arrive, and the next request must never read it
    as its own. A pooled connection goes back to its pool either way. Every
    reply that names a key (``VALUE <key>`` of ``get``/``gets``, ``k<key>``
    of the meta get) must name a key that was asked for, in the order asked
    (memcached answers a repeated key once per mention); any other reply
    closes the connection and raises :class:`~cacheorm.BackendError` naming
    the key and the server, and is never returned.

Failures, retries and timeouts:
    ``connect_timeout`` bounds connecting and ``timeout`` every send and
    receive, per server (set them on the client, or pass them to
    :meth:`MemcachedBackend.from_servers`, which defaults both to 5 seconds).
    A failure is reported by what the server may have seen:

    * Before a request is sent on a kept connection, the connection is checked
      (a zero-timeout ``poll``); one the server closed meanwhile (a restart, an
      idle timeout) is replaced, and nothing was sent on it. A connection that
      cannot be made raises :class:`~cacheorm.BackendUnavailable`: nothing was
      sent.
    * Reads (``get``, ``get_many``, ``gets``, ``exists``) and the idempotent
      writes ``set`` and ``replace`` are sent once more, on a new connection,
      when a kept connection turns out closed or reset after the request was
      sent. Timeouts are not retried (a slow server is not given twice the
      work), nor is a request on a connection made for it.
    * Nothing else is ever sent twice. A write whose request was sent and
      whose reply was lost (closed connection, reset, timeout) raises
      :class:`~cacheorm.OutcomeUnknown`, naming the key and the server: it may
      or may not have been applied. This covers ``add`` (resending it would
      report the caller's own write as "exists"), ``incr`` (it would count
      twice), ``cas``, ``delete`` (the second answer would say the key was
      absent) and a ``set``/``replace`` whose retry was not allowed.
    * A batch write (``set_many``, ``add_many``, ``replace_many``,
      ``delete_many``) that does not complete raises
      :class:`~cacheorm.BatchWriteError`: ``written`` holds the keys whose
      replies confirmed the write (for ``delete_many``: that the key is gone),
      ``not_written`` the keys that certainly were not written (never handed
      to the network, refused by the server, or, for ``add_many`` and
      ``replace_many``, not stored because the condition did not hold) and
      ``unknown`` the keys whose request was sent and whose reply was lost. It
      is raised for a server error reply on some pair too (the connection is
      then kept), and its cause is that server's error.

    pymemcache's ``RetryingClient`` is refused: it resends any failed call,
    ``add`` and ``incr`` included. Pass the client it wraps.

    With ``down_server_reads_miss=True`` a read whose server cannot be reached
    (or whose connection fails or times out) answers "absent" for that
    server's keys instead of raising; writes still raise. Error replies from a
    reachable server always raise.

Keys:
    memcached keys are at most 250 bytes, with no spaces or control characters.
    A key is sent as its UTF-8 bytes (after the client's ``key_prefix``) when
    those are legal, which one fast test decides. Any other key (too long,
    empty, or with a space, a control character or another non-printable
    character) is sent as a mapped key: up to 64 of its legal bytes, the byte
    ``0xFF``, then the 40 hex digits of its BLAKE2b-160 hash. ``0xFF`` never
    occurs in UTF-8 (nor in the ``surrogatepass`` form used for keys holding
    lone surrogates), so a mapped key can never equal a key sent as-is, and no
    key text is reserved. The mapping depends on nothing but the key and the
    ``key_prefix`` length, so it is the same for one server and for any pool.

TTL:
    memcached counts expiry in whole seconds on a clock that ticks once a
    second, so an item stored with expiry ``N`` lives between ``N - 1`` and
    ``N`` seconds. A TTL is sent as ``ceil(ttl) + 1``: an item never expires
    before its TTL, and may live up to ``ceil(ttl) + 1 - ttl`` seconds longer
    (1 s for whole-second TTLs, under 2 s for fractional ones). memcached reads
    an expiry over 30 days (2,592,000 s) as a Unix time, so longer TTLs are sent
    as ``int(time.time()) + ceil(ttl) + 1``, which assumes the server's clock
    agrees with this process's. memcached parses expiry as a signed 32-bit
    number: it silently reads a later time (after 2038-01-19) as "now",
    "never" or a wrong delay, so a TTL ending after ``2**31 - 1`` is refused
    with :class:`~cacheorm.InvalidTTL` before anything is sent. A write without
    a TTL clears the expiry the key had.

Value size:
    memcached refuses an item larger than its ``item_size_max`` (``-I``,
    1 MiB by default), and deletes the value the key held when it refuses a
    ``set``. So values are checked before sending: the limit is the key's
    server's ``item_size_max`` (read once per server with ``stats settings``)
    minus the key's length and :data:`ITEM_OVERHEAD` bytes, or
    ``max_value_size`` when given. A larger value raises
    :class:`~cacheorm.ValueTooLarge` and nothing is sent, for a batch not even
    the other pairs. A refusal by the server itself is reported as
    ``ValueTooLarge`` too (for a ``set`` the key's old value is then gone), or,
    in a batch, as a ``BatchWriteError`` caused by one.

Counters:
    ``incr`` uses memcached's atomic ``incr`` while the counter is between 0 and
    ``2**64 - 1``; negative deltas and counters outside that range use a
    ``gets``/``cas`` loop on signed decimal digits that keeps the key's TTL
    (read with the meta command ``mg``, memcached 1.6 or later).

Keeping the TTL (``ttl=KEEP_TTL``):
    memcached cannot store a value and keep the old expiry in one command, so
    ``replace``, ``replace_many`` and ``cas`` with ``KEEP_TTL`` first read the
    item's CAS value and remaining seconds with the meta get ``mg <key> t c k``
    (memcached 1.6 or later), then store with ``cas`` under that CAS value and
    that many seconds. The ``cas`` fails if anything wrote the key in between,
    so a deleted key is never recreated and no write is lost: ``cas`` then
    returns False, ``replace`` reads again and retries (at most 1,000 times;
    False once the key is gone). The ``cas`` is never resent (a lost reply is
    :class:`~cacheorm.OutcomeUnknown`). memcached counts TTLs in whole seconds
    on a clock that ticks once a second, so the kept expiry is the same
    second as before, or one second later if the clock ticked between the
    read and the write; never earlier. A key without expiry keeps none. A
    remaining TTL over 30 days is sent as a Unix time from this process's
    clock. Only ``touch``/``gat`` change a TTL without changing the CAS value;
    one that lands between the read and the write is overwritten.

CAS disabled (``-C``) and out of memory (``-M``):
    A server started with ``-C`` gives every item the CAS value 0 and refuses
    every ``cas``; ``gets`` (and everything built on it: ``update_with``,
    ``patch``, ``KEEP_TTL``, negative ``incr``) raises
    :class:`~cacheorm.BackendError` saying so instead of failing as a
    conflict. When memcached cannot store a value (out of memory with ``-M``,
    or too large) it deletes the key's old value for a ``set`` and keeps it for
    ``add``, ``replace`` and ``cas``; the error says which.
"""

from __future__ import annotations

import importlib
import math
import select
import threading
import time
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar, cast

from cacheorm._backend import CasToken, Closing
from cacheorm._checks import as_bytes as _as_bytes
from cacheorm._checks import as_items as _as_items
from cacheorm._checks import check_delta as _check_delta
from cacheorm._errors import (
    BackendError,
    BatchWriteError,
    ConfigurationError,
    MissingDependency,
    describe_keys,
)
from cacheorm._mcproto import (
    ALWAYS_FITS,
    CONFIRMED,
    ITEM_OVERHEAD,
    KEY_MAX,
    PLACEMENTS_MAX,
    STATS_SETTINGS,
    U64,
    KeyMap,
    ReplyParser,
    batch_error,
    cas_command,
    cas_disabled,
    cas_number,
    check_max_value_size,
    check_seconds,
    count_command,
    describe_server,
    expire,
    failure_error,
    kept_expire,
    mark_down,
    merged,
    meta_command,
    parse_counter,
    parse_servers,
    read_cas_value,
    read_line,
    read_meta,
    read_metas,
    read_stats,
    read_touches,
    read_value,
    read_values,
    read_write_replies,
    reason,
    refused_error,
    ring_key,
    skipped_failure,
    store_command,
    too_large,
    touch_command,
)
from cacheorm._mcproto import Closed as _Closed
from cacheorm._mcproto import Failure as _Failure
from cacheorm._observe import get_logger
from cacheorm._ttl import KEEP_TTL, BackendTTL

if TYPE_CHECKING:
    import socket

_log = get_logger("memcached")

__all__ = ["ITEM_OVERHEAD", "MemcachedBackend"]

_T = TypeVar("_T")

#: How many times ``incr`` retries a compare-and-set lost to other writers.
_INCR_ATTEMPTS = 1000

#: The expiry rule and the meta-get reader, under their old names.
_expire = expire
_read_meta = read_meta

#: Bytes asked of the socket per receive.
_RECV_SIZE = 65536


# -- the wire ---------------------------------------------------------------------------


class _SendFailed(Exception):
    """Sending failed after ``sent`` bytes were handed to the network."""

    def __init__(self, sent: int, cause: OSError) -> None:
        super().__init__(sent, cause)
        self.sent = sent
        self.cause = cause


class _Watch:
    """Tells whether a kept connection is still usable, before a request is sent on it.

    memcached never speaks unasked, so an idle connection with anything to
    read (end of stream, a reset, a stale reply) is not usable. A zero-timeout
    ``poll`` finds out without reading; the poll object is kept for the
    socket it was made for.
    """

    __slots__ = ("poller", "sock")

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.poller: Any = None

    def usable(self, sock: socket.socket) -> bool:
        """True if nothing arrived on ``sock`` since its last reply."""
        if sock is not self.sock:
            if not hasattr(select, "poll"):  # pragma: no cover - Windows
                readable, _, _ = select.select([sock], [], [], 0)
                return not readable
            self.poller = select.poll()
            self.poller.register(sock, select.POLLIN)
            self.sock = sock
        return not self.poller.poll(0)


def _send(sock: socket.socket, data: bytes) -> None:
    """``sock.sendall(data)``, but a failure says how many bytes went out (_SendFailed)."""
    total = len(data)
    try:
        sent = sock.send(data)
    except OSError as exc:
        raise _SendFailed(0, exc) from exc
    if sent < total:
        view = memoryview(data)
        while sent < total:
            try:
                sent += sock.send(view[sent:])
            except OSError as exc:
                raise _SendFailed(sent, exc) from exc


class _Reader(ReplyParser):
    """Reads one request's replies from a blocking socket: lines and data blocks.

    ``expect`` is what the request asked for, for the readers that check the
    keys replies name: the full key, or the list of full keys in order.
    ``progress`` is filled by batch readers, reply by reply. Where the
    incremental parser would need more bytes, this one receives them.
    """

    __slots__ = ("sock",)

    def __init__(self, sock: socket.socket, expect: Any = None) -> None:
        self.sock = sock
        self.buf = b""
        self.pos = 0
        self.progress = []
        self.expect = expect

    def _more(self) -> bytes:
        data: bytes = self.sock.recv(_RECV_SIZE)
        if not data:
            raise _Closed()
        return data

    def _more_for_line(self, buf: bytes, pos: int) -> tuple[bytes, int, int]:
        buf = buf[pos:]
        end = -1
        while end < 0:
            start = max(len(buf) - 1, 0)
            buf += self._more()
            end = buf.find(b"\r\n", start)
        self.buf = buf
        return buf, 0, end

    def _more_for_block(self, buf: bytes, pos: int, size: int) -> tuple[bytes, int, int]:
        chunks = [buf[pos:]]
        have = len(buf) - pos
        while have < size + 2:
            data = self._more()
            chunks.append(data)
            have += len(data)
        buf = b"".join(chunks)
        self.buf = buf
        return buf, 0, size


class _Node:
    """One server of a backend: its client, a lock or pool, and what is known of it."""

    __slots__ = (
        "address",
        "client",
        "down_error",
        "down_until",
        "item_size_max",
        "lock",
        "pool",
        "retry_timeout",
        "watch",
    )

    def __init__(
        self, client: Any, pooled: bool, retry_timeout: float, pool_timeout: float
    ) -> None:
        self.client = client
        self.address = describe_server(client.server)
        #: The connections of a ``PooledClient``, else None.
        self.pool = _Pool(client, pool_timeout) if pooled else None
        #: One request and its reply at a time on a ``Client``'s one connection.
        self.lock = threading.Lock()
        self.item_size_max: int | None = None
        self.retry_timeout = retry_timeout
        #: ``time.monotonic()`` before which no new connection is tried.
        self.down_until = 0.0
        self.down_error: BaseException | None = None
        #: The liveness check of the ``Client``'s socket (pooled clients make their own).
        self.watch = _Watch()

    def __repr__(self) -> str:
        return f"<memcached {self.address}>"


class _PoolExhausted(OSError):
    """No pooled connection came free in time (an OSError: nothing was sent)."""


class _Lent:
    """One connection of a pool: a pymemcache ``Client``, its liveness check, when last used."""

    __slots__ = ("client", "last_used", "watch")

    def __init__(self, client: Any) -> None:
        self.client = client
        self.watch = _Watch()
        self.last_used = 0.0


class _Pool:
    """The connections of a ``PooledClient``, lent one per request, with a bounded wait.

    Replaces pymemcache's ``ObjectPool``, which raises ``RuntimeError`` at once
    when every connection is busy and leaks a slot when a request is
    interrupted by a ``BaseException``. Here a request waits up to ``timeout``
    seconds for a free slot (then :class:`_PoolExhausted`), and a connection
    always goes back (closed if its request failed or was interrupted).
    Connections are made with the ``PooledClient``'s own settings and honour
    its ``max_pool_size`` and ``pool_idle_timeout``.
    """

    __slots__ = ("create", "free", "idle_timeout", "lock", "max_size", "slots", "timeout")

    def __init__(self, pooled: Any, timeout: float) -> None:
        self.create: Callable[[], Any] = pooled._create_client
        self.max_size: int = pooled.client_pool.max_size
        self.idle_timeout: float = pooled.client_pool.idle_timeout or 0
        self.slots = threading.BoundedSemaphore(self.max_size)
        self.free: list[_Lent] = []
        self.lock = threading.Lock()
        self.timeout = timeout

    def lend(self, node: _Node) -> _Lent:
        """A free connection (the last one used) or a new one; _Failure if none came free."""
        if not self.slots.acquire(timeout=self.timeout):
            cause = _PoolExhausted(
                f"no pooled connection came free within pool_timeout={self.timeout:g}s "
                f"(all max_pool_size={self.max_size} connections busy)"
            )
            raise _Failure(node, cause, 0)
        try:
            with self.lock:
                while self.free:
                    lent = self.free.pop()
                    if not self.idle_timeout or (
                        time.monotonic() - lent.last_used <= self.idle_timeout
                    ):
                        return lent
                    lent.client.close()
            return _Lent(self.create())
        except BaseException:
            self.slots.release()
            raise

    def give_back(self, lent: _Lent) -> None:
        """Return ``lent`` (open, or closed by a failure) and its slot."""
        lent.last_used = time.monotonic()
        with self.lock:
            self.free.append(lent)
        self.slots.release()

    def close(self) -> None:
        """Close the free connections (lent ones are closed when their request fails)."""
        with self.lock:
            free, self.free = self.free, []
        for lent in free:
            lent.client.close()


# -- the operations, once for both backends -----------------------------------------------
#
# Each operation is a generator: it yields a request as ``(node, request, read,
# resend, expect)`` and is sent back what ``read`` made of the reply, or has a
# :class:`_Failure` thrown in; or it yields a list of such requests (one per
# server) and is sent back, for each, the reply or the exception. The sync
# backend runs the requests on its sockets, the async one on its connections.

#: One request of an operation: node, request bytes, reader, resend allowed, what was asked.
Step = tuple[Any, bytes, Callable[[Any], Any], bool, Any]

#: An operation: yields requests (or lists of them), returns its result.
Ops = Generator["Step | list[Step]", Any, _T]


class MemcachedCore:
    """What both memcached backends share: keys, placement, size checks and every operation.

    Subclasses set the attributes with :meth:`_setup` and drive the
    operation generators (``_op_*``) on their own I/O.
    """

    _nodes: Sequence[Any]
    _single: Any
    _by_name: dict[str, Any]
    _hasher: Any
    _placements: dict[bytes, Any]
    _keys: KeyMap
    _prefix: bytes
    _address: str
    _max_value_size: int | None
    _down_reads_miss: bool
    _unchecked: int

    def _setup(
        self,
        nodes: Sequence[Any],
        ring: dict[str, Any] | None,
        hasher: type[Any] | None,
        prefix: bytes,
        max_value_size: int | None,
        down_server_reads_miss: bool,
    ) -> None:
        """Set the shared state: ``ring`` maps ring names to nodes for a pool (else None)."""
        self._keys = KeyMap(prefix)
        self._nodes = nodes
        #: The only server, or None for a pool.
        self._single = nodes[0] if ring is None else None
        self._by_name = {}
        self._hasher = None
        if ring is not None and hasher is not None:
            # A private ring over every server: a HashClient's own drops
            # servers that fail, which would move their keys.
            self._hasher = hasher()
            for name, node in ring.items():
                self._hasher.add_node(name)
                self._by_name[name] = node
        self._placements = {}
        self._prefix = prefix
        self._address = ", ".join(node.address for node in nodes)
        self._max_value_size = max_value_size
        self._down_reads_miss = bool(down_server_reads_miss)
        #: Values up to this size need no size check.
        self._unchecked = ALWAYS_FITS if max_value_size is None else max_value_size

    @property
    def servers(self) -> list[str]:
        """The addresses of the backend's servers, as ``host:port`` or ``unix:<path>``."""
        return [node.address for node in self._nodes]

    @property
    def max_value_size(self) -> int | None:
        """The configured value size limit, or None to follow the server's."""
        return self._max_value_size

    @property
    def down_server_reads_miss(self) -> bool:
        """Whether reads on an unreachable server answer "absent" instead of raising."""
        return self._down_reads_miss

    def server_for(self, key: str) -> str:
        """The address of the server that holds ``key``.

        Raises:
            TypeError: ``key`` is not a str.
        """
        return str(self._node(self._bkey(key)).address)

    # -- keys, placement and sizes -------------------------------------------

    def _bkey(self, key: str) -> bytes:
        """The memcached key (before ``key_prefix``) for ``key``; TypeError if not a str."""
        return self._keys.bkey(key)

    def _node(self, bkey: bytes) -> Any:
        """The server of ``bkey``."""
        single = self._single
        if single is not None:
            return single
        node = self._placements.get(bkey)
        if node is None:
            node = self._by_name[self._hasher.get_node(ring_key(bkey))]
            if len(self._placements) >= PLACEMENTS_MAX:
                self._placements.clear()
            self._placements[bkey] = node
        return node

    def _group(self, bkeys: Sequence[bytes]) -> dict[Any, list[int]]:
        """The indices of ``bkeys`` by server, servers in order of first use (none if no key)."""
        if self._single is not None:
            return {self._single: list(range(len(bkeys)))} if bkeys else {}
        groups: dict[Any, list[int]] = {}
        node = self._node
        for index, bkey in enumerate(bkeys):
            where = node(bkey)
            indices = groups.get(where)
            if indices is None:
                groups[where] = [index]
            else:
                indices.append(index)
        return groups

    def _check_size(self, key: str, bkey: bytes, size: int) -> Ops[None]:
        """Raise ValueTooLarge if a ``size``-byte value cannot be stored under ``bkey``."""
        node = self._node(bkey)
        limit = yield from self._limit(node, bkey, key)
        if size > limit:
            raise too_large(key, size, limit, node.address)

    def _limit(self, node: Any, bkey: bytes, key: str | None) -> Ops[int]:
        """The largest value storable under ``bkey``, reading item_size_max if needed."""
        if self._max_value_size is not None:
            return self._max_value_size
        limit = yield from self._item_limit(node, key)
        return limit - len(self._prefix) - len(bkey)

    def _item_limit(self, node: Any, key: str | None) -> Ops[int]:
        """The server's ``item_size_max`` less :data:`ITEM_OVERHEAD`, read once per server."""
        if node.item_size_max is None:
            stats = yield from self._ask(node, STATS_SETTINGS, read_stats, key=key, op="stats")
            node.item_size_max = int(stats.get(b"item_size_max", 1024 * 1024))
            sizes = [n.item_size_max for n in self._nodes]
            if self._max_value_size is None and None not in sizes:
                smallest = min(s for s in sizes if s is not None)
                self._unchecked = max(0, smallest - ITEM_OVERHEAD - KEY_MAX)
        return int(node.item_size_max) - ITEM_OVERHEAD

    def _pairs(
        self, items: Sequence[tuple[str, bytes]]
    ) -> Ops[tuple[list[tuple[str, bytes]], list[bytes]]]:
        """Checked pairs and their memcached keys (every value size-checked)."""
        pairs = _as_items(items)
        bkeys = self._keys.bkeys([key for key, _ in pairs])
        for (key, value), bkey in zip(pairs, bkeys, strict=True):
            if len(value) > self._unchecked:
                yield from self._check_size(key, bkey, len(value))
        return pairs, bkeys

    def _ask(
        self,
        node: Any,
        request: bytes,
        read: Callable[[Any], _T],
        *,
        key: str | None,
        op: str,
        write: bool = False,
        resend: bool = True,
        expect: Any = None,
    ) -> Ops[_T]:
        """One request, with a failure raised as the cacheorm error for ``op`` on ``key``."""
        try:
            reply: _T = yield (node, request, read, resend, expect)
        except _Failure as failure:
            raise failure_error(failure, key, op=op, write=write) from failure.cause
        return reply

    def _refusal(
        self,
        node: Any,
        line: bytes,
        key: str,
        size: int | None = None,
        bkey: bytes = b"",
        command: bytes = b"",
    ) -> Ops[BackendError]:
        """The error for an error reply about ``key`` (reading the real limit if too large)."""
        limit = None
        if size is not None and b"too large" in line:
            try:  # the real limit, when the server still answers
                limit = yield from self._item_limit(node, key)
                limit -= len(self._prefix) + len(bkey)
            except BackendError:
                limit = None
        return refused_error(node.address, line, key, size, command, limit)

    # -- reads ----------------------------------------------------------------------

    def _read_failed(self, failure: _Failure, key: str | None, about: str = "") -> None:
        """Raise the error for a failed read, unless an unreachable server may read as a miss."""
        if not (self._down_reads_miss and failure.unavailable):
            raise failure_error(failure, key, op="read", write=False, about=about) from (
                failure.cause
            )

    def _get_step(self, key: str) -> Step:
        """The request of ``get(key)`` (each driver sends it and reads the value itself)."""
        bkey = self._keys.bkey(key)
        full = self._prefix + bkey
        return (self._single or self._node(bkey), b"get " + full + b"\r\n", read_value, True, full)

    def _read_miss(self, failure: _Failure, key: str) -> bytes | None:
        """The answer of a ``get`` that failed: None where a down server reads as a miss."""
        self._read_failed(failure, key)
        return None

    def _op_get_many(self, keys: Sequence[str]) -> Ops[list[bytes | None]]:
        bkeys = self._keys.bkeys(keys)
        if not bkeys:
            return []
        prefix = self._prefix
        fulls = [prefix + b for b in bkeys] if prefix else bkeys
        single = self._single
        if single is not None:
            request = b"get " + b" ".join(fulls) + b"\r\n"
            try:
                found: dict[bytes, bytes] = yield (single, request, read_values, True, fulls)
            except _Failure as failure:
                self._read_failed(failure, None)
                return [None] * len(bkeys)
            get = found.get
            return [get(full) for full in fulls]
        groups = self._group(bkeys)
        steps: list[Step] = []
        for node, indices in groups.items():
            asked = [fulls[i] for i in indices]
            steps.append((node, b"get " + b" ".join(asked) + b"\r\n", read_values, True, asked))
        outcomes = yield steps
        found = {}
        for indices, outcome in zip(groups.values(), outcomes, strict=True):
            if isinstance(outcome, _Failure):
                about = f" for {len(indices)} of the {len(bkeys)} keys read"
                self._read_failed(outcome, keys[indices[0]] if len(indices) == 1 else None, about)
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                found.update(outcome)
        get = found.get
        return [get(full) for full in fulls]

    def _op_gets(self, key: str) -> Ops[tuple[bytes, CasToken] | None]:
        bkey = self._keys.bkey(key)
        node = self._node(bkey)
        full = self._prefix + bkey
        try:
            got = yield (node, b"gets " + full + b"\r\n", read_cas_value, True, full)
        except _Failure as failure:
            self._read_failed(failure, key)
            return None
        if got is not None and got[1] == b"0":
            raise cas_disabled(node.address, key)
        return cast("tuple[bytes, CasToken] | None", got)

    # -- single writes ------------------------------------------------------------------

    def _op_set(self, key: str, value: bytes, ttl: float | None) -> Ops[None]:
        if not (yield from self._store_if(b"set", key, value, ttl)):
            raise self._not_stored(key)

    def _not_stored(self, key: str) -> BackendError:
        """The error for a ``set`` that memcached answered NOT_STORED."""
        server = self.server_for(key)
        return BackendError(
            f"memcached at {server} did not store key {key!r}", key=key, server=server
        )

    def _op_replace(self, key: str, value: bytes, ttl: BackendTTL) -> Ops[bool]:
        if ttl is KEEP_TTL:
            return (yield from self._replace_keeping_ttl(key, value))
        return (yield from self._store_if(b"replace", key, value, ttl))

    def _replace_keeping_ttl(self, key: str, value: bytes) -> Ops[bool]:
        """``replace`` with the old value's remaining TTL, by meta get then ``cas``."""
        bkey = self._keys.bkey(key)
        data = _as_bytes(key, value)
        if len(data) > self._unchecked:
            yield from self._check_size(key, bkey, len(data))
        node = self._node(bkey)
        full = self._prefix + bkey
        meta = meta_command(full)
        for _ in range(_INCR_ATTEMPTS):
            held = yield from self._ask(node, meta, read_meta, key=key, op="replace", expect=full)
            if held is None:
                return False
            token, remaining = held
            if token == b"0":
                raise cas_disabled(node.address, key)
            request = cas_command(full, kept_expire(remaining), token, data)
            line = yield from self._ask(
                node, request, read_line, key=key, op="replace", write=True, resend=False
            )
            if line == b"STORED":
                return True
            if line == b"NOT_FOUND":
                return False  # deleted or expired since the meta get: never recreated
            if line != b"EXISTS":
                raise (yield from self._refusal(node, line, key, len(data), bkey, b"cas"))
        raise BackendError(
            f"cannot replace key {key!r} keeping its TTL: other writers kept changing it",
            key=key,
            server=node.address,
        )

    def _store_step(
        self, command: bytes, key: str, value: bytes, ttl: float | None, *, checked: bool = False
    ) -> Step | None:
        """The request of a ``set``/``add``/``replace``; None if the value's size must be
        checked against its server's limit first (unless ``checked``)."""
        bkey = self._keys.bkey(key)
        data = _as_bytes(key, value)
        expire = _expire(ttl)
        if len(data) > self._unchecked and not checked:
            return None
        request = store_command(command, self._prefix + bkey, b"%d" % expire, data)
        return (self._single or self._node(bkey), request, read_line, command != b"add", None)

    def _store_failed(self, failure: _Failure, key: str, command: bytes) -> BackendError:
        """The error for a store whose request failed."""
        return failure_error(failure, key, op=command.decode(), write=True)

    def _stored(self, node: Any, line: bytes, command: bytes, key: str, value: bytes) -> Ops[bool]:
        """What a store's reply ``line`` says: stored, not stored, or the refusal raised."""
        if line == b"STORED":
            return True
        if line == b"NOT_STORED":
            return False
        size = len(_as_bytes(key, value))
        raise (yield from self._refusal(node, line, key, size, self._keys.bkey(key), command))

    def _store_if(self, command: bytes, key: str, value: bytes, ttl: float | None) -> Ops[bool]:
        """One memcached ``set``, ``add`` or ``replace``; True if the server stored the value."""
        step = self._store_step(command, key, value, ttl)
        if step is None:
            yield from self._check_size(key, self._keys.bkey(key), len(_as_bytes(key, value)))
            step = self._store_step(command, key, value, ttl, checked=True)
            assert step is not None
        try:
            line = yield step
        except _Failure as failure:
            raise self._store_failed(failure, key, command) from failure.cause
        return (yield from self._stored(step[0], line, command, key, value))

    def _delete_step(self, key: str) -> Step:
        """The request of ``delete(key)``."""
        bkey = self._keys.bkey(key)
        request = b"delete " + self._prefix + bkey + b"\r\n"
        return (self._single or self._node(bkey), request, read_line, False, None)

    def _deleted(self, node: Any, line: bytes, key: str) -> Ops[bool]:
        """What a delete's reply ``line`` says: deleted, absent, or the refusal raised."""
        if line == b"DELETED":
            return True
        if line == b"NOT_FOUND":
            return False
        raise (yield from self._refusal(node, line, key))

    def _op_delete(self, key: str) -> Ops[bool]:
        step = self._delete_step(key)
        try:
            line = yield step
        except _Failure as failure:
            raise failure_error(failure, key, op="delete", write=True) from failure.cause
        return (yield from self._deleted(step[0], line, key))

    def _op_incr(self, key: str, delta: int) -> Ops[int]:
        bkey = self._keys.bkey(key)
        if isinstance(delta, bool) or not isinstance(delta, int):
            raise TypeError(f"incr delta must be an int, not {type(delta).__name__}")
        if delta < 0 or delta >= U64:
            return (yield from self._incr_cas(key, bkey, delta))
        node = self._node(bkey)
        full = self._prefix + bkey
        increment = count_command(full, delta)
        for _ in range(_INCR_ATTEMPTS):
            try:  # not through _ask: incr is hot, and one generator less is faster
                line = yield (node, increment, read_line, False, None)
            except _Failure as failure:
                raise failure_error(failure, key, op="incr", write=True) from failure.cause
            if line.isdigit():
                result = int(line)
                if result < delta:  # memcached wrapped around 2**64: add it back
                    yield from self._incr_cas(key, bkey, U64, missing_ok=True)
                    return result + U64
                return result
            if line == b"NOT_FOUND":
                line = yield from self._create_counter(node, full, key, delta)
                if line == b"STORED":
                    return delta
                if line == b"NOT_STORED":
                    continue  # created by another writer meanwhile: increment it
            elif line.startswith(b"CLIENT_ERROR") and b"non-numeric" in line:
                # The value is negative, over 2**64 - 1 or not a number.
                return (yield from self._incr_cas(key, bkey, delta))
            raise (yield from self._refusal(node, line, key))
        raise BackendError(
            f"cannot incr key {key!r}: it keeps vanishing and reappearing",
            key=key,
            server=node.address,
        )

    def _create_counter(self, node: Any, full: bytes, key: str, delta: int) -> Ops[bytes]:
        """``add`` the counter ``full`` with value ``delta`` (sent once); the reply line."""
        line: bytes = yield from self._ask(
            node,
            store_command(b"add", full, b"0", b"%d" % delta),
            read_line,
            key=key,
            op="incr (creating the counter)",
            write=True,
            resend=False,
        )
        return line

    def _incr_cas(self, key: str, bkey: bytes, delta: int, *, missing_ok: bool = False) -> Ops[int]:
        """``incr`` by a ``gets``/``cas`` loop on signed digits, keeping the TTL.

        With ``missing_ok``, a missing key stays missing (and ``delta`` is returned).
        """
        node = self._node(bkey)
        full = self._prefix + bkey
        read = b"gets " + full + b"\r\n"
        meta = meta_command(full)
        for _ in range(_INCR_ATTEMPTS):
            got = yield from self._ask(node, read, read_cas_value, key=key, op="incr", expect=full)
            if got is None:
                if missing_ok:
                    return delta
                line = yield from self._create_counter(node, full, key, delta)
                if line == b"STORED":
                    return delta
                if line != b"NOT_STORED":
                    raise (yield from self._refusal(node, line, key))
                continue
            value, token = got
            current = parse_counter(value)
            if current is None:
                raise BackendError(
                    f"cannot incr key {key!r}: its value is not an ASCII integer",
                    key=key,
                    server=node.address,
                )
            if token == b"0":
                raise cas_disabled(node.address, key)
            held = yield from self._ask(node, meta, read_meta, key=key, op="incr", expect=full)
            if held is None or held[0] != token:
                continue  # gone or changed since gets
            result = current + delta
            request = cas_command(full, kept_expire(held[1]), token, b"%d" % result)
            line = yield from self._ask(
                node, request, read_line, key=key, op="incr", write=True, resend=False
            )
            if line == b"STORED":
                return result
            if line not in (b"EXISTS", b"NOT_FOUND"):
                raise (yield from self._refusal(node, line, key))
        raise BackendError(
            f"cannot incr key {key!r}: other writers kept changing it",
            key=key,
            server=node.address,
        )

    def _op_cas(self, key: str, value: bytes, token: CasToken, ttl: BackendTTL) -> Ops[bool]:
        bkey = self._keys.bkey(key)
        data = _as_bytes(key, value)
        keep = ttl is KEEP_TTL
        expire = 0 if ttl is KEEP_TTL else _expire(ttl)
        if len(data) > self._unchecked:
            yield from self._check_size(key, bkey, len(data))
        digits = cas_number(token)
        if digits is None:
            return False
        node = self._node(bkey)
        full = self._prefix + bkey
        if keep:
            held = yield from self._ask(
                node, meta_command(full), read_meta, key=key, op="cas", expect=full
            )
            if held is None:
                return False
            if held[0] == b"0":
                raise cas_disabled(node.address, key)
            if held[0] != digits:
                return False
            expire = kept_expire(held[1])
        request = cas_command(full, expire, digits, data)
        line = yield from self._ask(
            node, request, read_line, key=key, op="cas", write=True, resend=False
        )
        if line == b"STORED":
            return True
        if line in (b"EXISTS", b"NOT_FOUND"):
            return False
        raise (yield from self._refusal(node, line, key, len(data), bkey, b"cas"))

    # -- batch writes -------------------------------------------------------------------

    def _op_set_many(self, items: Sequence[tuple[str, bytes]], ttl: float | None) -> Ops[None]:
        pairs, bkeys = yield from self._pairs(items)
        expire = b"%d" % _expire(ttl)
        if not pairs:
            return
        last = {bkey: index for index, bkey in enumerate(bkeys)}
        if len(last) < len(pairs):
            pairs = [pairs[i] for i in last.values()]
            bkeys = list(last)
        yield from self._write_many(b"set", pairs, bkeys, expire, op="set_many")

    def _op_add_many(
        self, items: Sequence[tuple[str, bytes]], ttl: float | None
    ) -> Ops[list[bool]]:
        pairs, bkeys = yield from self._pairs(items)
        expire = b"%d" % _expire(ttl)
        if not pairs:
            return []
        return (yield from self._write_many(b"add", pairs, bkeys, expire, op="add_many"))

    def _op_replace_many(
        self, items: Sequence[tuple[str, bytes]], ttl: BackendTTL
    ) -> Ops[list[bool]]:
        pairs, bkeys = yield from self._pairs(items)
        if ttl is KEEP_TTL:
            if not pairs:
                return []
            return (yield from self._replace_many_keeping_ttl(pairs, bkeys))
        expire = b"%d" % _expire(ttl)
        if not pairs:
            return []
        return (yield from self._write_many(b"replace", pairs, bkeys, expire, op="replace_many"))

    def _replace_many_keeping_ttl(
        self, pairs: list[tuple[str, bytes]], bkeys: list[bytes]
    ) -> Ops[list[bool]]:
        """``replace_many`` with each old value's remaining TTL: rounds of meta gets and cas."""
        prefix = self._prefix
        fulls = [prefix + bkey for bkey in bkeys]
        keys = [key for key, _ in pairs]
        stored = [False] * len(pairs)
        settled_false: list[int] = []  # absent, or deleted before its cas
        pending: list[int] = list(range(len(pairs)))
        for _ in range(_INCR_ATTEMPTS):
            try:
                held = yield from self._metas(
                    [fulls[i] for i in pending], [bkeys[i] for i in pending]
                )
            except _Failure as failure:
                error = failure_error(failure, None, op="replace_many", write=False)
                raise merged(error, keys, stored, settled_false, pending) from error
            present = [(i, meta) for i, meta in zip(pending, held, strict=True) if meta is not None]
            settled_false += [i for i, meta in zip(pending, held, strict=True) if meta is None]
            sent = [i for i, _ in present]
            for index, meta in present:
                if meta[0] == b"0":
                    disabled = cas_disabled(self._node(bkeys[index]).address, keys[index])
                    raise merged(disabled, keys, stored, settled_false, sent) from disabled
            commands = [
                cas_command(fulls[i], kept_expire(remaining), token, pairs[i][1])
                for i, (token, remaining) in present
            ]
            try:
                replies = yield from self._send_many(
                    commands,
                    [bkeys[i] for i in sent],
                    [keys[i] for i in sent],
                    op="replace_many",
                    sizes=[len(pairs[i][1]) for i in sent],
                    command=b"cas",
                    confirmed=frozenset([b"STORED"]),
                )
            except BatchWriteError as error:
                # The pairs of this round's cas batch are all in ``error``.
                raise merged(error, keys, stored, settled_false, []) from error
            pending = []
            for index, line in zip(sent, replies, strict=True):
                if line == b"STORED":
                    stored[index] = True
                elif line == b"EXISTS":
                    pending.append(index)  # changed since the meta get: again, in order
                else:
                    settled_false.append(index)
            if not pending:
                return stored
        gave_up = BackendError(
            f"cannot replace {describe_keys([keys[i] for i in pending])} keeping their TTL: "
            "other writers kept changing them"
        )
        raise merged(gave_up, keys, stored, settled_false, pending)

    def _metas(self, fulls: list[bytes], bkeys: list[bytes]) -> Ops[list[tuple[bytes, int] | None]]:
        """The CAS value and remaining TTL of each full key (None: absent); _Failure if not read.

        One request of meta gets per server, the servers concurrently.
        """
        metas: list[tuple[bytes, int] | None] = [None] * len(fulls)
        groups = self._group(bkeys)
        steps: list[Step] = []
        for node, indices in groups.items():
            asked = [fulls[i] for i in indices]
            request = b"".join([meta_command(full) for full in asked])
            steps.append((node, request, read_metas, True, asked))
        outcomes = yield steps
        for indices, outcome in zip(groups.values(), outcomes, strict=True):
            if isinstance(outcome, BaseException):
                raise outcome
            for index, meta in zip(indices, outcome, strict=True):
                metas[index] = meta
        return metas

    def _op_delete_many(self, keys: Sequence[str]) -> Ops[int]:
        bkeys = self._keys.bkeys(keys)
        if not bkeys:
            return 0
        prefix = self._prefix
        commands = [b"delete " + prefix + bkey + b"\r\n" for bkey in bkeys]
        replies = yield from self._send_many(commands, bkeys, list(keys), op="delete_many")
        return sum(1 for line in replies if line == b"DELETED")

    def _write_many(
        self,
        command: bytes,
        pairs: list[tuple[str, bytes]],
        bkeys: list[bytes],
        expire: bytes,
        *,
        op: str,
    ) -> Ops[list[bool]]:
        """Send ``command`` for each pair; True where the server stored it."""
        prefix = self._prefix
        commands = [
            store_command(command, prefix + bkey, expire, value)
            for (_, value), bkey in zip(pairs, bkeys, strict=True)
        ]
        replies = yield from self._send_many(
            commands,
            bkeys,
            [key for key, _ in pairs],
            op=op,
            sizes=[len(value) for _, value in pairs],
            must_store=command == b"set",
            command=command,
        )
        return [line == b"STORED" for line in replies]

    def _send_many(
        self,
        commands: list[bytes],
        bkeys: list[bytes],
        keys: list[str],
        *,
        op: str,
        sizes: list[int] | None = None,
        must_store: bool = False,
        command: bytes = b"",
        confirmed: frozenset[bytes] = CONFIRMED,
    ) -> Ops[list[bytes]]:
        """Send one write per key, one request per server, concurrently; each reply line.

        Raises BatchWriteError unless every reply arrived and none is an error
        reply (nor, with ``must_store``, anything but ``STORED``). Replies in
        ``confirmed`` count as written: by default ``STORED``, and for a delete
        ``DELETED`` or ``NOT_FOUND`` (the key is gone). ``command`` is the store
        command, for what a refusal says of the keys' previous values.
        """
        replies: list[bytes | None] = [None] * len(commands)
        groups = self._group(bkeys)
        steps: list[Step] = [
            (node, b"".join([commands[i] for i in indices]), read_write_replies, False, n)
            for node, indices in groups.items()
            for n in [len(indices)]
        ]
        outcomes = yield steps
        failures: list[_Failure] = []
        sent: set[int] = set()
        for indices, outcome in zip(groups.values(), outcomes, strict=True):
            if isinstance(outcome, _Failure):
                failures.append(outcome)
                lines = outcome.partial
                end = 0
                for index in indices:
                    end += len(commands[index])
                    if end > outcome.sent:
                        break
                    sent.add(index)
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                lines = outcome
            for index, reply in zip(indices, lines, strict=False):
                replies[index] = reply
        refused = [
            index
            for index, line in enumerate(replies)
            if line is not None
            and (line.startswith(b"SERVER_ERROR") or (must_store and line != b"STORED"))
        ]
        if not failures and not refused:
            return cast("list[bytes]", replies)  # every reply arrived
        written: list[str] = []
        not_written: list[str] = []
        unknown: list[str] = []
        for index, line in enumerate(replies):
            if line is None:
                (unknown if index in sent else not_written).append(keys[index])
            elif line in confirmed:
                written.append(keys[index])
            else:
                not_written.append(keys[index])
        reasons: list[str] = []
        causes: list[BaseException] = []
        servers: list[str] = []
        for failure in failures:
            what = "is unavailable" if failure.unavailable else "failed"
            reasons.append(f"memcached at {failure.node.address} {what}: {reason(failure.cause)}")
            causes.append(failure.cause)
            servers.append(failure.node.address)
        for index in refused[:3]:
            node = self._node(bkeys[index])
            line = replies[index] or b""
            if line.startswith(b"SERVER_ERROR"):
                size = None if sizes is None else sizes[index]
                refusal = yield from self._refusal(
                    node, line, keys[index], size, bkeys[index], command
                )
            else:
                refusal = BackendError(
                    f"memcached at {node.address} did not store key {keys[index]!r} "
                    f"({line.decode('ascii', 'replace')})",
                    key=keys[index],
                    server=node.address,
                )
            reasons.append(str(refusal))
            causes.append(refusal)
            if node.address not in servers:
                servers.append(node.address)
        if len(refused) > 3:
            reasons.append(f"and {len(refused) - 3} more refusals")
        what = f"{op} failed part-way: {'; '.join(reasons)}"
        error = batch_error(what, keys, written, not_written, unknown, ", ".join(servers))
        error.__cause__ = causes[0]
        raise error

    # -- optional capabilities: TTL and counters -------------------------------------------
    # memcached cannot enumerate its keys, so there is no ``scan``.

    def _op_touch_many(self, keys: Sequence[str], ttl: float | None) -> Ops[list[bool]]:
        bkeys = self._keys.bkeys(keys)
        expire = b"%d" % _expire(ttl)
        if not bkeys:
            return []
        prefix = self._prefix
        touched: list[bool] = [False] * len(bkeys)
        groups = self._group(bkeys)
        steps: list[Step] = [
            (
                node,
                b"".join([touch_command(prefix + bkeys[i], expire) for i in indices]),
                read_touches,
                True,
                len(indices),
            )
            for node, indices in groups.items()
        ]
        outcomes = yield steps
        for indices, outcome in zip(groups.values(), outcomes, strict=True):
            if isinstance(outcome, _Failure):
                about = f" touching {describe_keys([keys[i] for i in indices])}"
                raise failure_error(outcome, None, op="touch", write=False, about=about) from (
                    outcome.cause
                )
            if isinstance(outcome, BaseException):
                raise outcome
            for index, found in zip(indices, outcome, strict=True):
                touched[index] = found
        return touched

    def _op_ttl_of(self, key: str) -> Ops[float | None]:
        bkey = self._keys.bkey(key)
        try:
            meta = (yield from self._metas([self._prefix + bkey], [bkey]))[0]
        except _Failure as failure:
            raise failure_error(failure, key, op="ttl_of", write=False) from failure.cause
        if meta is None:
            return None
        remaining = meta[1]
        return math.inf if remaining < 0 else float(remaining)

    def _op_counter_add(self, key: str, delta: int, ttl: float | None) -> Ops[int]:
        bkey = self._keys.bkey(key)
        _check_delta(delta)
        expire = b"%d" % _expire(ttl)
        if delta >= U64 or -delta >= U64:
            raise BackendError(
                f"cannot count with key {key!r}: memcached counters hold 0 to 2**64 - 1, and "
                f"{delta} is out of that range",
                key=key,
            )
        node = self._node(bkey)
        full = self._prefix + bkey
        request = count_command(full, delta)
        create = store_command(b"add", full, expire, b"%d" % max(0, delta))
        for _ in range(_INCR_ATTEMPTS):
            line = yield from self._ask(
                node, request, read_line, key=key, op="counter_add", write=True, resend=False
            )
            if line.isdigit():
                result = int(line)
                if delta > 0 and result < delta:  # memcached wrapped around 2**64: add it back
                    yield from self._incr_cas(key, bkey, U64, missing_ok=True)
                    return result + U64
                return result
            if line != b"NOT_FOUND":
                if line.startswith(b"CLIENT_ERROR") and b"non-numeric" in line:
                    raise BackendError(
                        f"cannot count with key {key!r} at {node.address}: its value is not a "
                        "non-negative integer",
                        key=key,
                        server=node.address,
                    )
                raise (yield from self._refusal(node, line, key))
            created = yield from self._ask(
                node,
                create,
                read_line,
                key=key,
                op="counter_add (creating the counter)",
                write=True,
                resend=False,
            )
            if created == b"STORED":
                return max(0, delta)
            if created != b"NOT_STORED":
                raise (yield from self._refusal(node, created, key))
            # Created by another client meanwhile: count on it.
        raise BackendError(
            f"cannot count with key {key!r}: it keeps vanishing and reappearing",
            key=key,
            server=node.address,
        )


class MemcachedBackend(MemcachedCore, Closing):
    """A backend on one memcached server or a pool of them, through pymemcache's clients.

    Keys that memcached cannot take as they are get a deterministic mapped key,
    TTLs are rounded up to whole seconds (plus one), values over the server's
    item size limit are refused before sending, and every write waits for the
    server's reply; see the module documentation for pools, retries and
    partial batches. The backend is safe to share between threads: a
    ``Client``'s one connection carries one request and reply at a time, under
    a lock (per server in a pool); a ``PooledClient`` (or ``HashClient`` with
    ``use_pooling=True``) lends each thread a connection of its own. Atomicity
    comes from memcached (``add``, ``incr``, ``cas``).

    Args:
        client: a pymemcache ``Client``, ``PooledClient`` or ``HashClient``,
            without serde (so values are bytes) and with ``ignore_exc=False``.
            Its ``key_prefix`` is honoured; its ``default_noreply`` is ignored
            (every write waits for its reply).
        max_value_size: the largest value accepted, in bytes; None to use the
            server's ``item_size_max`` less the key and :data:`ITEM_OVERHEAD`.
        down_server_reads_miss: if True, reads of keys whose server cannot be
            reached answer "absent" instead of raising BackendUnavailable.
            Writes still raise. Off by default: a read never pretends a miss.
        pool_timeout: how long a request waits for a free connection of a
            ``PooledClient`` (or a ``HashClient`` with ``use_pooling=True``)
            whose ``max_pool_size`` connections are all busy, in seconds;
            then it raises BackendUnavailable (nothing was sent).

    Raises:
        MissingDependency: pymemcache is not installed.
        ConfigurationError: the client is not one of those three (a
            ``RetryingClient`` is refused), has a serde, ignores errors or has
            a ``key_prefix`` that leaves no room for keys; ``max_value_size``
            is not a positive int or None; or ``pool_timeout`` is not a
            positive number.
    """

    def __init__(
        self,
        client: Any,
        max_value_size: int | None = None,
        *,
        down_server_reads_miss: bool = False,
        pool_timeout: float = 5.0,
    ) -> None:
        pymemcache = _import_pymemcache()
        check_max_value_size(max_value_size)
        timeout = check_seconds("pool_timeout", pool_timeout)
        nodes = _nodes_of(client, pymemcache, timeout)
        ring: dict[str, _Node] | None = None
        hasher: type[Any] | None = None
        if isinstance(client, pymemcache.HashClient):
            hasher = type(client.hasher)  # pyright: ignore[reportUnknownVariableType]
            ring = {}
            for name, node_client in client.clients.items():
                ring[name] = next(n for n in nodes if n.client is node_client)
        self._setup(
            nodes, ring, hasher, nodes[0].client.key_prefix, max_value_size, down_server_reads_miss
        )
        self._client = client
        self._executor: ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()

    @classmethod
    def from_servers(
        cls,
        servers: str | Sequence[str],
        /,
        *,
        max_value_size: int | None = None,
        down_server_reads_miss: bool = False,
        pool_timeout: float = 5.0,
        **client_kwargs: Any,
    ) -> MemcachedBackend:
        """A backend on a new pymemcache client for the server(s) at ``servers``.

        One address gives a ``Client`` (a ``PooledClient`` with
        ``use_pooling=True``); several give a ``HashClient`` over all of them.

        Args:
            servers: addresses, ``"host:port"``, ``"[ipv6]:port"``,
                ``"unix:/path"`` or ``"/path"``: one string, or a list.
            max_value_size: as for the constructor.
            down_server_reads_miss: as for the constructor.
            pool_timeout: as for the constructor.
            **client_kwargs: passed to the pymemcache client; ``connect_timeout``
                and ``timeout`` default to 5 seconds, ``default_noreply`` to
                False. For a pool, ``retry_timeout`` (default 1 second) is how
                long a server that refused a connection is not tried again.

        Raises:
            ConfigurationError: no address, a repeated address, an address
                that cannot be parsed, or an option the client does not take.
            MissingDependency: pymemcache is not installed.
        """
        pymemcache = _import_pymemcache()
        specs = parse_servers(servers, "MemcachedBackend")
        client_kwargs.setdefault("connect_timeout", 5.0)
        client_kwargs.setdefault("timeout", 5.0)
        client_kwargs.setdefault("default_noreply", False)
        try:
            if len(specs) > 1:
                client = pymemcache.HashClient(specs, **client_kwargs)
            elif client_kwargs.pop("use_pooling", False):
                client = pymemcache.PooledClient(specs[0], **client_kwargs)
            else:
                client = pymemcache.Client(specs[0], **client_kwargs)
        except TypeError as exc:
            raise ConfigurationError(f"bad pymemcache client option: {exc}") from exc
        return cls(
            client,
            max_value_size=max_value_size,
            down_server_reads_miss=down_server_reads_miss,
            pool_timeout=pool_timeout,
        )

    @property
    def client(self) -> Any:
        """The pymemcache client this backend talks through."""
        return self._client

    # -- the driver: operations run on the sockets ------------------------------------------

    def _run(self, ops: Ops[_T]) -> _T:
        """Run the operation ``ops``: each request it yields goes out by :meth:`_call`."""
        call = self._call
        try:
            step = ops.send(None)
            while True:
                if isinstance(step, tuple):
                    try:
                        reply = call(*step)
                    except _Failure as failure:
                        step = ops.throw(failure)
                        continue
                else:
                    reply = self._each(step)
                step = ops.send(reply)
        except StopIteration as done:
            result: _T = done.value
            return result

    def _refused(self, node: _Node, line: bytes, key: str, *about: Any) -> BackendError:
        """The error for an error reply about ``key`` (``about``: size, memcached key, command)."""
        return self._run(self._refusal(node, line, key, *about))

    def _call(
        self,
        node: _Node,
        request: bytes,
        read: Callable[[_Reader], _T],
        resend: bool,
        expect: Any = None,
    ) -> _T:
        """Send ``request`` to ``node`` and ``read`` its reply; _Failure if that fails.

        With ``resend``, a request that failed on a kept connection that turned
        out closed or reset is sent once more on a new connection. ``expect``
        is handed to ``read`` (as ``reader.expect``): the key(s) asked for.
        """
        pool = node.pool
        if pool is None:
            with node.lock:
                return self._exchange(node, node.client, node.watch, request, read, resend, expect)
        lent = pool.lend(node)
        try:
            return self._exchange(node, lent.client, lent.watch, request, read, resend, expect)
        finally:
            # Safe whatever happened: a connection a request failed or was
            # interrupted on has been closed, and reconnects when next lent.
            pool.give_back(lent)

    def _exchange(
        self,
        node: _Node,
        client: Any,
        watch: _Watch,
        request: bytes,
        read: Callable[[_Reader], _T],
        resend: bool,
        expect: Any,
    ) -> _T:
        """:meth:`_call` on one connection of ``node`` (its lock or pool slot held)."""
        sock = client.sock
        if sock is not None and not watch.usable(sock):
            client.close()  # closed by the server, or a stale reply: nothing sent yet
            sock = None
        reused = sock is not None
        if sock is None:
            sock = self._connect(node, client)
        sent = 0
        reader = _Reader(sock, expect)
        cause: Exception
        try:
            _send(sock, request)
            sent = len(request)
            return read(reader)
        except _SendFailed as exc:
            sent, cause = exc.sent, exc.cause
        except Exception as exc:  # a socket error, or a reply that made no sense
            cause = exc
        except BaseException as exc:
            # Interrupted (KeyboardInterrupt, SystemExit, a gevent Timeout...)
            # with the request possibly in flight: its reply may still come,
            # and the next request on this connection would read it as its own.
            client.close()
            _log.warning(
                "memcached at %s: request interrupted by %s; connection discarded",
                node.address,
                type(exc).__name__,
            )
            raise
        client.close()
        # The class only at WARNING: a reason can quote a reply, and so a key.
        _log.warning(
            "memcached at %s: connection discarded after %s", node.address, type(cause).__name__
        )
        _log.debug("memcached at %s: the failure was: %s", node.address, reason(cause))
        if resend and reused and isinstance(cause, ConnectionError):
            _log.debug("memcached at %s: resending a request on a new connection", node.address)
            try:
                return self._exchange(node, client, watch, request, read, False, expect)
            except _Failure as again:
                if again.sent or not sent:
                    raise
                # The first attempt was sent: the server may have seen it.
                raise _Failure(node, again.cause, sent) from again.cause
        raise _Failure(node, cause, sent, partial=reader.progress) from cause

    def _connect(self, node: _Node, client: Any) -> socket.socket:
        """A new connection of ``client``; _Failure (nothing sent) if it cannot be made."""
        skip = skipped_failure(node)
        if skip is not None:
            raise skip
        try:
            client._connect()
        except Exception as exc:
            mark_down(node, exc)
            raise _Failure(node, exc, 0) from exc
        sock: socket.socket = client.sock
        return sock

    def _executor_for_batches(self) -> ThreadPoolExecutor:
        """The thread pool that sends a batch's requests to the servers concurrently."""
        executor = self._executor
        if executor is None:
            with self._executor_lock:
                executor = self._executor
                if executor is None:
                    executor = ThreadPoolExecutor(
                        max_workers=len(self._nodes), thread_name_prefix="cacheorm-memcached"
                    )
                    self._executor = executor
        return executor

    def _each(self, steps: list[Step]) -> list[Any]:
        """Each request (one per server) sent concurrently; the reply or the error of each."""
        call = self._call
        outcomes: list[Any] = []
        if not steps:  # nothing to send (a round of a multi-round batch found no key)
            return outcomes
        futures = []
        if len(steps) > 1:
            executor = self._executor_for_batches()
            futures = [executor.submit(call, *step) for step in steps[1:]]
        try:
            outcomes.append(call(*steps[0]))
        except Exception as exc:
            outcomes.append(exc)
        for future in futures:
            try:
                outcomes.append(future.result())
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    # -- the Backend protocol --------------------------------------------------------------

    def get(self, key: str, /) -> bytes | None:
        """The value under ``key``, or None if absent or expired."""
        step = self._get_step(key)
        try:
            return self._call(*step)  # type: ignore[no-any-return]
        except _Failure as failure:
            return self._read_miss(failure, key)

    def _store(self, command: bytes, key: str, value: bytes, ttl: float | None) -> bool:
        """``set``/``add``/``replace`` sent directly (the common case), else by the operation."""
        step = self._store_step(command, key, value, ttl)
        if step is None:  # the value's size is checked first
            return self._run(self._store_if(command, key, value, ttl))
        try:
            line = self._call(*step)
        except _Failure as failure:
            raise self._store_failed(failure, key, command) from failure.cause
        return line == b"STORED" or self._run(self._stored(step[0], line, command, key, value))

    def get_many(self, keys: Sequence[str], /) -> list[bytes | None]:
        """The values under ``keys``, in the same order, None where absent.

        One request per server, to the servers concurrently.
        """
        return self._run(self._op_get_many(keys))

    def exists(self, key: str, /) -> bool:
        """True if ``key`` holds a live value (read with ``get``, which leaves the TTL alone)."""
        return self.get(key) is not None

    def gets(self, key: str, /) -> tuple[bytes, CasToken] | None:
        """The value and its CAS token (bytes of digits) for :meth:`cas`, or None if absent."""
        return self._run(self._op_gets(key))

    def set(self, key: str, value: bytes, /, ttl: float | None = None) -> None:
        """Store ``value`` under ``key``, replacing any value and TTL it had.

        Raises:
            TypeError: ``key`` is not a str or ``value`` not bytes-like.
            ValueTooLarge: ``value`` is over the size limit; nothing was sent.
            OutcomeUnknown: the reply was lost; the value may or may not be stored.
        """
        if not self._store(b"set", key, value, ttl):
            raise self._not_stored(key)

    def add(self, key: str, value: bytes, /, ttl: float | None = None) -> bool:
        """Store only if ``key`` is absent or expired, atomically; True if stored.

        Raises:
            OutcomeUnknown: the request was sent and its reply lost; it is not resent.
        """
        return self._store(b"add", key, value, ttl)

    def replace(self, key: str, value: bytes, /, ttl: BackendTTL = None) -> bool:
        """Store only if ``key`` holds a live value, atomically; True if stored.

        With ``ttl=KEEP_TTL`` the value keeps the expiry of the one it replaces:
        a meta get reads its CAS value and remaining TTL, then a ``cas`` stores
        the new value with that TTL, again (at most 1,000 times) while other
        writers change the key in between. A key deleted in between is not
        recreated (False).

        Raises:
            OutcomeUnknown: with ``KEEP_TTL``, the ``cas`` was sent and its reply
                lost; it is not resent (a plain ``replace`` is resent once on a
                closed kept connection).
            BackendError: with ``KEEP_TTL``, the server has CAS disabled.
        """
        if ttl is KEEP_TTL:
            return self._run(self._replace_keeping_ttl(key, value))
        return self._store(b"replace", key, value, ttl)

    def delete(self, key: str, /) -> bool:
        """Remove ``key``; True if it held a live value.

        Raises:
            OutcomeUnknown: the request was sent and its reply lost; it is not
                resent, since a second answer would say the key was absent.
        """
        step = self._delete_step(key)
        try:
            line = self._call(*step)
        except _Failure as failure:
            raise failure_error(failure, key, op="delete", write=True) from failure.cause
        return line == b"DELETED" or self._run(self._deleted(step[0], line, key))

    def incr(self, key: str, delta: int = 1, /) -> int:
        """Add ``delta`` to the counter under ``key``, starting from 0; the new value.

        The counter is stored as ASCII decimal digits and keeps the key's TTL.
        memcached's own atomic ``incr`` serves counters from 0 to ``2**64 - 1``
        and non-negative deltas; anything else (negative values, larger ones)
        goes through a ``gets``/``cas`` loop. memcached's ``incr`` also accepts,
        and may pad with spaces, forms the memory backend refuses (``b"+5"``,
        ``b" 5"``, ``b"5 x"``).

        Raises:
            TypeError: ``delta`` is not an int.
            BackendError: the stored value is not an integer.
            OutcomeUnknown: an increment (or the write creating the counter) was
                sent and its reply lost; it is never resent, so never counted twice.
        """
        return self._run(self._op_incr(key, delta))

    def cas(self, key: str, value: bytes, token: CasToken, /, ttl: BackendTTL = None) -> bool:
        """Store ``value`` only if ``key`` is live and unwritten since ``gets`` gave ``token``.

        A token that memcached could not have given (not an int or bytes of
        digits under ``2**64``) returns False without asking the server. With
        ``ttl=KEEP_TTL`` a meta get first reads the key's CAS value and
        remaining TTL: a changed or missing key returns False at once, else the
        ``cas`` carries that TTL (and fails if the key changed in between).

        Raises:
            OutcomeUnknown: the request was sent and its reply lost; it is not resent.
            BackendError: with ``KEEP_TTL``, the server has CAS disabled.
        """
        return self._run(self._op_cas(key, value, token, ttl))

    def set_many(self, items: Sequence[tuple[str, bytes]], /, ttl: float | None = None) -> None:
        """Store every ``(key, value)`` pair; a repeated key keeps its last value.

        One request per server, to the servers concurrently. Nothing is sent if
        a key or value is invalid, the TTL is invalid or a value is too large.

        Raises:
            BatchWriteError: the batch failed part-way; it lists the keys written,
                not written and unknown.
        """
        self._run(self._op_set_many(items, ttl))

    def add_many(
        self, items: Sequence[tuple[str, bytes]], /, ttl: float | None = None
    ) -> list[bool]:
        """``add`` for each pair, in order; a later pair sees earlier ones.

        One request per server (memcached runs a connection's commands in
        order, so a repeated key is added once).

        Raises:
            BatchWriteError: the batch failed part-way; nothing is resent.
        """
        return self._run(self._op_add_many(items, ttl))

    def replace_many(
        self, items: Sequence[tuple[str, bytes]], /, ttl: BackendTTL = None
    ) -> list[bool]:
        """``replace`` for each pair, in order; one request per server.

        With ``ttl=KEEP_TTL`` each value keeps the remaining TTL of the one it
        replaces: one request of meta gets per server, then one of ``cas``
        commands per server; pairs whose key another writer changed in between
        go round again (at most 1,000 rounds), in order.

        Raises:
            BatchWriteError: the batch failed part-way; nothing is resent.
        """
        return self._run(self._op_replace_many(items, ttl))

    def delete_many(self, keys: Sequence[str], /) -> int:
        """Remove ``keys``; the number that held a live value. One request per server.

        Raises:
            BatchWriteError: the batch failed part-way; ``written`` lists the keys
                confirmed gone.
        """
        return self._run(self._op_delete_many(keys))

    # -- optional capabilities: TTLBackend, CounterBackend -------------------------------
    # memcached cannot enumerate its keys, so there is no ScanBackend ``scan``.

    def touch(self, key: str, /, ttl: float | None = None) -> bool:
        """Give ``key`` a new TTL (``touch``; None: no expiry); True if it existed."""
        return self._run(self._op_touch_many([key], ttl))[0]

    def touch_many(self, keys: Sequence[str], /, ttl: float | None = None) -> list[bool]:
        """``touch`` each key: one request of ``touch`` commands per server, concurrently.

        Idempotent, so a request that failed on a kept connection found
        closed is resent once, like a read. A failure raises
        :class:`~cacheorm.BackendUnavailable` (some keys may have been
        touched: touch them again).
        """
        return self._run(self._op_touch_many(keys, ttl))

    def ttl_of(self, key: str, /) -> float | None:
        """Whole seconds ``key`` has left (meta get ``mg <key> t``, memcached 1.6+).

        ``math.inf`` if it never expires, None if absent. cacheorm sends a
        TTL rounded up plus one second, so a key written with ``ttl=10``
        reports 11 at first.
        """
        return self._run(self._op_ttl_of(key))

    def counter_add(self, key: str, delta: int, /, ttl: float | None = None) -> int:
        """Add ``delta`` to the counter under ``key``, never below 0; the new value.

        ``incr`` (or ``decr``, which memcached clamps at 0); if the counter is
        absent, an ``add`` creates it with the value and the expiry in one
        command, and if another client created it first, the ``incr`` /
        ``decr`` is sent again. Nothing is ever resent after a lost reply.

        Raises:
            BackendError: the stored value is not a non-negative integer.
            OutcomeUnknown: a command was sent and its reply lost.
        """
        return self._run(self._op_counter_add(key, delta, ttl))

    # -- life cycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connections and stop the batch threads; the backend is not used after this.

        A backend used again reconnects (and restarts its threads).
        """
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
        for node in self._nodes:
            if node.pool is not None:
                node.pool.close()
            else:
                with node.lock:
                    node.client.close()

    def __repr__(self) -> str:
        """The class and the server address(es)."""
        if self._single is not None:
            return f"MemcachedBackend(server={self._single.address!r})"
        return f"MemcachedBackend(servers={self.servers!r})"


def _nodes_of(client: Any, pymemcache: _Pymemcache, pool_timeout: float) -> list[_Node]:
    """The servers of a Client, PooledClient or HashClient, each checked.

    Raises:
        ConfigurationError: an unsupported client, a serde, ``ignore_exc=True``
            or differing key prefixes.
    """
    if isinstance(client, pymemcache.RetryingClient):
        raise ConfigurationError(
            "MemcachedBackend does not take a pymemcache RetryingClient: it resends any "
            "failed call, so an add, incr or cas whose reply was lost could be applied "
            "twice. Pass the client it wraps; MemcachedBackend resends reads, set and "
            "replace once itself, and reports the other writes as OutcomeUnknown"
        )
    if isinstance(client, pymemcache.HashClient):
        if client.ignore_exc:
            raise ConfigurationError(
                "MemcachedBackend needs a HashClient with ignore_exc=False: errors must not "
                "read as cache misses (see down_server_reads_miss for reads)"
            )
        if not client.clients:
            raise ConfigurationError("MemcachedBackend needs a HashClient with servers")
        members = list(client.clients.values())
        retry_timeout = float(client.retry_timeout or 0)
    elif isinstance(client, (pymemcache.Client, pymemcache.PooledClient)):
        members = [client]
        retry_timeout = 0.0
    else:
        raise ConfigurationError(
            "MemcachedBackend needs a pymemcache Client, PooledClient or HashClient, not "
            f"{type(client).__name__}"
        )
    nodes: list[_Node] = []
    prefixes: set[bytes] = set()
    for member in members:
        pooled = isinstance(member, pymemcache.PooledClient)
        if not (pooled or isinstance(member, pymemcache.Client)):
            raise ConfigurationError(
                "MemcachedBackend needs a HashClient of pymemcache Clients or PooledClients, "
                f"not of {type(member).__name__}"
            )
        serde = member.serde
        if not (
            isinstance(serde, pymemcache.LegacyWrappingSerde)
            and getattr(serde.serialize, "__func__", None)
            is pymemcache.LegacyWrappingSerde._default_serialize
            and getattr(serde.deserialize, "__func__", None)
            is pymemcache.LegacyWrappingSerde._default_deserialize
        ):
            raise ConfigurationError(
                "MemcachedBackend needs a pymemcache client without serde, serializer or "
                "deserializer: values must come back as the bytes stored"
            )
        if member.ignore_exc:
            raise ConfigurationError(
                "MemcachedBackend needs a pymemcache client with ignore_exc=False: "
                "errors must not read as cache misses"
            )
        prefixes.add(member.key_prefix)
        nodes.append(_Node(member, pooled, retry_timeout, pool_timeout))
    if len(prefixes) > 1:
        raise ConfigurationError(
            f"the servers of a MemcachedBackend must share one key_prefix, not {prefixes!r}"
        )
    return nodes


class _Pymemcache:
    """The pymemcache names this module uses, imported when a backend is built.

    ``import cacheorm`` must work without pymemcache, so nothing here runs at
    import time.
    """

    def __init__(self) -> None:
        try:
            base = importlib.import_module("pymemcache.client.base")
            hashing = importlib.import_module("pymemcache.client.hash")
            retrying = importlib.import_module("pymemcache.client.retrying")
            serde = importlib.import_module("pymemcache.serde")
        except ImportError as exc:
            raise MissingDependency("MemcachedBackend", "memcached") from exc
        self.Client: type[Any] = base.Client
        self.PooledClient: type[Any] = base.PooledClient
        self.HashClient: type[Any] = hashing.HashClient
        self.RetryingClient: type[Any] = retrying.RetryingClient
        self.normalize_server_spec: Any = base.normalize_server_spec
        self.LegacyWrappingSerde: Any = serde.LegacyWrappingSerde


def _import_pymemcache() -> _Pymemcache:
    """pymemcache's names; MissingDependency if it is not installed."""
    return _Pymemcache()
