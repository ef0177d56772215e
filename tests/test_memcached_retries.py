"""MemcachedBackend's retry policy and partial batches, with a fault proxy before a real memcached.

The proxy (tests/proxy.py) loses replies, cuts them part-way, resets and
refuses connections; the server behind it is real, and what it actually
applied is read straight from it (values and its ``stats`` counters).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("pymemcache")

from pymemcache.client.base import Client  # type: ignore[import-untyped]

from cacheorm._errors import BackendUnavailable, BatchWriteError, OutcomeUnknown
from cacheorm._memcached import MemcachedBackend
from tests.memcached_tools import stat
from tests.proxy import FaultProxy
from tests.servers import MemcachedServer, start_memcached_processes

#: Each reply line to a storage command, in bytes.
STORED = len(b"STORED\r\n")
#: How long a dropped reply is waited for.
TIMEOUT = 0.3


@pytest.fixture
def raw(memcached_server: MemcachedServer) -> Iterator[Client]:
    """A plain client straight to the session's memcached (flushed), to see what it applied."""
    host, _, port = memcached_server.servers[0].rpartition(":")
    client = Client((host, int(port)), default_noreply=False, timeout=5.0)
    client.flush_all(noreply=False)
    yield client
    client.close()


@pytest.fixture
def proxy(memcached_server: MemcachedServer, raw: Client) -> Iterator[FaultProxy]:
    """A fault proxy before the session's memcached."""
    host, _, port = memcached_server.servers[0].rpartition(":")
    with FaultProxy(host, int(port)) as faults:
        yield faults


@pytest.fixture
def store(proxy: FaultProxy) -> Iterator[MemcachedBackend]:
    """A backend through the proxy, connected (so its connection is a kept one)."""
    backend = MemcachedBackend.from_servers(proxy.address, timeout=TIMEOUT, connect_timeout=2.0)
    assert backend.get("warm-up") is None
    yield backend
    backend.close()


def heal_on_reconnect(store: MemcachedBackend, proxy: FaultProxy) -> list[int]:
    """Let the network recover when ``store`` opens its next connection; the reconnects seen."""
    client = store.client
    connect = client._connect
    reconnects: list[int] = []

    def healed() -> None:
        reconnects.append(1)
        proxy.pass_through()
        connect()

    client._connect = healed
    return reconnects


def refuse_and_wait(proxy: FaultProxy) -> None:
    """Refuse connections and wait until the proxy has reset every open one."""
    proxy.refuse()
    deadline = time.monotonic() + 5.0
    while proxy.connection_count and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proxy.connection_count == 0


def assert_names(error: BaseException, key: str, server: str) -> None:
    """The error carries and says the key and the server."""
    assert getattr(error, "key", None) == key
    assert getattr(error, "server", None) == server
    assert repr(key) in str(error)
    assert server in str(error)


# -- non-idempotent writes are never sent twice ------------------------------------------


@pytest.mark.parametrize("fault", ["cut", "drop"])
def test_an_add_whose_reply_is_lost_is_outcome_unknown_and_applied_once(
    store: MemcachedBackend, proxy: FaultProxy, raw: Client, fault: str
) -> None:
    """add is never resent: its lost reply is OutcomeUnknown, and the server ran it once."""
    reconnects = heal_on_reconnect(store, proxy)
    sets = stat(raw, b"cmd_set")
    proxy.cut_replies_after(0) if fault == "cut" else proxy.drop_replies()
    with pytest.raises(OutcomeUnknown, match="may or may not have been applied") as info:
        store.add("new user", b"mine")
    assert_names(info.value, "new user", proxy.address)
    assert stat(raw, b"cmd_set") - sets == 1
    assert raw.get(store._bkey("new user")) == b"mine"
    assert reconnects == []  # not even a new connection was tried
    assert store.get("new user") == b"mine"  # the next request reconnects and works


def test_add_many_whose_replies_are_lost_is_never_resent(
    store: MemcachedBackend, proxy: FaultProxy, raw: Client
) -> None:
    """A batch of adds with lost replies reports them unknown and sends them once."""
    heal_on_reconnect(store, proxy)
    sets = stat(raw, b"cmd_set")
    proxy.cut_replies_after(0)
    with pytest.raises(BatchWriteError) as info:
        store.add_many([("a", b"1"), ("b", b"2")])
    assert (info.value.written, info.value.not_written, info.value.unknown) == ([], [], ["a", "b"])
    assert stat(raw, b"cmd_set") - sets == 2
    assert store.add_many([("a", b"again"), ("c", b"3")]) == [False, True]


@pytest.mark.parametrize("delta", [5, -5])
@pytest.mark.parametrize("fault", ["cut", "drop"])
def test_an_incr_whose_reply_is_lost_counts_once(
    store: MemcachedBackend,
    proxy: FaultProxy,
    raw: Client,
    monkeypatch: pytest.MonkeyPatch,
    fault: str,
    delta: int,
) -> None:
    """incr (memcached's, or the gets/cas loop for negatives) never counts twice."""
    store.set("counter", b"100")
    heal_on_reconnect(store, proxy)
    write = b"incr " if delta > 0 else b"cas "
    call = store._call

    def fail_the_write(node: Any, request: bytes, read: Any, resend: bool, *rest: Any) -> Any:
        if request.startswith(write):  # the reads before the write still get their replies
            proxy.cut_replies_after(0) if fault == "cut" else proxy.drop_replies()
        return call(node, request, read, resend, *rest)

    monkeypatch.setattr(store, "_call", fail_the_write)
    with pytest.raises(OutcomeUnknown) as info:
        store.incr("counter", delta)
    assert_names(info.value, "counter", proxy.address)
    assert raw.get(b"counter") == str(100 + delta).encode()


def test_creating_a_counter_whose_reply_is_lost_is_outcome_unknown(
    store: MemcachedBackend, proxy: FaultProxy, raw: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """incr of a missing key creates it with add; a lost reply there is not resent either."""
    call = store._call

    def fail_the_add(node: Any, request: bytes, read: Any, resend: bool, *rest: Any) -> Any:
        if request.startswith(b"add "):
            proxy.cut_replies_after(0)
        return call(node, request, read, resend, *rest)

    monkeypatch.setattr(store, "_call", fail_the_add)
    with pytest.raises(OutcomeUnknown, match="creating the counter"):
        store.incr("fresh", 3)
    assert raw.get(b"fresh") == b"3"


@pytest.mark.parametrize("fault", ["cut", "drop"])
def test_a_cas_whose_reply_is_lost_is_outcome_unknown(
    store: MemcachedBackend, proxy: FaultProxy, raw: Client, fault: str
) -> None:
    """cas is never resent (a second one would answer False for the caller's own write)."""
    store.set("k", b"v1")
    got = store.gets("k")
    assert got is not None
    heal_on_reconnect(store, proxy)
    hits, badval = stat(raw, b"cas_hits"), stat(raw, b"cas_badval")
    proxy.cut_replies_after(0) if fault == "cut" else proxy.drop_replies()
    with pytest.raises(OutcomeUnknown) as info:
        store.cas("k", b"v2", got[1])
    assert_names(info.value, "k", proxy.address)
    assert stat(raw, b"cas_hits") - hits == 1
    assert stat(raw, b"cas_badval") == badval  # not sent again with the used token
    assert store.get("k") == b"v2"


def test_a_delete_whose_reply_is_lost_is_outcome_unknown(
    store: MemcachedBackend, proxy: FaultProxy, raw: Client
) -> None:
    """delete is not resent: the second answer would say the key was absent."""
    store.set("k", b"v")
    heal_on_reconnect(store, proxy)
    before = stat(raw, b"delete_hits") + stat(raw, b"delete_misses")
    proxy.cut_replies_after(0)
    with pytest.raises(OutcomeUnknown):
        store.delete("k")
    assert stat(raw, b"delete_hits") + stat(raw, b"delete_misses") - before == 1
    assert store.get("k") is None


# -- idempotent requests are resent once, on a new connection ------------------------------


def test_reads_are_resent_once_on_a_new_connection(
    store: MemcachedBackend, proxy: FaultProxy, raw: Client
) -> None:
    """A read whose kept connection closes under it is sent again and answers."""
    raw.set(b"k", b"v")
    for read in [
        lambda: store.get("k") == b"v",
        lambda: store.get_many(["k", "x"]) == [b"v", None],
        lambda: store.exists("k"),
        lambda: store.gets("k") is not None,
    ]:
        reconnects = heal_on_reconnect(store, proxy)
        proxy.cut_replies_after(0)
        assert read()
        assert reconnects == [1]


@pytest.mark.parametrize("write", ["set", "replace"])
def test_set_and_replace_are_resent_once(
    store: MemcachedBackend, proxy: FaultProxy, raw: Client, write: str
) -> None:
    """set and replace are idempotent: resent once on a new connection, and reported stored."""
    raw.set(b"k", b"old")
    reconnects = heal_on_reconnect(store, proxy)
    sets = stat(raw, b"cmd_set")
    proxy.cut_replies_after(0)
    if write == "set":
        store.set("k", b"new")
    else:
        assert store.replace("k", b"new") is True
    assert reconnects == [1]
    assert stat(raw, b"cmd_set") - sets == 2  # the server saw it twice, harmlessly
    assert raw.get(b"k") == b"new"


def test_a_set_lost_twice_is_outcome_unknown(
    store: MemcachedBackend, proxy: FaultProxy, raw: Client
) -> None:
    """If the resent set fails too, the caller learns that it may or may not be stored."""
    sets = stat(raw, b"cmd_set")
    proxy.cut_replies_after(0)
    with pytest.raises(OutcomeUnknown, match="'k'"):
        store.set("k", b"v")
    assert stat(raw, b"cmd_set") - sets == 2


def test_a_resend_that_cannot_connect_still_says_the_first_was_sent(
    store: MemcachedBackend, proxy: FaultProxy, raw: Client
) -> None:
    """A set sent once, whose resend finds no server, is OutcomeUnknown, not "unavailable"."""
    client = store.client
    connect = client._connect

    def refuse_then_connect() -> None:
        proxy.refuse()
        connect()

    client._connect = refuse_then_connect
    proxy.cut_replies_after(0)
    with pytest.raises(OutcomeUnknown):
        store.set("k", b"v")
    assert raw.get(b"k") == b"v"


@pytest.mark.parametrize(
    ("operation", "sent"),
    [
        (lambda s: s.get("k"), 1),
        (lambda s: s.get_many(["k", "l"]), 2),
        (lambda s: s.set("k", b"v"), 1),
    ],
    ids=["get", "get_many", "set"],
)
def test_timeouts_are_not_retried(
    store: MemcachedBackend,
    proxy: FaultProxy,
    raw: Client,
    operation: Callable[[MemcachedBackend], object],
    sent: int,
) -> None:
    """A request that times out is not sent again: a slow server is not given twice the work."""
    reconnects = heal_on_reconnect(store, proxy)
    gets, sets = stat(raw, b"cmd_get"), stat(raw, b"cmd_set")
    proxy.drop_replies()
    start = time.monotonic()
    with pytest.raises(BackendUnavailable, match="timed out") as info:
        operation(store)
    assert time.monotonic() - start < TIMEOUT + 1.0
    assert isinstance(info.value.__cause__, TimeoutError)
    assert reconnects == []
    assert (stat(raw, b"cmd_get") - gets) + (stat(raw, b"cmd_set") - sets) == sent


def test_a_connection_that_cannot_be_made_is_unavailable_and_nothing_was_sent(
    store: MemcachedBackend, proxy: FaultProxy, raw: Client
) -> None:
    """Refused connections are plain BackendUnavailable: not OutcomeUnknown, since nothing went."""
    sets = stat(raw, b"cmd_set")
    refuse_and_wait(proxy)
    for write in [
        lambda: store.add("k", b"v"),
        lambda: store.incr("n"),
        lambda: store.set("k", b"v"),
        lambda: store.cas("k", b"v", b"1"),
        lambda: store.delete("k"),
    ]:
        with pytest.raises(BackendUnavailable) as info:
            write()
        assert type(info.value) is BackendUnavailable
        assert isinstance(info.value.__cause__, ConnectionRefusedError)
    with pytest.raises(BatchWriteError) as batch:
        store.set_many([("a", b"1"), ("b", b"2")])
    assert (batch.value.written, batch.value.not_written, batch.value.unknown) == (
        [],
        ["a", "b"],
        [],
    )
    assert stat(raw, b"cmd_set") == sets


def test_a_reset_connection_is_replaced_before_sending(
    store: MemcachedBackend, proxy: FaultProxy, raw: Client
) -> None:
    """A kept connection the other side reset while idle is replaced, so an add goes through."""
    refuse_and_wait(proxy)  # resets the open connection
    proxy.pass_through()
    assert store.add("k", b"v") is True
    assert store.incr("n") == 1
    assert raw.get(b"k") == b"v"


def test_the_backend_works_again_after_a_server_restart() -> None:
    """After memcached restarts, the same backend's next add and incr work at first try."""
    server = start_memcached_processes(1)
    process = server.processes[0]
    store = MemcachedBackend.from_servers(server.servers)
    try:
        assert store.add("k", b"v") is True
        assert store.incr("n") == 1
        process.restart()
        assert store.add("k", b"again") is True  # the restarted server is empty
        assert store.incr("n") == 1
        assert store.get_many(["k", "n"]) == [b"again", b"1"]
        process.kill()
        with pytest.raises(BackendUnavailable) as info:
            store.add("k", b"v")
        assert type(info.value) is BackendUnavailable  # refused: nothing was sent
        process.restart()
        assert store.add("k", b"back") is True
    finally:
        store.close()
        server.stop()


def test_timeouts_are_configurable(proxy: FaultProxy) -> None:
    """from_servers(timeout=...) bounds each reply; connect_timeout is kept on the client."""
    store = MemcachedBackend.from_servers(proxy.address, timeout=0.1, connect_timeout=0.5)
    try:
        assert (store.client.timeout, store.client.connect_timeout) == (0.1, 0.5)
        proxy.drop_replies()
        start = time.monotonic()
        with pytest.raises(BackendUnavailable, match="timed out"):
            store.get("k")
        assert time.monotonic() - start < 0.1 + 0.5
    finally:
        store.close()


# -- batches that fail part-way --------------------------------------------------------------


@pytest.mark.parametrize("extra", [0, 3])
def test_set_many_cut_part_way_says_what_was_written(
    store: MemcachedBackend, proxy: FaultProxy, raw: Client, extra: int
) -> None:
    """Replies that arrived are written, the rest unknown; a half reply line is not a reply."""
    items = [(f"k{i}", f"v{i}".encode()) for i in range(10)]
    proxy.cut_replies_after(4 * STORED + extra)
    with pytest.raises(BatchWriteError, match="set_many failed part-way") as info:
        store.set_many(items)
    error = info.value
    assert error.written == ["k0", "k1", "k2", "k3"]
    assert error.not_written == []
    assert error.unknown == [f"k{i}" for i in range(4, 10)]
    assert "6 unknown" in str(error)
    assert error.server == proxy.address
    assert isinstance(error, BackendUnavailable)
    for key, value in items[:4]:  # what it says was written was written
        assert raw.get(key.encode()) == value


def test_add_many_and_replace_many_cut_part_way(
    store: MemcachedBackend, proxy: FaultProxy, raw: Client
) -> None:
    """A refusal (NOT_STORED) that arrived is not_written; the lost replies are unknown."""
    raw.set(b"taken", b"old")
    proxy.cut_replies_after(3 * STORED)  # STORED, NOT_STORED (10 bytes), then cut mid-line
    with pytest.raises(BatchWriteError) as info:
        store.add_many([("a", b"1"), ("taken", b"2"), ("b", b"3"), ("c", b"4")])
    assert (info.value.written, info.value.not_written, info.value.unknown) == (
        ["a"],
        ["taken"],
        ["b", "c"],
    )
    assert raw.get(b"taken") == b"old"
    proxy.pass_through()
    store.set("present", b"x")
    proxy.cut_replies_after(len(b"NOT_STORED\r\n") + STORED)
    with pytest.raises(BatchWriteError) as info:
        store.replace_many([("missing", b"1"), ("present", b"2"), ("a", b"3")])
    assert (info.value.written, info.value.not_written, info.value.unknown) == (
        ["present"],
        ["missing"],
        ["a"],
    )


def test_delete_many_cut_part_way(store: MemcachedBackend, proxy: FaultProxy, raw: Client) -> None:
    """delete_many reports the keys confirmed gone (deleted or already absent) as written."""
    store.set_many([("a", b"1"), ("c", b"3")])
    proxy.cut_replies_after(len(b"DELETED\r\n") + len(b"NOT_FOUND\r\n"))
    with pytest.raises(BatchWriteError) as info:
        store.delete_many(["a", "b", "c"])
    assert (info.value.written, info.value.not_written, info.value.unknown) == (
        ["a", "b"],
        [],
        ["c"],
    )


def test_a_batch_repeating_a_key_reports_each_pair(
    store: MemcachedBackend, proxy: FaultProxy
) -> None:
    """add_many reports per pair: a key given twice can be written once and unknown once."""
    proxy.cut_replies_after(STORED + len(b"NOT_STORED\r\n"))
    with pytest.raises(BatchWriteError) as info:
        store.add_many([("k", b"1"), ("k", b"2"), ("k", b"3")])
    assert (info.value.written, info.value.not_written, info.value.unknown) == (
        ["k"],
        ["k"],
        ["k"],
    )


def test_set_many_keeps_the_last_value_of_a_repeated_key_and_reports_it_once(
    store: MemcachedBackend, proxy: FaultProxy
) -> None:
    """set_many sends a repeated key once, with its last value, so each key is reported once."""
    proxy.cut_replies_after(STORED)
    with pytest.raises(BatchWriteError) as info:
        store.set_many([("a", b"1"), ("b", b"2"), ("a", b"3")])
    assert (info.value.written, info.value.unknown) == (["a"], ["b"])
    proxy.pass_through()
    assert store.get("a") == b"3"


def test_a_batch_whose_sending_fails_says_which_pairs_never_left(
    store: MemcachedBackend, proxy: FaultProxy, raw: Client
) -> None:
    """Pairs past what the network took are not_written; those it took are unknown."""
    value = b"x" * 20_000
    items = [(f"big{i}", value) for i in range(2000)]  # 40 MB: far more than socket buffers
    store.set("first", value)  # reads the server's item size limit, before the fault
    proxy.reset()  # the connection is reset as soon as the first bytes arrive
    with pytest.raises(BatchWriteError) as info:
        store.set_many(items)
    error = info.value
    keys = [key for key, _ in items]
    assert error.written == []
    assert error.unknown
    assert error.not_written
    assert error.unknown + error.not_written == keys  # the unknown ones went first
    proxy.pass_through()
    assert store.get_many(keys) == [None] * len(keys)  # reset mode forwarded nothing


def test_reads_of_an_unreachable_server_may_read_as_misses(proxy: FaultProxy) -> None:
    """down_server_reads_miss=True turns a failed read into "absent"; writes still raise."""
    store = MemcachedBackend.from_servers(proxy.address, down_server_reads_miss=True)
    try:
        store.set("k", b"v")
        assert store.down_server_reads_miss is True
        refuse_and_wait(proxy)
        assert store.get("k") is None
        assert store.get_many(["k", "l"]) == [None, None]
        assert store.exists("k") is False
        assert store.gets("k") is None
        with pytest.raises(BackendUnavailable):
            store.set("k", b"w")
        proxy.pass_through()
        assert store.get("k") == b"v"
    finally:
        store.close()
