"""Shared fixtures: backends, a fake clock, serializer names."""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

import cacheorm as co
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
