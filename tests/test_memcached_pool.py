"""MemcachedBackend on a pool of real memcached servers (a pymemcache HashClient).

The contract suite runs on the session's 3-server pool; the tests that kill or
pause servers start 3 of their own.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest

pytest.importorskip("pymemcache")

from pymemcache.client.base import Client, PooledClient  # type: ignore[import-untyped]
from pymemcache.client.hash import HashClient  # type: ignore[import-untyped]

from cacheorm._backend import Backend
from cacheorm._errors import BackendUnavailable, BatchWriteError
from cacheorm._memcached import MemcachedBackend
from cacheorm.testing import AWKWARD_KEYS, BackendContract
from tests.memcached_tools import CountingSocket, stat
from tests.servers import MemcachedServer, start_memcached_processes

KEYS = [f"user:{i}" for i in range(300)]


class TestMemcachedPoolBackend(BackendContract):
    """The contract suite on a MemcachedBackend over the session's 3 memcached servers."""

    expiry_slack = 2.0
    capabilities = frozenset({"ttl", "counter"})
    ttl_precision = 2.0  # whole seconds, and cacheorm sends ceil(ttl) + 1

    @pytest.fixture
    def backend(self, memcached_pool_backend: MemcachedBackend) -> Backend:
        """The pool backend, every server flushed."""
        return memcached_pool_backend


def spec(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


@pytest.fixture
def raws(memcached_pool: MemcachedServer) -> Iterator[dict[str, Client]]:
    """A plain client straight to each server of the session pool, by address."""
    clients = {
        address: Client(spec(address), default_noreply=False, timeout=5.0)
        for address in memcached_pool.servers
    }
    yield clients
    for client in clients.values():
        client.close()


@pytest.fixture
def own_pool() -> Iterator[MemcachedServer]:
    """3 memcached processes of this test's own, to kill, pause and restart."""
    pool = start_memcached_processes(3)
    yield pool
    pool.stop()


def count_sends(store: MemcachedBackend) -> dict[str, CountingSocket]:
    """Connect every server of ``store`` and count what is sent to each, by address."""
    counted = {}
    for node in store._nodes:
        node.client.version()
        counted[node.address] = node.client.sock = CountingSocket(node.client.sock)
    return counted


# -- construction --------------------------------------------------------------------------


def test_from_servers_with_several_addresses_builds_a_hash_client(
    memcached_pool: MemcachedServer,
) -> None:
    """Several addresses give a HashClient with the backend's defaults; repr lists them."""
    store = MemcachedBackend.from_servers(memcached_pool.servers, retry_timeout=0.5)
    try:
        assert isinstance(store.client, HashClient)
        assert sorted(store.client.clients) == sorted(memcached_pool.servers)
        assert store.client.default_kwargs["timeout"] == 5.0
        assert store.client.default_kwargs["connect_timeout"] == 5.0
        assert store.client.retry_timeout == 0.5
        assert store.servers == memcached_pool.servers
        assert repr(store) == f"MemcachedBackend(servers={memcached_pool.servers!r})"
        assert store.down_server_reads_miss is False
    finally:
        store.close()


def test_keys_spread_over_every_server(
    memcached_pool_backend: MemcachedBackend, raws: dict[str, Client]
) -> None:
    """300 keys land on all 3 servers, each on the server server_for names.

    Counted with ``total_items`` (items ever stored): ``curr_items`` also drops
    when memcached reclaims items flushed by earlier tests.
    """
    before = {address: stat(raw, b"total_items") for address, raw in raws.items()}
    memcached_pool_backend.set_many([(key, key.encode()) for key in KEYS])
    added = {address: stat(raw, b"total_items") - before[address] for address, raw in raws.items()}
    assert sum(added.values()) == len(KEYS)
    assert min(added.values()) >= 50, added
    placed = Counter(memcached_pool_backend.server_for(key) for key in KEYS)
    assert placed == Counter(added)
    for key in KEYS[:30]:
        assert raws[memcached_pool_backend.server_for(key)].get(key) == key.encode()


def test_placement_is_the_hash_clients(memcached_pool: MemcachedServer) -> None:
    """A plain HashClient on the same servers finds what the backend wrote, and vice versa."""
    plain = HashClient([spec(a) for a in memcached_pool.servers], default_noreply=False)
    store = MemcachedBackend.from_servers(memcached_pool.servers)
    try:
        store.set_many([(key, b"from cacheorm") for key in KEYS[:100]])
        assert plain.get_many(KEYS[:100]) == dict.fromkeys(KEYS[:100], b"from cacheorm")
        for key in KEYS[100:200]:
            plain.set(key, b"from pymemcache")
        assert store.get_many(KEYS[100:200]) == [b"from pymemcache"] * 100
    finally:
        store.close()
        plain.close()


def test_mapped_keys_are_the_same_whatever_the_pool(
    memcached_pool_backend: MemcachedBackend,
) -> None:
    """An awkward key maps to the same memcached key on a pool as on its one server alone."""
    pool = memcached_pool_backend
    pool.set_many([(key, f"v{i}".encode()) for i, key in enumerate(AWKWARD_KEYS)])
    for i, key in enumerate(AWKWARD_KEYS):
        alone = MemcachedBackend.from_servers(pool.server_for(key))
        try:
            assert alone._bkey(key) == pool._bkey(key)
            assert alone.get(key) == f"v{i}".encode()
        finally:
            alone.close()


def test_a_hash_client_with_a_key_prefix(memcached_pool: MemcachedServer) -> None:
    """The HashClient's key_prefix is used on every server; placement ignores it."""
    client = HashClient(
        [spec(a) for a in memcached_pool.servers], key_prefix=b"app:", default_noreply=False
    )
    store = MemcachedBackend(client)
    try:
        store.set_many([(key, b"v") for key in KEYS[:30]])
        for key in KEYS[:30]:
            raw = Client(spec(store.server_for(key)), default_noreply=False)
            assert raw.get(b"app:" + key.encode()) == b"v"
            raw.close()
        assert store.get_many(KEYS[:30]) == [b"v"] * 30
    finally:
        store.close()


# -- round trips and concurrency --------------------------------------------------------------


def test_a_batch_is_one_request_per_server(
    memcached_pool_backend: MemcachedBackend, raws: dict[str, Client]
) -> None:
    """get_many of 300 keys is 3 multi-gets, one per server; writes are one request each too."""
    store = memcached_pool_backend
    store.set_many([(key, b"v") for key in KEYS[::2]])
    placed = Counter(store.server_for(key) for key in KEYS)
    gets = {address: stat(raw, b"cmd_get") for address, raw in raws.items()}
    sent = count_sends(store)
    result = store.get_many(KEYS)
    assert result == [b"v" if i % 2 == 0 else None for i in range(len(KEYS))]
    for address, sock in sent.items():
        assert len(sock.sent) == 1, address
        assert sock.sent[0].startswith(b"get ")
        assert sock.sent[0].count(b"\r\n") == 1
        assert stat(raws[address], b"cmd_get") - gets[address] == placed[address]
    store.set_many([(key, b"w") for key in KEYS])
    assert store.add_many([(key, b"x") for key in KEYS]) == [False] * len(KEYS)
    assert store.replace_many([(key, b"y") for key in KEYS]) == [True] * len(KEYS)
    assert store.delete_many(KEYS) == len(KEYS)
    for sock in sent.values():
        assert [chunk.split(b" ", 1)[0] for chunk in sock.sent] == [
            b"get",
            b"set",
            b"add",
            b"replace",
            b"delete",
        ]


def test_servers_are_asked_concurrently(own_pool: MemcachedServer) -> None:
    """A batch over 3 stalled servers waits about one timeout, not three."""
    timeout = 0.5
    store = MemcachedBackend.from_servers(own_pool.servers, timeout=timeout)
    items = [(key, b"v") for key in KEYS]
    store.set_many(items)
    for process in own_pool.processes:
        process.pause()
    try:
        start = time.monotonic()
        with pytest.raises(BackendUnavailable, match="timed out"):
            store.get_many(KEYS)
        elapsed = time.monotonic() - start
        assert timeout * 0.9 <= elapsed < timeout * 2.4, elapsed
        start = time.monotonic()
        with pytest.raises(BatchWriteError) as info:
            store.set_many(items)
        elapsed = time.monotonic() - start
        assert elapsed < timeout * 2.4, elapsed
        assert sorted(info.value.unknown) == sorted(KEYS)  # sent, never answered
        assert info.value.written == info.value.not_written == []
    finally:
        for process in own_pool.processes:
            process.resume()
        store.close()


def test_threads_are_started_for_pools_only_and_stopped_by_close(
    memcached_server: MemcachedServer, memcached_pool: MemcachedServer
) -> None:
    """A single server never starts threads; a pool's batch threads end with close()."""

    def batch_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith("cacheorm-memcached")]

    single = MemcachedBackend.from_servers(memcached_server.servers)
    single.set_many([(key, b"v") for key in KEYS])
    assert single.get_many(KEYS) == [b"v"] * len(KEYS)
    assert single._executor is None
    single.close()
    assert batch_threads() == []
    pool = MemcachedBackend.from_servers(memcached_pool.servers)
    pool.get_many(KEYS)
    assert 0 < len(batch_threads()) <= 3
    pool.close()
    assert batch_threads() == []
    assert pool.get_many(KEYS[:3]) == [None] * 3  # used again, it starts them again
    pool.close()


def test_a_pooled_hash_client_is_safe_across_threads(memcached_pool: MemcachedServer) -> None:
    """With use_pooling=True, threads get connections of their own and lose nothing."""
    store = MemcachedBackend.from_servers(memcached_pool.servers, use_pooling=True)
    assert all(isinstance(c, PooledClient) for c in store.client.clients.values())
    store.delete_many(["shared", "winner"])
    errors: list[BaseException] = []
    winners: list[int] = []
    start = threading.Barrier(8, timeout=30)

    def work(index: int) -> None:
        try:
            start.wait()
            if store.add("winner", str(index).encode()):
                winners.append(index)
            for round_ in range(25):
                store.incr("shared", -1 if index % 2 else 2)
                keys = [f"t{index}:{round_}:{i}" for i in range(10)]
                store.set_many([(key, key.encode()) for key in keys])
                assert store.get_many(keys) == [key.encode() for key in keys]
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        assert len(winners) == 1
        assert store.get("shared") == str(sum(-1 if i % 2 else 2 for i in range(8)) * 25).encode()
    finally:
        store.close()


# -- a server that dies -------------------------------------------------------------------------


def test_a_dead_server_fails_its_keys_and_comes_back(own_pool: MemcachedServer) -> None:
    """Keys on a dead server raise (or, opted in, read as misses); the others work; it returns."""
    store = MemcachedBackend.from_servers(own_pool.servers, retry_timeout=0)
    misses = MemcachedBackend.from_servers(
        own_pool.servers, retry_timeout=0, down_server_reads_miss=True
    )
    dead = own_pool.processes[1]
    try:
        store.set_many([(key, b"old") for key in KEYS])
        on_dead = [key for key in KEYS if store.server_for(key) == dead.address]
        alive = [key for key in KEYS if key not in on_dead]
        assert on_dead
        assert alive
        assert misses.get_many(KEYS) == [b"old"] * len(KEYS)
        dead.kill()

        # By default a read never pretends a miss, and a write never pretends success.
        with pytest.raises(BackendUnavailable) as info:
            store.get(on_dead[0])
        assert info.value.server == dead.address
        assert dead.address in str(info.value)
        assert repr(on_dead[0]) in str(info.value)
        with pytest.raises(BackendUnavailable, match=f"{len(on_dead)} of the 300 keys"):
            store.get_many(KEYS)
        key = on_dead[0]
        for write in [
            lambda: store.set(key, b"v"),
            lambda: store.add(key, b"v"),
            lambda: store.replace(key, b"v"),
            lambda: store.delete(key),
            lambda: store.incr(key),
            lambda: store.incr(key, -1),
            lambda: store.cas(key, b"v", b"1"),
            lambda: store.gets(key),
            lambda: store.exists(key),
        ]:
            with pytest.raises(BackendUnavailable) as info:
                write()
            assert type(info.value) is BackendUnavailable  # refused: nothing was sent
            assert info.value.server == dead.address
        assert store.get(alive[0]) == b"old"
        counter = next(f"n{i}" for i in range(100) if store.server_for(f"n{i}") != dead.address)
        assert store.incr(counter, -2) == -2

        # A batch writes the keys of the live servers and says which were not written.
        with pytest.raises(BatchWriteError) as batch:
            store.set_many([(key, b"new") for key in KEYS])
        assert batch.value.written == alive
        assert batch.value.not_written == on_dead
        assert batch.value.unknown == []
        assert batch.value.server == dead.address
        assert store.get_many(alive) == [b"new"] * len(alive)
        with pytest.raises(BatchWriteError) as batch:
            store.add_many([(key, b"added") for key in KEYS])
        assert (batch.value.written, batch.value.not_written) == ([], KEYS)  # in input order
        with pytest.raises(BatchWriteError) as batch:
            store.delete_many(KEYS[:60])
        assert batch.value.written == [key for key in KEYS[:60] if key in alive]
        assert batch.value.not_written == [key for key in KEYS[:60] if key in on_dead]

        # Opted in, reads of its keys are misses; writes still raise.
        assert misses.get(on_dead[0]) is None
        assert misses.gets(on_dead[0]) is None
        assert misses.exists(on_dead[0]) is False
        expected = [None if key in on_dead or key in KEYS[:60] else b"new" for key in KEYS]
        assert misses.get_many(KEYS) == expected
        with pytest.raises(BackendUnavailable):
            misses.set(on_dead[0], b"v")
        with pytest.raises(BatchWriteError):
            misses.set_many([(on_dead[0], b"v")])

        # No key moved while the server was down; back on the same port, it serves again.
        assert [store.server_for(key) for key in on_dead] == [dead.address] * len(on_dead)
        dead.restart()
        assert store.get_many(KEYS) == [
            None if key in on_dead or key in KEYS[:60] else b"new" for key in KEYS
        ]
        store.set_many([(key, b"back") for key in KEYS])
        assert misses.get_many(KEYS) == [b"back"] * len(KEYS)
    finally:
        store.close()
        misses.close()


def test_a_failed_server_is_not_tried_again_for_retry_timeout(own_pool: MemcachedServer) -> None:
    """After a refused connection, its keys fail at once for retry_timeout, then it is retried."""
    retry_timeout = 0.3
    store = MemcachedBackend.from_servers(own_pool.servers, retry_timeout=retry_timeout)
    dead = own_pool.processes[0]
    key = next(key for key in KEYS if store.server_for(key) == dead.address)
    try:
        dead.kill()
        with pytest.raises(BackendUnavailable, match="Connection refused"):
            store.get(key)
        failed_at = time.monotonic()
        dead.restart()
        with pytest.raises(BackendUnavailable, match="not tried again") as info:
            store.set(key, b"v")
        assert isinstance(info.value.__cause__, ConnectionRefusedError)
        assert time.monotonic() - failed_at < retry_timeout  # else the check proves nothing
        time.sleep(retry_timeout - (time.monotonic() - failed_at) + 0.05)
        store.set(key, b"v")
        assert store.get(key) == b"v"
    finally:
        store.close()


def test_the_hash_clients_own_failure_handling_moves_no_key(own_pool: MemcachedServer) -> None:
    """A HashClient that drops a dead server from its ring does not move the backend's keys."""
    client = HashClient(
        [spec(a) for a in own_pool.servers],
        retry_attempts=0,
        retry_timeout=0,
        default_noreply=False,
    )
    store = MemcachedBackend(client)
    dead = own_pool.processes[2]
    probe = MemcachedBackend.from_servers(own_pool.servers)  # placement, before any failure
    key = next(key for key in KEYS if probe.server_for(key) == dead.address)
    probe.close()
    try:
        dead.kill()
        with pytest.raises(ConnectionRefusedError):
            client.get(key)  # pymemcache now takes the server out of its ring ...
        assert client.hasher.get_node(key) != dead.address
        assert store.server_for(key) == dead.address  # ... the backend does not
        with pytest.raises(BackendUnavailable):
            store.get(key)
        dead.restart()
        assert store.get(key) is None
        store.set(key, b"back")
        assert store.get(key) == b"back"
    finally:
        store.close()
