"""RedisBackend on a Redis Cluster: the contract, slot routing, per-node pipelines, failures.

The session starts three cluster primaries (``redis_cluster`` in conftest). The
tests read each node directly to see where keys went and which commands ran,
slow every node down behind a delaying proxy to show that a batch calls the
nodes at once, move hash slots to make the client's slot map stale (MOVED and
ASK), and pause or kill a node mid-run. Tests that stop a node or move slots
put the cluster back as they found it.
"""

from __future__ import annotations

import dataclasses
import queue
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

import pytest

pytest.importorskip("redis")

import redis
import redis.cluster

import cacheorm as co
from cacheorm.testing import BackendContract
from tests.proxy import FaultProxy
from tests.servers import RedisClusterServer, ServerProcess, closed_port

#: Socket timeouts of the backends that meet a stopped node, in seconds.
TIMEOUT = 0.5
#: How long the delaying proxy holds every reply, in seconds.
DELAY = 0.3


class TestRedisClusterBackend(BackendContract):
    """The backend contract on a RedisCluster client; TTLs really expire."""

    capabilities = frozenset({"ttl", "counter", "scan"})  # SCAN runs on every primary

    @pytest.fixture
    def backend(self, redis_cluster_backend: co.RedisBackend) -> co.Backend:
        """A RedisBackend on the flushed cluster."""
        return redis_cluster_backend


# -- helpers and fixtures -----------------------------------------------------------


def cluster_client(store: co.RedisBackend) -> redis.cluster.RedisCluster:
    """The backend's RedisCluster client."""
    client = store.client
    assert isinstance(client, redis.cluster.RedisCluster)
    return client


@pytest.fixture
def store(redis_cluster_backend: co.RedisBackend) -> co.RedisBackend:
    """A RedisBackend on the flushed cluster (conftest's ``redis_cluster_backend``)."""
    return redis_cluster_backend


@pytest.fixture
def nodes(redis_cluster: RedisClusterServer) -> Iterator[dict[str, redis.Redis]]:
    """A plain client on each primary, by ``host:port``, statistics reset and scripts flushed."""
    clients = {}
    for address in redis_cluster.startup_nodes:
        host, _, port = address.rpartition(":")
        client = redis.Redis(host=host, port=int(port), socket_timeout=5)
        client.script_flush()
        client.config_resetstat()
        clients[address] = client
    yield clients
    for client in clients.values():
        client.close()


@pytest.fixture
def own_cluster(redis_cluster: RedisClusterServer) -> RedisClusterServer:
    """The session's cluster, when this session started its processes (to stop them)."""
    if not redis_cluster.nodes:
        pytest.skip("REDIS_CLUSTER_NODES points at an external cluster; this test stops a node")
    return redis_cluster


def owner(store: co.RedisBackend, key: str) -> str:
    """``host:port`` of the primary that owns ``key``'s slot."""
    return str(cluster_client(store).get_node_from_key(key).name)


def keys_by_node(store: co.RedisBackend, count: int, prefix: str = "k") -> dict[str, list[str]]:
    """``count`` keys ``prefix0, prefix1, ...`` grouped by the node that owns them."""
    grouped: dict[str, list[str]] = {}
    for i in range(count):
        key = f"{prefix}{i}"
        grouped.setdefault(owner(store, key), []).append(key)
    return grouped


def calls(client: redis.Redis) -> dict[str, int]:
    """Commands a node ran since its statistics were reset, leaving out the observers'."""
    stats: dict[str, dict[str, Any]] = client.info("commandstats")
    counted = {name.removeprefix("cmdstat_"): int(s["calls"]) for name, s in stats.items()}
    skip = ("info", "config", "cluster", "hello", "client", "command", "ping", "script")
    return {name: n for name, n in counted.items() if n and not name.startswith(skip)}


def short_timeout_backend(startup_nodes: list[str]) -> co.RedisBackend:
    """A cluster backend that gives up on a silent node after TIMEOUT seconds."""
    return co.RedisBackend.from_cluster(
        startup_nodes, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT
    )


def node_process(cluster: RedisClusterServer, address: str) -> ServerProcess:
    """The process of the node at ``address``."""
    return next(node for node in cluster.nodes if node.address == address)


# -- construction ---------------------------------------------------------------


def test_from_cluster_and_from_url_build_cluster_clients(redis_cluster: RedisClusterServer) -> None:
    """from_cluster and from_url(cluster=True) build RedisCluster clients with 5 s timeouts;
    .server and repr name the startup nodes."""
    first = redis_cluster.startup_nodes[0]
    by_nodes = co.RedisBackend.from_cluster(redis_cluster.startup_nodes)
    by_url = co.RedisBackend.from_url(f"redis://{first}", cluster=True)
    try:
        for backend in (by_nodes, by_url):
            client = cluster_client(backend)
            kwargs = client.nodes_manager.connection_kwargs
            assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (5.0, 5.0)
        assert by_nodes.server == "cluster " + ",".join(redis_cluster.startup_nodes)
        # the node the URL names, also after redis-py discovered the others
        assert by_url.server == f"cluster {first}"
        assert repr(by_url) == f"RedisBackend(cluster={first!r})"
        by_nodes.set("k", b"v")
        assert by_url.get("k") == b"v"
        assert by_url.delete("k") is True
    finally:
        by_nodes.close()
        by_url.close()


PASSWORD = "s3cret-pw"

FIRST_USES: dict[str, Callable[[co.RedisBackend], object]] = {
    "get": lambda b: b.get("k"),
    "exists": lambda b: b.exists("k"),
    "set": lambda b: b.set("k", b"v"),
    "add": lambda b: b.add("k", b"v"),
    "incr": lambda b: b.incr("n"),
    "cas": lambda b: b.cas("k", b"v", "0" * 40),
    "get_many": lambda b: b.get_many(["k", "l"]),
    "set_many": lambda b: b.set_many([("k", b"v"), ("l", b"w")], ttl=5),
    "delete_many": lambda b: b.delete_many(["k", "l"]),
    "client": lambda b: b.client,
}


@pytest.mark.parametrize("build", ["from_url", "from_cluster"])
def test_building_a_cluster_backend_does_not_connect(build: str) -> None:
    """from_url(cluster=True) and from_cluster return at once for an address where nothing
    listens; each first use then raises BackendUnavailable naming the node, no password."""
    port = closed_port()
    start = time.monotonic()
    if build == "from_url":
        backend = co.RedisBackend.from_url(
            f"redis://app:{PASSWORD}@127.0.0.1:{port}/0", cluster=True, socket_connect_timeout=1
        )
    else:
        backend = co.RedisBackend.from_cluster(
            [f"127.0.0.1:{port}"], password=PASSWORD, socket_connect_timeout=1
        )
    built = time.monotonic() - start
    try:
        assert built < 0.1
        assert backend.server == f"cluster 127.0.0.1:{port}"
        assert repr(backend) == f"RedisBackend(cluster='127.0.0.1:{port}')"
        for name, use in FIRST_USES.items():
            with pytest.raises(co.BackendUnavailable) as info:
                use(backend)
            exc = info.value
            assert f"127.0.0.1:{port}" in str(exc), name
            assert exc.server == backend.server, name
            assert PASSWORD not in str(exc), name
            assert isinstance(exc.__cause__, redis.exceptions.RedisClusterException), name
    finally:
        backend.close()
    with pytest.raises(co.BackendUnavailable, match="closed"):
        backend.get("k")


def test_a_lazy_cluster_backend_connects_once_under_concurrent_first_use(
    redis_cluster: RedisClusterServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Threads that all make the first call share one RedisCluster client, built once."""
    built: list[object] = []
    original = redis.cluster.RedisCluster.__init__

    def counting(self: Any, *args: Any, **kwargs: Any) -> None:
        built.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(redis.cluster.RedisCluster, "__init__", counting)
    backend = co.RedisBackend.from_cluster(redis_cluster.startup_nodes)
    assert built == []
    start = threading.Barrier(8)

    def first_use(i: int) -> bytes | None:
        start.wait()
        backend.set(f"lazy{i}", b"v")
        return backend.get(f"lazy{i}")

    try:
        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(first_use, range(8))) == [b"v"] * 8
        assert built == [backend.client]
        assert backend.delete_many([f"lazy{i}" for i in range(8)]) == 8
    finally:
        backend.close()


def test_a_decoding_lazy_cluster_is_refused_at_build_or_first_use(
    redis_cluster: RedisClusterServer,
) -> None:
    """decode_responses as a keyword is refused when building; in the URL, at first use."""
    first = redis_cluster.startup_nodes[0]
    with pytest.raises(co.ConfigurationError, match="decode_responses=False"):
        co.RedisBackend.from_cluster(redis_cluster.startup_nodes, decode_responses=True)
    backend = co.RedisBackend.from_url(f"redis://{first}/0?decode_responses=True", cluster=True)
    try:
        with pytest.raises(co.ConfigurationError, match="decode_responses=False"):
            backend.get("k")
    finally:
        backend.close()


def test_from_cluster_checks_its_nodes_when_built() -> None:
    """Nodes that are not "host:port" are a ValueError at once."""
    for bad in (["localhost"], ["host:port"], []):
        with pytest.raises(ValueError, match="host:port"):
            co.RedisBackend.from_cluster(bad)


def test_cluster_bad_input(redis_cluster: RedisClusterServer, store: co.RedisBackend) -> None:
    """A decoding client is refused; a key that is not UTF-8 fails before any I/O; one
    "host:port" string is accepted as the node list."""
    with pytest.raises(co.ConfigurationError, match="decode_responses=False"):
        co.RedisBackend.from_cluster(redis_cluster.startup_nodes[0], decode_responses=True)
    for op in (
        lambda: store.set_many([("ok", b"v"), ("a\ud800", b"v")]),
        lambda: store.get_many(["ok", "a\ud800"]),
        lambda: store.add("a\ud800", b"v"),
    ):
        with pytest.raises(co.BackendError, match="ud800") as info:
            op()
        assert not isinstance(info.value, co.BackendUnavailable)
    assert store.get("ok") is None


def test_close_stops_the_node_threads(redis_cluster: RedisClusterServer) -> None:
    """A cross-node batch starts the backend's threads; close() joins them."""

    def threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith("cacheorm-redis-cluster")]

    before = len(threads())
    backend = co.RedisBackend.from_cluster(redis_cluster.startup_nodes)
    backend.get_many([f"k{i}" for i in range(30)])
    assert len(threads()) > before
    backend.close()
    assert len(threads()) == before
    with pytest.raises(co.BackendError):
        backend.get_many([f"k{i}" for i in range(30)])


# -- batches across slots ------------------------------------------------------------


def test_batches_across_many_slots_keep_input_order(
    store: co.RedisBackend, nodes: dict[str, redis.Redis]
) -> None:
    """1,000 keys over every node: each batch answers in input order, duplicates and misses
    included, and every key is stored on the node that owns its slot."""
    keys = [f"user:{i}" for i in range(1000)]
    store.set_many([(k, k.encode()) for k in keys])
    assert len({owner(store, k) for k in keys}) == 3
    for key in keys[::97]:
        assert nodes[owner(store, key)].get(key) == key.encode()
    probe = [keys[5], "missing", keys[999], keys[5], keys[0]]
    assert store.get_many(probe) == [b"user:5", None, b"user:999", b"user:5", b"user:0"]
    assert store.get_many(keys) == [k.encode() for k in keys]
    store.set_many([(k, b"ttl " + k.encode()) for k in keys[:500]], ttl=60)
    assert store.get_many(keys[498:502]) == [
        b"ttl user:498",
        b"ttl user:499",
        b"user:500",
        b"user:501",
    ]
    added = store.add_many([("new:1", b"1"), (keys[7], b"x"), ("new:2", b"2"), ("new:1", b"3")])
    assert added == [True, False, True, False]
    replaced = store.replace_many([("new:2", b"B"), ("nope", b"x"), (keys[8], b"C")])
    assert replaced == [True, False, True]
    assert store.get_many(["new:1", "new:2", "nope", keys[8]]) == [b"1", b"B", None, b"C"]
    assert store.delete_many([*keys, "new:1", "new:2", "nope", keys[0]]) == 1002
    assert store.get_many(keys[:10]) == [None] * 10


def test_each_batch_is_one_round_trip_per_node(
    store: co.RedisBackend, nodes: dict[str, redis.Redis], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every batch writes once to each node's socket; the nodes run one MGET / MSET / DEL per
    slot (a GET for a slot holding one key of a get_many), or one SET per key."""
    grouped = keys_by_node(store, 300)
    keys = [f"k{i}" for i in range(300)]
    client = cluster_client(store)
    slots = {address: len({client.keyslot(k) for k in ks}) for address, ks in grouped.items()}
    sizes = {a: Counter(client.keyslot(k) for k in ks).values() for a, ks in grouped.items()}

    def reads(address: str) -> dict[str, int]:
        single = sum(1 for n in sizes[address] if n == 1)
        return {
            name: count
            for name, count in (("get", single), ("mget", slots[address] - single))
            if count
        }

    store.get_many(keys)  # opens one connection per node
    sends: Counter[str] = Counter()
    original: Callable[..., None] = redis.connection.Connection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        sends[f"{self.host}:{self.port}"] += 1
        original(self, command, check_health)

    monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counting)
    batches: list[tuple[Callable[[], object], Callable[[str], dict[str, int]]]] = [
        (lambda: store.set_many([(k, b"v") for k in keys]), lambda a: {"mset": slots[a]}),
        (lambda: store.get_many(keys), reads),  # no miss, so no EXISTS follows
        (
            lambda: store.set_many([(k, b"v") for k in keys], ttl=9),
            lambda a: {"set": len(grouped[a])},
        ),
        (lambda: store.replace_many([(k, b"w") for k in keys]), lambda a: {"set": len(grouped[a])}),
        (lambda: store.delete_many(keys), lambda a: {"del": slots[a]}),
        (lambda: store.add_many([(k, b"v") for k in keys]), lambda a: {"set": len(grouped[a])}),
    ]
    for batch, expected in batches:
        for client_ in nodes.values():
            client_.config_resetstat()
        sends.clear()
        batch()
        assert dict(sends) == dict.fromkeys(grouped, 1)
        for address, node in nodes.items():
            assert calls(node) == expected(address), address


class SlowProxy:
    """A loopback TCP proxy that holds every reply chunk ``delay`` seconds before passing it
    (0 at first; a test sets it once the connections are open)."""

    def __init__(self, target: tuple[str, int], delay: float = 0.0) -> None:
        self.target = target
        self.delay = delay
        self.closed = threading.Event()
        self.sockets: list[socket.socket] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port = int(self.listener.getsockname()[1])
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self.threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            held: queue.Queue[tuple[float, bytes]] = queue.Queue()
            self._spawn(self._pump, client, upstream, None)
            self._spawn(self._pump, upstream, client, held)
            self._spawn(self._deliver, held, client)

    def _pump(self, source: socket.socket, sink: socket.socket, held: Any) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if held is not None:
                held.put((time.monotonic() + self.delay, data))
            if not data:
                if held is None:
                    with _quiet():
                        sink.shutdown(socket.SHUT_WR)
                return
            if held is None:
                with _quiet():
                    sink.sendall(data)

    def _deliver(self, held: queue.Queue[tuple[float, bytes]], sink: socket.socket) -> None:
        while True:
            due, data = held.get()
            time.sleep(max(0.0, due - time.monotonic()))
            with _quiet():
                if data:
                    sink.sendall(data)
                else:
                    sink.shutdown(socket.SHUT_WR)
            if not data:
                return

    def close(self) -> None:
        """Stop accepting and close every connection."""
        self.closed.set()
        self.listener.close()
        for sock in self.sockets:
            with _quiet():
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self.threads:
            thread.join(5)


class _quiet:
    """Ignore OSError (a peer that went away) in a ``with`` block."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return isinstance(exc[1], OSError)


def test_nodes_are_called_concurrently(
    redis_cluster: RedisClusterServer, store: co.RedisBackend
) -> None:
    """With every node's replies held 0.3 s, a batch over 3 nodes takes about 0.3 s, not
    0.9 s (nodes one after another) nor 0.3 s per key: one pipeline per node, all at once."""
    proxies: dict[tuple[str, int], SlowProxy] = {}
    for address in redis_cluster.startup_nodes:
        host, _, port = address.rpartition(":")
        proxies[(host, int(port))] = SlowProxy((host, int(port)))

    def through_proxy(address: tuple[str, int]) -> tuple[str, int]:
        proxy = proxies.get(address)
        return address if proxy is None else ("127.0.0.1", proxy.port)

    slow = co.RedisBackend.from_cluster(redis_cluster.startup_nodes, address_remap=through_proxy)
    try:
        keys = [f"k{i}" for i in range(60)]
        assert len({owner(store, k) for k in keys}) == 3
        slow.get_many(keys)  # connect to every node before the replies slow down
        for proxy in proxies.values():
            proxy.delay = DELAY
        timings = {}
        for name, batch in [
            ("set_many", lambda: slow.set_many([(k, b"v") for k in keys], ttl=30)),
            ("get_many", lambda: slow.get_many(keys)),
            ("add_many", lambda: slow.add_many([(f"new{k}", b"w") for k in keys])),
            ("delete_many", lambda: slow.delete_many(keys)),
        ]:
            start = time.monotonic()
            batch()
            timings[name] = time.monotonic() - start
        start = time.monotonic()
        assert slow.get(keys[0]) is None
        single = time.monotonic() - start
    finally:
        slow.close()
        for proxy in proxies.values():
            proxy.close()
    print(f"\none node round trip {single:.3f}s; 60 keys on 3 nodes: {timings}")
    assert single >= DELAY
    for name, elapsed in timings.items():
        assert DELAY <= elapsed < 2 * DELAY, (name, elapsed)


# -- keys, scripts and redirects -------------------------------------------------------


@dataclasses.dataclass
class Item:
    """A record whose owner (a hash tag) keeps all of an owner's items in one slot."""

    owner: Annotated[str, co.Field(primary_key=True, hash_tag=True)]
    item: Annotated[str, co.Field(primary_key=True)]
    note: str = ""


@dataclasses.dataclass
class Plain:
    """A record whose one key part may contain braces."""

    name: Annotated[str, co.Field(primary_key=True)]


def test_repository_keys_with_braces_stay_in_their_slot(
    store: co.RedisBackend, nodes: dict[str, redis.Redis]
) -> None:
    """Braces in key parts are escaped, so they never form a hash tag: a hash-tagged owner
    puts all its items in the slot of the (escaped) owner, whatever the parts contain, and
    an untagged key hashes as a whole (CLUSTER KEYSLOT agrees)."""
    node = next(iter(nodes.values()))
    items = co.Repository(Item, backend=store, serializer="json")
    owners = ["alice", "{bob}", "c}a{rol", "{}", "d{a}ve"]
    records = [Item(o, f"{{item {i}}}", note=o) for o in owners for i in range(5)]
    items.create_many(records)
    for o in owners:
        slots = {node.cluster("KEYSLOT", items.key_of(r)) for r in records if r.owner == o}
        assert len(slots) == 1, o
    assert len({node.cluster("KEYSLOT", items.key_for((o, "x"))) for o in owners}) > 1
    assert items.get_many([(r.owner, r.item) for r in records]) == records
    plain = co.Repository(Plain, backend=store, serializer="json")
    names = ["{a}", "{a}1", "x{a}", "{", "}{"]
    plain.create_many([Plain(n) for n in names])
    for name in names:
        key = plain.key_for(name)
        assert "{" not in key
        assert "}" not in key
        assert node.cluster("KEYSLOT", key) == cluster_client(store).keyslot(key)
    assert plain.get_many(names) == [Plain(n) for n in names]


def test_keep_ttl_keeps_the_remaining_ttl_on_every_node(store: co.RedisBackend) -> None:
    """replace, replace_many and cas with KEEP_TTL keep each key's PTTL on its own node, and
    keep "no expiry" as no expiry."""
    client = cluster_client(store)
    keys = [f"t{i}" for i in range(30)]
    assert len({owner(store, key) for key in keys}) == 3
    store.set_many([(key, b"old") for key in keys[:15]], ttl=100)
    store.set_many([(key, b"old") for key in keys[15:]])
    for i, key in enumerate(keys[:-2]):
        if i % 3 == 0:
            assert store.replace(key, b"new", ttl=co.KEEP_TTL) is True
        elif i % 3 == 1:
            got = store.gets(key)
            assert got is not None
            assert store.cas(key, b"new", got[1], ttl=co.KEEP_TTL) is True
    tail = [(key, b"new") for i, key in enumerate(keys) if i % 3 == 2 or i >= 28]
    assert store.replace_many(tail, ttl=co.KEEP_TTL) == [True] * len(tail)
    assert store.get_many(keys) == [b"new"] * 30
    for key in keys[:15]:
        assert 90_000 < client.pttl(key) <= 100_000, key
    for key in keys[15:]:
        assert client.pttl(key) == -1, key


def test_cas_loads_its_script_on_each_node(
    store: co.RedisBackend, nodes: dict[str, redis.Redis]
) -> None:
    """Each node gets EVALSHA, answers NOSCRIPT once and then runs EVAL; later cas calls
    there are EVALSHA alone."""
    grouped = keys_by_node(store, 30)
    for address, keys in grouped.items():
        store.set(keys[0], b"1")
        got = store.gets(keys[0])
        assert got is not None
        assert store.cas(keys[0], b"2", got[1]) is True
        assert store.cas(keys[0], b"3", got[1]) is False
        # the script's own GET and SET count too: set + gets + 2 script GETs, 1 script SET
        expected = {"set": 2, "get": 3, "evalsha": 2, "eval": 1}
        assert calls(nodes[address]) == expected, address
    assert store.get_many([keys[0] for keys in grouped.values()]) == [b"2"] * 3


def node_ids(nodes: dict[str, redis.Redis]) -> dict[str, str]:
    """Each node's cluster id, by address."""
    return {address: client.cluster("MYID").decode() for address, client in nodes.items()}


def move_slot(nodes: dict[str, redis.Redis], slot: int, source: str, target: str) -> None:
    """Give an empty ``slot`` from ``source`` to ``target`` (SETSLOT, as resharding does)."""
    ids = node_ids(nodes)
    nodes[target].cluster("SETSLOT", slot, "IMPORTING", ids[source])
    nodes[source].cluster("SETSLOT", slot, "MIGRATING", ids[target])
    for address in [target, source, *[a for a in nodes if a not in (source, target)]]:
        nodes[address].cluster("SETSLOT", slot, "NODE", ids[target])


def wait_for_slot(nodes: dict[str, redis.Redis], slot: int, target: str) -> None:
    """Wait until every node agrees that ``target`` owns ``slot``."""
    host, port = target.rsplit(":", 1)
    deadline = time.monotonic() + 10
    while True:
        owners = set()
        for client in nodes.values():
            for start, end, primary, *_ in client.execute_command("CLUSTER SLOTS"):
                if start <= slot <= end:
                    owners.add((primary[0].decode(), int(primary[1])))
        if owners == {(host, int(port))}:
            return
        assert time.monotonic() < deadline, f"slot {slot} owners: {owners}"
        time.sleep(0.02)


def test_moved_and_ask_redirect_every_write_once(
    redis_cluster: RedisClusterServer, store: co.RedisBackend, nodes: dict[str, redis.Redis]
) -> None:
    """After a slot moves, the stale slot map sends writes to the old owner: MOVED (not
    applied) is followed to the new one, once. During a migration, ASK is followed with
    ASKING. add, incr, cas and add_many each apply exactly once."""
    client = cluster_client(store)
    a, b = redis_cluster.startup_nodes[0], redis_cluster.startup_nodes[1]
    moved_key = next(f"m{i}" for i in range(10_000) if owner(store, f"m{i}") == a)
    ask_key = next(f"a{i}" for i in range(10_000) if owner(store, f"a{i}") == a)
    moved_slot, ask_slot = client.keyslot(moved_key), client.keyslot(ask_key)
    ids = node_ids(nodes)
    try:
        move_slot(nodes, moved_slot, a, b)
        wait_for_slot(nodes, moved_slot, b)
        assert owner(store, moved_key) == a  # the backend's map is stale
        assert store.add(moved_key, b"1") is True
        assert store.incr("{" + moved_key + "}n", 5) == 5
        got = store.gets(moved_key)
        assert got is not None
        assert store.cas(moved_key, b"2", got[1]) is True
        assert store.add_many([(moved_key, b"x"), ("{" + moved_key + "}2", b"y")]) == [False, True]
        assert owner(store, moved_key) == b  # refreshed by the MOVED reply
        # cas: EVALSHA (NOSCRIPT on this node), then EVAL, whose script runs GET and SET;
        # the refused add of add_many is checked with a TYPE
        expected = {"set": 4, "incrby": 1, "evalsha": 1, "eval": 1, "get": 2, "type": 1}
        assert calls(nodes[b]) == expected
        assert nodes[b].get("{" + moved_key + "}n") == b"5"

        nodes[b].cluster("SETSLOT", ask_slot, "IMPORTING", ids[a])
        nodes[a].cluster("SETSLOT", ask_slot, "MIGRATING", ids[b])
        nodes[b].config_resetstat()
        assert store.add(ask_key, b"asked") is True
        assert store.incr("{" + ask_key + "}n") == 1
        assert store.add_many([("{" + ask_key + "}2", b"y"), (ask_key, b"z")]) == [True, False]
        # the refused add's TYPE check is asked (ASK) to the importing node too
        assert calls(nodes[b]) == {"asking": 5, "set": 3, "incrby": 1, "type": 1}
        assert calls(nodes[a]).get("set", 0) == 0
    finally:
        for slot in (moved_slot, ask_slot):
            for client_ in nodes.values():
                keys = client_.cluster("GETKEYSINSLOT", slot, 100)
                if keys:
                    client_.execute_command("ASKING")
                    client_.delete(*keys)
        for address in nodes:
            nodes[address].cluster("SETSLOT", ask_slot, "STABLE")
        move_slot(nodes, moved_slot, b, a)
        wait_for_slot(nodes, moved_slot, a)
        wait_for_slot(nodes, ask_slot, a)
        redis_cluster.wait_ok()


def test_a_slot_in_migration_gives_tryagain_until_the_batch_gives_up(
    redis_cluster: RedisClusterServer, store: co.RedisBackend, nodes: dict[str, redis.Redis]
) -> None:
    """An MSET / MGET over a slot being migrated, with one key moved and one not, is
    answered TRYAGAIN: retried a few times, then reported as not written (nothing of it
    was applied) while the other slots' keys are written."""
    a, b = redis_cluster.startup_nodes[0], redis_cluster.startup_nodes[1]
    tag = next(f"t{i}" for i in range(10_000) if owner(store, f"{{t{i}}}") == a)
    moving = [f"{{{tag}}}1", f"{{{tag}}}2"]
    slot = cluster_client(store).keyslot(moving[0])
    others = [k for k in (f"o{i}" for i in range(50)) if cluster_client(store).keyslot(k) != slot]
    store.set(moving[0], b"old")
    ids = node_ids(nodes)
    try:
        nodes[b].cluster("SETSLOT", slot, "IMPORTING", ids[a])
        nodes[a].cluster("SETSLOT", slot, "MIGRATING", ids[b])
        start = time.monotonic()
        with pytest.raises(co.BatchWriteError, match="redirect") as info:
            store.set_many([(moving[0], b"x"), *[(k, b"v") for k in others], (moving[1], b"y")])
        assert time.monotonic() - start < 2
        assert info.value.written == others
        assert info.value.not_written == moving
        assert info.value.unknown == []
        with pytest.raises(co.BackendUnavailable):
            store.get_many([*moving, others[0]])
        assert nodes[a].get(moving[0]) == b"old"
    finally:
        for address in (a, b):
            nodes[address].cluster("SETSLOT", slot, "STABLE")
        nodes[a].delete(moving[0])
    assert store.get_many(others) == [b"v"] * len(others)


def test_a_slot_its_node_no_longer_serves_is_unavailable(
    redis_cluster: RedisClusterServer, store: co.RedisBackend, nodes: dict[str, redis.Redis]
) -> None:
    """A node that answers CLUSTERDOWN for a slot did not apply the command: a write there
    is BackendUnavailable (never OutcomeUnknown) and a batch lists its keys as not written."""
    a = redis_cluster.startup_nodes[0]
    key = next(f"d{i}" for i in range(10_000) if owner(store, f"d{i}") == a)
    other = next(f"e{i}" for i in range(10_000) if owner(store, f"e{i}") != a)
    slot = cluster_client(store).keyslot(key)
    nodes[a].config_set("cluster-require-full-coverage", "no")
    nodes[a].cluster("DELSLOTS", slot)
    try:
        for write in (lambda: store.add(key, b"v"), lambda: store.incr(key)):
            with pytest.raises(co.BackendUnavailable, match="not served") as info:
                write()
            assert not isinstance(info.value, co.OutcomeUnknown)
            assert info.value.server == a
        with pytest.raises(co.BatchWriteError) as batch:
            store.add_many([(key, b"v"), (other, b"w")])
        assert (batch.value.written, batch.value.not_written) == ([other], [key])
    finally:
        nodes[a].cluster("ADDSLOTS", slot)
        nodes[a].config_set("cluster-require-full-coverage", "yes")
    wait_for_slot(nodes, slot, a)
    redis_cluster.wait_ok()
    assert store.add(key, b"v") is True


def test_the_cluster_refusing_an_expiry_is_invalid_ttl(
    store: co.RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error reply inside a cross-node batch is the error of its first key."""
    monkeypatch.setattr(co._redis_ops, "MAX_TTL_MS", 2**64)  # type: ignore[attr-defined]
    ttl = (2**63 - 1000) / 1000
    keys = [f"k{i}" for i in range(20)]
    for write in (
        lambda: store.set_many([(k, b"v") for k in keys], ttl=ttl),
        lambda: store.add_many([(k, b"v") for k in keys], ttl=ttl),
        lambda: store.add(keys[0], b"v", ttl=ttl),
    ):
        with pytest.raises(co.InvalidTTL, match="invalid expire time") as info:
            write()
        assert info.value.key == keys[0]
    assert store.get_many(keys) == [None] * 20


# -- a node that stops -------------------------------------------------------------------


def test_a_paused_node_leaves_its_keys_unknown_and_never_gets_a_resend(
    own_cluster: RedisClusterServer,
) -> None:
    """A node that stops answering: a batch writes the other nodes' keys and reports the
    silent node's keys as unknown after one socket timeout; an incr there is OutcomeUnknown
    and, once the node wakes up, counted exactly once."""
    backend = short_timeout_backend(own_cluster.startup_nodes)
    victim = own_cluster.startup_nodes[0]
    process = node_process(own_cluster, victim)
    host, _, port = victim.rpartition(":")
    direct = redis.Redis(host=host, port=int(port))
    paused = False
    try:
        grouped = keys_by_node(backend, 30)
        items = [(f"k{i}", b"v") for i in range(30)]
        healthy = [k for k, _ in items if k not in grouped[victim]]
        counter = next(f"n{i}" for i in range(1000) if owner(backend, f"n{i}") == victim)
        backend.get_many([k for k, _ in items])  # connect to every node first

        process.pause()
        paused = True
        start = time.monotonic()
        with pytest.raises(co.BatchWriteError) as info:
            backend.set_many(items, ttl=60)
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
        assert [direct.get(k) for k in grouped[victim]] == [b"v"] * len(grouped[victim])

        assert backend.get(counter) is None  # a fresh connection to the node
        process.pause()
        paused = True
        with pytest.raises(co.OutcomeUnknown, match=victim):
            backend.incr(counter)
        process.resume()
        paused = False
        assert direct.get(counter) == b"1"
        assert backend.incr(counter) == 2
    finally:
        if paused:
            process.resume()
        direct.close()
        backend.close()


def test_a_killed_node_fails_its_keys_and_not_the_others(
    own_cluster: RedisClusterServer, nodes: dict[str, redis.Redis]
) -> None:
    """Kill one node mid-run: its keys raise BackendUnavailable (nothing sent, so never
    OutcomeUnknown) within the timeout, the other nodes keep working, a batch spanning it
    writes the others and lists its keys as not written; restarted, it works again."""
    victim = own_cluster.startup_nodes[2]
    process = node_process(own_cluster, victim)
    for client in nodes.values():  # the other nodes keep serving their slots meanwhile
        client.config_set("cluster-require-full-coverage", "no")
    backend = short_timeout_backend(own_cluster.startup_nodes)
    killed = False
    try:
        grouped = keys_by_node(backend, 30)
        mine, others = (
            grouped[victim][0],
            [k for a, ks in grouped.items() if a != victim for k in ks],
        )
        backend.set_many([(k, b"old") for ks in grouped.values() for k in ks])
        process.kill()
        killed = True
        single_ops: list[Callable[[], object]] = [
            lambda: backend.get(mine),
            lambda: backend.set(mine, b"v"),
            lambda: backend.add(mine, b"v"),
            lambda: backend.incr(mine),
            lambda: backend.cas(mine, b"v", "0" * 40),
            lambda: backend.delete(mine),
            lambda: backend.replace(mine, b"v"),
            lambda: backend.gets(mine),
            lambda: backend.exists(mine),
            lambda: backend.add_many([(mine, b"v")]),
        ]
        for op in single_ops:
            start = time.monotonic()
            with pytest.raises(co.BackendUnavailable) as info:
                op()
            assert time.monotonic() - start < 5
            assert not isinstance(info.value, co.OutcomeUnknown)
            assert info.value.server == victim
            assert info.value.key == mine
        assert backend.get(others[0]) == b"old"
        assert backend.add(others[0], b"new") is False
        assert backend.replace(others[0], b"new") is True
        counter = next(f"n{i}" for i in range(1000) if owner(backend, f"n{i}") != victim)
        assert backend.incr(counter) == 1
        items = [(f"k{i}", b"new") for i in range(30)]
        for write in (
            lambda: backend.set_many(items, ttl=60),
            lambda: backend.set_many(items),
            lambda: backend.replace_many(items),
        ):
            with pytest.raises(co.BatchWriteError) as batch:
                write()
            assert batch.value.written == [k for k, _ in items if k not in grouped[victim]]
            assert batch.value.not_written == grouped[victim]
            assert batch.value.unknown == []
        with pytest.raises(co.BackendUnavailable, match=victim):
            backend.get_many([k for k, _ in items])
        with pytest.raises(co.BatchWriteError):
            backend.delete_many([k for k, _ in items])
        assert backend.get_many(others) == [None] * len(others)

        process.restart()
        killed = False
        own_cluster.wait_ok()
        assert backend.add(mine, b"back") is True  # the node restarted empty
        assert backend.incr("{" + mine + "}n") == 1
        backend.set_many(items)
        assert backend.get_many([k for k, _ in items]) == [b"new"] * 30
    finally:
        if killed:
            process.restart()
            own_cluster.wait_ok()
        for client in nodes.values():
            client.config_set("cluster-require-full-coverage", "yes")
        backend.close()


def test_a_node_failing_after_mget_fails_the_get_many(
    redis_cluster: RedisClusterServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a cluster, a get_many whose EXISTS of the misses cannot reach the nodes raises
    BackendUnavailable naming EXISTS, never misses it could not check."""
    proxies: dict[tuple[str, int], FaultProxy] = {}
    for address in redis_cluster.startup_nodes:
        host, _, port = address.rpartition(":")
        proxies[(host, int(port))] = FaultProxy(host, int(port))

    def through_proxy(address: tuple[str, int]) -> tuple[str, int]:
        proxy = proxies.get(address)
        return address if proxy is None else (proxy.host, proxy.port)

    backend = co.RedisBackend.from_cluster(
        redis_cluster.startup_nodes,
        address_remap=through_proxy,
        socket_timeout=TIMEOUT,
        socket_connect_timeout=TIMEOUT,
    )
    original = co.RedisBackend._foreign_misses

    def nodes_fail(self: co.RedisBackend, keys: list[str]) -> None:
        for proxy in proxies.values():
            proxy.refuse()
        original(self, keys)

    monkeypatch.setattr(co.RedisBackend, "_foreign_misses", nodes_fail)
    try:
        backend.set("hit", b"v")
        with pytest.raises(co.BackendUnavailable, match="EXISTS") as info:
            backend.get_many(["hit", "miss"])
        assert info.value.key == "miss"
    finally:
        backend.close()
        for proxy in proxies.values():
            proxy.close()
