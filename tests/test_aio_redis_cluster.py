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


def short_timeout_backend(startup_nodes: list[str], **options: Any) -> AsyncRedisClusterBackend:
    """A backend that gives up on a silent node after TIMEOUT seconds."""
    return AsyncRedisClusterBackend(
        startup_nodes, timeout=TIMEOUT, connect_timeout=TIMEOUT, **options
    )


# -- construction ---------------------------------------------------------------------------

PASSWORD = "s3cret-pw"

FIRST_USES: dict[str, Callable[[AsyncRedisClusterBackend], Awaitable[object]]] = {
    "get": lambda b: b.get("k"),
    "exists": lambda b: b.exists("k"),
    "set": lambda b: b.set("k", b"v"),
    "add": lambda b: b.add("k", b"v"),
    "incr": lambda b: b.incr("n"),
    "cas": lambda b: b.cas("k", b"v", "0" * 40),
    "get_many": lambda b: b.get_many(["k", "l"]),
    "set_many": lambda b: b.set_many([("k", b"v"), ("l", b"w")], ttl=5),
    "delete_many": lambda b: b.delete_many(["k", "l"]),
    "touch": lambda b: b.touch("k", 5),
    "counter_add": lambda b: b.counter_add("c", 1),
    "scan": lambda b: b.scan("k").__anext__(),
}


def test_building_does_not_connect_and_a_first_use_names_the_node() -> None:
    """from_cluster returns at once for an address where nothing listens; each first use
    then raises BackendUnavailable naming the node, never the password; after aclose,
    every call says the backend is closed."""
    port = closed_port()
    start = time.monotonic()
    backend = AsyncRedisClusterBackend.from_cluster(
        [f"127.0.0.1:{port}"], password=PASSWORD, connect_timeout=1
    )
    assert time.monotonic() - start < 0.1
    assert backend.server == f"cluster 127.0.0.1:{port}"
    assert repr(backend) == f"AsyncRedisClusterBackend(cluster='127.0.0.1:{port}')"

    async def main() -> None:
        for name, use in FIRST_USES.items():
            with pytest.raises(co.BackendUnavailable) as info:
                await use(backend)
            exc = info.value
            assert f"127.0.0.1:{port}" in str(exc), name
            assert exc.server == backend.server, name
            assert PASSWORD not in str(exc), name
            assert not isinstance(exc, co.OutcomeUnknown), name
        await backend.aclose()
        await backend.aclose()  # twice is fine
        for name, use in FIRST_USES.items():
            with pytest.raises(co.BackendUnavailable, match="closed"):
                await use(backend)

    run(main())


def test_nodes_and_options_are_checked_when_built() -> None:
    """Nodes that are not "host:port", no node, bad timeouts: refused at once."""
    for bad in (["localhost"], ["host:port"], [], ["h:0"]):
        with pytest.raises(ValueError, match="host:port"):
            AsyncRedisClusterBackend(bad)
    for option in ("timeout", "connect_timeout"):
        for value in (0, -1, math.inf, math.nan, True, "5"):
            with pytest.raises(co.InvalidTTL, match=option):
                AsyncRedisClusterBackend(["h:1"], **{option: value})
    one = AsyncRedisClusterBackend("127.0.0.1:7000")
    assert one.server == "cluster 127.0.0.1:7000"
    v6 = AsyncRedisClusterBackend(["[::1]:7000", "::1:7000", "h:1"])
    assert v6.server == "cluster [::1]:7000,h:1"


def test_from_url_reads_the_node_user_password_and_tls() -> None:
    """redis:// and rediss:// URLs name one node; user and password come from the URL unless
    given; rediss gets a verifying TLS context; other schemes, databases, ports: refused,
    the password masked."""
    backend = cluster_from_url(f"redis://app:{PASSWORD}@127.0.0.1:7001/0")
    assert backend.server == "cluster 127.0.0.1:7001"
    assert backend._options["username"] == "app"  # pyright: ignore[reportPrivateUsage]
    assert backend._options["password"] == PASSWORD  # pyright: ignore[reportPrivateUsage]
    assert backend._options["ssl"] is None  # pyright: ignore[reportPrivateUsage]
    tls = AsyncRedisClusterBackend.from_url("rediss://:other@h", password="given")
    assert tls.server == "cluster h:6379"
    assert tls._options["password"] == "given"  # pyright: ignore[reportPrivateUsage]
    context = tls._options["ssl"]  # pyright: ignore[reportPrivateUsage]
    assert context is not None and context.check_hostname
    for bad in (
        f"unix://:{PASSWORD}@/tmp/redis.sock",
        f"redis://:{PASSWORD}@h:1/2",
        f"redis://:{PASSWORD}@h:99999",
        "h:1",
    ):
        with pytest.raises(co.ConfigurationError) as info:
            cluster_from_url(bad)
        assert PASSWORD not in str(info.value)


# -- keys on every node ---------------------------------------------------------------------


def test_batches_across_many_slots_keep_input_order(
    redis_cluster: RedisClusterServer, nodes: dict[str, redis.Redis]
) -> None:
    """1,000 keys over every node: each batch answers in input order, duplicates and misses
    included, and every key is stored on the node that owns its slot."""

    async def main() -> None:
        async with AsyncRedisClusterBackend(redis_cluster.startup_nodes) as store:
            keys = [f"user:{i}" for i in range(1000)]
            await store.set_many([(k, k.encode()) for k in keys])
            assert len({owner_of(nodes, k) for k in keys}) == 3
            for key in keys[::97]:
                assert nodes[owner_of(nodes, key)].get(key) == key.encode()
            probe = [keys[5], "missing", keys[999], keys[5], keys[0]]
            assert await store.get_many(probe) == [
                b"user:5",
                None,
                b"user:999",
                b"user:5",
                b"user:0",
            ]
            assert await store.get_many(keys) == [k.encode() for k in keys]
            await store.set_many([(k, b"ttl " + k.encode()) for k in keys[:500]], ttl=60)
            assert await store.get_many(keys[498:502]) == [
                b"ttl user:498",
                b"ttl user:499",
                b"user:500",
                b"user:501",
            ]
            added = await store.add_many(
                [("new:1", b"1"), (keys[7], b"x"), ("new:2", b"2"), ("new:1", b"3")]
            )
            assert added == [True, False, True, False]
            replaced = await store.replace_many([("new:2", b"B"), ("nope", b"x"), (keys[8], b"C")])
            assert replaced == [True, False, True]
            assert await store.get_many(["new:1", "new:2", "nope", keys[8]]) == [
                b"1",
                b"B",
                None,
                b"C",
            ]
            assert await store.touch_many([keys[0], "nope", keys[999]], 100) == [True, False, True]
            assert await store.delete_many([*keys, "new:1", "new:2", "nope", keys[0]]) == 1002
            assert await store.get_many(keys[:10]) == [None] * 10

    run(main())


def test_each_batch_is_one_write_per_node(
    redis_cluster: RedisClusterServer, nodes: dict[str, redis.Redis]
) -> None:
    """Every batch writes once to each node's connection; the nodes run one MGET / MSET /
    DEL per slot (a GET for a slot holding one key of a get_many), or one SET per key."""
    grouped = keys_by_node(nodes, 300)
    keys = [f"k{i}" for i in range(300)]
    slots = {a: len({key_slot(k.encode()) for k in ks}) for a, ks in grouped.items()}

    async def main() -> None:
        async with AsyncRedisClusterBackend(redis_cluster.startup_nodes) as store:
            await store.set_many([(k, b"v") for k in keys])  # opens one connection per node
            connections = store._connections  # pyright: ignore[reportPrivateUsage]
            batches: list[tuple[Callable[[], Awaitable[object]], Callable[[str], dict[str, int]]]]
            batches = [
                (lambda: store.set_many([(k, b"v") for k in keys]), lambda a: {"mset": slots[a]}),
                (
                    lambda: store.set_many([(k, b"v") for k in keys], ttl=9),
                    lambda a: {"set": len(grouped[a])},
                ),
                (
                    lambda: store.replace_many([(k, b"w") for k in keys]),
                    lambda a: {"set": len(grouped[a])},
                ),
                (lambda: store.delete_many(keys), lambda a: {"del": slots[a]}),
                (
                    lambda: store.add_many([(k, b"v") for k in keys]),
                    lambda a: {"set": len(grouped[a])},
                ),
            ]
            for batch, expected in batches:
                for client in nodes.values():
                    client.config_resetstat()
                before = {a: connections[a].writes for a in grouped}
                await batch()
                assert {a: connections[a].writes - before[a] for a in grouped} == dict.fromkeys(
                    grouped, 1
                )
                for address, node in nodes.items():
                    assert calls(node) == expected(address), address
            before = {a: connections[a].writes for a in grouped}
            assert await store.get_many(keys) == [b"v"] * 300
            assert {a: connections[a].writes - before[a] for a in grouped} == dict.fromkeys(
                grouped, 1
            )

    run(main())


def test_nodes_are_called_concurrently(redis_cluster: RedisClusterServer) -> None:
    """With every node's replies held 0.3 s, a batch over 3 nodes takes about 0.3 s, not
    0.9 s: one pipeline per node, all at once."""
    from tests.test_redis_cluster import DELAY, SlowProxy

    proxies: dict[tuple[str, int], SlowProxy] = {}
    for address in redis_cluster.startup_nodes:
        host, _, port = address.rpartition(":")
        proxies[(host, int(port))] = SlowProxy((host, int(port)))

    def through_proxy(address: tuple[str, int]) -> tuple[str, int]:
        proxy = proxies.get(address)
        return address if proxy is None else ("127.0.0.1", proxy.port)

    keys = [f"k{i}" for i in range(60)]
    timings: dict[str, float] = {}

    async def main() -> float:
        async with AsyncRedisClusterBackend(
            redis_cluster.startup_nodes, address_remap=through_proxy
        ) as slow:
            await slow.get_many(keys)  # connect to every node before the replies slow down
            await slow.touch_many(keys, 30)  # and load the touch script on each
            for proxy in proxies.values():
                proxy.delay = DELAY
            for name, batch in [
                ("set_many", lambda: slow.set_many([(k, b"v") for k in keys], ttl=30)),
                ("get_many", lambda: slow.get_many(keys)),
                ("add_many", lambda: slow.add_many([(f"new{k}", b"w") for k in keys])),
                ("touch_many", lambda: slow.touch_many(keys, 30)),
                ("delete_many", lambda: slow.delete_many(keys)),
            ]:
                start = time.monotonic()
                await batch()
                timings[name] = time.monotonic() - start
            start = time.monotonic()
            assert await slow.get(keys[0]) is None
            return time.monotonic() - start

    try:
        single = run(main())
    finally:
        for proxy in proxies.values():
            proxy.close()
    print(f"\none node round trip {single:.3f}s; 60 keys on 3 nodes: {timings}")
    assert single >= DELAY
    for name, elapsed in timings.items():
        assert DELAY <= elapsed < 2 * DELAY, (name, elapsed)
