"""A Redis key that holds another type (a hash, list, set...) at a key cacheorm reads or writes.

Another program may keep a hash where cacheorm expects a string value. Every
read (``get``, ``gets``, ``exists``, ``get_many``, on one server and on a
cluster) answers the same way: a BackendError naming the key and the server.
No conditional write (``add``, ``replace``, ``cas``, ``incr`` and their batch
forms) replaces it; only an explicit ``set`` / ``set_many`` does, as Redis's
SET does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Annotated, Any

import pytest

pytest.importorskip("redis")

import redis

import cacheorm as co

#: One planter per Redis type: puts a value of that type at ``key``.
PLANTERS: dict[str, Callable[[Any, str], object]] = {
    "hash": lambda client, key: client.hset(key, mapping={"name": "theirs", "n": "1"}),
    "list": lambda client, key: client.rpush(key, b"a", b"b"),
    "set": lambda client, key: client.sadd(key, b"a"),
    "zset": lambda client, key: client.zadd(key, {b"a": 1.0}),
}


@pytest.fixture(params=["single", "cluster"])
def store(request: pytest.FixtureRequest) -> co.RedisBackend:
    """A RedisBackend on one flushed server, then on the flushed cluster."""
    name = "redis_backend" if request.param == "single" else "redis_cluster_backend"
    backend: co.RedisBackend = request.getfixturevalue(name)
    return backend


@pytest.fixture(params=sorted(PLANTERS))
def foreign(request: pytest.FixtureRequest, store: co.RedisBackend) -> str:
    """A key holding a value of another Redis type, planted by another program."""
    key = "user:7"
    PLANTERS[request.param](store.client, key)
    return key


def fingerprint(store: co.RedisBackend, key: str) -> tuple[bytes, Any]:
    """The key's Redis type and a dump of its contents, to see that nothing changed."""
    client = store.client
    return client.type(key), client.dump(key)


def assert_names_key_and_server(exc: BaseException, store: co.RedisBackend, key: str) -> None:
    """The error is a BackendError whose message and attributes give the key and its server."""
    assert isinstance(exc, co.BackendError)
    assert exc.key == key
    assert repr(key) in str(exc)
    assert exc.server is not None
    assert exc.server in str(exc)
    assert "not a string" in str(exc)


READS: dict[str, Callable[[co.RedisBackend, str], object]] = {
    "get": lambda b, k: b.get(k),
    "gets": lambda b, k: b.gets(k),
    "exists": lambda b, k: b.exists(k),
    "get_many one key": lambda b, k: b.get_many([k]),
    "get_many among hits and misses": lambda b, k: b.get_many(["hit", k, "miss", "hit"]),
}


@pytest.mark.parametrize("read", list(READS.values()), ids=list(READS))
def test_every_read_of_a_foreign_key_is_a_backend_error(
    store: co.RedisBackend, foreign: str, read: Callable[[co.RedisBackend, str], object]
) -> None:
    """get, gets, exists and get_many all raise BackendError naming the key and server."""
    store.set("hit", b"mine")
    before = fingerprint(store, foreign)
    with pytest.raises(co.BackendError) as info:
        read(store, foreign)
    assert_names_key_and_server(info.value, store, foreign)
    assert fingerprint(store, foreign) == before


def test_get_many_across_slots_names_the_foreign_key(store: co.RedisBackend) -> None:
    """In a batch of 200 keys (many slots on a cluster), the one foreign key is the one named."""
    keys = [f"k{i}" for i in range(200)]
    store.set_many([(key, key.encode()) for key in keys[::2]])
    store.client.hset("k151", "f", "v")
    with pytest.raises(co.BackendError) as info:
        store.get_many(keys)
    assert_names_key_and_server(info.value, store, "k151")


def test_absent_keys_and_empty_values_are_not_foreign(store: co.RedisBackend) -> None:
    """Misses, an empty value and a key repeated in the batch still read as usual."""
    store.set("empty", b"")
    store.set("full", b"x")
    assert store.get_many(["empty", "missing", "full", "missing", "empty"]) == [
        b"",
        None,
        b"x",
        None,
        b"",
    ]
    assert store.exists("empty") is True
    assert store.exists("missing") is False
    assert store.get_many(["missing"]) == [None]
    # SET XX GET answers the old value: an empty or non-UTF-8 one still means "replaced"
    assert store.replace("empty", b"\xff\xfe") is True
    assert store.replace("empty", b"") is True
    assert store.replace_many([("empty", b"\xff"), ("missing", b"x")]) == [True, False]
    assert store.get_many(["empty", "missing"]) == [b"\xff", None]


def test_a_key_written_between_mget_and_the_check_reads_as_absent(
    store: co.RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A string value written by someone else after MGET missed it is not mistaken for a
    foreign type: get_many answers what MGET saw."""
    original = co.RedisBackend._foreign_misses

    def racing(self: co.RedisBackend, keys: list[str]) -> None:
        self.client.set("late", b"written meanwhile")
        original(self, keys)

    monkeypatch.setattr(co.RedisBackend, "_foreign_misses", racing)
    assert store.get_many(["late", "other"]) == [None, None]


WRITES: dict[str, Callable[[co.RedisBackend, str], object]] = {
    "add": lambda b, k: b.add(k, b"mine"),
    "add ttl": lambda b, k: b.add(k, b"mine", ttl=30),
    "replace": lambda b, k: b.replace(k, b"mine"),
    "replace ttl": lambda b, k: b.replace(k, b"mine", ttl=30),
    "replace keep ttl": lambda b, k: b.replace(k, b"mine", ttl=co.KEEP_TTL),
    "cas": lambda b, k: b.cas(k, b"mine", "0" * 40),
    "cas keep ttl": lambda b, k: b.cas(k, b"mine", "0" * 40, ttl=co.KEEP_TTL),
    "incr": lambda b, k: b.incr(k),
    "add_many": lambda b, k: b.add_many([(k, b"mine")]),
    "replace_many": lambda b, k: b.replace_many([(k, b"mine")]),
    "replace_many keep ttl": lambda b, k: b.replace_many([(k, b"mine")], ttl=co.KEEP_TTL),
}


@pytest.mark.parametrize("write", list(WRITES.values()), ids=list(WRITES))
def test_conditional_writes_refuse_a_foreign_key_and_leave_it(
    store: co.RedisBackend, foreign: str, write: Callable[[co.RedisBackend, str], object]
) -> None:
    """add, replace, cas, incr and the batch forms raise BackendError and change nothing."""
    before = fingerprint(store, foreign)
    with pytest.raises(co.BackendError) as info:
        write(store, foreign)
    assert_names_key_and_server(info.value, store, foreign)
    assert fingerprint(store, foreign) == before


@pytest.mark.parametrize("method", ["add_many", "replace_many"])
def test_a_batch_with_a_foreign_key_says_what_it_wrote(store: co.RedisBackend, method: str) -> None:
    """A conditional batch writes the other pairs and raises BatchWriteError saying so."""
    store.set_many([("a", b"old"), ("c", b"old")])
    store.client.hset("b", "f", "v")
    items = [("a", b"new"), ("b", b"new"), ("c", b"new")]
    if method == "add_many":
        store.delete_many(["a", "c"])
    with pytest.raises(co.BatchWriteError) as info:
        getattr(store, method)(items)
    exc = info.value
    assert (exc.written, exc.not_written, exc.unknown) == (["a", "c"], ["b"], [])
    assert_names_key_and_server(exc, store, "b")
    assert store.get_many(["a", "c"]) == [b"new", b"new"]
    assert store.client.type("b") == b"hash"


def test_a_refused_add_of_a_string_key_is_still_false(store: co.RedisBackend) -> None:
    """add and add_many of a key holding a string value answer False as before."""
    store.set("taken", b"old")
    assert store.add("taken", b"new") is False
    assert store.add_many([("taken", b"new"), ("free", b"new")]) == [False, True]
    assert store.get_many(["taken", "free"]) == [b"old", b"new"]


def test_an_explicit_set_replaces_a_foreign_key(store: co.RedisBackend, foreign: str) -> None:
    """set and set_many are unconditional, like Redis's SET: they replace any type."""
    store.set(foreign, b"mine")
    assert store.get(foreign) == b"mine"
    store.client.hset("other", "f", "v")
    store.set_many([("other", b"mine too")], ttl=30)
    assert store.get("other") == b"mine too"


@dataclasses.dataclass
class User:
    id: Annotated[int, co.Field(primary_key=True)]
    name: str


def test_the_repository_never_overwrites_a_foreign_key(
    store: co.RedisBackend, foreign: str
) -> None:
    """Read-through fills, create and exists raise BackendError; the other program's key stays."""
    users = co.Repository(User, backend=store, namespace="user")
    before = fingerprint(store, foreign)
    loads: list[object] = []

    def loader(pks: Any) -> Any:
        loads.append(pks)
        return {pk: User(pk, "loaded") for pk in pks}

    for attempt in (
        lambda: users.get_or_load_many([7], loader),
        lambda: users.get_or_load(7, lambda pk: User(pk, "loaded")),
        lambda: users.get_or_none(7),
        lambda: users.exists(7),
        lambda: users.create(User(7, "new")),
        lambda: users.update(User(7, "new")),
        lambda: users.update_with(7, lambda user: user),
        lambda: users.patch(7, name="new"),
        lambda: users.create_many([User(7, "new")]),
        lambda: users.update_many([User(7, "new")]),
    ):
        with pytest.raises(co.BackendError) as info:
            attempt()
        assert info.value.key == foreign
    assert loads == []
    assert fingerprint(store, foreign) == before


def test_the_repository_batches_say_which_records_they_wrote(store: co.RedisBackend) -> None:
    """create_many / update_many around a foreign key raise BatchWriteError naming it; the
    other records are stored and reported as written."""
    users = co.Repository(User, backend=store, namespace="user")
    store.client.hset("user:2", "f", "v")
    with pytest.raises(co.BatchWriteError) as info:
        users.create_many([User(1, "a"), User(2, "b"), User(3, "c")])
    assert (info.value.written, info.value.not_written) == (["user:1", "user:3"], ["user:2"])
    with pytest.raises(co.BatchWriteError) as info:
        users.update_many([User(1, "A"), User(2, "B"), User(3, "C")])
    assert info.value.key == "user:2"
    assert [user and user.name for user in users.get_many([1, 3])] == ["A", "C"]
    assert store.client.type("user:2") == b"hash"


def test_a_wrongtype_reply_keeps_the_connection_usable(store: co.RedisBackend) -> None:
    """After a WRONGTYPE reply the next commands on the same connections work."""
    store.client.hset("h", "f", "v")
    for _ in range(3):
        with pytest.raises(co.BackendError):
            store.get("h")
        store.set("s", b"v")
        assert store.get("s") == b"v"
    assert isinstance(store.client, (redis.Redis, redis.cluster.RedisCluster))


LIMITED_USER = "cacheorm-no-type"
LIMITED_PASSWORD = "limited-pw"


def primaries(store: co.RedisBackend) -> list[redis.Redis]:
    """A plain client on the server, or on each primary of the cluster."""
    addresses = (
        [store.server]
        if not store.server.startswith("cluster ")
        else [str(node.name) for node in store.client.get_primaries()]  # type: ignore[union-attr]
    )
    return [
        redis.Redis(host=address.rpartition(":")[0], port=int(address.rpartition(":")[2]))
        for address in addresses
    ]


def test_a_user_not_allowed_type_or_exists_gets_a_backend_error(store: co.RedisBackend) -> None:
    """An ACL user that may not run EXISTS or TYPE gets a BackendError naming the key from
    exists, a get_many with misses and a refused add, never a wrong answer."""
    servers = primaries(store)
    for server in servers:
        server.acl_setuser(
            LIMITED_USER,
            enabled=True,
            passwords=[f"+{LIMITED_PASSWORD}"],
            keys=["*"],
            commands=["+@all", "-exists", "-type"],
        )
    first = servers[0].connection_pool.connection_kwargs
    limited = co.RedisBackend.from_url(
        f"redis://{LIMITED_USER}:{LIMITED_PASSWORD}@{first['host']}:{first['port']}/0",
        cluster=store.server.startswith("cluster "),
    )
    try:
        limited.set("hit", b"v")
        for attempt in (
            lambda: limited.exists("hit"),
            lambda: limited.get_many(["hit", "miss"]),
            lambda: limited.get_many([f"m{i}" for i in range(40)]),  # misses on every node
            lambda: limited.add("hit", b"again"),
        ):
            with pytest.raises(co.BackendError, match=r"NOPERM|permission") as info:
                attempt()
            assert not isinstance(info.value, co.BackendUnavailable)
            assert info.value.key is not None
            assert LIMITED_PASSWORD not in str(info.value)
        assert limited.get_many(["hit"]) == [b"v"]
    finally:
        limited.close()
        for server in servers:
            server.acl_deluser(LIMITED_USER)
            server.close()
