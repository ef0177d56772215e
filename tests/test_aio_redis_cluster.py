"""AsyncRedisClusterBackend on the session's 3-primary Redis Cluster.

The backend contract runs on this backend in tests/test_aio_contract.py
(``AsyncBackendContract``); here is the cluster's own behaviour: keys on every
node, one pipeline per node sent at once, one read script per node, MOVED /
ASK / TRYAGAIN / CLUSTERDOWN, a stale slot map, a node paused or killed, and
thousands of random cancellations that must never hand one task's reply to
another.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

pytest.importorskip("redis")

import redis

import cacheorm as co
from cacheorm._aio_redis_cluster import AsyncRedisClusterBackend, cluster_from_url
from cacheorm._slots import key_slot
from tests.servers import RedisClusterServer, ServerProcess, closed_port
from tests.test_redis_cluster import move_slot, node_ids, wait_for_slot

T = TypeVar("T")

#: Timeouts of the backends that meet a stopped node, in seconds.
TIMEOUT = 0.5


def flush(cluster: RedisClusterServer) -> None:
    """FLUSHALL and SCRIPT FLUSH on every primary."""
    for address in cluster.startup_nodes:
        host, _, port = address.rpartition(":")
        with redis.Redis(host=host, port=int(port), socket_timeout=5) as client:
            client.flushall()
            client.script_flush()


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


def keys_by_node(
    nodes: dict[str, redis.Redis], count: int, prefix: str = "k"
) -> dict[str, list[str]]:
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
        for use in FIRST_USES.values():
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
            with pytest.raises(co.ConfigurationError, match=option):
                AsyncRedisClusterBackend(["h:1"], **{option: value})
    for options in ({"db": 1}, {"socket_timeout": 1}):
        with pytest.raises(co.ConfigurationError, match=next(iter(options))):
            AsyncRedisClusterBackend.from_cluster(["h:1"], **options)
        with pytest.raises(co.ConfigurationError, match=next(iter(options))):
            co.AsyncRedisBackend.from_url("redis://h:1", cluster=True, **options)
    one = AsyncRedisClusterBackend("127.0.0.1:7000")
    assert one.server == "cluster 127.0.0.1:7000"
    v6 = AsyncRedisClusterBackend(["[::1]:7000", "::1:7000", "h:1"])
    assert v6.server == "cluster [::1]:7000,h:1"


def test_from_url_reads_the_node_user_password_and_tls() -> None:
    """redis:// and rediss:// URLs name one node; user and password come from the URL unless
    given; rediss gets a verifying TLS context; other schemes, databases, ports: refused,
    the password masked."""
    backend = co.AsyncRedisBackend.from_url(
        f"redis://app:{PASSWORD}@127.0.0.1:7001/0", cluster=True
    )
    assert isinstance(backend, AsyncRedisClusterBackend)
    assert backend.server == "cluster 127.0.0.1:7001"
    assert backend._options["username"] == "app"  # pyright: ignore[reportPrivateUsage]
    assert backend._options["password"] == PASSWORD  # pyright: ignore[reportPrivateUsage]
    assert backend._options["ssl"] is None  # pyright: ignore[reportPrivateUsage]
    tls = AsyncRedisClusterBackend.from_url("rediss://:other@h", password="given")
    assert isinstance(co.AsyncRedisBackend.from_cluster(["h:1"]), AsyncRedisClusterBackend)
    assert tls.server == "cluster h:6379"
    assert tls._options["password"] == "given"  # pyright: ignore[reportPrivateUsage]
    context = tls._options["ssl"]  # pyright: ignore[reportPrivateUsage]
    assert context is not None
    assert context.check_hostname
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
    """Every batch writes once to each node's connection; the nodes run one MSET / DEL per
    slot, or one SET per key; a get_many runs one script per node that GETs its keys."""
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
            assert await store.get_many(keys) == [b"v"] * 300  # loads the read script
            for client in nodes.values():
                client.config_resetstat()
            before = {a: connections[a].writes for a in grouped}
            assert await store.get_many(keys) == [b"v"] * 300
            assert {a: connections[a].writes - before[a] for a in grouped} == dict.fromkeys(
                grouped, 1
            )
            for address, node in nodes.items():  # one script per node GETs all its keys
                assert calls(node) == {"evalsha": 1, "get": len(grouped[address])}, address

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


# -- redirections --------------------------------------------------------------------------------


def first_key(nodes: dict[str, redis.Redis], prefix: str, node: str, other: bool = False) -> str:
    """The first key ``prefix0, prefix1...`` that ``node`` owns (or, with ``other``, does not)."""
    table = owners(nodes)
    return next(
        f"{prefix}{i}"
        for i in range(10_000)
        if (table[key_slot(f"{prefix}{i}".encode())] == node) != other
    )


def test_moved_and_ask_redirect_every_write_once(
    redis_cluster: RedisClusterServer, nodes: dict[str, redis.Redis]
) -> None:
    """After a slot moves, the stale slot map sends writes to the old owner: MOVED (not
    applied) is followed to the new one, once, and the map reloaded. During a migration,
    ASK is followed with ASKING. add, incr, cas and add_many each apply exactly once."""
    a, b = redis_cluster.startup_nodes[0], redis_cluster.startup_nodes[1]
    moved_key, ask_key = first_key(nodes, "m", a), first_key(nodes, "a", a)
    moved_slot, ask_slot = key_slot(moved_key.encode()), key_slot(ask_key.encode())
    ids = node_ids(nodes)

    async def main() -> None:
        async with AsyncRedisClusterBackend(redis_cluster.startup_nodes) as store:
            assert await store.get(moved_key) is None  # loads the slot map
            table = store._table  # pyright: ignore[reportPrivateUsage]
            assert table is not None
            move_slot(nodes, moved_slot, a, b)
            wait_for_slot(nodes, moved_slot, b)
            assert table.node_of(moved_slot) == a  # the backend's map is stale
            assert await store.add(moved_key, b"1") is True
            assert await store.incr("{" + moved_key + "}n", 5) == 5
            got = await store.gets(moved_key)
            assert got is not None
            assert await store.cas(moved_key, b"2", got[1]) is True
            assert await store.add_many([(moved_key, b"x"), ("{" + moved_key + "}2", b"y")]) == [
                False,
                True,
            ]
            table = store._table  # pyright: ignore[reportPrivateUsage]
            assert table is not None
            assert table.node_of(moved_slot) == b  # reloaded after the MOVED reply
            # cas: EVALSHA (NOSCRIPT on this node), then EVAL, whose script runs GET and SET;
            # the refused add of add_many is checked with a TYPE
            expected = {"set": 4, "incrby": 1, "evalsha": 1, "eval": 1, "get": 2, "type": 1}
            assert calls(nodes[b]) == expected
            assert nodes[b].get("{" + moved_key + "}n") == b"5"

            nodes[b].cluster("SETSLOT", ask_slot, "IMPORTING", ids[a])
            nodes[a].cluster("SETSLOT", ask_slot, "MIGRATING", ids[b])
            nodes[b].config_resetstat()
            assert await store.add(ask_key, b"asked") is True
            assert await store.incr("{" + ask_key + "}n") == 1
            assert await store.add_many([("{" + ask_key + "}2", b"y"), (ask_key, b"z")]) == [
                True,
                False,
            ]
            # the refused add's TYPE check is asked (ASK) to the importing node too
            assert calls(nodes[b]) == {"asking": 5, "set": 3, "incrby": 1, "type": 1}
            assert calls(nodes[a]).get("set", 0) == 0
            assert store._table is table  # pyright: ignore[reportPrivateUsage]
            assert table.node_of(ask_slot) == a  # ASK changes no map

    try:
        run(main())
    finally:
        for slot in (moved_slot, ask_slot):
            for client in nodes.values():
                found = client.cluster("GETKEYSINSLOT", slot, 100)
                if found:
                    client.execute_command("ASKING")
                    client.delete(*found)
        for address in nodes:
            nodes[address].cluster("SETSLOT", ask_slot, "STABLE")
        move_slot(nodes, moved_slot, b, a)
        wait_for_slot(nodes, moved_slot, a)
        wait_for_slot(nodes, ask_slot, a)
        redis_cluster.wait_ok()


def test_a_slot_in_migration_gives_tryagain_until_the_batch_gives_up(
    redis_cluster: RedisClusterServer, nodes: dict[str, redis.Redis]
) -> None:
    """An MSET / MGET over a slot being migrated, with one key moved and one not, is
    answered TRYAGAIN: retried a few times, then reported as not written (nothing of it
    was applied) while the other slots' keys are written."""
    a, b = redis_cluster.startup_nodes[0], redis_cluster.startup_nodes[1]
    tag = first_key(nodes, "t", a).join("{}")
    moving = [f"{tag}1", f"{tag}2"]
    slot = key_slot(moving[0].encode())
    others = [k for k in (f"o{i}" for i in range(50)) if key_slot(k.encode()) != slot]
    nodes[a].set(moving[0], b"old")
    ids = node_ids(nodes)

    async def main() -> None:
        async with AsyncRedisClusterBackend(redis_cluster.startup_nodes) as store:
            nodes[b].cluster("SETSLOT", slot, "IMPORTING", ids[a])
            nodes[a].cluster("SETSLOT", slot, "MIGRATING", ids[b])
            start = time.monotonic()
            with pytest.raises(co.BatchWriteError, match="redirect") as info:
                await store.set_many(
                    [(moving[0], b"x"), *[(k, b"v") for k in others], (moving[1], b"y")]
                )
            assert time.monotonic() - start < 2
            assert info.value.written == others
            assert info.value.not_written == moving
            assert info.value.unknown == []
            with pytest.raises(co.BackendUnavailable):
                await store.get_many([*moving, others[0]])
            assert nodes[a].get(moving[0]) == b"old"
            for address in (a, b):
                nodes[address].cluster("SETSLOT", slot, "STABLE")
            assert await store.get_many(others) == [b"v"] * len(others)

    try:
        run(main())
    finally:
        for address in (a, b):
            nodes[address].cluster("SETSLOT", slot, "STABLE")
        nodes[a].delete(moving[0])


def test_a_slot_its_node_no_longer_serves_is_unavailable(
    redis_cluster: RedisClusterServer, nodes: dict[str, redis.Redis]
) -> None:
    """A node that answers CLUSTERDOWN for a slot did not apply the command: a write there
    is BackendUnavailable (never OutcomeUnknown) and a batch lists its keys as not written.
    A slot map without the slot says so before sending anything."""
    a = redis_cluster.startup_nodes[0]
    key = first_key(nodes, "d", a)
    other = first_key(nodes, "e", a, other=True)
    slot = key_slot(key.encode())

    async def main() -> None:
        async with AsyncRedisClusterBackend(redis_cluster.startup_nodes) as store:
            assert await store.get(key) is None  # the slot map, with the slot
            nodes[a].config_set("cluster-require-full-coverage", "no")
            nodes[a].cluster("DELSLOTS", slot)
            for write in (lambda: store.add(key, b"v"), lambda: store.incr(key)):
                with pytest.raises(co.BackendUnavailable, match="not served") as info:
                    await write()
                assert not isinstance(info.value, co.OutcomeUnknown)
                assert info.value.server == a
            with pytest.raises(co.BatchWriteError) as batch:
                await store.add_many([(key, b"v"), (other, b"w")])
            assert (batch.value.written, batch.value.not_written) == ([other], [key])
            fresh = AsyncRedisClusterBackend(redis_cluster.startup_nodes)
            try:
                with pytest.raises(co.BackendUnavailable, match="not served by any node"):
                    await fresh.set(key, b"v")
            finally:
                await fresh.aclose()

    try:
        run(main())
    finally:
        nodes[a].cluster("ADDSLOTS", slot)
        nodes[a].config_set("cluster-require-full-coverage", "yes")
    wait_for_slot(nodes, slot, a)
    redis_cluster.wait_ok()


def test_a_refused_expiry_is_invalid_ttl(
    redis_cluster: RedisClusterServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error reply inside a cross-node batch is the error of its first key."""
    import cacheorm._redis_ops

    monkeypatch.setattr(cacheorm._redis_ops, "MAX_TTL_MS", 2**64)
    ttl = (2**63 - 1000) / 1000
    keys = [f"k{i}" for i in range(20)]

    async def main() -> None:
        async with AsyncRedisClusterBackend(redis_cluster.startup_nodes) as store:
            for write in (
                lambda: store.set_many([(k, b"v") for k in keys], ttl=ttl),
                lambda: store.add_many([(k, b"v") for k in keys], ttl=ttl),
                lambda: store.add(keys[0], b"v", ttl=ttl),
                lambda: store.set(keys[0], b"v", ttl=ttl),
            ):
                with pytest.raises(co.InvalidTTL, match="invalid expire time") as info:
                    await write()
                assert info.value.key == keys[0]
            assert await store.get_many(keys) == [None] * 20

    run(main())


def test_cluster_slots_is_asked_where_cluster_shards_is_unknown(
    redis_cluster: RedisClusterServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node that refuses CLUSTER SHARDS (Redis < 7) gives its map by CLUSTER SLOTS; one
    that refuses both is not a cluster node, and no slot map means BackendUnavailable."""
    import cacheorm._aio_redis_cluster as module

    monkeypatch.setattr(module, "_SHARDS", ("CLUSTER", "NO-SUCH-SUBCOMMAND"))

    async def main() -> None:
        async with AsyncRedisClusterBackend(redis_cluster.startup_nodes[:1]) as store:
            keys = [f"s{i}" for i in range(30)]
            await store.set_many([(k, b"v") for k in keys])
            assert await store.get_many(keys) == [b"v"] * 30
            table = store._table  # pyright: ignore[reportPrivateUsage]
            assert table is not None
            assert sorted(table.nodes) == sorted(redis_cluster.startup_nodes)
            assert await store.delete_many(keys) == 30

    run(main())


def test_a_server_that_is_not_a_cluster_node_is_unavailable(redis_server: Any) -> None:
    """A plain Redis server answers neither CLUSTER SHARDS nor SLOTS: BackendUnavailable."""
    address = redis_server.url.removeprefix("redis://").partition("/")[0]

    async def main() -> None:
        async with AsyncRedisClusterBackend([address]) as store:
            with pytest.raises(co.BackendUnavailable, match="slot map") as info:
                await store.get("k")
            assert "cluster" in str(info.value).lower()

    run(main())


# -- a node that stops ------------------------------------------------------------------------


def test_a_paused_node_leaves_its_keys_unknown_and_never_gets_a_resend(
    own_cluster: RedisClusterServer, nodes: dict[str, redis.Redis]
) -> None:
    """A node that stops answering: a batch writes the other nodes' keys and reports the
    silent node's keys as unknown after one timeout; an incr there is OutcomeUnknown and,
    once the node wakes up, counted exactly once."""
    victim = own_cluster.startup_nodes[0]
    process = node_process(own_cluster, victim)
    grouped = keys_by_node(nodes, 30)
    items = [(f"k{i}", b"v") for i in range(30)]
    healthy = [k for k, _ in items if k not in grouped[victim]]
    counter = first_key(nodes, "n", victim)
    paused = False

    async def main() -> None:
        nonlocal paused
        async with short_timeout_backend(own_cluster.startup_nodes) as backend:
            await backend.get_many([k for k, _ in items])  # connect to every node first
            process.pause()
            paused = True
            start = time.monotonic()
            with pytest.raises(co.BatchWriteError) as info:
                await backend.set_many(items, ttl=60)
            elapsed = time.monotonic() - start
            process.resume()
            paused = False
            exc = info.value
            assert exc.written == healthy
            assert exc.unknown == grouped[victim]
            assert exc.not_written == []
            assert exc.server == victim
            assert victim in str(exc)
            assert elapsed < 4 * TIMEOUT
            assert [nodes[victim].get(k) for k in grouped[victim]] == [b"v"] * len(grouped[victim])

            assert await backend.get(counter) is None  # a fresh connection to the node
            process.pause()
            paused = True
            with pytest.raises(co.OutcomeUnknown, match=victim) as unknown:
                await backend.incr(counter)
            assert unknown.value.key == counter
            with pytest.raises(co.BackendUnavailable, match=victim) as read:
                await backend.get(counter)  # a read that timed out is not resent either
            assert not isinstance(read.value, co.OutcomeUnknown)
            process.resume()
            paused = False
            assert nodes[victim].get(counter) == b"1"
            assert await backend.incr(counter) == 2

    try:
        run(main())
    finally:
        if paused:
            process.resume()


def test_a_killed_node_fails_its_keys_and_not_the_others(
    own_cluster: RedisClusterServer, nodes: dict[str, redis.Redis]
) -> None:
    """Kill one node mid-run: its keys raise BackendUnavailable naming it (nothing sent, so
    never OutcomeUnknown) within the timeout, the other nodes keep working, a batch spanning
    it writes the others and lists its keys as not written; restarted, it works again with
    the same backend."""
    victim = own_cluster.startup_nodes[2]
    process = node_process(own_cluster, victim)
    grouped = keys_by_node(nodes, 30)
    mine = grouped[victim][0]
    others = [k for a, ks in grouped.items() if a != victim for k in ks]
    counter = first_key(nodes, "n", victim, other=True)
    items = [(f"k{i}", b"new") for i in range(30)]
    for client in nodes.values():  # the other nodes keep serving their slots meanwhile
        client.config_set("cluster-require-full-coverage", "no")
    killed = False

    async def main() -> None:
        nonlocal killed
        async with short_timeout_backend(own_cluster.startup_nodes) as backend:
            await backend.set_many([(k, b"old") for ks in grouped.values() for k in ks])
            process.kill()
            killed = True
            single_ops: list[Callable[[], Awaitable[object]]] = [
                lambda: backend.get(mine),
                lambda: backend.set(mine, b"v"),
                lambda: backend.add(mine, b"v"),
                lambda: backend.incr(mine),
                lambda: backend.cas(mine, b"v", "0" * 40),
                lambda: backend.delete(mine),
                lambda: backend.replace(mine, b"v"),
                lambda: backend.gets(mine),
                lambda: backend.exists(mine),
                lambda: backend.ttl_of(mine),
                lambda: backend.counter_add(mine, 1),
                lambda: backend.add_many([(mine, b"v")]),
            ]
            for op in single_ops:
                start = time.monotonic()
                with pytest.raises(co.BackendUnavailable) as info:
                    await op()
                assert time.monotonic() - start < 5
                assert not isinstance(info.value, co.OutcomeUnknown)
                assert info.value.server == victim
                assert info.value.key == mine
            assert await backend.get(others[0]) == b"old"
            assert await backend.add(others[0], b"new") is False
            assert await backend.replace(others[0], b"new") is True
            assert await backend.incr(counter) == 1
            every = [k for k, _ in items]
            healthy = [k for k in every if k not in grouped[victim]]
            for write, written in (
                (lambda: backend.set_many(items, ttl=60), healthy),
                (lambda: backend.set_many(items), healthy),
                (lambda: backend.replace_many(items), healthy),
                (lambda: backend.add_many(items), []),  # the others exist: refused
            ):
                with pytest.raises(co.BatchWriteError) as batch:
                    await write()
                assert batch.value.written == written
                assert batch.value.not_written == [k for k in every if k not in written]
                assert batch.value.unknown == []
                assert batch.value.server == victim
            with pytest.raises(co.BackendUnavailable, match=victim):
                await backend.get_many([k for k, _ in items])
            with pytest.raises(co.BackendUnavailable, match=victim):
                await backend.touch_many([k for k, _ in items], 10)
            with pytest.raises(co.BatchWriteError):
                await backend.delete_many([k for k, _ in items])
            assert await backend.get_many(others) == [None] * len(others)
            with pytest.raises(co.BackendUnavailable, match=victim):
                async for _ in backend.scan("k"):
                    pass

            process.restart()
            killed = False
            own_cluster.wait_ok()
            assert await backend.add(mine, b"back") is True  # the node restarted empty
            assert await backend.incr("{" + mine + "}n") == 1
            await backend.set_many(items)
            assert await backend.get_many([k for k, _ in items]) == [b"new"] * 30

    try:
        run(main())
    finally:
        if killed:
            process.restart()
            own_cluster.wait_ok()
        for client in nodes.values():
            client.config_set("cluster-require-full-coverage", "yes")


# -- cancellation ----------------------------------------------------------------------------------


def value_of(key: str) -> bytes:
    """The value every cancellation test stores under ``key``: a wrong reply shows."""
    return b"value of " + key.encode()


class Tally:
    """What the random tasks of a cancellation test saw."""

    def __init__(self) -> None:
        self.done = 0
        self.failed = 0
        self.wrong: list[tuple[object, object]] = []

    def check(self, got: object, expected: object) -> None:
        if got != expected:
            self.wrong.append((got, expected))


async def random_operation(
    backend: AsyncRedisClusterBackend, keys: list[str], rng: random.Random, tally: Tally
) -> None:
    """One random read (or same-value write) whose reply says whose key it answers."""
    key = rng.choice(keys)
    kind = rng.randrange(7)
    try:
        if kind == 0:
            tally.check(await backend.get(key), value_of(key))
        elif kind == 1:
            chosen = rng.sample(keys, rng.randint(1, 40))
            tally.check(await backend.get_many(chosen), [value_of(k) for k in chosen])
        elif kind == 2:
            got = await backend.gets(key)
            tally.check(got and got[0], value_of(key))
        elif kind == 3:
            await backend.set(key, value_of(key))
        elif kind == 4:
            tally.check(await backend.exists(key), True)
        elif kind == 5:
            tally.check(await backend.ttl_of(key), math.inf)
        else:
            chosen = rng.sample(keys, rng.randint(1, 20))
            await backend.set_many([(k, value_of(k)) for k in chosen])
    except co.BackendUnavailable:
        tally.failed += 1
        return
    tally.done += 1


async def cancel_at_random(
    backend: AsyncRedisClusterBackend,
    keys: list[str],
    rng: random.Random,
    cancellations: int,
    between_rounds: Callable[[], None] = lambda: None,
) -> tuple[int, Tally]:
    """Start rounds of up to 64 random operations and cancel some of them at random
    moments (task.cancel(), or a wait_for timeout) until ``cancellations`` were cut off."""
    tally = Tally()
    cut = 0
    while cut < cancellations:
        between_rounds()
        tasks = [
            asyncio.ensure_future(
                random_operation(backend, keys, random.Random(rng.random()), tally)
            )
            for _ in range(rng.randint(1, 64))
        ]
        timed = [
            asyncio.ensure_future(
                asyncio.wait_for(
                    random_operation(backend, keys, random.Random(rng.random()), tally),
                    rng.random() * 0.002,
                )
            )
            for _ in range(rng.randint(0, 8))
        ]
        if rng.random() < 0.5:
            for _ in range(rng.randint(0, 6)):
                await asyncio.sleep(0)
        else:
            await asyncio.sleep(rng.random() * 0.002)
        victims = [task for task in tasks if not task.done() and rng.random() < 0.5]
        for task in victims:
            task.cancel()
        results = await asyncio.gather(*tasks, *timed, return_exceptions=True)
        cut += sum(task.cancelled() for task in victims)
        cut += sum(isinstance(result, asyncio.TimeoutError) for result in results[len(tasks) :])
    return cut, tally


def test_random_cancellations_never_hand_a_reply_to_another_task(
    redis_cluster: RedisClusterServer,
) -> None:
    """Thousands of reads and writes over every node, 2,000+ of them cancelled at random
    moments (task.cancel() and wait_for timeouts): every reply that arrives is the one for
    its own keys, and the data is intact afterwards."""
    flush(redis_cluster)
    keys = [f"c{i}" for i in range(300)]

    async def main() -> tuple[int, Tally]:
        async with AsyncRedisClusterBackend(redis_cluster.startup_nodes) as backend:
            await backend.set_many([(k, value_of(k)) for k in keys])
            result = await cancel_at_random(backend, keys, random.Random(2026), 2000)
            assert await backend.get_many(keys) == [value_of(k) for k in keys]
            return result

    cut, tally = run(main())
    print(f"\n{cut} cancellations, {tally.done} operations completed, {len(tally.wrong)} wrong")
    assert tally.wrong == []
    assert cut >= 2000
    assert tally.done > 2000
    assert tally.failed == 0


def test_cancellations_and_broken_connections_never_mix_replies(
    redis_cluster: RedisClusterServer,
) -> None:
    """The same, with every node behind a fault proxy that, now and then, cuts the
    connections mid-reply or resets them: operations fail (BackendUnavailable), are
    cancelled or succeed, and a reply is never another task's."""
    from tests.proxy import FaultProxy

    flush(redis_cluster)
    keys = [f"f{i}" for i in range(200)]
    proxies: dict[tuple[str, int], FaultProxy] = {}
    for address in redis_cluster.startup_nodes:
        host, _, port = address.rpartition(":")
        proxies[(host, int(port))] = FaultProxy(host, int(port))

    def through_proxy(address: tuple[str, int]) -> tuple[str, int]:
        proxy = proxies.get(address)
        return address if proxy is None else (proxy.host, proxy.port)

    rng = random.Random(12)
    faults = 0

    def maybe_break() -> None:
        nonlocal faults
        for proxy in proxies.values():
            if proxy.mode != "pass":
                proxy.pass_through()
        if rng.random() < 0.3:
            proxy = rng.choice(list(proxies.values()))
            if rng.random() < 0.5:
                proxy.cut_replies_after(rng.randint(0, 400))
            else:
                proxy.reset()
            faults += 1

    async def main() -> tuple[int, Tally]:
        async with AsyncRedisClusterBackend(
            redis_cluster.startup_nodes, address_remap=through_proxy, timeout=2
        ) as backend:
            await backend.set_many([(k, value_of(k)) for k in keys])
            result = await cancel_at_random(backend, keys, rng, 2000, maybe_break)
            for proxy in proxies.values():
                proxy.pass_through()
            assert await backend.get_many(keys) == [value_of(k) for k in keys]
            return result

    try:
        cut, tally = run(main())
    finally:
        for proxy in proxies.values():
            proxy.close()
    print(
        f"\n{cut} cancellations, {faults} faults, {tally.done} completed, "
        f"{tally.failed} failed, {len(tally.wrong)} wrong"
    )
    assert tally.wrong == []
    assert cut >= 2000
    assert faults > 10
    assert tally.failed > 0


# -- hostile input and keys of other types ----------------------------------------------------


def test_bad_keys_fail_before_any_io(redis_cluster: RedisClusterServer) -> None:
    """A key that is not UTF-8 is a BackendError naming it (not BackendUnavailable), before
    anything of its batch is sent."""

    async def main() -> None:
        async with AsyncRedisClusterBackend(redis_cluster.startup_nodes) as store:
            await store.get("warm-up")  # a slot map, so that get takes its direct path
            for op in (
                lambda: store.set_many([("ok", b"v"), ("a\ud800", b"v")]),
                lambda: store.get_many(["ok", "a\ud800"]),
                lambda: store.delete_many(["ok", "a\ud800"]),
                lambda: store.add("a\ud800", b"v"),
                lambda: store.get("a\ud800"),
            ):
                with pytest.raises(co.BackendError, match="ud800") as info:
                    await op()
                assert not isinstance(info.value, co.BackendUnavailable)
            assert await store.get("ok") is None

    run(main())


def test_keys_of_another_redis_type_are_refused_on_their_node(
    redis_cluster: RedisClusterServer, nodes: dict[str, redis.Redis]
) -> None:
    """A hash under a key: reads and conditional writes raise BackendError naming the key
    and the node that holds it, in single and batch forms; set replaces it."""
    grouped = keys_by_node(nodes, 30, "h")
    node, foreign = next((address, keys[0]) for address, keys in grouped.items())
    nodes[node].hset(foreign, "field", "value")
    others = [k for ks in grouped.values() for k in ks if k != foreign]

    async def main() -> None:
        async with AsyncRedisClusterBackend(redis_cluster.startup_nodes) as store:
            for op in (
                lambda: store.get(foreign),
                lambda: store.exists(foreign),
                lambda: store.gets(foreign),
                lambda: store.get_many([*others, foreign]),
                lambda: store.add(foreign, b"v"),
                lambda: store.replace(foreign, b"v"),
                lambda: store.incr(foreign),
                lambda: store.ttl_of(foreign),
                lambda: store.touch_many([others[0], foreign], 10),
            ):
                with pytest.raises(co.BackendError) as info:
                    await op()
                assert not isinstance(info.value, co.BackendUnavailable)
                assert info.value.key == foreign
                assert node in str(info.value)
            with pytest.raises(co.BatchWriteError) as batch:
                await store.add_many([(others[0], b"v"), (foreign, b"v")])
            assert (batch.value.written, batch.value.not_written) == ([others[0]], [foreign])
            await store.set(foreign, b"mine")
            assert await store.get(foreign) == b"mine"

    run(main())


def test_get_many_reads_by_slot_what_a_node_script_cannot(
    redis_cluster: RedisClusterServer, nodes: dict[str, redis.Redis]
) -> None:
    """A stale slot map sends a node's script a key the node no longer serves: the script
    fails as a whole (never a miss for a key elsewhere) and its keys are read by slot,
    following MOVED to the new owner."""
    a, b = redis_cluster.startup_nodes[0], redis_cluster.startup_nodes[1]
    moved_key = first_key(nodes, "gm", a)
    slot = key_slot(moved_key.encode())
    staying = [k for k in keys_by_node(nodes, 40, "gs")[a] if key_slot(k.encode()) != slot]

    async def main() -> None:
        async with AsyncRedisClusterBackend(redis_cluster.startup_nodes) as store:
            await store.set_many([(k, k.encode()) for k in staying])
            move_slot(nodes, slot, a, b)
            wait_for_slot(nodes, slot, b)
            nodes[b].set(moved_key, b"moved")
            nodes[a].config_resetstat()
            probe = [staying[0], moved_key, *staying[1:]]
            expected = [staying[0].encode(), b"moved", *[k.encode() for k in staying[1:]]]
            assert await store.get_many(probe) == expected
            assert calls(nodes[a])["evalsha"] == 1  # tried, failed, then read by slot
            table = store._table  # pyright: ignore[reportPrivateUsage]
            assert table is not None
            assert table.node_of(slot) == b

    try:
        run(main())
    finally:
        nodes[b].delete(moved_key)
        move_slot(nodes, slot, b, a)
        wait_for_slot(nodes, slot, a)
        redis_cluster.wait_ok()


def test_get_many_reads_by_slot_where_node_scripts_are_refused(
    redis_cluster: RedisClusterServer,
    nodes: dict[str, redis.Redis],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server that refuses the script's shebang (Redis < 7) is read by slot, and no
    script is sent again."""
    import hashlib

    import cacheorm._aio_redis_cluster as module

    refused = "#!lua flags=no-such-flag\nreturn 1\n"
    monkeypatch.setattr(module, "_GET_SCRIPT", refused)
    monkeypatch.setattr(module, "_GET_SHA", hashlib.sha1(refused.encode()).hexdigest())
    keys = [f"r{i}" for i in range(60)]

    async def main() -> None:
        async with AsyncRedisClusterBackend(redis_cluster.startup_nodes) as store:
            await store.set_many([(k, k.encode()) for k in keys])
            assert await store.get_many(keys) == [k.encode() for k in keys]
            for client in nodes.values():
                client.config_resetstat()
            assert await store.get_many(keys) == [k.encode() for k in keys]
            for client in nodes.values():
                assert "evalsha" not in calls(client)
                assert "eval" not in calls(client)

    run(main())


def test_a_connection_cut_mid_batch_counts_the_replies_that_arrived(
    redis_cluster: RedisClusterServer, nodes: dict[str, redis.Redis]
) -> None:
    """One node's connection breaks after two replies of an add_many: those two keys are
    written, its others unknown (sent, never resent: they were applied), the other nodes'
    keys written."""
    from tests.proxy import FaultProxy

    proxies: dict[tuple[str, int], FaultProxy] = {}
    for address in redis_cluster.startup_nodes:
        host, _, port = address.rpartition(":")
        proxies[(host, int(port))] = FaultProxy(host, int(port))

    def through_proxy(address: tuple[str, int]) -> tuple[str, int]:
        proxy = proxies.get(address)
        return address if proxy is None else (proxy.host, proxy.port)

    victim = redis_cluster.startup_nodes[0]
    grouped = keys_by_node(nodes, 30, "p")
    keys = [f"p{i}" for i in range(30)]
    lost = grouped[victim][2:]

    async def main() -> None:
        async with AsyncRedisClusterBackend(
            redis_cluster.startup_nodes, address_remap=through_proxy
        ) as backend:
            await backend.get_many(keys)  # connect to every node
            host, _, port = victim.rpartition(":")
            proxies[(host, int(port))].cut_replies_after(len(b"+OK\r\n") * 2)
            with pytest.raises(co.BatchWriteError) as info:
                await backend.add_many([(k, b"v") for k in keys])
            for proxy in proxies.values():
                proxy.pass_through()
            assert info.value.written == [k for k in keys if k not in lost]
            assert info.value.unknown == lost
            assert info.value.not_written == []
            assert info.value.server == victim
            assert [nodes[victim].get(k) for k in lost] == [b"v"] * len(lost)
            assert await backend.get_many(keys) == [b"v"] * 30

    try:
        run(main())
    finally:
        for proxy in proxies.values():
            proxy.close()


def test_aclose_ends_a_slot_map_reload_under_way(own_cluster: RedisClusterServer) -> None:
    """Calls waiting for the slot map from a node that does not answer fail with
    BackendUnavailable (never CancelledError) when the backend is closed meanwhile."""
    victim = own_cluster.startup_nodes[0]
    process = node_process(own_cluster, victim)

    async def main() -> None:
        backend = AsyncRedisClusterBackend([victim], timeout=30)
        process.pause()
        try:
            calls = [asyncio.ensure_future(backend.get(f"k{i}")) for i in range(5)]
            await asyncio.sleep(0.2)
            assert not any(call.done() for call in calls)
            start = time.monotonic()
            await backend.aclose()
            results = await asyncio.gather(*calls, return_exceptions=True)
            assert time.monotonic() - start < 2
        finally:
            process.resume()
        for result in results:
            assert isinstance(result, co.BackendUnavailable), result
            assert victim in str(result)

    run(main())


def test_acl_user_and_password_on_every_node(
    redis_cluster: RedisClusterServer, nodes: dict[str, redis.Redis]
) -> None:
    """An ACL user authenticates on every node it reaches (the startup node and those it
    discovers); a wrong password is BackendUnavailable naming the node, never the password."""
    user, secret = "cacheorm-app", "acl-s3cret"
    for client in nodes.values():
        client.execute_command("ACL", "SETUSER", user, "on", f">{secret}", "~*", "+@all")

    async def main() -> None:
        keys = [f"acl{i}" for i in range(30)]
        async with AsyncRedisClusterBackend(
            redis_cluster.startup_nodes[:1], username=user, password=secret
        ) as store:
            await store.set_many([(k, b"v") for k in keys])
            assert await store.get_many(keys) == [b"v"] * 30
            connections = store._connections  # pyright: ignore[reportPrivateUsage]
            assert sorted(connections) == sorted(redis_cluster.startup_nodes)
        url = f"redis://{user}:wrong-{secret}@{redis_cluster.startup_nodes[0]}"
        async with co.AsyncRedisBackend.from_url(url, cluster=True) as wrong:
            with pytest.raises(co.BackendUnavailable) as info:
                await wrong.get("acl0")
            assert redis_cluster.startup_nodes[0] in str(info.value)
            assert secret not in str(info.value)

    try:
        run(main())
    finally:
        for client in nodes.values():
            client.execute_command("ACL", "DELUSER", user)


@pytest.fixture
def tls_cluster(tmp_path: Any) -> Iterator[tuple[list[str], str]]:
    """3 primaries that also listen for TLS (a self-signed certificate; the cluster bus
    speaks TLS too, so the nodes know each other's TLS ports): their TLS ``host:port``
    and the certificate's path."""
    import shutil
    import subprocess

    from tests.servers import (
        _binary,  # pyright: ignore[reportPrivateUsage]
        _cluster_ports,  # pyright: ignore[reportPrivateUsage]
        _create_cluster,  # pyright: ignore[reportPrivateUsage]
        _redis_process,  # pyright: ignore[reportPrivateUsage]
    )

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the TLS cluster test needs openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    server = _binary("redis-server", None)
    cli = _binary("redis-cli", None, package="redis-tools")
    options = [
        "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
        "--tls-auth-clients", "no", "--tls-cluster", "yes",
    ]  # fmt: skip
    for attempt in range(3):  # another process may take a free port before a node does
        # With tls-cluster, the bus listens on the TLS port + 10000: free as well.
        ports = _cluster_ports(6)
        plain_ports, tls_ports = ports[:3], ports[3:]
        processes = [
            _redis_process(server, port, "--tls-port", str(tls), *options, cluster=True)
            for port, tls in zip(plain_ports, tls_ports, strict=True)
        ]
        cluster = RedisClusterServer(nodes=processes, startup_nodes=[p.address for p in processes])
        try:
            for process in processes:
                process.launch()
            for process in processes:
                process.wait_ready()
            _create_cluster(cli, cluster.startup_nodes)
            cluster.wait_ok()
        except RuntimeError:
            cluster.stop()
            if attempt == 2:
                raise
            continue
        try:
            yield [f"127.0.0.1:{tls}" for tls in tls_ports], str(cert)
        finally:
            cluster.stop()
        return


def test_rediss_reaches_every_node_over_tls(tls_cluster: tuple[list[str], str]) -> None:
    """Over TLS, the slot map's TLS ports are used for every node; a context that does not
    trust the certificate is BackendUnavailable."""
    import ssl

    tls_nodes, cert = tls_cluster
    context = ssl.create_default_context(cafile=cert)
    keys = [f"tls{i}" for i in range(30)]

    async def main() -> None:
        url = f"rediss://{tls_nodes[0]}"
        async with co.AsyncRedisBackend.from_url(url, cluster=True, ssl_context=context) as store:
            await store.set_many([(k, b"over TLS") for k in keys])
            assert await store.get_many(keys) == [b"over TLS"] * 30
            connections = store._connections  # type: ignore[attr-defined]
            assert sorted(connections) == sorted(tls_nodes)
        async with co.AsyncRedisBackend.from_url(url, cluster=True) as untrusted:
            with pytest.raises(co.BackendUnavailable, match=tls_nodes[0]):
                await untrusted.get("tls0")

    run(main())
