"""Tests for RedisBackend against a real redis-server: commands, round trips, TTLs, errors."""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("redis")

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cacheorm import _redis, _redis_ops
from cacheorm._backend import Backend
from cacheorm._errors import (
    BackendError,
    BackendUnavailable,
    ConfigurationError,
    InvalidTTL,
    MissingDependency,
)
from cacheorm._redis import RedisBackend
from cacheorm._ttl import KEEP_TTL
from tests.servers import RedisServer, ServerProcess, closed_port, free_port

PASSWORD = "s3cret-pw"


# -- helpers and fixtures -------------------------------------------------------


@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[RedisBackend]:
    """A RedisBackend on the session's server, its database flushed."""
    backend = RedisBackend.from_url(redis_server.url)
    backend.client.flushdb()
    yield backend
    backend.close()


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A plain redis-py client on the same database, to look behind the backend."""
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


def reset_stats(raw: redis.Redis) -> None:
    """Zero the server's command statistics."""
    raw.config_resetstat()


def command_calls(raw: redis.Redis) -> dict[str, int]:
    """Calls per command since the last reset, leaving out the observer's INFO and CONFIG."""
    stats: dict[str, dict[str, Any]] = raw.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(s["calls"]) for name, s in stats.items()}
    return {name: n for name, n in calls.items() if not name.startswith(("info", "config")) and n}


class SendCounter:
    """Counts ``send_packed_command`` calls (one per round trip) on the client's connections."""

    def __init__(self) -> None:
        self.sends = 0


@pytest.fixture
def sends(store: RedisBackend, monkeypatch: pytest.MonkeyPatch) -> SendCounter:
    """A counter of the writes the backend's connections make to their socket."""
    store.client.ping()  # connect (and send the handshake) before counting
    connection_class = store.client.connection_pool.connection_class
    counter = SendCounter()
    original: Callable[..., None] = connection_class.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        counter.sends += 1
        original(self, command, check_health)

    monkeypatch.setattr(connection_class, "send_packed_command", counting)
    return counter


def down_backend(**kwargs: Any) -> RedisBackend:
    """A backend whose URL has a password and a loopback port nothing listens on."""
    return RedisBackend.from_url(f"redis://app:{PASSWORD}@127.0.0.1:{closed_port()}/0", **kwargs)


def assert_no_password(exc: BaseException, backend: RedisBackend) -> None:
    """The password appears nowhere a user would print."""
    assert isinstance(exc, BackendError)
    for text in (str(exc), repr(exc), str(exc.server), repr(backend)):
        assert PASSWORD not in text


# -- construction ---------------------------------------------------------------


def test_is_a_backend(store: RedisBackend) -> None:
    """RedisBackend satisfies the runtime-checkable Backend protocol."""
    assert isinstance(store, Backend)


def test_from_url_tcp(redis_server: RedisServer, store: RedisBackend) -> None:
    """from_url with redis:// connects over TCP and reports host:port, never more."""
    store.set("k", b"v")
    assert store.get("k") == b"v"
    assert isinstance(store.client, redis.Redis)
    host_port = redis_server.url.removeprefix("redis://").split("/")[0]
    assert store.server == host_port
    assert repr(store) == f"RedisBackend(server={host_port!r}, db=0)"


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A redis-server speaking TLS with a fresh self-signed certificate: (rediss URL, CA file)."""
    openssl, server = shutil.which("openssl"), shutil.which("redis-server")
    if openssl is None or server is None:
        pytest.skip("the TLS test needs openssl and redis-server on PATH")
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    plain, tls = free_port(), free_port()
    process = ServerProcess(
        name="redis-server (TLS)",
        argv=[server, "--port", str(plain), "--tls-port", str(tls), "--bind", "127.0.0.1",
              "--tls-cert-file", str(cert), "--tls-key-file", str(key),
              "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
              "--save", "", "--appendonly", "no", "--loglevel", "warning"],
        host="127.0.0.1",
        port=plain,
    )  # fmt: skip
    process.start(b"PING\r\n", b"+PONG")
    yield f"rediss://127.0.0.1:{tls}/0", str(cert)
    process.stop()


def test_from_url_rediss_speaks_tls(tls_redis: tuple[str, str]) -> None:
    """from_url with rediss:// stores and reads over TLS, verifying the server's certificate."""
    url, ca = tls_redis
    backend = RedisBackend.from_url(url, ssl_ca_certs=ca)
    try:
        backend.set("k", b"over TLS")
        assert backend.get("k") == b"over TLS"
        assert backend.client.connection_pool.connection_class is redis.SSLConnection
    finally:
        backend.close()
    untrusting = RedisBackend.from_url(url)  # the system CAs do not know this certificate
    with pytest.raises(BackendUnavailable, match=r"127\.0\.0\.1"):
        untrusting.get("k")
    untrusting.close()


def test_from_url_unix_socket(redis_server: RedisServer) -> None:
    """from_url with unix:// connects over the socket and reports its path."""
    if redis_server.unix_url is None:
        pytest.skip("REDIS_URL points at an external server, whose unix socket is unknown")
    backend = RedisBackend.from_url(redis_server.unix_url)
    try:
        backend.client.flushdb()
        backend.set("k", b"over the socket")
        assert backend.get("k") == b"over the socket"
        assert backend.server == redis_server.unix_url.removeprefix("unix://")
    finally:
        backend.close()


@pytest.mark.parametrize("cluster", [False, True], ids=["single", "cluster"])
@pytest.mark.parametrize(
    "url",
    [
        f"http://app:{PASSWORD}@127.0.0.1:6379/0",
        f"redis+tls://app:{PASSWORD}@127.0.0.1:6379",
        "127.0.0.1:6379",
        "localhost:6379",
        "",
    ],
)
def test_a_bad_url_scheme_is_a_configuration_error(url: str, cluster: bool) -> None:
    """An unknown scheme raises ConfigurationError naming the URL (password masked) and the
    schemes accepted, before any connection."""
    with pytest.raises(ConfigurationError) as info:
        RedisBackend.from_url(url, cluster=cluster)
    message = str(info.value)
    assert PASSWORD not in message
    assert url.replace(PASSWORD, "***") in message
    assert "redis://" in message
    assert "rediss://" in message
    assert ("unix://" in message) is not cluster


@pytest.mark.parametrize("cluster", [False, True], ids=["single", "cluster"])
@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"redis://app:{PASSWORD}@127.0.0.1:port/0", "redis://app:***@127.0.0.1:port/0"),
        (f"redis://:{PASSWORD}@127.0.0.1:99999", "redis://:***@127.0.0.1:99999"),
        ("redis://[::1:6379/0", "redis://[::1:6379/0"),
    ],
    ids=["port not a number", "port out of range", "broken IPv6"],
)
def test_a_url_redis_py_cannot_parse_is_a_configuration_error(
    cluster: bool, url: str, shown: str
) -> None:
    """A URL redis-py cannot parse is a ConfigurationError naming it, password masked."""
    with pytest.raises(ConfigurationError) as info:
        RedisBackend.from_url(url, cluster=cluster)
    assert repr(shown) in str(info.value)
    assert PASSWORD not in str(info.value)
    assert isinstance(info.value.__cause__, ValueError)


def test_decode_responses_in_the_url_is_refused_and_the_client_closed(
    redis_server: RedisServer,
) -> None:
    """decode_responses asked for in the URL's query is refused too, and no client is left."""
    with pytest.raises(ConfigurationError, match="decode_responses=False"):
        RedisBackend.from_url(f"{redis_server.url}?decode_responses=True")


def test_from_url_defaults_timeouts_and_keeps_given_ones(redis_server: RedisServer) -> None:
    """from_url sets 5 s socket timeouts unless told otherwise, and passes other options on."""
    default = RedisBackend.from_url(redis_server.url)
    chosen = RedisBackend.from_url(
        redis_server.url, socket_timeout=1.5, socket_connect_timeout=0.5, max_connections=3
    )
    try:
        kwargs = default.client.connection_pool.connection_kwargs
        assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (5.0, 5.0)
        kwargs = chosen.client.connection_pool.connection_kwargs
        assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (1.5, 0.5)
        assert chosen.client.connection_pool.max_connections == 3
    finally:
        default.close()
        chosen.close()


def test_wraps_a_given_client(raw: redis.Redis) -> None:
    """A ready redis.Redis is used as is and exposed as .client."""
    backend = RedisBackend(raw)
    backend.set("k", b"v")
    assert backend.client is raw
    assert raw.get("k") == b"v"


def test_decode_responses_client_is_refused(redis_server: RedisServer) -> None:
    """A client that decodes replies to str is refused: values are bytes."""
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        with pytest.raises(ConfigurationError, match="decode_responses=False"):
            RedisBackend(client)
    finally:
        client.close()
    with pytest.raises(ConfigurationError, match="decode_responses=False"):
        RedisBackend.from_url(redis_server.url, decode_responses=True)


@pytest.mark.parametrize("bad", ["redis://localhost", None, object()])
def test_non_client_is_refused(bad: object) -> None:
    """Anything but a redis.Redis (a URL string, say) is a TypeError pointing at from_url."""
    with pytest.raises(TypeError, match="from_url"):
        RedisBackend(bad)  # type: ignore[arg-type]


def test_missing_redis_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without redis-py, building a backend raises MissingDependency naming the redis extra."""
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(MissingDependency, match=r"cacheorm\[redis\]") as info:
        RedisBackend(object())  # type: ignore[arg-type]
    assert info.value.extra == "redis"
    with pytest.raises(MissingDependency):
        RedisBackend.from_url("redis://127.0.0.1:1/0")


def test_module_imports_without_redis() -> None:
    """cacheorm._redis imports with redis-py blocked; only building a backend needs it."""
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "import cacheorm._redis as m\n"
        "try:\n    m.RedisBackend.from_url('redis://127.0.0.1:1/0')\n"
        "except ImportError as exc:\n    print(type(exc).__name__, exc.extra)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "MissingDependency redis"


def test_close_releases_connections(redis_server: RedisServer, raw: redis.Redis) -> None:
    """close() closes the client, so the server sees its connection go."""
    backend = RedisBackend.from_url(redis_server.url, client_name="cacheorm-close-test")
    backend.get("k")
    names = [c["name"] for c in raw.client_list()]
    assert "cacheorm-close-test" in names
    backend.close()
    deadline = time.monotonic() + 5
    while "cacheorm-close-test" in [c["name"] for c in raw.client_list()]:
        assert time.monotonic() < deadline, "the connection is still open"
        time.sleep(0.01)


# -- commands and round trips ---------------------------------------------------

TOKEN_V = hashlib.sha1(b"v").hexdigest()

#: (operation, the commands the server must see for it)
SINGLE_OPS: list[tuple[str, Callable[[RedisBackend], object], dict[str, int]]] = [
    ("get", lambda b: b.get("k"), {"get": 1}),
    ("set", lambda b: b.set("k", b"w"), {"set": 1}),
    ("set ttl", lambda b: b.set("k", b"w", ttl=5), {"set": 1}),
    ("add", lambda b: b.add("new", b"w", ttl=5), {"set": 1}),
    ("replace", lambda b: b.replace("k", b"w", ttl=5), {"set": 1}),
    ("delete", lambda b: b.delete("k"), {"del": 1}),
    ("exists", lambda b: b.exists("k"), {"type": 1}),
    ("incr", lambda b: b.incr("n", 2), {"incrby": 1}),
    ("gets", lambda b: b.gets("k"), {"get": 1}),
    ("cas", lambda b: b.cas("k", b"w", TOKEN_V, ttl=5), {"evalsha": 1, "get": 1, "set": 1}),
    ("get_many", lambda b: b.get_many(["k", "n", "k"]), {"mget": 1}),
    ("set_many", lambda b: b.set_many([("a", b"1"), ("b", b"2")]), {"mset": 1}),
    ("set_many ttl", lambda b: b.set_many([("a", b"1"), ("b", b"2")], ttl=5), {"set": 2}),
    ("add_many", lambda b: b.add_many([("a", b"1"), ("b", b"2")], ttl=5), {"set": 2}),
    ("replace_many", lambda b: b.replace_many([("a", b"1"), ("k", b"2")]), {"set": 2}),
    ("delete_many", lambda b: b.delete_many(["k", "n", "x"]), {"del": 1}),
]


@pytest.mark.parametrize(
    ("op", "expected"), [(o[1], o[2]) for o in SINGLE_OPS], ids=[o[0] for o in SINGLE_OPS]
)
def test_each_operation_is_one_round_trip(
    store: RedisBackend,
    raw: redis.Redis,
    sends: SendCounter,
    op: Callable[[RedisBackend], object],
    expected: dict[str, int],
) -> None:
    """Every operation, batches included, is one socket write with only the expected commands."""
    raw.set("k", b"v")
    raw.set("n", b"1")
    store.cas("k", b"v", TOKEN_V)  # loads the script, so cas needs no SCRIPT LOAD below
    reset_stats(raw)
    sends.sends = 0
    op(store)
    assert sends.sends == 1
    assert command_calls(raw) == expected


def test_get_many_of_1000_keys_is_one_mget(store: RedisBackend, raw: redis.Redis) -> None:
    """get_many of 1,000 keys is exactly one MGET and no GET; with misses, one EXISTS of
    the missing keys (to tell them from keys of another type) follows."""
    keys = [f"key:{i}" for i in range(1000)]
    raw.mset({key: key.encode() for key in keys[::2]})
    reset_stats(raw)
    assert store.get_many(keys[::2]) == [key.encode() for key in keys[::2]]
    assert command_calls(raw) == {"mget": 1}
    reset_stats(raw)
    values = store.get_many(keys)
    assert command_calls(raw) == {"mget": 1, "exists": 1}
    assert values == [key.encode() if i % 2 == 0 else None for i, key in enumerate(keys)]


@pytest.mark.parametrize(
    ("op", "expected"),
    [
        (lambda b: b.get_many(["k", "x", "y", "x"]), {"mget": 1, "exists": 1}),
        (lambda b: b.add("k", b"w"), {"set": 1, "type": 1}),
        (lambda b: b.add_many([("a", b"1"), ("k", b"2")]), {"set": 2, "type": 1}),
    ],
    ids=["get_many with misses", "refused add", "add_many with a refusal"],
)
def test_misses_and_refusals_cost_one_more_round_trip(
    store: RedisBackend,
    raw: redis.Redis,
    sends: SendCounter,
    op: Callable[[RedisBackend], object],
    expected: dict[str, int],
) -> None:
    """A get_many with misses and a refused add check for keys of another Redis type in one
    more round trip (EXISTS of the misses, TYPE of the refused keys)."""
    raw.set("k", b"v")
    reset_stats(raw)
    sends.sends = 0
    op(store)
    assert sends.sends == 2
    assert command_calls(raw) == expected


def test_set_many_with_ttl_is_one_pipeline(
    store: RedisBackend, raw: redis.Redis, sends: SendCounter
) -> None:
    """set_many of 1,000 pairs with a ttl sends one pipeline of 1,000 SET PX and nothing else."""
    items = [(f"key:{i}", b"%d" % i) for i in range(1000)]
    reset_stats(raw)
    sends.sends = 0
    store.set_many(items, ttl=60)
    assert sends.sends == 1
    assert command_calls(raw) == {"set": 1000}
    assert 59_000 < raw.pttl("key:999") <= 60_000
    assert raw.get("key:500") == b"500"


def test_set_many_without_ttl_is_one_mset(store: RedisBackend, raw: redis.Redis) -> None:
    """set_many without a ttl is one MSET; a later duplicate key wins, as in MemoryBackend."""
    reset_stats(raw)
    store.set_many([("a", b"1"), ("b", b"2"), ("a", b"3")])
    assert command_calls(raw) == {"mset": 1}
    assert raw.mget(["a", "b"]) == [b"3", b"2"]


def test_add_is_one_set_nx_px(store: RedisBackend, raw: redis.Redis) -> None:
    """add creates the key with one SET NX PX: the TTL is there at once, no SETNX or EXPIRE ran."""
    reset_stats(raw)
    assert store.add("k", b"v", ttl=30) is True
    assert 0 < raw.pttl("k") <= 30_000
    calls = command_calls(raw)
    assert calls == {"set": 1, "pttl": 1}
    for name in ("setnx", "expire", "pexpire", "psetex", "setex"):
        assert name not in calls
    assert store.add("k", b"other", ttl=30) is False
    assert raw.get("k") == b"v"


def test_empty_batches_send_nothing(store: RedisBackend, sends: SendCounter) -> None:
    """Empty batches return at once without talking to the server."""
    sends.sends = 0
    assert store.get_many([]) == []
    assert store.delete_many([]) == 0
    store.set_many([])
    store.set_many([], ttl=5)
    assert store.add_many([]) == []
    assert store.replace_many([], ttl=5) == []
    assert sends.sends == 0


def test_batches_see_duplicates_in_order(store: RedisBackend) -> None:
    """A later duplicate in add_many sees the earlier one; delete_many counts a key once."""
    assert store.add_many([("a", b"1"), ("a", b"2"), ("b", b"3")]) == [True, False, True]
    assert store.get_many(["a", "a", "b"]) == [b"1", b"1", b"3"]
    assert store.replace_many([("a", b"4"), ("zz", b"5")]) == [True, False]
    assert store.delete_many(["a", "a", "zz"]) == 1


def test_bad_input_sends_nothing(store: RedisBackend, sends: SendCounter) -> None:
    """A bad key, value or ttl raises the shared checks' error before any I/O."""
    sends.sends = 0
    with pytest.raises(TypeError, match="keys must be str"):
        store.get(b"k")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="keys must be str"):
        store.get_many(["a", 1])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="must be bytes"):
        store.set("k", "text")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be bytes"):
        store.set_many([("a", b"1"), ("b", 2)], ttl=5)  # type: ignore[list-item]
    with pytest.raises(InvalidTTL):
        store.add("k", b"v", ttl=-1)
    with pytest.raises(TypeError, match="delta must be an int"):
        store.incr("n", 1.5)  # type: ignore[arg-type]
    assert sends.sends == 0


# -- values ---------------------------------------------------------------------


def test_binary_values_round_trip(store: RedisBackend, raw: redis.Redis) -> None:
    """Values with NUL, 0xff and CRLF bytes, bytearray and memoryview are stored byte for byte."""
    value = b"\x00\xff\r\n\x00" + bytes(range(256))
    store.set("bin", value)
    assert store.get("bin") == value
    store.set("ba", bytearray(value))  # type: ignore[arg-type]
    store.set("mv", memoryview(value))  # type: ignore[arg-type]
    assert store.get_many(["ba", "mv"]) == [value, value]
    assert raw.get("bin") == value


def test_five_megabyte_value_round_trips(store: RedisBackend) -> None:
    """A 5 MB value is stored and read back whole."""
    value = bytes(range(256)) * (5 * 1024 * 1024 // 256)
    store.set("big", value, ttl=60)
    assert store.get("big") == value
    got = store.gets("big")
    assert got is not None
    assert got[0] == value


def test_unicode_keys_round_trip(store: RedisBackend, raw: redis.Redis) -> None:
    """str keys are sent as UTF-8."""
    store.set("ключ:🔑", b"v")
    assert raw.get("ключ:🔑".encode()) == b"v"
    assert store.get("ключ:🔑") == b"v"


def test_key_utf8_cannot_encode_is_a_backend_error(store: RedisBackend) -> None:
    """A key with a lone surrogate cannot be sent as UTF-8: BackendError naming the key."""
    with pytest.raises(BackendError, match="ud800") as info:
        store.set("a\ud800", b"v")
    assert isinstance(info.value.__cause__, UnicodeEncodeError)


# -- TTL ------------------------------------------------------------------------


def test_set_ttl_expires(store: RedisBackend, raw: redis.Redis) -> None:
    """set with ttl=0.3 gives a PTTL in (0, 300] ms, and the key is gone after 0.5 s."""
    store.set("k", b"v", ttl=0.3)
    assert 0 < raw.pttl("k") <= 300
    time.sleep(0.5)
    assert store.get("k") is None
    assert store.exists("k") is False


def test_ttl_rounds_up_to_milliseconds(store: RedisBackend, raw: redis.Redis) -> None:
    """A sub-millisecond ttl becomes 1 ms, never 0 (which Redis would refuse)."""
    store.set("k", b"v", ttl=1e-9)
    assert raw.pttl("k") in (-2, 0, 1)


def test_ttl_applies_to_every_write(store: RedisBackend, raw: redis.Redis) -> None:
    """add, replace, cas, add_many and replace_many set the TTL they are given."""
    assert store.add("a", b"1", ttl=10)
    assert 9_000 < raw.pttl("a") <= 10_000
    assert store.replace("a", b"2", ttl=20)
    assert 19_000 < raw.pttl("a") <= 20_000
    got = store.gets("a")
    assert got is not None
    assert store.cas("a", b"3", got[1], ttl=30)
    assert 29_000 < raw.pttl("a") <= 30_000
    assert store.add_many([("b", b"1")], ttl=40) == [True]
    assert 39_000 < raw.pttl("b") <= 40_000
    assert store.replace_many([("b", b"2")], ttl=50) == [True]
    assert 49_000 < raw.pttl("b") <= 50_000


@pytest.mark.parametrize(
    "write",
    [
        lambda b, t: b.set("k", b"new"),
        lambda b, t: b.replace("k", b"new"),
        lambda b, t: b.cas("k", b"new", t),
        lambda b, t: b.set_many([("k", b"new")]),
        lambda b, t: b.replace_many([("k", b"new")]),
    ],
    ids=["set", "replace", "cas", "set_many", "replace_many"],
)
def test_write_without_ttl_clears_ttl(
    store: RedisBackend, raw: redis.Redis, write: Callable[[RedisBackend, object], object]
) -> None:
    """A write without a ttl removes the TTL the key had (PTTL -1)."""
    store.set("k", b"old", ttl=60)
    got = store.gets("k")
    assert got is not None
    write(store, got[1])
    assert raw.get("k") == b"new"
    assert raw.pttl("k") == -1


def keep_ttl_write(store: RedisBackend, method: str, key: str, value: bytes) -> None:
    """Rewrite ``key`` with ``ttl=KEEP_TTL`` through ``method``; it must be stored."""
    if method == "replace":
        assert store.replace(key, value, ttl=KEEP_TTL) is True
    elif method == "replace_many":
        assert store.replace_many([(key, value)], ttl=KEEP_TTL) == [True]
    else:
        got = store.gets(key)
        assert got is not None
        assert store.cas(key, value, got[1], ttl=KEEP_TTL) is True


@pytest.mark.parametrize("method", ["replace", "replace_many", "cas"])
def test_keep_ttl_keeps_the_remaining_ttl(
    store: RedisBackend, raw: redis.Redis, method: str
) -> None:
    """KEEP_TTL sends KEEPTTL: the remaining PTTL is kept (not reset, not cleared), and a key
    without expiry keeps none."""
    store.set("k", b"old", ttl=100)
    time.sleep(0.2)
    keep_ttl_write(store, method, "k", b"new")
    remaining = raw.pttl("k")
    assert 90_000 < remaining <= 99_800
    assert raw.get("k") == b"new"
    store.set("forever", b"old")
    keep_ttl_write(store, method, "forever", b"new")
    assert raw.pttl("forever") == -1
    assert raw.get("forever") == b"new"


def test_incr_creates_at_zero_and_keeps_ttl(store: RedisBackend, raw: redis.Redis) -> None:
    """incr starts an absent counter at 0 and keeps a counter's TTL."""
    assert store.incr("n") == 1
    assert raw.pttl("n") == -1
    store.set("m", b"10", ttl=60)
    assert store.incr("m", -15) == -5
    assert 59_000 < raw.pttl("m") <= 60_000
    assert store.get("m") == b"-5"


@pytest.mark.parametrize(
    "write",
    [
        lambda b: b.set("k", b"v", ttl=1e18),
        lambda b: b.add("k", b"v", ttl=1e18),
        lambda b: b.replace("k", b"v", ttl=1e18),
        lambda b: b.cas("k", b"v", TOKEN_V, ttl=1e18),
        lambda b: b.set_many([("k", b"v")], ttl=1e18),
        lambda b: b.add_many([("k", b"v")], ttl=1e18),
        lambda b: b.replace_many([("k", b"v")], ttl=10**30),
        lambda b: b.set("k", b"v", ttl=1.7e308),
    ],
    ids=["set", "add", "replace", "cas", "set_many", "add_many", "replace_many", "max-float"],
)
def test_huge_ttl_is_invalid_before_io(
    store: RedisBackend,
    raw: redis.Redis,
    sends: SendCounter,
    write: Callable[[RedisBackend], object],
) -> None:
    """A TTL too long for Redis' millisecond clock raises InvalidTTL and writes nothing."""
    sends.sends = 0
    with pytest.raises(InvalidTTL, match="too long for Redis"):
        write(store)
    assert sends.sends == 0
    assert raw.exists("k") == 0


def test_redis_refusing_the_expiry_is_invalid_ttl(
    store: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis' own "invalid expire time" reply (past a lifted bound) becomes InvalidTTL."""
    monkeypatch.setattr(_redis_ops, "MAX_TTL_MS", 2**64)
    with pytest.raises(InvalidTTL, match="invalid expire time") as info:
        store.set("k", b"v", ttl=(2**63 - 1000) / 1000)
    assert info.value.key == "k"
    assert isinstance(info.value.__cause__, redis.exceptions.ResponseError)
    assert store.get("k") is None


# -- incr and server-side errors ------------------------------------------------


def test_incr_non_integer_is_backend_error(store: RedisBackend) -> None:
    """incr on a value that is not an integer raises BackendError naming the key, chained."""
    store.set("word", b"hello")
    with pytest.raises(BackendError, match="'word'") as info:
        store.incr("word")
    exc = info.value
    assert type(exc) is BackendError
    assert exc.key == "word"
    assert exc.server == store.server
    assert store.server in str(exc)
    assert isinstance(exc.__cause__, redis.exceptions.ResponseError)
    assert store.get("word") == b"hello"


def test_incr_overflow_is_backend_error(store: RedisBackend) -> None:
    """Redis counters are signed 64-bit: overflowing one is a BackendError."""
    store.set("n", str(2**63 - 1).encode())
    with pytest.raises(BackendError, match="overflow"):
        store.incr("n")


def test_wrong_type_key_is_backend_error(store: RedisBackend, raw: redis.Redis) -> None:
    """A key holding a non-string Redis type makes GET and cas fail with BackendError."""
    raw.rpush("list", b"x")
    with pytest.raises(BackendError, match="WRONGTYPE") as info:
        store.get("list")
    assert isinstance(info.value.__cause__, redis.exceptions.ResponseError)
    with pytest.raises(BackendError, match="'list'"):
        store.cas("list", b"v", TOKEN_V)


# -- compare-and-set ------------------------------------------------------------


def test_gets_token_is_sha1_of_value(store: RedisBackend) -> None:
    """gets returns the value and its SHA-1 hex digest; None for an absent key."""
    store.set("k", b"v")
    assert store.gets("k") == (b"v", TOKEN_V)
    assert store.gets("absent") is None


def test_cas_succeeds_once_then_token_is_stale(store: RedisBackend) -> None:
    """cas with a fresh token stores; the same token after that write (or any other) fails."""
    store.set("k", b"v")
    got = store.gets("k")
    assert got is not None
    assert store.cas("k", b"w", got[1]) is True
    assert store.get("k") == b"w"
    assert store.cas("k", b"x", got[1]) is False
    fresh = store.gets("k")
    assert fresh is not None
    store.set("k", b"someone else")
    assert store.cas("k", b"x", fresh[1]) is False
    assert store.get("k") == b"someone else"


def test_cas_after_delete_is_false(store: RedisBackend) -> None:
    """A token for a key deleted since gets does not recreate it."""
    store.set("k", b"v")
    got = store.gets("k")
    assert got is not None
    store.delete("k")
    assert store.cas("k", b"w", got[1]) is False
    assert store.exists("k") is False


@pytest.mark.parametrize("token", [1, TOKEN_V.upper(), TOKEN_V[:-1], TOKEN_V.encode(), None, ""])
def test_cas_foreign_token_is_false(store: RedisBackend, token: object) -> None:
    """A token gets did not make (an int, bytes, the wrong form) gives False, never an error."""
    store.set("k", b"v")
    assert store.cas("k", b"w", token) is False
    assert store.get("k") == b"v"


def test_cas_compares_contents(store: RedisBackend) -> None:
    """The token stands for the contents: after A -> B -> A the old token still matches."""
    store.set("k", b"A")
    got = store.gets("k")
    assert got is not None
    store.set("k", b"B")
    store.set("k", b"A")
    assert store.cas("k", b"C", got[1]) is True


def test_cas_reloads_flushed_script(store: RedisBackend, raw: redis.Redis) -> None:
    """cas still works after the server forgets its scripts (SCRIPT FLUSH, restart)."""
    store.set("k", b"v")
    assert store.cas("k", b"w", TOKEN_V) is True
    raw.script_flush()
    got = store.gets("k")
    assert got is not None
    assert store.cas("k", b"x", got[1]) is True
    assert store.get("k") == b"x"


# -- server unavailable ---------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "op"),
    [
        ("GET", lambda b: b.get("user:1")),
        ("SET", lambda b: b.set("user:1", b"v", ttl=5)),
        ("CAS", lambda b: b.cas("user:1", b"v", TOKEN_V)),
        ("MGET", lambda b: b.get_many(["user:1", "user:2", "user:3"])),
        ("SET", lambda b: b.set_many([("user:1", b"v"), ("user:2", b"v")], ttl=5)),
    ],
    ids=["get", "set", "cas", "get_many", "set_many-pipeline"],
)
def test_closed_port_is_backend_unavailable(
    name: str, op: Callable[[RedisBackend], object]
) -> None:
    """A refused connection is a quick BackendUnavailable naming host:port and no password."""
    backend = down_backend()
    try:
        start = time.monotonic()
        with pytest.raises(BackendUnavailable) as info:
            op(backend)
        elapsed = time.monotonic() - start
    finally:
        backend.close()
    exc = info.value
    assert elapsed < 10
    assert exc.server == backend.server
    assert exc.server.startswith("127.0.0.1:")
    assert exc.server in str(exc)
    assert name in str(exc)
    assert "'user:1'" in str(exc)
    assert exc.key == "user:1"
    assert isinstance(exc.__cause__, redis.exceptions.ConnectionError)
    assert_no_password(exc, backend)


def test_batch_error_names_first_key_and_count() -> None:
    """A failed batch names how many keys it had and the first one."""
    backend = down_backend()
    try:
        with pytest.raises(BackendUnavailable, match=r"3 keys, the first 'a'"):
            backend.delete_many(["a", "b", "c"])
    finally:
        backend.close()


def test_closed_port_with_retries_is_still_quick() -> None:
    """An explicit no-backoff retry policy passes through from_url and fails fast."""
    retry = Retry(NoBackoff(), 2)
    backend = down_backend(retry=retry)
    try:
        start = time.monotonic()
        with pytest.raises(BackendUnavailable):
            backend.get("k")
        assert time.monotonic() - start < 10
        assert backend.client.connection_pool.connection_kwargs["retry"] is retry
    finally:
        backend.close()


def test_server_that_never_answers_is_backend_unavailable() -> None:
    """A read timeout (a server that accepts but never replies) is BackendUnavailable too."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        backend = RedisBackend.from_url(
            f"redis://:{PASSWORD}@127.0.0.1:{port}/0", socket_timeout=0.2
        )
        try:
            with pytest.raises(BackendUnavailable, match="unavailable") as info:
                backend.get("k")
        finally:
            backend.close()
    assert isinstance(info.value.__cause__, redis.exceptions.TimeoutError)
    assert info.value.server == f"127.0.0.1:{port}"
    assert_no_password(info.value, backend)


def test_password_in_redis_message_is_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Should redis-py ever echo the password in an error, the backend masks it."""
    backend = down_backend()

    def leaky(*args: Any, **kwargs: Any) -> None:
        raise redis.exceptions.ConnectionError(f"cannot auth with {PASSWORD}")

    monkeypatch.setattr(backend, "_execute", leaky)
    try:
        with pytest.raises(BackendUnavailable, match=r"\*\*\*") as info:
            backend.get("k")
    finally:
        backend.close()
    assert_no_password(info.value, backend)


def test_os_error_is_backend_unavailable(
    store: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bare OSError from the socket layer is translated to BackendUnavailable, chained."""
    error = OSError(101, "Network is unreachable")

    def failing(*args: Any, **kwargs: Any) -> None:
        raise error

    monkeypatch.setattr(store, "_execute", failing)
    with pytest.raises(BackendUnavailable, match="unreachable") as info:
        store.exists("k")
    assert info.value.__cause__ is error


# -- connections borrowed for writes that are never resent ---------------------


#: redis-py before 5.3 needs a command name to hand out a connection (and warns after).
OLD_POOLS = tuple(int(part) for part in redis.__version__.split(".")[:2]) < (5, 3)


class NamedConnectionPool(redis.ConnectionPool):
    """A pool whose get_connection needs a command name, as in redis-py < 5.3."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.names: list[str] = []

    def get_connection(self, command_name: str, *keys: Any, **options: Any) -> Any:  # type: ignore[override]
        """Record the name; hand out a connection as the base pool does."""
        self.names.append(command_name)
        if OLD_POOLS:
            return super().get_connection(command_name)
        return super().get_connection()


def test_a_pool_whose_get_connection_needs_a_command_name_is_given_one(
    redis_server: RedisServer,
) -> None:
    """Connections for writes that are never resent are borrowed from a pool that needs a
    command name with one, and from the current pool without one (no DeprecationWarning)."""
    pool = NamedConnectionPool(**redis.ConnectionPool.from_url(redis_server.url).connection_kwargs)
    server = _redis._Server.of_pool("old", pool)
    connection = server.acquire()
    connection.send_command("PING")
    assert connection.read_response() in (b"PONG", "PONG")
    server.release(connection)
    assert pool.names == ["_"]
    pool.disconnect()
    assert _redis._needs_command_name(pool.get_connection) is True
    assert _redis._needs_command_name(redis.ConnectionPool().get_connection) is OLD_POOLS
    assert _redis._needs_command_name(object()) is False  # type: ignore[arg-type]


def test_closed_single_connection_client_is_unavailable(redis_server: RedisServer) -> None:
    """A single_connection_client that was closed raises BackendUnavailable, not a crash."""
    backend = RedisBackend.from_url(redis_server.url, single_connection_client=True)
    assert backend.add("k", b"v") in (True, False)
    backend.close()
    with pytest.raises(BackendUnavailable, match="closed"):
        backend.add("k", b"v")


def test_key_utf8_cannot_encode_in_batches_is_a_backend_error(
    store: RedisBackend, raw: redis.Redis
) -> None:
    """A batch with a key that cannot be sent as UTF-8 is a BackendError (not unavailable)
    raised before anything is sent."""
    for write in (
        lambda: store.set_many([("ok", b"1"), ("a\ud800", b"v")]),
        lambda: store.set_many([("ok", b"1"), ("a\ud800", b"v")], ttl=5),
        lambda: store.add_many([("ok", b"1"), ("a\ud800", b"v")]),
        lambda: store.add("a\ud800", b"v"),
        lambda: store.incr("a\ud800"),
    ):
        with pytest.raises(BackendError, match="ud800") as info:
            write()
        assert not isinstance(info.value, BackendUnavailable)
        assert isinstance(info.value.__cause__, UnicodeEncodeError)
    assert raw.exists("ok") == 0


def test_redis_refusing_the_expiry_in_batches_is_invalid_ttl(
    store: RedisBackend, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Error replies inside a pipeline become the error of the first refused key."""
    monkeypatch.setattr(_redis_ops, "MAX_TTL_MS", 2**64)
    ttl = (2**63 - 1000) / 1000
    for write in (
        lambda: store.add("k", b"v", ttl=ttl),
        lambda: store.add_many([("k", b"v"), ("j", b"v")], ttl=ttl),
        lambda: store.set_many([("k", b"v"), ("j", b"v")], ttl=ttl),
        lambda: store.replace_many([("k", b"v")], ttl=ttl),
    ):
        with pytest.raises(InvalidTTL, match="invalid expire time") as info:
            write()
        assert info.value.key == "k"
    assert raw.exists("k", "j") == 0


def test_cas_error_after_reloading_the_script_is_a_backend_error(
    store: RedisBackend, raw: redis.Redis
) -> None:
    """EVALSHA answered NOSCRIPT, then EVAL fails on a list key: BackendError naming it."""
    raw.rpush("list", b"x")
    raw.script_flush()
    with pytest.raises(BackendError, match="WRONGTYPE") as info:
        store.cas("list", b"v", TOKEN_V)
    assert info.value.key == "list"


@pytest.mark.parametrize(
    ("version", "expected"),
    [("5.2.1", (5, 2)), ("8.1.0", (8, 1)), ("6.0.0b2", (6, 0)), ("7", (7, 0)), ("", (0, 0))],
)
def test_redis_version_is_read_once_as_major_minor(version: str, expected: tuple[int, int]) -> None:
    """The redis-py version picks the retry rule (5.x retries only listed errors)."""
    assert _redis._version(type("module", (), {"__version__": version})) == expected
