"""MemcachedBackend under interrupted requests, planted replies, a small pool and odd servers.

Interrupts are a ``BaseException`` that is not an ``Exception`` (as
``KeyboardInterrupt``, ``SystemExit`` or a gevent timeout are), raised by a
socket wrapper handed to pymemcache as its ``socket_module``: every client
kind (``Client``, ``PooledClient``, ``HashClient``) builds its sockets with it.
"""

from __future__ import annotations

import dataclasses
import random
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Annotated, Any

import pytest

pytest.importorskip("pymemcache")

from pymemcache.client.base import Client  # type: ignore[import-untyped]

from cacheorm import KEEP_TTL, Field, Repository, _memcached
from cacheorm._errors import (
    BackendError,
    BackendUnavailable,
    BatchWriteError,
    ConfigurationError,
    ConflictError,
    OutcomeUnknown,
    ValueTooLarge,
)
from cacheorm._memcached import MemcachedBackend, _read_meta
from tests.servers import MemcachedServer, ServerProcess, start_one_memcached


class Interrupt(BaseException):
    """Stands for KeyboardInterrupt, SystemExit or a gevent Timeout: not an Exception."""


class FaultySocket:
    """A real socket whose next request can be interrupted, or whose reply can be planted.

    ``hold`` makes the next ``send`` keep its bytes back (the request is in
    flight: the server has not answered yet) and raise :class:`Interrupt`; the
    held bytes go out in front of the next request sent on this socket, so
    the server answers both, in order, as a slow server would.
    ``after_send`` sends the next request and raises :class:`Interrupt` at the
    first ``recv`` of its reply; ``lose`` sends it and loses its reply (a
    reset). ``pass`` leaves the request alone. Bytes put bytes in front of the next
    reply, as a stale reply left on the connection would be.
    """

    def __init__(self, sock: socket.socket, faults: FaultySocketModule) -> None:
        self.sock = sock
        self.faults = faults
        self.held = b""
        self.interrupt_recv = False
        self.lose_reply = False
        self.planted = b""

    def send(self, data: bytes) -> int:
        mode = self.faults.take()
        if mode == "hold":
            self.held += bytes(data)
            raise Interrupt("interrupted with the request in flight")
        if mode == "after_send":
            self.interrupt_recv = True
        elif mode == "lose":
            self.lose_reply = True
        elif mode is not None and mode != "pass":
            self.planted = mode.encode() if isinstance(mode, str) else mode
        if self.held:
            held, self.held = self.held, b""
            self.sock.sendall(held)
        return self.sock.send(data)

    def connect(self, address: Any) -> None:
        if self.faults.interrupt_connect:
            self.faults.interrupt_connect = False
            raise Interrupt("interrupted while connecting")
        self.sock.connect(address)

    def recv(self, size: int) -> bytes:
        if self.lose_reply:
            self.lose_reply = False
            raise ConnectionResetError("reply lost")
        if self.interrupt_recv:
            self.interrupt_recv = False
            raise Interrupt("interrupted before the reply was read")
        if self.planted:
            planted, self.planted = self.planted, b""
            return planted + self.sock.recv(size)
        return self.sock.recv(size)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


class FaultySocketModule:
    """Stands for the ``socket`` module in pymemcache clients; its sockets are FaultySockets."""

    def __init__(self) -> None:
        self.modes: list[str | bytes] = []
        self.lock = threading.Lock()
        self.sockets: list[FaultySocket] = []
        self.interrupt_connect = False
        #: Only requests sent by this thread take the modes (None: any thread).
        self.thread: int | None = None

    def arm(self, *modes: str | bytes) -> None:
        """Apply ``modes`` to the next requests sent, one each, in order."""
        with self.lock:
            self.modes.extend(modes)

    def take(self) -> str | bytes | None:
        if self.thread is not None and threading.get_ident() != self.thread:
            return None
        with self.lock:
            return self.modes.pop(0) if self.modes else None

    def socket(self, *args: Any) -> FaultySocket:
        wrapped = FaultySocket(socket.socket(*args), self)
        self.sockets.append(wrapped)
        return wrapped

    def __getattr__(self, name: str) -> Any:
        return getattr(socket, name)


def own_memcached(*extra: str) -> ServerProcess:
    """A memcached process of this test's own (to pause, or with special options)."""
    binary = shutil.which("memcached")
    if binary is None:
        pytest.skip("memcached is not installed")
    return start_one_memcached(binary, *extra, threads=1)


@pytest.fixture
def faults() -> FaultySocketModule:
    """The socket module of the backends under test."""
    return FaultySocketModule()


@pytest.fixture(params=["client", "pooled"])
def store(
    request: pytest.FixtureRequest, memcached_server: MemcachedServer, faults: FaultySocketModule
) -> Iterator[MemcachedBackend]:
    """A backend on the session's memcached (flushed), one connection or a pool of them."""
    pooled = request.param == "pooled"
    options: dict[str, Any] = {"use_pooling": True, "max_pool_size": 4} if pooled else {}
    backend = MemcachedBackend.from_servers(
        memcached_server.servers, socket_module=faults, **options
    )
    _flush(memcached_server)
    yield backend
    backend.close()


def _flush(server: MemcachedServer) -> None:
    host, port = server.servers[0].rsplit(":", 1)
    client = Client((host, int(port)), default_noreply=False, timeout=5.0)
    client.flush_all(noreply=False)
    client.close()


# -- item 1: a request interrupted in flight never leaves its reply to the next one --------


@pytest.mark.parametrize("mode", ["hold", "after_send"])
def test_an_interrupted_get_never_hands_its_reply_to_the_next_get(
    store: MemcachedBackend, faults: FaultySocketModule, mode: str
) -> None:
    """get("alice") interrupted in flight: the next get("bob") returns bob's record."""
    store.set("alice", b"record of alice")
    store.set("bob", b"record of bob")
    faults.arm(mode)
    with pytest.raises(Interrupt):
        store.get("alice")
    assert store.get("bob") == b"record of bob"
    assert store.get_many(["alice", "bob"]) == [b"record of alice", b"record of bob"]


def test_a_create_after_an_interrupted_request_reports_what_it_did(
    store: MemcachedBackend, faults: FaultySocketModule
) -> None:
    """add of a new key after an interrupted get is stored and says so (not a BackendError)."""
    store.set("alice", b"record of alice")
    faults.arm("hold")
    with pytest.raises(Interrupt):
        store.get("alice")
    assert store.add("carol", b"record of carol") is True
    assert store.get("carol") == b"record of carol"


def test_an_interrupted_write_leaves_no_reply_behind(
    store: MemcachedBackend, faults: FaultySocketModule
) -> None:
    """set/add/incr/delete/cas interrupted in flight: the next requests read their own replies."""
    store.set("bob", b"record of bob")
    interrupted: list[Callable[[], object]] = [
        lambda: store.set("alice", b"x"),
        lambda: store.add("dave", b"x"),
        lambda: store.incr("n", 5),
        lambda: store.delete("zed"),
        lambda: store.set_many([("a", b"1"), ("b", b"2")]),
        lambda: store.get_many(["alice", "bob"]),
        lambda: store.gets("bob"),
    ]
    for call in interrupted:
        faults.arm("hold")
        with pytest.raises(Interrupt):
            call()
        assert store.get("bob") == b"record of bob"
        assert store.add(f"new-{id(call)}", b"v") is True


def test_a_reply_left_by_a_request_interrupted_on_a_slow_server_is_never_read() -> None:
    """A real paused server: the interrupted get's reply arrives after the next get was sent."""
    server = own_memcached()
    faults = FaultySocketModule()
    store = MemcachedBackend.from_servers(server.address, socket_module=faults, timeout=5.0)
    try:
        store.set("alice", b"record of alice")
        store.set("bob", b"record of bob")
        server.pause()
        faults.arm("after_send")
        with pytest.raises(Interrupt):
            store.get("alice")  # sent to the paused server; its reply comes later
        resume = threading.Timer(0.3, server.resume)
        resume.start()
        try:
            assert store.get("bob") == b"record of bob"
        finally:
            resume.join()
    finally:
        store.close()
        server.stop()


# -- item 1: a reply that names another key is a broken connection -----------------------


def test_a_planted_reply_for_another_key_is_detected_by_get(
    store: MemcachedBackend, faults: FaultySocketModule, memcached_server: MemcachedServer
) -> None:
    """A stale VALUE for alice in front of bob's reply raises naming bob; never returns it."""
    store.set("bob", b"record of bob")
    faults.arm(b"VALUE alice 0 15\r\nrecord of alice\r\nEND\r\n")
    with pytest.raises(BackendError, match=r"'bob'.*alice") as info:
        store.get("bob")
    assert info.value.key == "bob"
    assert info.value.server == memcached_server.servers[0]
    assert store.get("bob") == b"record of bob"  # the connection was replaced


def test_a_planted_reply_for_another_key_is_detected_by_gets(
    store: MemcachedBackend, faults: FaultySocketModule
) -> None:
    """gets checks the key of its VALUE line too."""
    store.set("bob", b"record of bob")
    faults.arm(b"VALUE alice 0 1 7\r\nA\r\nEND\r\n")
    with pytest.raises(BackendError, match=r"'bob'.*alice"):
        store.gets("bob")
    got = store.gets("bob")
    assert got is not None
    assert got[0] == b"record of bob"


@pytest.mark.parametrize(
    "planted",
    [
        b"VALUE eve 0 1\r\nE\r\n",  # a key not asked for
        b"VALUE bob 0 1\r\nB\r\nVALUE alice 0 1\r\nA\r\nEND\r\n",  # out of order
    ],
)
def test_a_planted_reply_for_other_keys_is_detected_by_get_many(
    store: MemcachedBackend, faults: FaultySocketModule, planted: bytes
) -> None:
    """get_many accepts VALUE lines only for keys asked for, in the order asked."""
    store.set_many([("alice", b"record of alice"), ("bob", b"record of bob")])
    faults.arm(planted)
    with pytest.raises(BackendError, match="did not ask for"):
        store.get_many(["alice", "bob"])
    assert store.get_many(["alice", "bob"]) == [b"record of alice", b"record of bob"]


def test_get_many_with_repeated_keys_reads_every_reply(store: MemcachedBackend) -> None:
    """memcached answers a repeated key once per mention; that is not a mismatch."""
    store.set_many([("alice", b"A"), ("bob", b"B")])
    assert store.get_many(["alice", "bob", "alice", "nobody", "bob"]) == [
        b"A",
        b"B",
        b"A",
        None,
        b"B",
    ]


# -- item 10: a pool that is busy waits, then raises a cacheorm error; it never leaks ------


def test_eight_threads_on_a_pool_of_two_wait_their_turn(
    memcached_server: MemcachedServer,
) -> None:
    """use_pooling=True, max_pool_size=2, 8 threads: every request is served, no raw error."""
    store = MemcachedBackend.from_servers(
        memcached_server.servers, use_pooling=True, max_pool_size=2
    )
    _flush(memcached_server)
    store.set_many([(f"user:{i}", f"record {i}".encode()) for i in range(8)])
    errors: list[BaseException] = []
    wrong = 0

    def work(thread: int) -> None:
        nonlocal wrong
        try:
            for n in range(150):
                key = f"user:{(thread + n) % 8}"
                if store.get(key) != f"record {(thread + n) % 8}".encode():
                    wrong += 1
                store.set(f"t{thread}", b"%d" % n)
        except BaseException as exc:  # any escape fails the test
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        store.close()
    assert errors == []
    assert wrong == 0


def test_waiting_for_a_pooled_connection_times_out_with_backend_unavailable() -> None:
    """All connections busy for longer than pool_timeout: BackendUnavailable naming the server."""
    server = own_memcached()
    store = MemcachedBackend.from_servers(
        server.address, use_pooling=True, max_pool_size=1, pool_timeout=0.2, timeout=5.0
    )
    try:
        store.set("alice", b"A")
        server.pause()
        busy = threading.Thread(target=store.get, args=("alice",))
        busy.start()  # holds the only connection until the server answers
        time.sleep(0.1)
        started = time.monotonic()
        with pytest.raises(BackendUnavailable, match=r"pool_timeout=0\.2s") as info:
            store.set("bob", b"B")
        assert 0.15 < time.monotonic() - started < 2.0
        assert info.value.key == "bob"
        assert info.value.server == server.address
        server.resume()
        busy.join()
        assert store.get("alice") == b"A"
        assert store.get("bob") is None  # nothing was sent
    finally:
        server.resume() if server.running else None
        store.close()
        server.stop()


def test_interrupted_requests_give_their_pooled_connections_back(
    memcached_server: MemcachedServer, faults: FaultySocketModule
) -> None:
    """4 interrupted requests on max_pool_size=4: the pool still serves 4 threads at once."""
    store = MemcachedBackend.from_servers(
        memcached_server.servers,
        use_pooling=True,
        max_pool_size=4,
        pool_timeout=1.0,
        socket_module=faults,
    )
    try:
        store.set("bob", b"record of bob")
        for mode in ["hold", "after_send", "hold", "after_send"]:
            faults.arm(mode)
            with pytest.raises(Interrupt):
                store.get("bob")
        results: list[object] = []

        def read() -> None:
            try:
                results.append(store.get("bob"))
            except BaseException as exc:  # recorded for the assertion
                results.append(exc)

        threads = [threading.Thread(target=read) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert results == [b"record of bob"] * 4
    finally:
        store.close()


def test_a_pooled_hash_client_waits_for_its_connections_too(
    memcached_pool: MemcachedServer,
) -> None:
    """A HashClient with use_pooling=True: 6 threads on max_pool_size=1 per server all finish."""
    store = MemcachedBackend.from_servers(memcached_pool.servers, use_pooling=True, max_pool_size=1)
    errors: list[BaseException] = []

    def work(thread: int) -> None:
        try:
            for n in range(50):
                store.set_many([(f"k{thread}:{i}", b"%d" % n) for i in range(6)])
                assert store.get_many([f"k{thread}:{i}" for i in range(6)]) == [b"%d" % n] * 6
        except BaseException as exc:  # any escape fails the test
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        store.close()
    assert errors == []


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), True, "5"])
def test_pool_timeout_must_be_a_positive_number(
    memcached_server: MemcachedServer, bad: object
) -> None:
    """A pool_timeout that is not a positive number of seconds is refused when building."""
    with pytest.raises(ConfigurationError, match="pool_timeout"):
        MemcachedBackend.from_servers(memcached_server.servers, pool_timeout=bad)  # type: ignore[arg-type]


# -- item 12: a server with CAS disabled (-C) says so -----------------------------------


@dataclasses.dataclass
class Account:
    """A record for the repository-level tests."""

    id: Annotated[int, Field(primary_key=True)]
    balance: int


@pytest.fixture(scope="module")
def no_cas_server() -> Iterator[ServerProcess]:
    """A memcached started with -C: every CAS value is 0, every cas fails."""
    server = own_memcached("-C")
    yield server
    server.stop()


@pytest.mark.parametrize("pooled", [False, True])
def test_compare_and_set_on_a_server_without_cas_says_so(
    no_cas_server: ServerProcess, pooled: bool
) -> None:
    """gets, a negative incr and update_with raise a BackendError naming -C, at once."""
    options: dict[str, Any] = {"use_pooling": True} if pooled else {}
    store = MemcachedBackend.from_servers(no_cas_server.address, **options)
    try:
        store.set("n", b"5")
        with pytest.raises(BackendError, match=r"CAS disabled.*-C") as info:
            store.gets("n")
        assert info.value.key == "n"
        assert info.value.server == no_cas_server.address
        with pytest.raises(BackendError, match="CAS disabled"):
            store.incr("n", -1)
        accounts = Repository(Account, backend=store)
        accounts.save(Account(id=1, balance=10))
        started = time.monotonic()
        with pytest.raises(BackendError, match="CAS disabled") as update:
            accounts.update_with(1, lambda a: dataclasses.replace(a, balance=a.balance + 1))
        assert not isinstance(update.value, ConflictError)
        assert time.monotonic() - started < 1.0
        assert accounts.get(1).balance == 10
    finally:
        store.close()


# -- item 13: a server out of memory (-M) says what became of the old value --------------


@pytest.fixture(scope="module")
def full_server() -> Iterator[ServerProcess]:
    """A 2 MB memcached that refuses writes when full (-M) instead of evicting."""
    server = own_memcached("-m", "2", "-M", "-I", "512k")
    yield server
    server.stop()


@pytest.fixture
def full(full_server: ServerProcess) -> Iterator[MemcachedBackend]:
    """A backend on the 2 MB memcached, flushed, then filled to the brim with big values."""
    store = MemcachedBackend.from_servers(full_server.address)
    store.client.flush_all(noreply=False)
    for name in ("saved", "updated", "swapped", "batched"):
        store.set(name, b"old value of " + name.encode())
    big = b"x" * 300_000
    for n in range(40):
        try:
            store.set(f"fill:{n}", big)
        except BackendError:
            break
    else:  # pragma: no cover - the server would have to hold 12 MB in 2
        pytest.fail("the 2 MB memcached never filled up")
    yield store
    store.close()


BIG = b"y" * 300_000


def test_a_set_refused_for_lack_of_memory_says_the_old_value_is_gone(
    full: MemcachedBackend,
) -> None:
    """memcached deletes the old value when a set fails: the error says so, and it is true."""
    with pytest.raises(BackendError, match=r"out of memory.*previous value.*is gone") as info:
        full.set("saved", BIG)
    assert info.value.key == "saved"
    assert full.get("saved") is None


def test_a_replace_or_cas_refused_for_lack_of_memory_says_the_old_value_is_kept(
    full: MemcachedBackend,
) -> None:
    """memcached keeps the old value when replace or cas fails: the error says that instead."""
    with pytest.raises(BackendError, match=r"out of memory.*previous value is kept"):
        full.replace("updated", BIG)
    assert full.get("updated") == b"old value of updated"
    got = full.gets("swapped")
    assert got is not None
    with pytest.raises(BackendError, match=r"out of memory.*previous value is kept"):
        full.cas("swapped", BIG, got[1])
    assert full.get("swapped") == b"old value of swapped"


def test_a_batch_refused_for_lack_of_memory_says_which_old_values_are_gone(
    full: MemcachedBackend,
) -> None:
    """set_many: the cause of the BatchWriteError says the refused key's old value is gone."""
    with pytest.raises(BatchWriteError, match=r"out of memory.*previous value.*is gone") as info:
        full.set_many([("batched", BIG)])
    assert full.get("batched") is None
    assert info.value.not_written == ["batched"]


# -- item 17: a backend is a context manager -------------------------------------------


def test_the_backend_is_a_context_manager_that_closes(
    memcached_server: MemcachedServer,
) -> None:
    """with MemcachedBackend(...) as store: the connection is closed on the way out."""
    with MemcachedBackend.from_servers(memcached_server.servers) as store:
        store.set("ctx", b"v")
        assert store.client.sock is not None
    assert store.client.sock is None
    with MemcachedBackend.from_servers(memcached_server.servers, use_pooling=True) as pooled:
        assert pooled.get("ctx") == b"v"
        pool = pooled._nodes[0].pool
        assert pool is not None
        assert len(pool.free) == 1
    assert pool.free == []


# -- KEEP_TTL: replace, replace_many and cas keep the remaining TTL ----------------------

DAY = 24 * 3600


def server_ttl(store: MemcachedBackend, key: str) -> int | None:
    """Seconds ``key`` has left per memcached's ``mg <key> t`` (-1: none); None if absent."""
    bkey = store._prefix + store._bkey(key)
    node = store._node(store._bkey(key))
    held = store._call(node, b"mg " + bkey + b" t c k\r\n", _read_meta, True, bkey)
    return None if held is None else held[1]


@pytest.fixture(params=["client", "pooled", "hash"])
def keeper(
    request: pytest.FixtureRequest,
    memcached_server: MemcachedServer,
    memcached_pool: MemcachedServer,
    faults: FaultySocketModule,
) -> Iterator[MemcachedBackend]:
    """A flushed backend on one server, a pooled one, or a HashClient over 3 servers."""
    if request.param == "hash":
        backend = MemcachedBackend.from_servers(memcached_pool.servers, socket_module=faults)
        for node in backend._nodes:
            node.client.flush_all(noreply=False)
    else:
        options: dict[str, Any] = {"use_pooling": True} if request.param == "pooled" else {}
        backend = MemcachedBackend.from_servers(
            memcached_server.servers, socket_module=faults, **options
        )
        _flush(memcached_server)
    yield backend
    backend.close()


def keep_by_each_way(store: MemcachedBackend, keys: list[str]) -> None:
    """Rewrite keys[0] by cas, keys[1] by replace, the rest by replace_many, keeping TTLs."""
    got = store.gets(keys[0])
    assert got is not None
    assert store.cas(keys[0], b"new 0", got[1], KEEP_TTL) is True
    assert store.replace(keys[1], b"new 1", KEEP_TTL) is True
    rest = [(key, f"new {n}".encode()) for n, key in enumerate(keys[2:], 2)]
    assert store.replace_many(rest, KEEP_TTL) == [True] * len(rest)
    assert store.get_many(keys) == [f"new {n}".encode() for n in range(len(keys))]


def test_keep_ttl_keeps_a_short_ttl_running(keeper: MemcachedBackend) -> None:
    """A record with 3 s left, rewritten 2.5 s in with KEEP_TTL, still expires on time."""
    keys = [f"short:{n}" for n in range(5)]
    started = time.monotonic()
    keeper.set_many([(key, b"old") for key in keys], ttl=3)  # lives 3 to 4 s
    time.sleep(2.5)
    keep_by_each_way(keeper, keys)
    for key in keys:  # a fresh ttl=3 would say 4
        left = server_ttl(keeper, key)
        assert left is not None
        assert left <= 2
    time.sleep(max(0.0, started + 2.9 - time.monotonic()))
    assert keeper.get_many(keys) == [f"new {n}".encode() for n in range(5)]  # never early
    while any(keeper.get_many(keys)) and time.monotonic() - started < 8:
        time.sleep(0.05)
    # Kept: gone 3 to 4 s after the save, 5 s if memcached's clock ticked between
    # the read and the cas; a fresh 3 s TTL would have kept them 5.5 s at least.
    assert time.monotonic() - started < 5.4
    assert keeper.get_many(keys) == [None] * 5


def test_keep_ttl_keeps_the_seconds_left(keeper: MemcachedBackend) -> None:
    """memcached's own count of seconds left is the same before and after (or 1 s more)."""
    keys = [f"ttl:{n}" for n in range(5)]
    keeper.set_many([(key, b"old") for key in keys], ttl=100)
    before = [server_ttl(keeper, key) for key in keys]
    keep_by_each_way(keeper, keys)
    after = [server_ttl(keeper, key) for key in keys]
    for was, now in zip(before, after, strict=True):
        assert was is not None
        assert now is not None
        assert was - 1 <= now <= was + 1


def test_keep_ttl_keeps_no_expiry_and_long_ttls(keeper: MemcachedBackend) -> None:
    """No expiry stays none; a 40-day TTL (an absolute time for memcached) stays 40 days."""
    forever = [f"forever:{n}" for n in range(4)]
    keeper.set_many([(key, b"old") for key in forever])
    keep_by_each_way(keeper, forever)
    assert [server_ttl(keeper, key) for key in forever] == [-1] * 4
    long = [f"long:{n}" for n in range(4)]
    keeper.set_many([(key, b"old") for key in long], ttl=40 * DAY)
    keep_by_each_way(keeper, long)
    for key in long:
        left = server_ttl(keeper, key)
        assert left is not None
        assert 40 * DAY - 5 <= left <= 40 * DAY + 5


def test_keep_ttl_never_creates_a_missing_key(keeper: MemcachedBackend) -> None:
    """replace / replace_many / cas with KEEP_TTL on absent keys write nothing."""
    keeper.set("there", b"old", ttl=50)
    assert keeper.replace("absent", b"v", KEEP_TTL) is False
    assert keeper.replace_many([("absent", b"v"), ("there", b"new"), ("gone", b"v")], KEEP_TTL) == [
        False,
        True,
        False,
    ]
    assert keeper.cas("absent", b"v", b"12", KEEP_TTL) is False
    assert keeper.get_many(["absent", "gone", "there"]) == [None, None, b"new"]
    assert keeper.replace_many([], KEEP_TTL) == []


def test_keep_ttl_cas_refuses_a_stale_token(keeper: MemcachedBackend) -> None:
    """cas with KEEP_TTL and a token from before another write returns False, writes nothing."""
    keeper.set("k", b"first", ttl=50)
    got = keeper.gets("k")
    assert got is not None
    keeper.set("k", b"second", ttl=50)
    assert keeper.cas("k", b"mine", got[1], KEEP_TTL) is False
    assert keeper.get("k") == b"second"
    keeper.delete("k")
    assert keeper.cas("k", b"mine", got[1], KEEP_TTL) is False
    assert keeper.get("k") is None


def test_keep_ttl_with_repeated_keys_applies_them_in_order(keeper: MemcachedBackend) -> None:
    """replace_many with a key twice: both replace, the last value stays, the TTL is kept."""
    keeper.set("dup", b"old", ttl=100)
    before = server_ttl(keeper, "dup")
    assert keeper.replace_many([("dup", b"one"), ("dup", b"two")], KEEP_TTL) == [True, True]
    assert keeper.get("dup") == b"two"
    after = server_ttl(keeper, "dup")
    assert before is not None
    assert after is not None
    assert before - 1 <= after <= before + 1


def interfere_before_cas(
    store: MemcachedBackend, monkeypatch: pytest.MonkeyPatch, action: Callable[[], object]
) -> list[bytes]:
    """Run ``action`` (another client's write) just before the first cas request is sent."""
    seen: list[bytes] = []
    call = store._call

    def hooked(node: Any, request: bytes, read: Any, resend: bool, *rest: Any) -> Any:
        if request.startswith(b"cas ") and not any(r.startswith(b"cas ") for r in seen):
            action()
        seen.append(request)
        return call(node, request, read, resend, *rest)

    monkeypatch.setattr(store, "_call", hooked)
    return seen


def test_keep_ttl_replace_never_resurrects_a_key_deleted_before_its_cas(
    memcached_server: MemcachedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delete between the meta get and the cas: replace returns False, the key stays gone."""
    with MemcachedBackend.from_servers(memcached_server.servers) as store:
        other = MemcachedBackend.from_servers(memcached_server.servers)
        store.set("k", b"old", ttl=50)
        store.set("m", b"old", ttl=50)
        interfere_before_cas(store, monkeypatch, lambda: other.delete("k"))
        assert store.replace("k", b"mine", KEEP_TTL) is False
        assert store.get("k") is None
        monkeypatch.undo()
        interfere_before_cas(store, monkeypatch, lambda: other.delete("m"))
        assert store.replace_many([("m", b"mine")], KEEP_TTL) == [False]
        assert store.get("m") is None
        other.close()


def test_keep_ttl_replace_retries_a_write_that_came_between(
    memcached_server: MemcachedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A set between the meta get and the cas: the cas fails, is retried, and keeps the new TTL."""
    with MemcachedBackend.from_servers(memcached_server.servers) as store:
        other = MemcachedBackend.from_servers(memcached_server.servers)
        store.set("k", b"old", ttl=50)
        store.set("m", b"old", ttl=50)
        seen = interfere_before_cas(store, monkeypatch, lambda: other.set("k", b"theirs", ttl=500))
        assert store.replace("k", b"mine", KEEP_TTL) is True
        assert store.get("k") == b"mine"
        assert len([r for r in seen if r.startswith(b"cas ")]) == 2
        left = server_ttl(store, "k")
        assert left is not None
        assert 490 <= left <= 502
        monkeypatch.undo()
        interfere_before_cas(store, monkeypatch, lambda: other.set("m", b"theirs", ttl=500))
        assert store.replace_many([("m", b"mine")], KEEP_TTL) == [True]
        left = server_ttl(store, "m")
        assert left is not None
        assert 490 <= left <= 502
        other.close()


def test_keep_ttl_writes_whose_reply_is_lost_are_outcome_unknown(
    keeper: MemcachedBackend, faults: FaultySocketModule
) -> None:
    """The cas of a KEEP_TTL replace / cas / replace_many is sent once; a lost reply is unknown."""
    keeper.set_many([("a", b"old"), ("b", b"old")], ttl=50)
    faults.arm("pass", "lose")  # the meta get is answered, the cas reply lost
    with pytest.raises(OutcomeUnknown, match="replace"):
        keeper.replace("a", b"new", KEEP_TTL)
    got = keeper.gets("b")
    assert got is not None
    faults.arm("pass", "lose")
    with pytest.raises(OutcomeUnknown, match="cas"):
        keeper.cas("b", b"new", got[1], KEEP_TTL)
    assert keeper.get_many(["a", "b"]) == [b"new", b"new"]  # applied, once
    if len(keeper.servers) == 1:
        faults.arm("pass", "lose")
        with pytest.raises(BatchWriteError) as info:
            keeper.replace_many([("a", b"newer"), ("b", b"newer")], KEEP_TTL)
        assert sorted(info.value.unknown) == ["a", "b"]


def test_keep_ttl_replace_many_reports_a_failed_read_as_nothing_written(
    keeper: MemcachedBackend, faults: FaultySocketModule
) -> None:
    """A lost reply to the meta gets of replace_many: BatchWriteError, every key not written."""
    keeper.set_many([("a", b"old"), ("b", b"old")], ttl=50)
    if len(keeper.servers) > 1:
        faults.arm(*(["lose"] * 6))
    else:
        faults.arm("lose", "lose")  # the read is resent once on a fresh connection
    with pytest.raises(BatchWriteError) as info:
        keeper.replace_many([("a", b"new"), ("b", b"new")], KEEP_TTL)
    assert info.value.written == []
    assert sorted(info.value.not_written) == ["a", "b"]
    faults.modes.clear()
    assert keeper.get_many(["a", "b"]) == [b"old", b"old"]


def test_keep_ttl_on_a_server_without_cas_says_so(no_cas_server: ServerProcess) -> None:
    """replace / replace_many / cas with KEEP_TTL on a -C server raise the CAS-disabled error."""
    with MemcachedBackend.from_servers(no_cas_server.address) as store:
        store.set("k", b"old")
        with pytest.raises(BackendError, match="CAS disabled"):
            store.replace("k", b"new", KEEP_TTL)
        with pytest.raises(BatchWriteError, match="CAS disabled") as info:
            store.replace_many([("k", b"new"), ("absent", b"new")], KEEP_TTL)
        assert sorted(info.value.not_written) == ["absent", "k"]
        with pytest.raises(BackendError, match="CAS disabled"):
            store.cas("k", b"new", b"1", KEEP_TTL)
        assert store.get("k") == b"old"


# -- the edges of the above ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("planted", "error"),
    [
        (b"HD t5 c7 kother\r\n", "did not ask for"),  # the meta reply of another key
        (b"HD t5 kk\r\n", "t5 kk"),  # no CAS value
        (b"XX\r\n", "XX"),  # not a meta reply
    ],
)
def test_a_bad_meta_reply_is_detected(
    keeper: MemcachedBackend, faults: FaultySocketModule, planted: bytes, error: str
) -> None:
    """A meta get answered for another key, or with no CAS value, raises and writes nothing."""
    keeper.set("k", b"old", ttl=50)
    faults.arm(planted)
    with pytest.raises(BackendError, match=error):
        keeper.replace("k", b"new", KEEP_TTL)
    assert keeper.get("k") == b"old"


def test_an_interrupted_connect_leaves_no_half_made_connection(
    store: MemcachedBackend, faults: FaultySocketModule
) -> None:
    """An interrupt while connecting leaves no connection behind: the next request connects."""
    store.close()
    faults.interrupt_connect = True
    with pytest.raises(Interrupt):
        store.get("bob")
    interrupted = faults.sockets[-1]
    store.set("bob", b"record of bob")
    assert store.get("bob") == b"record of bob"
    assert faults.sockets[-1] is not interrupted
    # pymemcache's _connect drops a socket interrupted mid-connect without closing
    # it (nothing was sent on it); CPython closes it when collected, the test now.
    interrupted.close()


def test_an_interrupt_while_taking_a_pooled_connection_frees_its_slot(
    memcached_server: MemcachedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An interrupt while the pool makes a connection gives the slot back (max_pool_size=1)."""
    with MemcachedBackend.from_servers(
        memcached_server.servers, use_pooling=True, max_pool_size=1, pool_timeout=0.5
    ) as store:
        pool = store._nodes[0].pool
        assert pool is not None
        create = pool.create

        def interrupted() -> Any:
            pool.create = create
            raise Interrupt("interrupted while making a connection")

        pool.create = interrupted
        with pytest.raises(Interrupt):
            store.get("k")
        store.set("k", b"v")
        assert store.get("k") == b"v"


def test_pooled_connections_idle_too_long_are_replaced(
    memcached_server: MemcachedServer, faults: FaultySocketModule
) -> None:
    """pool_idle_timeout is honoured: a connection idle longer is closed, a new one made."""
    with MemcachedBackend.from_servers(
        memcached_server.servers, use_pooling=True, pool_idle_timeout=0.1, socket_module=faults
    ) as store:
        store.set("k", b"v")
        first = faults.sockets[-1]
        assert store.get("k") == b"v"
        assert faults.sockets[-1] is first  # reused while fresh
        time.sleep(0.3)
        assert store.get("k") == b"v"
        assert faults.sockets[-1] is not first
        assert first.fileno() == -1


def test_keep_ttl_replace_checks_the_value_size_first(memcached_server: MemcachedServer) -> None:
    """A value over the limit is refused before anything is sent, as for a plain replace."""
    with MemcachedBackend.from_servers(memcached_server.servers, max_value_size=10) as store:
        store.set("k", b"old")
        with pytest.raises(ValueTooLarge):
            store.replace("k", b"x" * 11, KEEP_TTL)
        assert store.get("k") == b"old"


def test_a_keep_ttl_replace_refused_for_lack_of_memory_keeps_the_old_value(
    full: MemcachedBackend,
) -> None:
    """replace(KEEP_TTL) on a full -M server: the error says the old value is kept, and it is."""
    with pytest.raises(BackendError, match=r"out of memory.*previous value is kept"):
        full.replace("updated", BIG, KEEP_TTL)
    assert full.get("updated") == b"old value of updated"


def test_keep_ttl_replace_gives_up_under_endless_interference(
    memcached_server: MemcachedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer before every cas: replace and replace_many give up after the bound."""
    monkeypatch.setattr(_memcached, "_INCR_ATTEMPTS", 3)
    with MemcachedBackend.from_servers(memcached_server.servers) as store:
        other = MemcachedBackend.from_servers(memcached_server.servers)
        store.set_many([("k", b"old"), ("m", b"old"), ("z", b"old")], ttl=50)
        call = store._call
        count = 0

        def hooked(node: Any, request: bytes, read: Any, resend: bool, *rest: Any) -> Any:
            nonlocal count
            if b"cas k " in request or b"cas m " in request:
                count += 1
                other.set("k", b"theirs %d" % count)
                other.set("m", b"theirs %d" % count)
            return call(node, request, read, resend, *rest)

        monkeypatch.setattr(store, "_call", hooked)
        with pytest.raises(BackendError, match="other writers kept changing it"):
            store.replace("k", b"mine", KEEP_TTL)
        with pytest.raises(BatchWriteError, match="other writers kept changing them") as info:
            store.replace_many([("z", b"mine"), ("m", b"mine"), ("gone", b"x")], KEEP_TTL)
        assert (info.value.written, info.value.not_written) == (["z"], ["gone", "m"])
        other.close()


def test_a_thousand_interrupted_requests_give_no_wrong_record(
    keeper: MemcachedBackend, faults: FaultySocketModule
) -> None:
    """1,000 requests interrupted at random points: every later read gets its own record.

    On one connection, a pool of them, and a HashClient over 3 servers (whose
    get_many runs on the backend's threads; an interrupt stops the caller, while
    the request the batch handed to another thread completes there, so the
    faults apply to the caller's requests only).
    """
    store = keeper
    faults.thread = threading.get_ident()
    rng = random.Random(1010)
    names = [f"user:{i}" for i in range(20)]
    store.set_many([(name, f"record of {name}".encode()) for name in names])
    operations: list[Callable[[str], object]] = [
        store.get,
        store.gets,
        store.exists,
        lambda name: store.get_many([name, rng.choice(names)]),
        lambda name: store.set(name, f"record of {name}".encode()),
        lambda name: store.replace(name, f"record of {name}".encode()),
        lambda name: store.add(name, b"never stored"),
    ]
    wrong = 0
    for round_ in range(1000):
        faults.arm(rng.choice(["hold", "after_send"]))
        with pytest.raises(Interrupt):
            rng.choice(operations)(rng.choice(names))
        name = rng.choice(names)
        if store.get(name) != f"record of {name}".encode():
            wrong += 1
        if round_ % 10 == 0:
            pair = rng.sample(names, 2)
            if store.get_many(pair) != [f"record of {n}".encode() for n in pair]:
                wrong += 1
    assert wrong == 0
