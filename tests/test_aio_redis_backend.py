"""AsyncRedisBackend on a real redis-server: every operation, its errors, and parity with
RedisBackend (the same calls on both give the same results and the same errors)."""

from __future__ import annotations

import asyncio
import math
import shutil
import ssl
import sys
import types
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest

import cacheorm as co
from cacheorm._aio_redis import AsyncRedisBackend
from cacheorm._backend import AsyncBackend, AsyncCounterBackend, AsyncScanBackend, AsyncTTLBackend
from cacheorm._errors import (
    BackendError,
    BackendUnavailable,
    BatchWriteError,
    ConfigurationError,
    InvalidTTL,
)
from cacheorm._resp import ReplyError
from cacheorm._ttl import KEEP_TTL
from tests import test_redis_backend as sync_tests
from tests.servers import RedisServer, ServerProcess, closed_port, free_port

redis = pytest.importorskip("redis")

#: The TLS server fixture of the sync tests (a fresh self-signed certificate).
tls_redis = sync_tests.tls_redis

T = TypeVar("T")


def run(main: Callable[[], Awaitable[T]]) -> T:
    """Run ``main()`` in a fresh event loop."""

    async def wrapped() -> T:
        return await main()

    return asyncio.run(wrapped())


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[Any]:
    """A plain redis-py client on the session's server, its database flushed."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def sync_store(redis_server: RedisServer, raw: Any) -> Iterator[co.RedisBackend]:
    """The sync backend on the same server, for parity checks."""
    store = co.RedisBackend.from_url(redis_server.url)
    yield store
    store.close()


def with_backend(url: str, body: Callable[[AsyncRedisBackend], Awaitable[T]], **options: Any) -> T:
    """Run ``body(backend)`` on a fresh AsyncRedisBackend for ``url``, closed after."""

    async def main() -> T:
        backend = AsyncRedisBackend.from_url(url, **options)
        assert isinstance(backend, AsyncRedisBackend)
        async with backend:
            return await body(backend)

    return asyncio.run(main())


def test_implements_every_async_protocol(redis_server: RedisServer) -> None:
    """The backend is an AsyncBackend with the TTL, counter and scan capabilities."""

    async def body(backend: AsyncRedisBackend) -> None:
        assert isinstance(backend, AsyncBackend)
        assert isinstance(backend, AsyncTTLBackend)
        assert isinstance(backend, AsyncCounterBackend)
        assert isinstance(backend, AsyncScanBackend)

    with_backend(redis_server.url, body)


def test_every_operation(redis_server: RedisServer, raw: Any) -> None:
    """Each operation does what the sync one does, on a live server."""

    async def body(b: AsyncRedisBackend) -> None:
        assert await b.get("k") is None
        await b.set("k", b"v")
        assert await b.get("k") == b"v"
        assert await b.exists("k") is True
        assert await b.exists("nope") is False
        await b.set_many([("a", b"1"), ("b", b"2")])
        assert await b.get_many(["a", "b", "c"]) == [b"1", b"2", None]
        assert await b.get_many([]) == []
        await b.set_many([])
        await b.set_many([("t1", b"x"), ("t2", bytearray(b"y"))], ttl=100)  # type: ignore[list-item]
        assert 99 < raw.pttl("t1") / 1000 <= 100
        assert await b.add("k", b"other") is False
        assert await b.add("new", b"n", ttl=50) is True
        assert await b.add_many([("new", b"x"), ("n2", b"y"), ("n2", b"z")]) == [False, True, False]
        assert await b.add_many([], ttl=5) == []
        assert await b.replace("k", b"v2") is True
        assert await b.replace("absent", b"v") is False
        assert await b.replace_many([("k", b"v3"), ("absent", b"v")]) == [True, False]
        assert await b.replace_many([]) == []
        assert await b.get("k") == b"v3"
        assert await b.delete("k") is True
        assert await b.delete("k") is False
        assert await b.delete_many(["a", "b", "zz"]) == 2
        assert await b.delete_many([]) == 0
        assert await b.incr("c") == 1
        assert await b.incr("c", 41) == 42
        assert await b.incr("c", -50) == -8
        got = await b.gets("new")
        assert got is not None
        value, token = got
        assert value == b"n"
        assert await b.cas("new", b"n2", token) is True
        assert await b.cas("new", b"n3", token) is False
        assert await b.cas("new", b"n3", "not a token") is False
        assert await b.gets("absent") is None
        assert await b.cas("absent", b"x", token) is False
        assert await b.get("new") == b"n2"
        assert await b.ttl_of("new") == math.inf
        assert await b.touch("new", 20) is True
        left = await b.ttl_of("new")
        assert left is not None
        assert 19 < left <= 20
        assert await b.touch("new") is True
        assert await b.ttl_of("new") == math.inf
        assert await b.touch("absent", 5) is False
        assert await b.ttl_of("absent") is None
        assert await b.touch_many([], 5) == []
        assert await b.counter_add("ctr", 5, ttl=30) == 5
        assert await b.counter_add("ctr", -10) == 0
        assert 29 < raw.pttl("ctr") / 1000 <= 30

    with_backend(redis_server.url, body)


def test_keep_ttl(redis_server: RedisServer, raw: Any) -> None:
    """replace, replace_many and cas with KEEP_TTL keep the remaining TTL (KEEPTTL)."""

    async def body(b: AsyncRedisBackend) -> None:
        await b.set_many([("a", b"1"), ("b", b"2")], ttl=100)
        assert await b.replace("a", b"x", ttl=KEEP_TTL) is True
        assert await b.replace_many([("b", b"y")], ttl=KEEP_TTL) == [True]
        got = await b.gets("a")
        assert got is not None
        assert await b.cas("a", b"z", got[1], ttl=KEEP_TTL) is True
        assert raw.pttl("a") > 90_000
        assert raw.pttl("b") > 90_000
        assert await b.replace("a", b"q") is True
        assert raw.pttl("a") == -1

    with_backend(redis_server.url, body)


def test_scan(redis_server: RedisServer, raw: Any) -> None:
    """scan lists the string keys under a prefix literally, in batches, skipping other types."""
    raw.mset({f"p*:{i}": b"v" for i in range(30)})
    raw.mset({"p*x": b"v", "px:1": b"v", "q:1": b"v"})
    raw.hset("p*:hash", "f", "v")
    raw.set(b"p*:\xff", b"v")

    async def body(b: AsyncRedisBackend) -> list[list[str]]:
        return [batch async for batch in b.scan("p*:", batch=7)]

    batches = with_backend(redis_server.url, body)
    assert len(batches) > 1
    keys = [key for batch in batches for key in batch]
    assert sorted(set(keys)) == sorted(f"p*:{i}" for i in range(30))


def test_bad_arguments_raise_before_io(redis_server: RedisServer) -> None:
    """Wrong types and TTLs are refused with the sync backend's exceptions."""

    async def body(b: AsyncRedisBackend) -> None:
        with pytest.raises(TypeError):
            await b.get(1)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await b.set("k", "str")  # type: ignore[arg-type]
        with pytest.raises(InvalidTTL):
            await b.set("k", b"v", ttl=-1)
        with pytest.raises(InvalidTTL, match="too long"):
            await b.add("k", b"v", ttl=1e300)
        with pytest.raises(TypeError, match="incr delta"):
            await b.incr("k", 1.5)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await b.counter_add("k", True)
        with pytest.raises(TypeError):
            b.scan(1)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="batch"):
            b.scan("p", batch=0)
        with pytest.raises(TypeError):
            await b.get_many(["a", 2])  # type: ignore[list-item]
        assert b._connection.connects == 0  # pyright: ignore[reportPrivateUsage]

    with_backend(redis_server.url, body)


def test_lone_surrogate_key_is_a_backend_error(redis_server: RedisServer) -> None:
    """A key that cannot be sent as UTF-8 is a BackendError naming it, as on the sync side."""

    async def body(b: AsyncRedisBackend) -> None:
        with pytest.raises(BackendError, match="GET"):
            await b.get("\ud800")
        with pytest.raises(BackendError, match="MSET"):
            await b.set_many([("\ud800", b"v")])
        with pytest.raises(BackendError, match="TYPE"):
            await b.exists("\ud800")

    with_backend(redis_server.url, body)


# -- parity with the sync backend -----------------------------------------------------

#: (name, steps): each step is (method, args, kwargs); both backends run them on a flushed db.
SCENARIOS: list[tuple[str, list[tuple[str, tuple[Any, ...], dict[str, Any]]]]] = [
    ("foreign get", [("get", ("h",), {})]),
    ("foreign gets", [("gets", ("h",), {})]),
    ("foreign exists", [("exists", ("h",), {})]),
    ("foreign get_many", [("get_many", (["a", "h", "l"],), {})]),
    ("foreign add", [("add", ("h", b"v"), {})]),
    ("foreign add_many", [("add_many", ([("n", b"v"), ("h", b"v")],), {})]),
    ("foreign add_many first", [("add_many", ([("h", b"v"), ("l", b"v")],), {})]),
    ("foreign replace", [("replace", ("h", b"v"), {})]),
    ("foreign replace_many", [("replace_many", ([("s", b"v"), ("h", b"v")],), {})]),
    ("foreign replace_many alone", [("replace_many", ([("h", b"v")],), {})]),
    ("foreign incr", [("incr", ("h",), {})]),
    ("foreign cas", [("cas", ("h", b"v", "0" * 40), {})]),
    ("foreign touch", [("touch", ("h", 5), {})]),
    ("foreign touch_many", [("touch_many", (["s", "h"], 5), {})]),
    ("foreign ttl_of", [("ttl_of", ("l",), {})]),
    ("foreign counter_add", [("counter_add", ("h", 1), {})]),
    ("set replaces foreign", [("set", ("h", b"v"), {}), ("get", ("h",), {})]),
    ("delete foreign", [("delete", ("h",), {}), ("delete_many", (["l", "s"],), {})]),
    ("incr non-integer", [("incr", ("s",), {})]),
    ("incr overflow", [("set", ("big", b"9223372036854775807"), {}), ("incr", ("big",), {})]),
    ("counter non-integer", [("counter_add", ("s", 1), {})]),
    ("set_many over foreign", [("set_many", ([("s", b"1"), ("h", b"2")],), {"ttl": 5})]),
    ("misses", [("get_many", (["x", "y"],), {}), ("exists", ("x",), {})]),
    ("keep ttl", [("replace", ("s", b"2"), {"ttl": KEEP_TTL}), ("ttl_of", ("s",), {})]),
]


def _seed(raw: Any) -> None:
    raw.flushdb()
    raw.hset("h", "f", "v")
    raw.rpush("l", "x")
    raw.set("s", b"str")


def _outcome(
    method: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[str, object]:
    try:
        return "ok", method(*args, **kwargs)
    except Exception as exc:
        return type(exc).__name__, (str(exc), getattr(exc, "key", None))


@pytest.mark.parametrize(("name", "steps"), SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_same_results_and_errors_as_the_sync_backend(
    redis_server: RedisServer,
    raw: Any,
    sync_store: co.RedisBackend,
    name: str,
    steps: list[tuple[str, tuple[Any, ...], dict[str, Any]]],
) -> None:
    """The sync and async backends give equal results, exception classes and messages."""
    _seed(raw)
    expected = [_outcome(getattr(sync_store, m), a, k) for m, a, k in steps]
    _seed(raw)

    async def body(b: AsyncRedisBackend) -> list[tuple[str, object]]:
        got: list[tuple[str, object]] = []
        for method, args, kwargs in steps:
            try:
                got.append(("ok", await getattr(b, method)(*args, **kwargs)))
            except Exception as exc:
                got.append((type(exc).__name__, (str(exc), getattr(exc, "key", None))))
        return got

    assert with_backend(redis_server.url, body) == expected
    assert any(kind != "ok" for kind, _ in expected) or name in (
        "set replaces foreign",
        "delete foreign",
        "misses",
        "keep ttl",
        "set_many over foreign",
    )


def test_noscript_falls_back_to_eval(redis_server: RedisServer, raw: Any) -> None:
    """After SCRIPT FLUSH, the scripts run through EVAL (and are cached again)."""

    async def body(b: AsyncRedisBackend) -> None:
        await b.set("k", b"v")
        got = await b.gets("k")
        assert got is not None
        raw.script_flush()
        assert await b.cas("k", b"w", got[1]) is True
        raw.script_flush()
        assert await b.touch_many(["k", "nope"], 10) == [True, False]
        raw.script_flush()
        assert await b.ttl_of("k") is not None
        raw.script_flush()
        assert await b.counter_add("c", 3) == 3

    with_backend(redis_server.url, body)


def test_batch_with_foreign_key_reports_what_was_written(
    redis_server: RedisServer, raw: Any
) -> None:
    """replace_many where one key is a hash: BatchWriteError lists the written pair."""
    raw.set("s", b"old")
    raw.hset("h", "f", "v")

    async def body(b: AsyncRedisBackend) -> None:
        with pytest.raises(BatchWriteError) as info:
            await b.replace_many([("s", b"new"), ("h", b"x")])
        assert info.value.written == ["s"]
        assert info.value.not_written == ["h"]
        assert info.value.unknown == []

    with_backend(redis_server.url, body)


# -- construction --------------------------------------------------------------------


def test_from_url_parts_and_repr() -> None:
    """from_url reads host, port, user, password and db; repr and errors never show the password."""
    backend = AsyncRedisBackend.from_url("redis://alice:s%40cret@127.0.0.1:7000/3")
    connection = backend._connection  # pyright: ignore[reportPrivateUsage]
    assert (connection.host, connection.port, connection.db) == ("127.0.0.1", 7000, 3)
    assert (connection.username, connection.password) == ("alice", "s@cret")
    assert backend.server == "127.0.0.1:7000"
    assert repr(backend) == "AsyncRedisBackend(server='127.0.0.1:7000', db=3)"
    assert "cret" not in repr(backend)
    options = AsyncRedisBackend.from_url(
        "redis://:pw@localhost/1", db=2, password="other", timeout=1, connect_timeout=2
    )._connection  # pyright: ignore[reportPrivateUsage]
    assert (options.db, options.password, options.timeout, options.connect_timeout) == (
        2,
        "other",
        1.0,
        2.0,
    )
    ipv6 = AsyncRedisBackend.from_url("redis://[::1]:6390")
    assert ipv6.server == "[::1]:6390"
    unix = AsyncRedisBackend.from_url("unix:///tmp/redis.sock?db=4")
    assert unix.server == "/tmp/redis.sock"
    assert unix._connection.db == 4  # pyright: ignore[reportPrivateUsage]
    tls = AsyncRedisBackend.from_url("rediss://example.com")
    assert isinstance(tls._connection.ssl, ssl.SSLContext)  # pyright: ignore[reportPrivateUsage]
    assert tls.server == "example.com:6379"


@pytest.mark.parametrize(
    ("url", "options", "message"),
    [
        ("http://localhost", {}, "must start with redis://"),
        ("localhost:6379", {}, "must start with redis://"),
        ("redis://:hunter2@localhost:99999", {}, "not a URL"),
        ("redis://:hunter2@localhost/x", {}, "database must be a number"),
        ("unix://", {}, "socket path"),
        ("redis://:hunter2@localhost", {"socket_timeout": 1}, "unknown option 'socket_timeout'"),
        ("redis://localhost", {"timeout": 0}, "timeout must be a positive number"),
        ("redis://localhost", {"connect_timeout": math.inf}, "connect_timeout must be"),
        ("redis://localhost", {"timeout": True}, "timeout must be"),
        ("redis://localhost", {"db": -1}, "db must be a database number"),
    ],
)
def test_from_url_refuses_bad_urls_and_options(
    url: str, options: dict[str, Any], message: str
) -> None:
    """A bad URL or option is a ConfigurationError naming it, the password masked."""
    with pytest.raises(ConfigurationError, match=message) as info:
        AsyncRedisBackend.from_url(url, **options)
    assert "hunter2" not in str(info.value)


def test_cluster_hooks_delegate(monkeypatch: pytest.MonkeyPatch) -> None:
    """from_url(cluster=True) and from_cluster hand over to AsyncRedisClusterBackend."""
    calls: list[tuple[str, object, dict[str, Any]]] = []

    class FakeCluster:
        @classmethod
        def from_url(cls, url: str, **options: Any) -> str:
            calls.append(("from_url", url, options))
            return "cluster backend"

        @classmethod
        def from_cluster(cls, nodes: object, **options: Any) -> str:
            calls.append(("from_cluster", nodes, options))
            return "cluster backend"

    module = types.ModuleType("cacheorm._aio_redis_cluster")
    module.AsyncRedisClusterBackend = FakeCluster  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cacheorm._aio_redis_cluster", module)
    built: object = AsyncRedisBackend.from_url("redis://n:7000", cluster=True, timeout=1)
    assert built == "cluster backend"
    assert str(AsyncRedisBackend.from_cluster(["n:7000"], timeout=2)) == "cluster backend"
    assert calls == [
        ("from_url", "redis://n:7000", {"timeout": 1}),
        ("from_cluster", ["n:7000"], {"timeout": 2}),
    ]


def test_unix_socket_url(redis_server: RedisServer) -> None:
    """unix:// reaches the server over its socket."""
    if redis_server.unix_url is None:
        pytest.skip("REDIS_URL given: no unix socket known")

    async def body(b: AsyncRedisBackend) -> bytes | None:
        await b.set("u", b"over unix")
        return await b.get("u")

    assert with_backend(redis_server.unix_url, body) == b"over unix"


def test_rediss_speaks_tls(tls_redis: tuple[str, str]) -> None:
    """rediss:// with an ssl_context verifying the server's certificate; a default context
    refuses the self-signed one (BackendUnavailable)."""
    url, ca = tls_redis
    context = ssl.create_default_context(cafile=ca)

    async def body(b: AsyncRedisBackend) -> bytes | None:
        await b.set("k", b"over TLS")
        return await b.get("k")

    assert with_backend(url, body, ssl_context=context) == b"over TLS"

    async def refused(b: AsyncRedisBackend) -> None:
        with pytest.raises(BackendUnavailable, match=r"CERTIFICATE_VERIFY_FAILED|certificate"):
            await b.get("k")

    with_backend(url, refused)


@pytest.fixture(scope="module")
def auth_server() -> Iterator[ServerProcess]:
    """A redis-server with a password for the default user and an ACL user."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    from tests.servers import _redis_process  # pyright: ignore[reportPrivateUsage]

    server = _redis_process(
        binary,
        free_port(),
        "--requirepass", "pa ss:w@rd",
        "--user", "bob", "on", ">bobpw", "~*", "+@all",
    )  # fmt: skip
    server.start(b"PING\r\n", b"-NOAUTH")
    yield server
    server.stop()


def test_auth_acl_db_and_masked_password(auth_server: ServerProcess) -> None:
    """Password and ACL user from the URL, db selection; a wrong password is BackendUnavailable
    whose message masks it."""
    address = auth_server.address

    async def write(b: AsyncRedisBackend) -> None:
        await b.set("who", b"default")

    with_backend(f"redis://:pa%20ss%3Aw%40rd@{address}/2", write)

    async def read(b: AsyncRedisBackend) -> bytes | None:
        return await b.get("who")

    assert with_backend(f"redis://bob:bobpw@{address}/2", read) == b"default"
    assert with_backend(f"redis://bob:bobpw@{address}/0", read) is None

    async def wrong(b: AsyncRedisBackend) -> None:
        with pytest.raises(BackendUnavailable, match="AUTH was refused") as info:
            await b.get("who")
        assert "wrongpass" not in str(info.value)
        assert info.value.server == address

    with_backend(f"redis://bob:wrongpass@{address}/0", wrong)


def test_unreachable_server_is_unavailable() -> None:
    """Nothing listening: every kind of operation raises BackendUnavailable naming the server."""
    port = closed_port()

    async def body(b: AsyncRedisBackend) -> None:
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: b.get("k"),
            lambda: b.set("k", b"v"),
            lambda: b.add("k", b"v"),
            lambda: b.incr("k"),
            lambda: b.cas("k", b"v", "0" * 40),
            lambda: b.counter_add("k", 1),
            lambda: b.touch("k", 1),
        ]
        for call in calls:
            with pytest.raises(BackendUnavailable, match=f"127.0.0.1:{port}") as info:
                await call()
            assert info.value.server == f"127.0.0.1:{port}"
        with pytest.raises(BatchWriteError) as batch:
            await b.set_many([("a", b"1"), ("b", b"2")])
        assert batch.value.not_written == ["a", "b"]
        assert batch.value.unknown == []
        with pytest.raises(BatchWriteError) as added:
            await b.add_many([("a", b"1")])
        assert added.value.not_written == ["a"]

    with_backend(f"redis://127.0.0.1:{port}", body, connect_timeout=1)


def test_closed_backend_is_unavailable(redis_server: RedisServer) -> None:
    """After aclose() a call raises BackendUnavailable; aclose() twice is fine."""

    async def main() -> None:
        backend = AsyncRedisBackend.from_url(redis_server.url)
        await backend.set("k", b"v")
        await backend.aclose()
        with pytest.raises(BackendUnavailable, match="closed"):
            await backend.get("k")
        await backend.aclose()

    run(main)


def test_loading_reply_is_unavailable() -> None:
    """A LOADING error reply (refused while the server loads) is BackendUnavailable."""
    backend = AsyncRedisBackend()
    error = backend._refused(  # pyright: ignore[reportPrivateUsage]
        "GET", "k", ReplyError("LOADING Redis is loading the dataset in memory")
    )
    assert isinstance(error, BackendUnavailable)
    assert error.key == "k"


def test_works_without_hiredis(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the pure-Python reader (no hiredis), every reply shape reads the same."""
    from cacheorm import _resp

    monkeypatch.setattr(_resp, "_HIREDIS", None)
    assert isinstance(_resp.make_reader(), _resp.PyReader)

    async def body(b: AsyncRedisBackend) -> None:
        await b.set_many([("nh:a", b"1"), ("nh:b", b"2" * 100_000)])
        assert await b.get_many(["nh:a", "nh:b", "nh:c"]) == [b"1", b"2" * 100_000, None]
        assert await b.incr("nh:n", 5) == 5
        assert [batch async for batch in b.scan("nh:a")] == [["nh:a"]]
        with pytest.raises(BackendError, match="not an integer"):
            await b.incr("nh:b")
        assert await b.delete_many(["nh:a", "nh:b", "nh:n"]) == 3

    with_backend(redis_server.url, body)


def test_under_trio_the_backend_says_to_use_asyncio(redis_server: RedisServer) -> None:
    """Awaited under trio: a ConfigurationError naming the ways to run it, nothing sent."""
    import trio

    store = AsyncRedisBackend.from_url(redis_server.url)

    async def main() -> None:
        await store.get("k")

    with pytest.raises(co.ConfigurationError, match="AsyncRedisBackend") as info:
        trio.run(main)
    assert "anyio's asyncio backend or trio-asyncio" in str(info.value)
    assert not store._connection.connected  # pyright: ignore[reportPrivateUsage]
