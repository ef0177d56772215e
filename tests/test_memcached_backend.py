"""Tests for MemcachedBackend against a real memcached."""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("pymemcache")

from pymemcache.client.base import Client, PooledClient  # type: ignore[import-untyped]
from pymemcache.client.hash import HashClient  # type: ignore[import-untyped]
from pymemcache.client.retrying import RetryingClient  # type: ignore[import-untyped]
from pymemcache.exceptions import (  # type: ignore[import-untyped]
    MemcacheClientError,
    MemcacheServerError,
    MemcacheUnknownCommandError,
    MemcacheUnknownError,
)
from pymemcache.serde import PickleSerde  # type: ignore[import-untyped]

from cacheorm import _memcached
from cacheorm._backend import Backend
from cacheorm._errors import (
    BackendError,
    BackendUnavailable,
    BatchWriteError,
    ConfigurationError,
    InvalidTTL,
    MissingDependency,
    ValueTooLarge,
)
from cacheorm._memcached import ITEM_OVERHEAD, MemcachedBackend
from tests.memcached_tools import CountingSocket, stat
from tests.servers import (
    MemcachedServer,
    ServerProcess,
    closed_port,
    start_one_memcached,
)

U64 = 2**64
DAY = 24 * 3600


# -- helpers and fixtures -------------------------------------------------------


@pytest.fixture
def mc(memcached_server: MemcachedServer) -> Iterator[MemcachedBackend]:
    """A MemcachedBackend on the session's memcached, flushed."""
    store = MemcachedBackend.from_servers(memcached_server.servers)
    store.client.flush_all(noreply=False)
    yield store
    store.close()


@pytest.fixture
def raw(memcached_server: MemcachedServer, mc: MemcachedBackend) -> Iterator[Client]:
    """A plain pymemcache client on the same server, to look behind the backend."""
    host, port = memcached_server.servers[0].rsplit(":", 1)
    client = Client((host, int(port)), default_noreply=False, timeout=5.0)
    yield client
    client.close()


@pytest.fixture(scope="module")
def full_server() -> Iterator[ServerProcess]:
    """A 2 MB memcached that refuses writes when full (-M) instead of evicting."""
    server = start_memcached("-m", "2", "-M", "-I", "512k")
    yield server
    server.stop()


@pytest.fixture
def full(full_server: ServerProcess) -> Iterator[MemcachedBackend]:
    """A backend on the flushed 2 MB, no-eviction memcached."""
    store = MemcachedBackend.from_servers(full_server.address)
    store.client.flush_all(noreply=False)
    yield store
    store.close()


@pytest.fixture
def down() -> Iterator[MemcachedBackend]:
    """A backend on a loopback port nothing listens on."""
    store = MemcachedBackend.from_servers(f"127.0.0.1:{closed_port()}", connect_timeout=1.0)
    yield store
    store.close()


def start_memcached(*extra: str, port: int | None = None) -> ServerProcess:
    """A memcached of our own, with extra options; the caller stops it."""
    binary = shutil.which("memcached")
    if binary is None:
        pytest.skip("memcached is not installed")
    return start_one_memcached(binary, *extra, port=port, threads=1)


@pytest.fixture(scope="module")
def small_server() -> Iterator[ServerProcess]:
    """A memcached whose item_size_max is 1 KiB."""
    server = start_memcached("-I", "1k", "-o", "slab_chunk_max=512")
    yield server
    server.stop()


@pytest.fixture
def small(small_server: ServerProcess) -> Iterator[MemcachedBackend]:
    """A backend on the 1 KiB-item memcached, flushed."""
    store = MemcachedBackend.from_servers(small_server.address)
    store.client.flush_all(noreply=False)
    yield store
    store.close()


def count_sends(store: MemcachedBackend) -> CountingSocket:
    """Connect ``store``'s client and wrap its socket to count round trips."""
    store.client.version()
    counting = CountingSocket(store.client.sock)
    store.client.sock = counting
    return counting


def server_ttl(store: MemcachedBackend, key: str) -> int | None:
    """The seconds ``key`` has left per memcached's ``mg ... t`` (-1: none); None if absent."""
    reply = store.client.raw_command(b"mg " + store._bkey(key) + b" t", b"\r\n")
    if reply == b"EN":
        return None
    flags = reply.split()
    assert flags[0] == b"HD", reply
    return int(flags[1][1:])


# -- protocol and construction ---------------------------------------------------


def test_is_a_backend(mc: MemcachedBackend) -> None:
    """MemcachedBackend satisfies the runtime-checkable Backend protocol."""
    assert isinstance(mc, Backend)


def test_from_servers_builds_a_client(memcached_server: MemcachedServer) -> None:
    """One address gives a pymemcache Client with 5 s timeouts, no noreply; repr names it."""
    address = memcached_server.servers[0]
    store = MemcachedBackend.from_servers([address])
    try:
        assert isinstance(store.client, Client)
        assert store.client.connect_timeout == 5.0
        assert store.client.timeout == 5.0
        assert store.client.default_noreply is False
        assert repr(store) == f"MemcachedBackend(server={address!r})"
        assert store.max_value_size is None
    finally:
        store.close()


def test_from_servers_accepts_a_string_and_client_kwargs(
    memcached_server: MemcachedServer,
) -> None:
    """A bare address string works; client kwargs override the defaults."""
    store = MemcachedBackend.from_servers(
        memcached_server.servers[0], timeout=2.0, key_prefix=b"p:", max_value_size=10
    )
    try:
        assert (store.client.timeout, store.client.connect_timeout) == (2.0, 5.0)
        assert store.client.key_prefix == b"p:"
        assert store.max_value_size == 10
        store.set("k", b"v")
        assert store.get("k") == b"v"
    finally:
        store.close()


def test_from_servers_needs_an_address() -> None:
    """No address is a ConfigurationError."""
    with pytest.raises(ConfigurationError, match="at least one address"):
        MemcachedBackend.from_servers([])


def test_from_servers_refuses_a_repeated_server() -> None:
    """The same server twice (however spelled) is a ConfigurationError, not a lopsided pool."""
    with pytest.raises(ConfigurationError, match="repeat a server"):
        MemcachedBackend.from_servers(["127.0.0.1:11211", "127.0.0.1:11211"])


def test_from_servers_refuses_unknown_client_options() -> None:
    """An option the pymemcache client does not take is a ConfigurationError naming it."""
    with pytest.raises(ConfigurationError, match="no_such_option"):
        MemcachedBackend.from_servers("127.0.0.1:11211", no_such_option=1)
    with pytest.raises(ConfigurationError, match="retry_timeout"):
        MemcachedBackend.from_servers("127.0.0.1:11211", retry_timeout=1)


def test_from_servers_with_use_pooling_builds_a_pooled_client(
    memcached_server: MemcachedServer,
) -> None:
    """One address with use_pooling=True gives a PooledClient, and it works."""
    store = MemcachedBackend.from_servers(
        memcached_server.servers, use_pooling=True, max_pool_size=4
    )
    try:
        assert isinstance(store.client, PooledClient)
        assert store.client.client_pool.max_size == 4
        store.set("pooled", b"v")
        assert store.get_many(["pooled", "absent"]) == [b"v", None]
        assert store.incr("pooled counter") == 1
        assert store.servers == memcached_server.servers[:1]
    finally:
        store.close()


def test_from_servers_refuses_a_bad_port() -> None:
    """An address whose port is not a number is a ConfigurationError."""
    with pytest.raises(ConfigurationError, match="cannot parse memcached address"):
        MemcachedBackend.from_servers("127.0.0.1:http")


def test_repr_of_ipv6_and_unix_addresses() -> None:
    """IPv6 hosts are bracketed and UNIX sockets say so."""
    assert repr(MemcachedBackend.from_servers("[::1]:11311")) == (
        "MemcachedBackend(server='[::1]:11311')"
    )
    assert repr(MemcachedBackend.from_servers("unix:/tmp/mc.sock")) == (
        "MemcachedBackend(server='unix:/tmp/mc.sock')"
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"serde": PickleSerde()},
        {"serializer": lambda key, value: (value, 0)},
        {"deserializer": lambda key, value, flags: value},
    ],
)
def test_refuses_a_client_with_a_serde(kwargs: dict[str, Any]) -> None:
    """Values must come back as the bytes stored, so a serde is refused."""
    with pytest.raises(ConfigurationError, match="without serde"):
        MemcachedBackend(Client(("127.0.0.1", 11211), **kwargs))


def test_refuses_a_client_that_ignores_errors() -> None:
    """ignore_exc=True would turn failures into misses, so it is refused."""
    with pytest.raises(ConfigurationError, match="ignore_exc=False"):
        MemcachedBackend(Client(("127.0.0.1", 11211), ignore_exc=True))


def test_refuses_other_clients() -> None:
    """Only pymemcache's Client, PooledClient and HashClient are accepted."""
    with pytest.raises(ConfigurationError, match="Client, PooledClient or HashClient"):
        MemcachedBackend(object())


def test_refuses_a_retrying_client() -> None:
    """A RetryingClient could resend an add or incr, so it is refused with the reason."""
    with pytest.raises(ConfigurationError, match=r"RetryingClient.*applied\s+twice") as info:
        MemcachedBackend(RetryingClient(Client(("127.0.0.1", 11211))))
    assert "Pass the client it wraps" in str(info.value)


def test_refuses_hash_and_pooled_clients_that_hide_errors() -> None:
    """ignore_exc=True and serdes are refused on every kind of client."""
    with pytest.raises(ConfigurationError, match="ignore_exc=False"):
        MemcachedBackend(HashClient([("127.0.0.1", 1), ("127.0.0.1", 2)], ignore_exc=True))
    with pytest.raises(ConfigurationError, match="ignore_exc=False"):
        MemcachedBackend(PooledClient(("127.0.0.1", 1), ignore_exc=True))
    with pytest.raises(ConfigurationError, match="without serde"):
        MemcachedBackend(HashClient([("127.0.0.1", 1), ("127.0.0.1", 2)], serde=PickleSerde()))
    with pytest.raises(ConfigurationError, match="without serde"):
        MemcachedBackend(PooledClient(("127.0.0.1", 1), serde=PickleSerde()))
    with pytest.raises(ConfigurationError, match="key_prefix"):
        MemcachedBackend(HashClient([("127.0.0.1", 1)], key_prefix=b"a b"))
    with pytest.raises(ConfigurationError, match="with servers"):
        MemcachedBackend(HashClient([]))


@pytest.mark.parametrize("prefix", [b"x" * 210, b"a b:", b"a\n"])
def test_refuses_an_unusable_key_prefix(prefix: bytes) -> None:
    """A key_prefix too long for mapped keys, or not a legal key part, is refused."""
    with pytest.raises(ConfigurationError, match="key_prefix"):
        MemcachedBackend(Client(("127.0.0.1", 11211), key_prefix=prefix))


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "100"])
def test_max_value_size_must_be_positive_int(bad: object) -> None:
    """A max_value_size that is not a positive int or None is a ConfigurationError."""
    with pytest.raises(ConfigurationError, match="max_value_size"):
        MemcachedBackend(Client(("127.0.0.1", 11211)), max_value_size=bad)  # type: ignore[arg-type]


def test_missing_pymemcache_raises_missing_dependency(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without pymemcache, building a backend names the extra to install."""
    for name in [n for n in sys.modules if n == "pymemcache" or n.startswith("pymemcache.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "pymemcache", None)
    with pytest.raises(MissingDependency, match=r"cacheorm\[memcached\]") as info:
        MemcachedBackend.from_servers("127.0.0.1:11211")
    assert info.value.extra == "memcached"
    with pytest.raises(MissingDependency):
        MemcachedBackend(object())


def test_importing_the_module_does_not_import_pymemcache() -> None:
    """cacheorm and its memcached module import without touching pymemcache."""
    code = (
        "import sys; sys.modules['pymemcache'] = None\n"
        "import cacheorm, cacheorm._memcached\n"
        "assert cacheorm._memcached.MemcachedBackend\n"
    )
    src = os.path.dirname(os.path.dirname(os.path.abspath(_memcached.__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, *sys.path])}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stderr


# -- basic operations ------------------------------------------------------------


def test_set_get_and_misses(mc: MemcachedBackend) -> None:
    """Stored bytes come back; absent keys read as None; empty values are values."""
    assert mc.get("absent") is None
    mc.set("k", b"v1")
    assert mc.get("k") == b"v1"
    mc.set("k", b"v2")
    assert mc.get("k") == b"v2"
    mc.set("empty", b"")
    assert mc.get("empty") == b""
    assert mc.exists("empty")
    binary = bytes(range(256)) * 4 + b"\r\nEND\r\n"
    mc.set("binary", binary)
    assert mc.get("binary") == binary


def test_bytes_like_values_are_copied(mc: MemcachedBackend) -> None:
    """bytearray and memoryview values are accepted and read back as bytes."""
    mc.set("a", bytearray(b"ba"))  # type: ignore[arg-type]
    mc.set_many([("m", memoryview(b"mv"))])  # type: ignore[list-item]
    assert (mc.get("a"), mc.get("m")) == (b"ba", b"mv")


def test_bad_arguments_raise_before_any_io(down: MemcachedBackend) -> None:
    """Type errors and bad TTLs are raised before connecting (the server is down)."""
    with pytest.raises(TypeError, match="keys must be str"):
        down.get(1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="keys must be str"):
        down.get_many(["a", b"b"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="must be bytes"):
        down.set("k", "text")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be bytes"):
        down.set_many([("a", b"1"), ("b", 2)])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="must be bytes"):
        down.add_many([("a", None)])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="keys must be str"):
        down.delete_many([None])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="delta must be an int"):
        down.incr("k", 1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="delta must be an int"):
        down.incr("k", True)
    for ttl in [0, -1, math.nan, math.inf, True, "5"]:
        with pytest.raises(InvalidTTL):
            down.set("k", b"v", ttl=ttl)  # type: ignore[arg-type]
        with pytest.raises(InvalidTTL):
            down.replace_many([("k", b"v")], ttl=ttl)  # type: ignore[arg-type]


def test_empty_batches_do_no_io(down: MemcachedBackend) -> None:
    """Empty batches return at once, without connecting."""
    assert down.get_many([]) == []
    down.set_many([])
    assert down.add_many([]) == []
    assert down.replace_many([]) == []
    assert down.delete_many([]) == 0


def test_get_many_order_misses_and_duplicates(mc: MemcachedBackend) -> None:
    """get_many keeps the input order, with None for misses and repeats answered."""
    mc.set_many([("a", b"1"), ("b", b"2")])
    assert mc.get_many(["b", "x", "a", "b"]) == [b"2", None, b"1", b"2"]
    assert mc.get_many(("a",)) == [b"1"]


def test_set_many_last_pair_wins_and_sets_ttl(mc: MemcachedBackend) -> None:
    """A key repeated in set_many keeps its last value; the TTL applies to all."""
    mc.set_many([("a", b"1"), ("b", b"2"), ("a", b"3")], ttl=100)
    assert mc.get_many(["a", "b"]) == [b"3", b"2"]
    assert server_ttl(mc, "a") in (100, 101)


def test_add_and_replace(mc: MemcachedBackend) -> None:
    """add stores only absent keys, replace only present ones."""
    assert mc.add("k", b"1") is True
    assert mc.add("k", b"2") is False
    assert mc.get("k") == b"1"
    assert mc.replace("k", b"3") is True
    assert mc.replace("other", b"4") is False
    assert (mc.get("k"), mc.get("other")) == (b"3", None)


def test_add_many_sees_earlier_pairs(mc: MemcachedBackend) -> None:
    """In add_many a repeated key is added once: later pairs see the earlier ones."""
    mc.set("old", b"0")
    result = mc.add_many([("a", b"1"), ("old", b"x"), ("a", b"2"), ("b", b"3"), ("a", b"4")])
    assert result == [True, False, False, True, False]
    assert mc.get_many(["a", "old", "b"]) == [b"1", b"0", b"3"]


def test_replace_many_applies_in_order(mc: MemcachedBackend) -> None:
    """replace_many replaces present keys in order; a repeated key ends with its last value."""
    mc.set("a", b"0")
    assert mc.replace_many([("a", b"1"), ("x", b"2"), ("a", b"3"), ("x", b"4")]) == [
        True,
        False,
        True,
        False,
    ]
    assert mc.get_many(["a", "x"]) == [b"3", None]


def test_add_then_replace_in_one_batch_each(mc: MemcachedBackend) -> None:
    """Batches of conditional writes report each pair and honour the TTL."""
    assert mc.add_many([("a", b"1"), ("b", b"2")], ttl=50) == [True, True]
    assert server_ttl(mc, "b") in (50, 51)
    assert mc.replace_many([("a", b"9")]) == [True]
    assert server_ttl(mc, "a") == -1


def test_delete_and_delete_many(mc: MemcachedBackend) -> None:
    """delete says whether the key existed; delete_many counts those that did, once each."""
    mc.set_many([("a", b"1"), ("b", b"2"), ("c", b"3")])
    assert mc.delete("a") is True
    assert mc.delete("a") is False
    assert mc.delete_many(["b", "missing", "b", "c"]) == 2
    assert mc.get_many(["a", "b", "c"]) == [None, None, None]
    assert mc.delete_many(["b"]) == 0


def test_exists_does_not_change_the_ttl(mc: MemcachedBackend) -> None:
    """exists reports live keys and leaves their TTL alone."""
    assert mc.exists("k") is False
    mc.set("k", b"v", ttl=100)
    assert mc.exists("k") is True
    assert server_ttl(mc, "k") in (100, 101)


def test_close_then_reuse_reconnects(mc: MemcachedBackend) -> None:
    """close drops the connection; pymemcache reconnects if the backend is used again."""
    mc.set("k", b"v")
    mc.close()
    assert mc.client.sock is None
    assert mc.get("k") == b"v"


# -- writes are always confirmed ---------------------------------------------------


def test_writes_never_use_noreply(memcached_server: MemcachedServer) -> None:
    """Even on a client with pymemcache's default_noreply=True, every write waits for a reply."""
    host, port = memcached_server.servers[0].rsplit(":", 1)
    store = MemcachedBackend(Client((host, int(port))))  # default_noreply=True
    try:
        store.client.flush_all(noreply=False)
        sock = count_sends(store)
        store.set("k", b"1", ttl=5)
        assert store.add("k", b"2") is False
        assert store.replace("missing", b"2") is False
        store.set_many([("a", b"1")])
        assert store.add_many([("a", b"1"), ("n", b"1")]) == [False, True]
        assert store.replace_many([("zz", b"1")]) == [False]
        assert store.delete("missing") is False
        assert store.delete_many(["missing", "a"]) == 1
        assert store.incr("c", -1) == -1
        assert store.incr("c", 5) == 4
        token = store.gets("k")
        assert token is not None
        assert store.cas("k", b"3", token[1]) is True
        assert not any(b"noreply" in chunk for chunk in sock.sent)
    finally:
        store.close()


def test_writes_a_full_server_refuses_are_errors(full: MemcachedBackend) -> None:
    """A server out of memory (-M) refuses writes: a set raises, a batch says which it stored."""
    big = b"x" * 50_000
    keys = [f"k{i}" for i in range(60)]  # 3 MB for a 2 MB server
    with pytest.raises(BatchWriteError, match="out of memory") as info:
        full.set_many([(key, big) for key in keys])
    error = info.value
    assert error.written
    assert error.not_written
    assert error.unknown == []
    assert sorted(error.written + error.not_written) == sorted(keys)
    assert type(error.__cause__) is BackendError
    assert isinstance(error.__cause__.__cause__, MemcacheServerError)
    stored = dict(zip(keys, full.get_many(keys), strict=True))
    assert all(stored[key] == big for key in error.written)
    assert all(stored[key] is None for key in error.not_written)
    with pytest.raises(BackendError, match="out of memory") as single:
        full.set("one more", big)
    assert type(single.value) is BackendError
    assert single.value.key == "one more"
    with pytest.raises(BatchWriteError) as adds:
        full.add_many([(error.written[0], b"taken"), ("new", big)])
    assert (adds.value.written, adds.value.not_written) == ([], [error.written[0], "new"])
    full.set("small", b"still in step")
    assert full.get("small") == b"still in step"


# -- keys ---------------------------------------------------------------------------


def test_ordinary_keys_are_sent_as_utf8(mc: MemcachedBackend, raw: Client) -> None:
    """Keys memcached accepts are stored under their own UTF-8 bytes."""
    mc.set("user:1", b"a")
    mc.set("naïve:日本", b"b")
    longest = "k" * 250
    mc.set(longest, b"c")
    assert raw.get(b"user:1") == b"a"
    assert raw.get("naïve:日本".encode()) == b"b"
    assert raw.get(longest.encode()) == b"c"
    assert mc._bkey(longest) == longest.encode()


TRICKY_KEYS = [
    "a b",
    "ab",
    " ",
    "",
    "a\tb",
    "a\r\nb",
    "a\nb",
    "a\x00b",
    "a\x7fb",
    "a\x1fb",
    "k" * 251,
    "k" * 300,
    "k" * 300 + "x",
    "é" * 125,  # 250 bytes: legal
    "é" * 126,  # 252 bytes: mapped
    "naïve",
    "日本語",
    "\u00a0nbsp",
    "zero\u200bwidth",
    "\udcff-lone-surrogate",
    "\ud800",
    "ÿ",
    "#~",
    "a#~b",
    "\U0001f600",
]


def test_tricky_keys_round_trip_and_stay_distinct(mc: MemcachedBackend) -> None:
    """Long, empty, spaced, control, non-ASCII and surrogate keys all round-trip, apart."""
    mapped = {mc._bkey(key) for key in TRICKY_KEYS}
    assert len(mapped) == len(TRICKY_KEYS)
    for index, key in enumerate(TRICKY_KEYS):
        mc.set(key, str(index).encode())
    for index, key in enumerate(TRICKY_KEYS):
        assert mc.get(key) == str(index).encode(), key
    assert mc.get_many(TRICKY_KEYS) == [str(i).encode() for i in range(len(TRICKY_KEYS))]
    assert mc.delete_many(TRICKY_KEYS) == len(TRICKY_KEYS)
    assert mc.get_many(TRICKY_KEYS) == [None] * len(TRICKY_KEYS)


def test_mapped_key_format(mc: MemcachedBackend) -> None:
    """A mapped key is the key's legal bytes (64 at most), 0xFF and a 40-digit hex hash."""
    for key in ["a b\r\nc", "k" * 300, "", "\x00"]:
        bkey = mc._bkey(key)
        readable, marker, digest = bkey.rpartition(b"\xff")
        assert marker == b"\xff"
        assert len(digest) == 40
        int(digest, 16)
        assert len(bkey) <= 250
        assert readable == key.encode().translate(None, bytes(range(33)) + b"\x7f")[:64]
    assert mc._bkey("a b") != mc._bkey("a  b")  # same readable part, other hash


def test_keys_spelling_a_mapped_key_stay_distinct(mc: MemcachedBackend) -> None:
    """Keys that spell another key's mapped form (however decoded) are not that key."""
    original = "a b"
    mapped = mc._bkey(original)
    impostors = [
        mapped.decode("latin-1"),
        mapped.decode("utf-8", "surrogateescape"),
        mapped.decode("utf-8", "replace"),
        mapped.replace(b"\xff", b"#~").decode(),
    ]
    mc.set(original, b"original")
    for index, key in enumerate(impostors):
        assert mc._bkey(key) != mapped
        assert mc.get(key) is None
        mc.set(key, str(index).encode())
    assert mc.get(original) == b"original"
    assert mc.get_many(impostors) == [str(i).encode() for i in range(len(impostors))]


def test_keys_with_the_marker_character_stay_distinct(mc: MemcachedBackend) -> None:
    """Keys holding U+00FF (whose UTF-8 is not the 0xFF marker byte) round-trip apart."""
    keys = ["\xff", "\xff" * 300, "a\xffb", "a b\xff", "a\udcffb"]
    for index, key in enumerate(keys):
        mc.set(key, str(index).encode())
    assert mc.get_many(keys) == [str(i).encode() for i in range(len(keys))]


def test_batches_with_mapped_keys_answer_for_the_callers_keys(mc: MemcachedBackend) -> None:
    """set_many, get_many, add_many and delete_many map keys both ways."""
    keys = ["a b", "k" * 300, "plain", "x\ny"]
    mc.set_many([(key, key.encode()[:10]) for key in keys])
    assert mc.get_many([*keys, "absent key"]) == [key.encode()[:10] for key in keys] + [None]
    assert mc.add_many([("a b", b"no"), ("new key", b"yes")]) == [False, True]
    assert mc.replace_many([("k" * 300, b"r")]) == [True]
    assert mc.get("k" * 300) == b"r"
    assert mc.delete_many([*keys, "new key", "gone key"]) == 5


def test_mapping_is_deterministic_across_backends(
    mc: MemcachedBackend, memcached_server: MemcachedServer
) -> None:
    """Another backend (another process, say) finds a mapped key under the same name."""
    other = MemcachedBackend.from_servers(memcached_server.servers)
    try:
        mc.set("a key with spaces", b"v")
        assert other.get("a key with spaces") == b"v"
    finally:
        other.close()


def test_key_prefix_counts_against_the_length(
    memcached_server: MemcachedServer, raw: Client
) -> None:
    """With a client key_prefix, keys up to 250 bytes in all are sent as-is, longer ones mapped."""
    store = MemcachedBackend.from_servers(memcached_server.servers, key_prefix=b"app:")
    try:
        fits, over = "k" * 246, "k" * 247
        store.set(fits, b"fits")
        store.set(over, b"over")
        store.set("a b", b"spaced")
        assert raw.get(b"app:" + fits.encode()) == b"fits"
        assert len(b"app:" + store._bkey(over)) <= 250
        assert store.get_many([fits, over, "a b"]) == [b"fits", b"over", b"spaced"]
        assert store.incr("n b", -2) == -2  # the cas path adds the prefix itself
        assert store.incr("n b", 5) == 3
        assert store.delete_many([fits, over, "a b", "n b"]) == 4
    finally:
        store.close()


# -- value size --------------------------------------------------------------------


def test_value_of_exactly_the_limit_is_stored(small: MemcachedBackend, raw: Client) -> None:
    """On a 1 KiB-item server the limit is 1024 - ITEM_OVERHEAD - key length, and it fits."""
    key = "k" * 10
    limit = 1024 - ITEM_OVERHEAD - len(key)
    value = bytes(range(256)) * 4
    small.set(key, value[:limit])
    assert small.get(key) == value[:limit]
    with pytest.raises(ValueTooLarge) as info:
        small.set(key, value[: limit + 1])
    assert (info.value.size, info.value.limit, info.value.key) == (limit + 1, limit, key)
    assert info.value.server == small._address
    assert small._address in str(info.value)
    assert small.get(key) == value[:limit]


def test_the_limit_is_close_to_the_servers(small: MemcachedBackend) -> None:
    """The server takes a bit more than the limit (the margin is small) but not much more."""
    key = "k"
    limit = 1024 - ITEM_OVERHEAD - len(key)
    assert small.client.set(key.encode(), b"x" * (limit + 1), noreply=False)
    with pytest.raises(MemcacheServerError, match="too large"):
        small.client.set(key.encode(), b"x" * (limit + ITEM_OVERHEAD), noreply=False)


def test_a_refused_value_keeps_the_old_one(small: MemcachedBackend) -> None:
    """An oversized write raises before sending, so the value stored before stays."""
    small.set("k", b"v1")
    sock = count_sends(small)
    writes: list[Callable[[], object]] = [
        lambda: small.set("k", b"x" * 2000),
        lambda: small.replace("k", b"x" * 2000),
        lambda: small.add("new", b"x" * 2000),
        lambda: small.set_many([("k", b"v2"), ("other", b"x" * 2000)]),
        lambda: small.add_many([("new", b"v2"), ("other", b"x" * 2000)]),
        lambda: small.replace_many([("k", b"v2"), ("other", b"x" * 2000)]),
    ]
    for write in writes:
        with pytest.raises(ValueTooLarge):
            write()
    token = small.gets("k")
    assert token is not None
    with pytest.raises(ValueTooLarge):
        small.cas("k", b"x" * 2000, token[1])
    # Nothing of the refused writes was sent, only the one-time limit look-up and gets.
    assert sock.sent == [b"stats settings\r\n", b"gets k\r\n"]
    assert (small.get("k"), small.get("new"), small.get("other")) == (b"v1", None, None)


def test_a_refused_batch_names_the_large_value(small: MemcachedBackend) -> None:
    """The error of a batch names the key, size and limit of the oversized value."""
    with pytest.raises(ValueTooLarge) as info:
        small.set_many([("a", b"1"), ("big one", b"x" * 5000)])
    assert (info.value.key, info.value.size) == ("big one", 5000)
    assert info.value.limit == 1024 - ITEM_OVERHEAD - len(small._bkey("big one"))
    assert "'big one'" in str(info.value)


def test_item_size_max_is_read_once_and_only_for_large_values(small: MemcachedBackend) -> None:
    """Small values never ask the server; the first large one reads stats settings once."""
    sock = count_sends(small)
    small.set("a", b"x" * 500)
    assert not any(chunk.startswith(b"stats") for chunk in sock.sent)
    small.set("b", b"x" * 900)
    small.set_many([("c", b"x" * 900), ("d", b"x" * 800)])
    with pytest.raises(ValueTooLarge):
        small.set("e", b"x" * 1000)
    assert [chunk for chunk in sock.sent if chunk.startswith(b"stats")] == [b"stats settings\r\n"]


def test_max_value_size_replaces_the_servers_limit(memcached_server: MemcachedServer) -> None:
    """A max_value_size is the limit for every key, and the server is not asked."""
    store = MemcachedBackend.from_servers(memcached_server.servers, max_value_size=100)
    sock = count_sends(store)
    try:
        store.set("k", b"x" * 100)
        with pytest.raises(ValueTooLarge) as info:
            store.set("k", b"x" * 101)
        assert (info.value.size, info.value.limit) == (101, 100)
        assert store.get("k") == b"x" * 100
        assert not any(chunk.startswith(b"stats") for chunk in sock.sent)
    finally:
        store.close()


def test_the_servers_too_large_reply_is_value_too_large(small_server: ServerProcess) -> None:
    """With a max_value_size above the server's, the server's refusal is still ValueTooLarge."""
    store = MemcachedBackend.from_servers(small_server.address, max_value_size=10_000)
    try:
        store.set("k", b"v1")
        with pytest.raises(ValueTooLarge, match="too large") as info:
            store.set("k", b"x" * 5000)
        assert isinstance(info.value.__cause__, MemcacheServerError)
        assert info.value.size == 5000
        assert info.value.limit == 1024 - ITEM_OVERHEAD - 1
        assert store.get("k") is None  # memcached drops the old value when it refuses a set
        with pytest.raises(BatchWriteError, match="too large") as batch:
            store.set_many([("a", b"1"), ("b", b"x" * 5000)])
        assert (batch.value.written, batch.value.not_written) == (["a"], ["b"])
        assert isinstance(batch.value.__cause__, ValueTooLarge)
        assert batch.value.__cause__.key == "b"
        assert store.get_many(["a", "b"]) == [b"1", None]
    finally:
        store.close()


def test_default_one_mib_limit(mc: MemcachedBackend) -> None:
    """On a default server a value of item_size_max - overhead - key length fits, one more not."""
    item_size_max = int(mc.client.stats("settings")[b"item_size_max"])
    limit = item_size_max - ITEM_OVERHEAD - len("big")
    mc.set("big", b"v" * limit)
    assert mc.get("big") == b"v" * limit
    with pytest.raises(ValueTooLarge):
        mc.set("big", b"w" * (limit + 1))
    assert mc.get("big") == b"v" * limit


# -- TTL -----------------------------------------------------------------------------


def test_expiry_rounding_and_the_30_day_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """TTLs become ceil(ttl) + 1 seconds, or a Unix time past 30 days; 2038 is the end."""
    now = 1_700_000_000.7
    monkeypatch.setattr(time, "time", lambda: now)  # the module _memcached reads
    expire = _memcached._expire
    assert expire(None) == 0
    assert expire(0.001) == 2
    assert expire(1) == 2
    assert expire(1.5) == 3
    assert expire(60) == 61
    assert expire(30 * DAY - 1) == 30 * DAY
    assert expire(30 * DAY) == 1_700_000_000 + 30 * DAY + 1
    assert expire(40 * DAY) == 1_700_000_000 + 40 * DAY + 1
    latest = 2**31 - 1 - 1_700_000_000 - 1
    assert expire(latest) == 2**31 - 1
    with pytest.raises(InvalidTTL, match="2038"):
        expire(latest + 0.5)
    with pytest.raises(InvalidTTL, match="2038"):
        expire(1e300)


def test_memcached_misreads_expiry_past_2038(memcached_server: MemcachedServer) -> None:
    """Why such TTLs are refused: memcached reads exptime as a signed 32-bit number."""
    host, port = memcached_server.servers[0].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        reader = sock.makefile("rb")

        def ask(command: bytes) -> bytes:
            sock.sendall(command)
            return reader.readline().strip()

        assert ask(b"set past2038 0 %d 1\r\nx\r\n" % (2**31 - 1)) == b"STORED"
        assert ask(b"mg past2038\r\n") == b"HD"  # 2**31 - 1: expires in 2038
        assert ask(b"set past2038 0 %d 1\r\nx\r\n" % 2**31) == b"STORED"
        assert ask(b"mg past2038\r\n") == b"EN"  # 2**31: already expired
        assert ask(b"set past2038 0 %d 1\r\nx\r\n" % 2**32) == b"STORED"
        assert ask(b"mg past2038 t\r\n") == b"HD t-1"  # 2**32: never expires
        assert ask(b"delete past2038\r\n") == b"DELETED"
        reader.close()


def test_short_ttl_expires(mc: MemcachedBackend) -> None:
    """A 1 s TTL is live at once (memcached gets 2 s) and gone after 2.5 s."""
    mc.set("short", b"v", ttl=1)
    mc.set("shorter", b"v", ttl=0.2)
    mc.set("kept", b"v")
    assert mc.get_many(["short", "shorter"]) == [b"v", b"v"]
    assert server_ttl(mc, "short") in (1, 2)
    time.sleep(2.5)
    assert mc.get_many(["short", "shorter", "kept"]) == [None, None, b"v"]


def test_ttl_is_never_cut_short(mc: MemcachedBackend) -> None:
    """An item with TTL t is still there t seconds later (here t = 1.2 s)."""
    start = time.monotonic()
    mc.set("k", b"v", ttl=1.2)
    time.sleep(max(0.0, 1.2 - (time.monotonic() - start) - 0.05))
    assert mc.get("k") == b"v"


def test_every_write_sends_its_ttl(mc: MemcachedBackend) -> None:
    """set, set_many, add, add_many, replace, replace_many and cas all pass the TTL on."""
    mc.set("a", b"1", ttl=100)
    mc.set_many([("b", b"1")], ttl=100)
    mc.add("c", b"1", ttl=100)
    mc.add_many([("d", b"1")], ttl=100)
    mc.set_many([("e", b"1"), ("f", b"1")])
    mc.replace("e", b"2", ttl=100)
    mc.replace_many([("f", b"2")], ttl=100)
    mc.set("g", b"1")
    token = mc.gets("g")
    assert token is not None
    assert mc.cas("g", b"2", token[1], ttl=100)
    for key in "abcdefg":
        assert server_ttl(mc, key) in (100, 101), key


def test_writes_without_ttl_clear_the_old_ttl(mc: MemcachedBackend) -> None:
    """A write without a TTL makes the key permanent, as on the memory backend."""
    for key in "abcd":
        mc.set(key, b"1", ttl=100)
    mc.set("a", b"2")
    mc.set_many([("b", b"2")])
    mc.replace("c", b"2")
    token = mc.gets("d")
    assert token is not None
    mc.cas("d", b"2", token[1])
    assert [server_ttl(mc, key) for key in "abcd"] == [-1, -1, -1, -1]


def test_forty_day_ttl_is_an_absolute_time(mc: MemcachedBackend) -> None:
    """A TTL over 30 days is sent as a Unix time: the item is live with ~40 days left."""
    mc.set("long", b"v", ttl=40 * DAY)
    mc.set_many([("long2", b"v")], ttl=40 * DAY + 0.5)
    assert mc.get_many(["long", "long2"]) == [b"v", b"v"]
    assert abs(server_ttl(mc, "long") - (40 * DAY + 1)) <= 2  # type: ignore[operator]
    assert abs(server_ttl(mc, "long2") - (40 * DAY + 2)) <= 2  # type: ignore[operator]


def test_ttl_past_2038_is_refused_before_writing(mc: MemcachedBackend) -> None:
    """A TTL ending after 2038 raises InvalidTTL; nothing is written, old values stay."""
    too_far = 2**31 - time.time() + 100
    mc.set("k", b"old")
    token = mc.gets("k")
    assert token is not None
    sock = count_sends(mc)
    writes: list[Callable[[], object]] = [
        lambda: mc.set("k", b"new", ttl=too_far),
        lambda: mc.set("fresh", b"new", ttl=too_far),
        lambda: mc.set_many([("k", b"new"), ("fresh", b"new")], ttl=too_far),
        lambda: mc.add("fresh", b"new", ttl=too_far),
        lambda: mc.add_many([("fresh", b"new")], ttl=too_far),
        lambda: mc.replace("k", b"new", ttl=too_far),
        lambda: mc.replace_many([("k", b"new")], ttl=too_far),
        lambda: mc.cas("k", b"new", token[1], ttl=too_far),
    ]
    for write in writes:
        with pytest.raises(InvalidTTL, match="2038"):
            write()
    assert sock.sent == []
    assert mc.get_many(["k", "fresh"]) == [b"old", None]


# -- counters ------------------------------------------------------------------------


def test_incr_creates_and_counts(mc: MemcachedBackend) -> None:
    """incr starts a missing counter at 0 and stores ASCII digits."""
    assert mc.incr("n") == 1
    assert mc.incr("n", 5) == 6
    assert mc.incr("n", 0) == 6
    assert mc.get("n") == b"6"
    assert mc.incr("zero", 0) == 0
    assert mc.get("zero") == b"0"
    mc.set("preset", b"41")
    assert mc.incr("preset") == 42


def test_incr_negative_and_across_zero(mc: MemcachedBackend) -> None:
    """Counters are signed: a missing key with -3 gives -3, and counters cross zero both ways."""
    assert mc.incr("n", -3) == -3
    assert mc.get("n") == b"-3"
    assert mc.incr("n", 1) == -2
    assert mc.incr("n", 5) == 3
    assert mc.get("n") == b"3"
    assert mc.incr("n", 4) == 7  # back on memcached's own incr
    assert mc.incr("n", -10) == -3
    assert mc.incr("n", -(10**30)) == -(10**30) - 3
    assert mc.get("n") == str(-(10**30) - 3).encode()


def test_incr_beyond_64_bits(mc: MemcachedBackend) -> None:
    """memcached wraps at 2**64; the backend does not."""
    mc.set("n", str(U64 - 1).encode())
    assert mc.incr("n", 2) == U64 + 1
    assert mc.get("n") == str(U64 + 1).encode()
    assert mc.incr("n") == U64 + 2
    assert mc.incr("n", -(U64 + 2)) == 0
    assert mc.get("n") == b"0"
    assert mc.incr("big", U64 * 3) == U64 * 3
    assert mc.incr("big", U64) == U64 * 4


@pytest.mark.parametrize("value", [b"abc", b"1.5", b"", b"--1", b"1-", b"12abc"])
def test_incr_of_a_non_integer_names_the_key(mc: MemcachedBackend, value: bytes) -> None:
    """incr of a value that is not an integer is a BackendError naming the key; no change."""
    mc.set("a key", value)
    with pytest.raises(BackendError, match="'a key'") as info:
        mc.incr("a key", 1)
    assert info.value.key == "a key"
    with pytest.raises(BackendError, match="not an ASCII integer"):
        mc.incr("a key", -1)
    assert mc.get("a key") == value
    assert mc.incr("other") == 1  # the connection is fine afterwards


def test_incr_keeps_the_ttl(mc: MemcachedBackend) -> None:
    """Both memcached's incr and the compare-and-set path keep the key's TTL."""
    mc.set("up", b"5", ttl=100)
    mc.set("down", b"5", ttl=100)
    mc.set("long", b"5", ttl=40 * DAY)
    mc.set("none", b"5")
    assert mc.incr("up", 2) == 7
    assert mc.incr("down", -20) == -15
    assert mc.incr("down", 1) == -14
    assert mc.incr("long", -1) == 4
    assert mc.incr("none", -1) == 4
    assert server_ttl(mc, "up") in (99, 100, 101)
    assert server_ttl(mc, "down") in (99, 100, 101)
    # Over 30 days the expiry goes out as a Unix time, which memcached turns back
    # into a delay with its own clock: expect the TTL shifted by how far that
    # clock ("time" in stats, which moves with the server's monotonic clock) is
    # from this process's wall clock.
    skew = time.time() - stat(mc.client, b"time")
    assert abs(server_ttl(mc, "long") - (40 * DAY + 1 + skew)) <= 3  # type: ignore[operator]
    assert server_ttl(mc, "none") == -1


def test_incr_is_atomic_across_clients(memcached_server: MemcachedServer) -> None:
    """Concurrent increments from several connections, some negative, lose nothing."""
    setup = MemcachedBackend.from_servers(memcached_server.servers)
    setup.delete("shared")
    setup.close()
    deltas = [1, -1, 2, -3]
    rounds = 40
    errors: list[BaseException] = []

    def work(delta: int) -> None:
        store = MemcachedBackend.from_servers(memcached_server.servers)
        try:
            for _ in range(rounds):
                store.incr("shared", delta)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=work, args=(delta,)) for delta in deltas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    check = MemcachedBackend.from_servers(memcached_server.servers)
    try:
        assert check.get("shared") == str(sum(deltas) * rounds).encode()
    finally:
        check.close()


def test_incr_of_a_huge_integer_is_refused(mc: MemcachedBackend) -> None:
    """A value with more digits than int() reads is not a counter."""
    mc.set("n", b"9" * 5000)
    with pytest.raises(BackendError, match="not an ASCII integer"):
        mc.incr("n", -1)


def hook_requests(
    store: MemcachedBackend,
    monkeypatch: pytest.MonkeyPatch,
    command: bytes,
    action: Callable[[int], object],
) -> list[bytes]:
    """Call ``action(n)`` before the n-th request (from 0) of ``store`` starting with ``command``.

    The requests still go to the server; ``action`` lets another client
    interfere at that exact moment. Returns the hooked requests, as sent.
    """
    seen: list[bytes] = []
    call = store._call

    def hooked(node: Any, request: bytes, read: Any, resend: bool, *rest: Any) -> Any:
        if request.startswith(command):
            action(len(seen))
            seen.append(request)
        return call(node, request, read, resend, *rest)

    monkeypatch.setattr(store, "_call", hooked)
    return seen


@pytest.mark.parametrize(
    "race", ["rewritten before mg", "deleted before mg", "rewritten before cas"]
)
def test_incr_retries_when_another_writer_interferes(
    mc: MemcachedBackend,
    memcached_server: MemcachedServer,
    monkeypatch: pytest.MonkeyPatch,
    race: str,
) -> None:
    """The compare-and-set path starts over when the key changes under it."""
    other = MemcachedBackend.from_servers(memcached_server.servers)
    mc.set("n", b"-5")

    def interfere(n: int) -> None:
        if n == 0:
            if race == "deleted before mg":
                other.delete("n")
            else:
                other.set("n", b"100")

    hooked = hook_requests(mc, monkeypatch, b"cas " if "cas" in race else b"mg ", interfere)
    try:
        expected = -1 if race == "deleted before mg" else 99
        assert mc.incr("n", -1) == expected
        assert mc.get("n") == str(expected).encode()
        assert len(hooked) == (1 if race == "deleted before mg" else 2)
    finally:
        other.close()


@pytest.mark.parametrize("delta", [2, -2])
def test_incr_retries_when_it_loses_the_race_to_create(
    mc: MemcachedBackend,
    memcached_server: MemcachedServer,
    monkeypatch: pytest.MonkeyPatch,
    delta: int,
) -> None:
    """If another writer creates the counter between the read and the add, incr runs again."""
    other = MemcachedBackend.from_servers(memcached_server.servers)
    hooked = hook_requests(mc, monkeypatch, b"add ", lambda n: n or other.set("n", b"10"))
    try:
        assert mc.incr("n", delta) == 10 + delta
        assert len(hooked) == 1
    finally:
        other.close()


def test_incr_gives_up_under_endless_interference(
    mc: MemcachedBackend, memcached_server: MemcachedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """incr retries a bounded number of times, then raises BackendError naming the key."""
    monkeypatch.setattr(_memcached, "_INCR_ATTEMPTS", 3)
    other = MemcachedBackend.from_servers(memcached_server.servers)
    try:
        # Deleted before each incr, created again before each add: never counted.
        hook_requests(mc, monkeypatch, b"incr ", lambda n: other.delete("n"))
        adds = hook_requests(mc, monkeypatch, b"add ", lambda n: other.set("n", b"x"))
        with pytest.raises(BackendError, match="'n'") as info:
            mc.incr("n", 1)
        assert info.value.key == "n"
        assert len(adds) == 3
        mc.set("m", b"-1")
        cases = hook_requests(mc, monkeypatch, b"cas ", lambda n: other.set("m", b"-1"))
        with pytest.raises(BackendError, match="other writers kept changing it"):
            mc.incr("m", -1)
        assert len(cases) == 3
    finally:
        other.close()


def test_one_backend_is_safe_to_share_between_threads(mc: MemcachedBackend) -> None:
    """Threads sharing one backend (one connection) each get their own replies."""
    threads, rounds = 8, 30
    errors: list[BaseException] = []
    start = threading.Barrier(threads, timeout=30)
    winners: list[int] = []

    def work(index: int) -> None:
        try:
            start.wait()
            if mc.add("winner", str(index).encode()):
                winners.append(index)
            for round_ in range(rounds):
                mc.incr("shared", -1 if index % 2 else 2)
                key = f"t{index}:{round_}"
                mc.set(key, key.encode())
                assert mc.get_many([key, "absent"]) == [key.encode(), None]
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert errors == []
    assert len(winners) == 1
    assert mc.get("winner") == str(winners[0]).encode()
    expected = sum(-1 if i % 2 else 2 for i in range(threads)) * rounds
    assert mc.get("shared") == str(expected).encode()


# -- gets / cas ----------------------------------------------------------------------


def test_gets_and_cas(mc: MemcachedBackend) -> None:
    """cas stores only while the key is unchanged since gets."""
    assert mc.gets("k") is None
    mc.set("k", b"v1")
    got = mc.gets("k")
    assert got is not None
    value, token = got
    assert value == b"v1"
    assert isinstance(token, bytes)
    assert token.isdigit()
    assert mc.cas("k", b"v2", token) is True
    assert mc.cas("k", b"v3", token) is False
    assert mc.get("k") == b"v2"
    got = mc.gets("k")
    assert got is not None
    assert mc.cas("k", b"v4", int(got[1])) is True  # type: ignore[call-overload]
    got = mc.gets("k")
    assert got is not None
    mc.delete("k")
    assert mc.cas("k", b"v5", got[1]) is False
    assert mc.get("k") is None


@pytest.mark.parametrize(
    "token",
    ["123", b"", b"12a", b"-1", b"\xd9\xa1", b"1" * 21, bytearray(b"1"), -1, U64, 1.5, True, None],
)
def test_cas_with_a_foreign_token_is_false(mc: MemcachedBackend, token: object) -> None:
    """A token memcached could not have given returns False, without raising or writing."""
    mc.set("k", b"v")
    assert mc.cas("k", b"new", token) is False
    assert mc.get("k") == b"v"
    assert mc.cas("k", b"new", object()) is False


# -- errors --------------------------------------------------------------------------


OPERATIONS: list[tuple[str, Callable[[MemcachedBackend], object]]] = [
    ("get", lambda b: b.get("k")),
    ("get_many", lambda b: b.get_many(["k", "l"])),
    ("set", lambda b: b.set("k", b"v")),
    ("set_many", lambda b: b.set_many([("k", b"v")])),
    ("add", lambda b: b.add("k", b"v")),
    ("add_many", lambda b: b.add_many([("k", b"v"), ("k", b"w")])),
    ("replace", lambda b: b.replace("k", b"v")),
    ("replace_many", lambda b: b.replace_many([("k", b"v")])),
    ("delete", lambda b: b.delete("k")),
    ("delete_many", lambda b: b.delete_many(["k"])),
    ("exists", lambda b: b.exists("k")),
    ("incr", lambda b: b.incr("k")),
    ("incr negative", lambda b: b.incr("k", -1)),
    ("gets", lambda b: b.gets("k")),
    ("cas", lambda b: b.cas("k", b"v", b"1")),
    ("large set", lambda b: b.set("k", b"x" * 10_000)),
]


@pytest.mark.parametrize(("name", "operation"), OPERATIONS, ids=[n for n, _ in OPERATIONS])
def test_unreachable_server_is_backend_unavailable(
    down: MemcachedBackend, name: str, operation: Callable[[MemcachedBackend], object]
) -> None:
    """Every operation on a closed port raises BackendUnavailable naming the address, quickly."""
    start = time.monotonic()
    with pytest.raises(BackendUnavailable) as info:
        operation(down)
    assert time.monotonic() - start < 1.0
    address = down._address
    assert info.value.server == address
    assert address in str(info.value)
    assert isinstance(info.value.__cause__, OSError)


def test_timeout_is_backend_unavailable() -> None:
    """A server that accepts but never answers times out as BackendUnavailable."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        store = MemcachedBackend.from_servers(f"127.0.0.1:{port}", timeout=0.2)
        start = time.monotonic()
        with pytest.raises(BackendUnavailable, match="timed out") as info:
            store.get("k")
        assert time.monotonic() - start < 2.0
        assert isinstance(info.value.__cause__, TimeoutError)
        store.close()


def test_backend_recovers_when_the_server_returns() -> None:
    """After BackendUnavailable the same backend works again once a server listens."""
    server = start_memcached()
    port = server.port
    store = MemcachedBackend.from_servers(server.address)
    try:
        store.set("k", b"v")
        server.stop()
        with pytest.raises(BackendUnavailable):
            store.get("k")
        with pytest.raises(BackendUnavailable):
            store.set("k", b"v")
        server = start_memcached(port=port)
        assert store.get("k") is None
        store.set("k", b"again")
        assert store.get("k") == b"again"
    finally:
        store.close()
        server.stop()


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b"SERVER_ERROR out of memory storing object", MemcacheServerError),
        (b"CLIENT_ERROR bad data chunk", MemcacheClientError),
        (b"ERROR", MemcacheUnknownCommandError),
        (b"WHAT", MemcacheUnknownError),
    ],
)
def test_error_replies_are_backend_errors_naming_key_and_server(
    mc: MemcachedBackend, line: bytes, error: type[Exception]
) -> None:
    """An error reply becomes a BackendError naming key and server, caused by pymemcache's."""
    node = mc._nodes[0]
    refusal = mc._refused(node, line, "the key", 10, b"the_key")
    assert type(refusal) is BackendError
    assert (refusal.key, refusal.server) == ("the key", mc._address)
    assert "'the key'" in str(refusal)
    assert mc._address in str(refusal)
    assert isinstance(refusal.__cause__, error)


def test_too_large_reply_when_the_limit_cannot_be_read(down: MemcachedBackend) -> None:
    """If the server refuses a value and cannot be asked its limit, the limit is size - 1."""
    refusal = down._refused(
        down._nodes[0], b"SERVER_ERROR object too large for cache", "k", 100, b"k"
    )
    assert isinstance(refusal, ValueTooLarge)
    assert (refusal.size, refusal.limit) == (100, 99)


# -- round trips ---------------------------------------------------------------------


def test_get_many_of_1000_keys_is_one_round_trip(mc: MemcachedBackend, raw: Client) -> None:
    """get_many sends one get command line carrying all the keys."""
    keys = [f"user:{i}" for i in range(1000)] + ["a b", "k" * 300]
    mc.set_many([(key, key.encode()[:20]) for key in keys[::2]])
    before = stat(raw, b"cmd_get")
    sock = count_sends(mc)
    result = mc.get_many(keys)
    assert len(sock.sent) == 1
    assert sock.sent[0].startswith(b"get ")
    assert sock.sent[0].count(b"\r\n") == 1
    assert stat(raw, b"cmd_get") - before == len(keys)  # memcached counts keys
    assert result == [key.encode()[:20] if i % 2 == 0 else None for i, key in enumerate(keys)]


def test_set_many_is_one_round_trip(mc: MemcachedBackend, raw: Client) -> None:
    """set_many pipelines every set in one send."""
    before = stat(raw, b"cmd_set")
    sock = count_sends(mc)
    mc.set_many([(f"k{i}", b"v") for i in range(1000)], ttl=60)
    assert len(sock.sent) == 1
    assert stat(raw, b"cmd_set") - before == 1000


def test_add_many_and_replace_many_round_trips(mc: MemcachedBackend) -> None:
    """Each batch is one send, repeated keys too: one connection runs in order."""
    sock = count_sends(mc)
    assert mc.add_many([(f"k{i}", b"v") for i in range(500)]) == [True] * 500
    assert len(sock.sent) == 1
    assert mc.replace_many([(f"k{i}", b"w") for i in range(500)]) == [True] * 500
    assert len(sock.sent) == 2
    assert mc.add_many([("x", b"1"), ("y", b"1"), ("x", b"2"), ("x", b"3")]) == [
        True,
        True,
        False,
        False,
    ]
    assert mc.replace_many([("x", b"4"), ("z", b"1"), ("x", b"5")]) == [True, False, True]
    assert len(sock.sent) == 4
    assert mc.get_many(["x", "y", "z"]) == [b"5", b"1", None]


def test_delete_many_is_one_round_trip(mc: MemcachedBackend, raw: Client) -> None:
    """delete_many pipelines every delete in one send and counts the hits."""
    mc.set_many([(f"k{i}", b"v") for i in range(0, 1000, 2)])
    before = stat(raw, b"delete_hits")
    sock = count_sends(mc)
    assert mc.delete_many([f"k{i}" for i in range(1000)]) == 500
    assert len(sock.sent) == 1
    assert stat(raw, b"delete_hits") - before == 500


def test_single_operations_are_one_round_trip(mc: MemcachedBackend) -> None:
    """get, set, exists and a positive incr are one command each."""
    mc.set("n", b"1")
    sock = count_sends(mc)
    mc.get("n")
    mc.set("n", b"2")
    mc.exists("n")
    mc.incr("n")
    mc.delete("n")
    assert len(sock.sent) == 5
