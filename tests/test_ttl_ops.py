"""touch / touch_many / ttl_of and Counter, on every backend (real servers)."""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated

import pytest

import cacheorm as co
from cacheorm.testing import CapabilityContract
from tests.conftest import FakeClock
from tests.servers import RedisClusterServer


@dataclasses.dataclass
class User:
    id: Annotated[int, co.Field(primary_key=True)]
    name: str


class TestRedisClusterCapabilities(CapabilityContract):
    """The capability contract on a Redis Cluster (SCAN on every primary)."""

    capabilities = frozenset({"ttl", "counter", "scan"})

    @pytest.fixture
    def backend(self, redis_cluster_backend: co.RedisBackend) -> co.Backend:
        """A RedisBackend on the flushed cluster."""
        return redis_cluster_backend


class TestMemcachedPoolCapabilities(CapabilityContract):
    """The capability contract on a pool of three memcached servers."""

    capabilities = frozenset({"ttl", "counter"})
    expiry_slack = 2.0
    ttl_precision = 2.0

    @pytest.fixture
    def backend(self, memcached_pool_backend: co.MemcachedBackend) -> co.Backend:
        """A MemcachedBackend on the flushed pool."""
        return memcached_pool_backend


# -- the repository -------------------------------------------------------------------


def test_touch_and_ttl_of_on_every_backend(backend: co.Backend) -> None:
    """touch gives a record the repository's TTL or the one passed; ttl_of reads it;
    an absent record is False for touch and NotFound for ttl_of."""
    users = co.Repository(User, backend=backend, ttl=300)
    users.create(User(1, "Sam"))
    users.save(User(2, "Kim"), ttl=None)
    left = users.ttl_of(1)
    assert left is not None
    assert 290 < left <= 302
    assert users.ttl_of(2) is None
    assert users.touch(2) is True  # the repository's ttl
    left = users.ttl_of(2)
    assert left is not None
    assert 290 < left <= 302
    assert users.touch(1, ttl=None) is True
    assert users.ttl_of(1) is None
    assert users.touch(3) is False
    assert users.get_or_none(3) is None
    assert users.touch_many([1, 3, 2], ttl=1000) == [True, False, True]
    assert users.touch_many([]) == []
    for pk in (1, 2):
        left = users.ttl_of(pk)
        assert left is not None
        assert 990 < left <= 1002
    with pytest.raises(co.NotFound) as info:
        users.ttl_of(3)
    assert info.value.key == "user:3"
    assert "User 3 not found" in str(info.value)
    assert users.get(1) == User(1, "Sam")
    with pytest.raises(co.InvalidTTL):
        users.touch(1, ttl=-5)


def test_a_touched_record_expires_on_the_new_ttl(clock: FakeClock) -> None:
    """On the memory backend's clock: touch shortens or lengthens a record's life."""
    users = co.Repository(User, backend=co.MemoryBackend(clock=clock), ttl=10)
    users.save_many([User(1, "a"), User(2, "b")])
    assert users.touch(1, ttl=100) is True
    assert users.ttl_of(1) == 100
    clock.advance(50)
    assert users.get_or_none(2) is None
    assert users.get(1).name == "a"
    assert users.ttl_of(1) == 50
    clock.advance(50)
    assert users.get_or_none(1) is None
    assert users.touch(1) is False


def test_touch_keeps_the_cas_token_on_memory_and_filesystem(tmp_path: Path) -> None:
    """A touch changes the TTL, not the value: a gets token taken before stays valid."""
    for store in (co.MemoryBackend(), co.FileSystemBackend(tmp_path / "s")):
        store.set("k", b"v")
        got = store.gets("k")
        assert got is not None
        assert store.touch("k", 60) is True
        assert store.cas("k", b"w", got[1]) is True


class _Plain:
    """A third-party backend that predates the optional capabilities."""

    def __init__(self) -> None:
        self._inner = co.MemoryBackend()

    def __getattr__(self, name: str) -> object:
        if name in ("touch", "touch_many", "ttl_of", "counter_add", "scan"):
            raise AttributeError(name)
        return getattr(self._inner, name)

    def get(self, key: str, /) -> bytes | None:
        return self._inner.get(key)

    def get_many(self, keys: Sequence[str], /) -> list[bytes | None]:
        return self._inner.get_many(keys)

    def set(self, key: str, value: bytes, /, ttl: float | None = None) -> None:
        self._inner.set(key, value, ttl)

    def set_many(self, items: Sequence[tuple[str, bytes]], /, ttl: float | None = None) -> None:
        self._inner.set_many(items, ttl)

    def add(self, key: str, value: bytes, /, ttl: float | None = None) -> bool:
        return self._inner.add(key, value, ttl)

    def add_many(
        self, items: Sequence[tuple[str, bytes]], /, ttl: float | None = None
    ) -> list[bool]:
        return self._inner.add_many(items, ttl)

    def replace(self, key: str, value: bytes, /, ttl: co._ttl.BackendTTL = None) -> bool:
        return self._inner.replace(key, value, ttl)

    def replace_many(
        self, items: Sequence[tuple[str, bytes]], /, ttl: co._ttl.BackendTTL = None
    ) -> list[bool]:
        return self._inner.replace_many(items, ttl)

    def delete(self, key: str, /) -> bool:
        return self._inner.delete(key)

    def delete_many(self, keys: Sequence[str], /) -> int:
        return self._inner.delete_many(keys)

    def exists(self, key: str, /) -> bool:
        return self._inner.exists(key)

    def incr(self, key: str, delta: int = 1, /) -> int:
        return self._inner.incr(key, delta)

    def gets(self, key: str, /) -> tuple[bytes, co.CasToken] | None:
        return self._inner.gets(key)

    def cas(
        self, key: str, value: bytes, token: co.CasToken, /, ttl: co._ttl.BackendTTL = None
    ) -> bool:
        return self._inner.cas(key, value, token, ttl)

    def close(self) -> None:
        self._inner.close()


class TestAThirdPartyBackendWithoutCapabilities(CapabilityContract):
    """A backend with only the Backend protocol passes: each capability is refused clearly."""

    capabilities = frozenset()

    @pytest.fixture
    def backend(self) -> co.Backend:
        """The plain backend."""
        return _Plain()


def test_a_backend_without_capabilities_still_works_for_everything_else() -> None:
    """The optional capabilities are optional: the Backend protocol alone still suffices."""
    plain = _Plain()
    assert isinstance(plain, co.Backend)
    assert not isinstance(plain, co.TTLBackend)
    users = co.Repository(User, backend=plain)
    users.create(User(1, "a"))
    assert users.get(1).name == "a"
    with pytest.raises(
        co.ConfigurationError, match=r"TTLBackend.*tests\.test_ttl_ops\._Plain does not have it"
    ):
        users.touch(1)


# -- Counter ---------------------------------------------------------------------------


def test_counter_on_every_backend(backend: co.Backend) -> None:
    """incr creates with the TTL, decr stops at 0, get reads, reset deletes."""
    hits = co.Counter(backend, "page:/home page", ttl=120)
    assert hits.key == "counter:page%3A/home%20page"
    assert hits.name == "page:/home page"
    assert hits.ttl == 120
    assert hits.get() == 0
    assert hits.incr() == 1
    assert hits.incr(5) == 6
    assert hits.decr(2) == 4
    assert hits.get() == 4
    assert hits.decr(100) == 0
    assert hits.get() == 0
    assert hits.incr(0) == 0
    assert isinstance(backend, co.TTLBackend)
    left = backend.ttl_of(hits.key)
    assert left is not None
    assert 100 < left <= 122
    assert hits.reset() is True
    assert hits.reset() is False
    assert hits.get() == 0
    assert hits.decr() == 0
    assert hits.get() == 0
    other = co.Counter(backend, "page:/home page", namespace="visits", prefix="app:")
    assert other.key == "app:visits:page%3A/home%20page"
    assert other.incr(3) == 3
    assert backend.ttl_of(other.key) == math.inf
    assert "Counter('app:visits:page%3A/home%20page'" in repr(other)


def test_a_counter_expires_after_the_ttl_of_its_creation(clock: FakeClock) -> None:
    """The TTL runs from creation: counting does not extend it (a fixed window)."""
    store = co.MemoryBackend(clock=clock)
    window = co.Counter(store, "login:sam", ttl=60)
    assert window.incr() == 1
    clock.advance(40)
    assert window.incr() == 2
    clock.advance(25)
    assert window.get() == 0
    assert window.incr() == 1


def test_counter_refuses_bad_arguments() -> None:
    """Bad names, namespaces, prefixes, TTLs and amounts are clear errors naming the key."""
    store = co.MemoryBackend()
    for bad in ("", None, 5):
        with pytest.raises(co.ConfigurationError, match="name must be a non-empty str"):
            co.Counter(store, bad)  # type: ignore[arg-type]
    with pytest.raises(co.ConfigurationError, match="namespace must be a non-empty str"):
        co.Counter(store, "x", namespace="")
    with pytest.raises(co.ConfigurationError, match="prefix must be a str"):
        co.Counter(store, "x", prefix=None)  # type: ignore[arg-type]
    with pytest.raises(co.InvalidTTL):
        co.Counter(store, "x", ttl=-1)
    counter = co.Counter(store, "x")
    for amount in (-1, 1.5, True, "2"):
        with pytest.raises(co.ValidationError, match=r"Counter 'counter:x': incr takes"):
            counter.incr(amount)  # type: ignore[arg-type]
        with pytest.raises(co.ValidationError, match=r"decr takes"):
            counter.decr(amount)  # type: ignore[arg-type]
    assert counter.get() == 0
    store.set(counter.key, b"not a number")
    with pytest.raises(co.BackendError, match="which is not a counter"):
        counter.get()
    with pytest.raises(co.ConfigurationError, match=r"_Plain does not have it"):
        co.Counter(_Plain(), "x")  # type: ignore[arg-type]


def test_concurrent_counter_increments_from_many_threads(backend: co.Backend) -> None:
    """Threads counting one new counter lose nothing, and it gets its TTL once."""
    counter = co.Counter(backend, "race", ttl=100)
    per_thread = 25

    def work() -> None:
        for _ in range(per_thread):
            counter.incr()

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counter.get() == 6 * per_thread
    assert isinstance(backend, co.TTLBackend)
    left = backend.ttl_of(counter.key)
    assert left is not None
    assert left <= 102


def test_memcached_counter_edge_cases(memcached_backend: co.MemcachedBackend) -> None:
    """Deltas beyond memcached's 64-bit counters are refused before anything is sent;
    a counter wrapping past 2**64 - 1 keeps counting; a negative stored value is refused."""
    with pytest.raises(co.BackendError, match="2\\*\\*64 - 1"):
        memcached_backend.counter_add("c", 2**64)
    with pytest.raises(co.BackendError, match="2\\*\\*64 - 1"):
        memcached_backend.counter_add("c", -(2**64))
    assert memcached_backend.get("c") is None
    memcached_backend.set("big", str(2**64 - 2).encode())
    assert memcached_backend.counter_add("big", 5) == 2**64 + 3
    memcached_backend.set("neg", b"-3")
    with pytest.raises(co.BackendError, match="not a non-negative integer"):
        memcached_backend.counter_add("neg", 1)


def test_redis_counter_script_is_reloaded_after_script_flush(
    redis_backend: co.RedisBackend,
) -> None:
    """After SCRIPT FLUSH the counter script is sent again with EVAL; nothing counts twice."""
    assert redis_backend.counter_add("c", 2, 50) == 2
    redis_backend.client.script_flush()
    assert redis_backend.counter_add("c", 3) == 5
    redis_backend.client.hset("h", "f", "v")
    with pytest.raises(co.BackendError):
        redis_backend.counter_add("h", 1)
    with pytest.raises(co.BackendError):
        redis_backend.touch("h", 5)
    with pytest.raises(co.BackendError, match="'h'"):
        redis_backend.ttl_of("h")
    redis_backend.client.script_flush()
    redis_backend.set("s", b"v", 20)
    left = redis_backend.ttl_of("s")
    assert left is not None
    assert 19 < left <= 20


def test_lazy_cluster_backend_can_start_with_a_scan(redis_cluster: RedisClusterServer) -> None:
    """A from_cluster backend whose first operation is a scan connects and scans every node."""
    store = co.RedisBackend.from_cluster(redis_cluster.startup_nodes)
    try:
        store.set_many([(f"lazy:{i}", b"v") for i in range(40)])
        store.close()
        store = co.RedisBackend.from_cluster(redis_cluster.startup_nodes)
        found = {key for keys in store.scan("lazy:", 10) for key in keys}
        assert found == {f"lazy:{i}" for i in range(40)}
        store.delete_many(sorted(found))
    finally:
        store.close()


@pytest.fixture
def redis_unreachable() -> Iterator[co.RedisBackend]:
    """A RedisBackend on a port nothing listens on."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = co.RedisBackend.from_url(f"redis://127.0.0.1:{port}", socket_connect_timeout=0.5)
    yield store
    store.close()


def test_unreachable_redis_is_backend_unavailable(redis_unreachable: co.RedisBackend) -> None:
    """touch, ttl_of and scan translate connection failures, naming the operation."""
    with pytest.raises(co.BackendUnavailable):
        redis_unreachable.touch("k", 5)
    with pytest.raises(co.BackendUnavailable):
        redis_unreachable.ttl_of("k")
    with pytest.raises(co.BackendUnavailable, match="SCAN"):
        list(redis_unreachable.scan("k"))


def test_unreachable_memcached_is_backend_unavailable() -> None:
    """touch and ttl_of on a memcached nobody listens on raise BackendUnavailable."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = co.MemcachedBackend.from_servers([f"127.0.0.1:{port}"], connect_timeout=0.5)
    try:
        with pytest.raises(co.BackendUnavailable, match="touching"):
            store.touch_many(["a", "b"], 5)
        with pytest.raises(co.BackendUnavailable):
            store.ttl_of("a")
        with pytest.raises(co.BackendUnavailable):
            store.counter_add("a", 1)
    finally:
        store.close()


def test_redis_touch_script_is_reloaded_after_script_flush(
    redis_backend: co.RedisBackend, redis_cluster_backend: co.RedisBackend
) -> None:
    """After SCRIPT FLUSH, touch_many sends the script again with EVAL (server and cluster)."""
    for store in (redis_backend, redis_cluster_backend):
        store.set_many([(f"t{i}", b"v") for i in range(6)])
        assert store.touch_many([f"t{i}" for i in range(3)], 50) == [True] * 3
        store.client.script_flush()
        assert store.touch_many([f"t{i}" for i in range(7)], None) == [True] * 6 + [False]
        assert store.ttl_of("t0") == math.inf


def test_counters_refuse_integers_too_long_to_read(tmp_path: Path) -> None:
    """A stored integer of more digits than int() accepts is a BackendError, not a crash."""
    for store in (co.MemoryBackend(), co.FileSystemBackend(tmp_path / "s")):
        store.set("huge", b"9" * 5000)
        with pytest.raises(co.BackendError, match="too long an integer"):
            store.counter_add("huge", 1)
        assert store.get("huge") == b"9" * 5000
