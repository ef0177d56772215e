"""AsyncRedisClusterBackend on the session's 3-primary Redis Cluster.

The sync backend contract runs unchanged against the async backend through a
blocking adapter (an event loop in a thread), so both sides are held to the
same semantics. Then the cluster's own behaviour: keys on every node, one
pipeline per node sent at once, MOVED / ASK / TRYAGAIN / CLUSTERDOWN, a stale
slot map, a node paused or killed, and thousands of random cancellations that
must never hand one task's reply to another.
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from typing import Any, TypeVar

import pytest

pytest.importorskip("redis")

import redis

import cacheorm as co
from cacheorm._backend import Closing
from cacheorm._aio_redis_cluster import AsyncRedisClusterBackend, cluster_from_url
from cacheorm._slots import key_slot
from cacheorm.testing import BackendContract
from tests.servers import RedisClusterServer, ServerProcess, closed_port

T = TypeVar("T")

#: Timeouts of the backends that meet a stopped node, in seconds.
TIMEOUT = 0.5


class Blocking(Closing):
    """A sync Backend over an async one: every call runs on an event loop in a thread.

    Lets the sync contract suite (threads included) drive the async backend,
    whose calls then run concurrently on one loop, pipelined.
    """

    def __init__(self, make: Callable[[], AsyncRedisClusterBackend]) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.backend = self.run(_build(make))

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def get(self, key: str, /) -> bytes | None:
        return self.run(self.backend.get(key))

    def get_many(self, keys: Sequence[str], /) -> list[bytes | None]:
        return self.run(self.backend.get_many(keys))

    def set(self, key: str, value: bytes, /, ttl: float | None = None) -> None:
        self.run(self.backend.set(key, value, ttl))

    def set_many(self, items: Sequence[tuple[str, bytes]], /, ttl: float | None = None) -> None:
        self.run(self.backend.set_many(items, ttl))

    def add(self, key: str, value: bytes, /, ttl: float | None = None) -> bool:
        return self.run(self.backend.add(key, value, ttl))

    def add_many(
        self, items: Sequence[tuple[str, bytes]], /, ttl: float | None = None
    ) -> list[bool]:
        return self.run(self.backend.add_many(items, ttl))

    def replace(self, key: str, value: bytes, /, ttl: Any = None) -> bool:
        return self.run(self.backend.replace(key, value, ttl))

    def replace_many(self, items: Sequence[tuple[str, bytes]], /, ttl: Any = None) -> list[bool]:
        return self.run(self.backend.replace_many(items, ttl))

    def delete(self, key: str, /) -> bool:
        return self.run(self.backend.delete(key))

    def delete_many(self, keys: Sequence[str], /) -> int:
        return self.run(self.backend.delete_many(keys))

    def exists(self, key: str, /) -> bool:
        return self.run(self.backend.exists(key))

    def incr(self, key: str, delta: int = 1, /) -> int:
        return self.run(self.backend.incr(key, delta))

    def gets(self, key: str, /) -> tuple[bytes, object] | None:
        return self.run(self.backend.gets(key))

    def cas(self, key: str, value: bytes, token: object, /, ttl: Any = None) -> bool:
        return self.run(self.backend.cas(key, value, token, ttl))

    def touch(self, key: str, /, ttl: float | None = None) -> bool:
        return self.run(self.backend.touch(key, ttl))

    def touch_many(self, keys: Sequence[str], /, ttl: float | None = None) -> list[bool]:
        return self.run(self.backend.touch_many(keys, ttl))

    def ttl_of(self, key: str, /) -> float | None:
        return self.run(self.backend.ttl_of(key))

    def counter_add(self, key: str, delta: int, /, ttl: float | None = None) -> int:
        return self.run(self.backend.counter_add(key, delta, ttl))

    def scan(self, prefix: str, /, batch: int = 500) -> Iterator[list[str]]:
        batches = self.backend.scan(prefix, batch)  # checks its arguments at once
        return self._batches(batches)

    def _batches(self, batches: AsyncIterator[list[str]]) -> Iterator[list[str]]:
        while True:
            try:
                yield self.run(_next(batches))
            except StopAsyncIteration:
                return

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.run(self.backend.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


async def _build(make: Callable[[], AsyncRedisClusterBackend]) -> AsyncRedisClusterBackend:
    return make()


async def _next(batches: AsyncIterator[list[str]]) -> list[str]:
    return await batches.__anext__()


def flush(cluster: RedisClusterServer) -> None:
    """FLUSHALL and SCRIPT FLUSH on every primary."""
    for address in cluster.startup_nodes:
        host, _, port = address.rpartition(":")
        with redis.Redis(host=host, port=int(port), socket_timeout=5) as client:
            client.flushall()
            client.script_flush()


class TestAsyncRedisClusterContract(BackendContract):
    """The sync backend contract, through the blocking adapter, on the cluster."""

    capabilities = frozenset({"ttl", "counter", "scan"})

    @pytest.fixture
    def backend(self, redis_cluster: RedisClusterServer) -> Iterator[co.Backend]:
        """The async cluster backend on the flushed cluster, behind the adapter."""
        flush(redis_cluster)
        adapter = Blocking(lambda: AsyncRedisClusterBackend(redis_cluster.startup_nodes))
        yield adapter  # type: ignore[misc]
        adapter.close()


# -- helpers ---------------------------------------------------------------------------------


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` on a fresh event loop."""
    return asyncio.run(coroutine)


@pytest.fixture
def nodes(redis_cluster: RedisClusterServer) -> Iterator[dict[str, redis.Redis]]:
    """A plain client on each primary, by ``host:port``; the cluster flushed, stats reset."""
    flush(redis_cluster)
    clients = {}
    for address in redis_cluster.startup_nodes:
        host, _, port = address.rpartition(":")
        client = redis.Redis(host=host, port=int(port), socket_timeout=5)
        client.config_resetstat()
        clients[address] = client
    yield clients
    for client in clients.values():
        client.close()


def owners(nodes: dict[str, redis.Redis]) -> list[str | None]:
    """The owner of every slot, as the cluster says now."""
    table: list[str | None] = [None] * 16384
    client = next(iter(nodes.values()))
    for start, end, primary, *_ in client.execute_command("CLUSTER SLOTS"):
        table[start : end + 1] = [f"{primary[0].decode()}:{primary[1]}"] * (end - start + 1)
    return table


def owner_of(nodes: dict[str, redis.Redis], key: str) -> str:
    found = owners(nodes)[key_slot(key.encode())]
    assert found is not None
    return found


def keys_by_node(nodes: dict[str, redis.Redis], count: int, prefix: str = "k") -> dict[str, list[str]]:
    """``count`` keys ``prefix0, prefix1, ...`` grouped by the node that owns them."""
    table = owners(nodes)
    grouped: dict[str, list[str]] = {}
    for i in range(count):
        key = f"{prefix}{i}"
        node = table[key_slot(key.encode())]
        assert node is not None
        grouped.setdefault(node, []).append(key)
    return grouped


def calls(client: redis.Redis) -> dict[str, int]:
    """Commands a node ran since its statistics were reset, leaving out the observers'."""
    stats: dict[str, dict[str, Any]] = client.info("commandstats")
    counted = {name.removeprefix("cmdstat_"): int(s["calls"]) for name, s in stats.items()}
    skip = ("info", "config", "cluster", "hello", "client", "command", "ping", "script")
    return {name: n for name, n in counted.items() if n and not name.startswith(skip)}


def node_process(cluster: RedisClusterServer, address: str) -> ServerProcess:
    return next(node for node in cluster.nodes if node.address == address)


@pytest.fixture
def own_cluster(redis_cluster: RedisClusterServer) -> RedisClusterServer:
    """The session's cluster, when this session started its processes (to stop them)."""
    if not redis_cluster.nodes:
        pytest.skip("REDIS_CLUSTER_NODES points at an external cluster; this test stops a node")
    return redis_cluster
