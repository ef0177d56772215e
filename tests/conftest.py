"""Shared fixtures: backends, a fake clock, serializer names."""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

import cacheorm as co
from cacheorm.testing import Portal
from tests.servers import (
    MemcachedServer,
    RedisClusterServer,
    RedisServer,
    ServerMissing,
    start_memcached,
    start_memcached_pool,
    start_redis,
    start_redis_cluster,
)

pytest_plugins = ["pytester"]

#: CI sets CACHEORM_REQUIRE_SERVERS=1: then no test may skip, so a missing
#: redis-server, memcached or optional dependency fails the run instead of
#: passing it quietly.
REQUIRE_SERVERS_ENV = "CACHEORM_REQUIRE_SERVERS"


def _forbid_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    if os.environ.get(REQUIRE_SERVERS_ENV) != "1" or not report.skipped:
        return
    if hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
    report.outcome = "failed"
    report.longrepr = f"skipped ({reason}), but {REQUIRE_SERVERS_ENV}=1 forbids skips"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[Any]:
    """Turn a skipped test into a failure when CACHEORM_REQUIRE_SERVERS=1."""
    outcome = yield
    _forbid_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[Any]:
    """Turn a skipped module (importorskip) into a failure when CACHEORM_REQUIRE_SERVERS=1."""
    outcome = yield
    _forbid_skip(outcome.get_result())


class FakeClock:
    """A clock the test moves by hand, so TTL tests never sleep."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    """A fresh fake clock."""
    return FakeClock()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """This session's Redis server: ``REDIS_URL``, or a redis-server started on a free port."""
    try:
        server = start_redis()
    except ServerMissing as exc:
        pytest.skip(str(exc))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def memcached_server() -> Iterator[MemcachedServer]:
    """This session's memcached: ``MEMCACHED_SERVERS``, or a memcached started on a free port."""
    try:
        server = start_memcached()
    except ServerMissing as exc:
        pytest.skip(str(exc))
    yield server
    server.stop()


@pytest.fixture
def redis_backend(redis_server: RedisServer) -> Iterator[co.RedisBackend]:
    """A RedisBackend on an empty database of this session's server."""
    store = co.RedisBackend.from_url(redis_server.url)
    store.client.flushdb()
    yield store
    store.close()


@pytest.fixture
def memcached_backend(memcached_server: MemcachedServer) -> Iterator[co.MemcachedBackend]:
    """A MemcachedBackend on this session's (flushed) memcached."""
    store = co.MemcachedBackend.from_servers(memcached_server.servers)
    store.client.flush_all(noreply=False)
    yield store
    store.close()


@pytest.fixture
def filesystem_backend(tmp_path: Path) -> Iterator[co.FileSystemBackend]:
    """A FileSystemBackend in a fresh directory."""
    store = co.FileSystemBackend(tmp_path / "store")
    yield store
    store.close()


BACKENDS = ["memory", "filesystem", "redis", "memcached", "redis_cluster", "memcached_pool"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, clock: FakeClock) -> Iterator[co.Backend]:
    """Every backend the repository suite runs against, each empty."""
    if request.param == "memory":
        store = co.MemoryBackend(clock=clock)
        yield store
        store.close()
    else:
        yield request.getfixturevalue(f"{request.param}_backend")


@pytest.fixture(params=["json", "msgpack", "pickle"])
def serializer_name(request: pytest.FixtureRequest) -> str:
    """Each built-in serializer."""
    return str(request.param)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServer]:
    """This session's Redis Cluster: ``REDIS_CLUSTER_NODES``, or 3 primaries started here."""
    try:
        cluster = start_redis_cluster()
    except ServerMissing as exc:
        pytest.skip(str(exc))
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def memcached_pool() -> Iterator[MemcachedServer]:
    """This session's 3 memcached: ``MEMCACHED_POOL_SERVERS``, or 3 started here."""
    try:
        pool = start_memcached_pool(3)
    except ServerMissing as exc:
        pytest.skip(str(exc))
    yield pool
    pool.stop()


@pytest.fixture
def redis_cluster_backend(redis_cluster: RedisClusterServer) -> Iterator[co.RedisBackend]:
    """A RedisBackend on a ``redis.cluster.RedisCluster`` client, every primary flushed."""
    cluster = pytest.importorskip("redis.cluster")
    nodes = []
    for address in redis_cluster.startup_nodes:
        host, _, port = address.rpartition(":")
        nodes.append(cluster.ClusterNode(host.strip("[]"), int(port)))
    client = cluster.RedisCluster(startup_nodes=nodes, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.flushall(target_nodes=cluster.RedisCluster.PRIMARIES)
        store = co.RedisBackend(client)
    except BaseException:
        client.close()
        raise
    yield store
    store.close()
    client.close()


@pytest.fixture
def memcached_pool_backend(memcached_pool: MemcachedServer) -> Iterator[co.MemcachedBackend]:
    """A MemcachedBackend on all servers of ``memcached_pool``, each flushed."""
    base = pytest.importorskip("pymemcache.client.base")
    for address in memcached_pool.servers:
        client = base.Client(address, connect_timeout=5, timeout=5)
        try:
            client.flush_all(noreply=False)
        finally:
            client.close()
    store = co.MemcachedBackend.from_servers(memcached_pool.servers)
    yield store
    store.close()


# --- async backends ------------------------------------------------------------------

ASYNC_BACKENDS = BACKENDS


def _async_class(name: str) -> Any:
    """``cacheorm.<name>``, or a test error saying it is missing (never a skip)."""
    cls = getattr(co, name, None)
    if cls is None:
        pytest.fail(
            f"cacheorm.{name} does not exist on this branch: the async backend fixtures need it",
            pytrace=False,
        )
    return cls


def async_backend_maker(
    request: pytest.FixtureRequest, kind: str, clock: Callable[[], float] | None = None
) -> Callable[[], Any]:
    """A callable that builds an empty async backend of ``kind`` (one of ``ASYNC_BACKENDS``).

    It runs on the loop that will use the backend (a :class:`~cacheorm.testing.Portal`'s).
    Memory and filesystem backends get ``clock`` (None: the real one); the server kinds use
    the servers of the sync fixtures of the same kind, which flush them first.
    """
    if kind == "memory":
        return lambda: co.AsyncMemoryBackend(clock=clock)
    if kind == "filesystem":
        directory = request.getfixturevalue("filesystem_backend").directory
        return lambda: co.AsyncFileSystemBackend(directory, clock=clock)
    if kind not in ASYNC_BACKENDS:
        raise ValueError(f"unknown async backend kind {kind!r}; one of {ASYNC_BACKENDS}")
    request.getfixturevalue(f"{kind}_backend")  # starts the server(s) and flushes them
    if kind == "redis":
        redis = _async_class("AsyncRedisBackend")
        url = request.getfixturevalue("redis_server").url
        return lambda: redis.from_url(url)
    if kind == "redis_cluster":
        redis = _async_class("AsyncRedisBackend")
        nodes = request.getfixturevalue("redis_cluster").startup_nodes
        return lambda: redis.from_cluster(nodes)
    memcached = _async_class("AsyncMemcachedBackend")
    pool = kind == "memcached_pool"
    servers = request.getfixturevalue("memcached_pool" if pool else "memcached_server").servers
    return lambda: memcached.from_servers(servers)


@pytest.fixture
def portal() -> Iterator[Portal]:
    """An asyncio event loop in a background thread; ``portal.call(coro)`` runs on it."""
    with Portal() as running:
        yield running


@pytest.fixture(params=ASYNC_BACKENDS)
def async_backend(
    request: pytest.FixtureRequest, portal: Portal, clock: FakeClock
) -> Iterator[co.AsyncBackend]:
    """Every async backend, each empty, built on ``portal``'s loop: use it there
    (``portal.call(...)``, or ``portal.wrap(...)``), then it is closed there.

    The memory backend runs on the fake ``clock``, as the sync ``backend`` fixture's does.
    """

    async def build() -> co.AsyncBackend:
        made: co.AsyncBackend = make()
        return made

    make = async_backend_maker(
        request, str(request.param), clock if request.param == "memory" else None
    )
    store = portal.call(build())
    yield store
    portal.call(store.aclose())
