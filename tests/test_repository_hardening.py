"""Repository hardening (issue 10): cache fills never overwrite writers, auto ids survive a
lost counter, a record read under another key is refused, leases never hang or leak,
default namespaces never alias, clear messages, and updates keep the record's TTL.

Figures measured here are printed, labelled ``[hardening]`` (run with ``-s``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator
from typing import Annotated, Any
from unittest import mock

import pytest

import cacheorm as co
from cacheorm._flight import LEASE_SUFFIX
from tests.conftest import FakeClock
from tests.proxy import FaultProxy
from tests.servers import MemcachedServer, RedisServer, ServerMissing, _binary, start_one_redis


@dataclasses.dataclass(frozen=True)
class Counter:
    id: Annotated[int, co.Field(primary_key=True)]
    n: int = 0
    source: str = ""


@dataclasses.dataclass(frozen=True)
class Ticket:
    id: Annotated[int | None, co.Field(primary_key=True, auto=True)]
    title: str = ""


@dataclasses.dataclass(frozen=True)
class Pair:
    left: Annotated[str, co.Field(primary_key=True)]
    right: Annotated[int, co.Field(primary_key=True)]
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Event:
    at: Annotated[dt.datetime, co.Field(primary_key=True)]
    what: str = ""


def in_thread(fn: Callable[[], Any], timeout: float = 20.0) -> Any:
    """``fn()`` run in a thread that must finish within ``timeout`` (a hang fails the test)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"still running after {timeout}s: it hangs"
    if "error" in box:
        raise box["error"]
    return box["result"]


# -- item 2: a cache fill never overwrites a writer ---------------------------------------


def test_get_or_load_keeps_a_record_saved_while_the_loader_ran(backend: co.Backend) -> None:
    """A save made while the loader runs wins; the caller gets the saved record."""
    repo = co.Repository(Counter, backend=backend)

    def loader() -> Counter:
        repo.save(Counter(7, 99, source="writer"))
        return Counter(7, 1, source="stale db read")

    assert repo.get_or_load(7, loader) == Counter(7, 99, source="writer")
    assert repo.get(7) == Counter(7, 99, source="writer")


def test_get_or_load_keeps_a_record_created_while_the_loader_ran(backend: co.Backend) -> None:
    """A create made while the loader runs wins too (the fill is an insert-if-absent)."""
    repo = co.Repository(Counter, backend=backend)
    other = co.Repository(Counter, backend=backend)  # as in another process

    def loader() -> Counter:
        other.create(Counter(7, 5, source="creator"))
        return Counter(7, 1, source="stale db read")

    assert repo.get_or_load(7, loader) == Counter(7, 5, source="creator")
    assert repo.get(7) == Counter(7, 5, source="creator")


def test_get_or_load_many_keeps_records_written_while_the_loader_ran(
    backend: co.Backend,
) -> None:
    """get_or_load_many fills only the keys still absent; written ones are read back."""
    repo = co.Repository(Counter, backend=backend)

    def loader(pks: list[Any]) -> list[Counter]:
        assert pks == [1, 2, 3]
        repo.save(Counter(2, 20, source="writer"))
        repo.create(Counter(3, 30, source="creator"))
        return [Counter(pk, 1, source="stale") for pk in pks]

    got = repo.get_or_load_many([1, 2, 3], loader)
    assert got == [
        Counter(1, 1, source="stale"),
        Counter(2, 20, source="writer"),
        Counter(3, 30, source="creator"),
    ]
    assert repo.get_many([1, 2, 3]) == got


class VanishingBackend(co.MemoryBackend):
    """A real MemoryBackend on which a writer writes and then deletes ``target`` right
    before each insert-if-absent of it: the fill loses, and the winner is gone again."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.races = 0

    def add(self, key: str, value: bytes, /, ttl: float | None = None) -> bool:
        if key == self.target:
            self.races += 1
            return False  # as if a writer's value was there ...
        return super().add(key, value, ttl)

    def get(self, key: str, /) -> bytes | None:
        return None if key == self.target else super().get(key)  # ... and deleted since

    def add_many(self, items: Any, /, ttl: float | None = None) -> list[bool]:
        return [self.add(key, value, ttl) for key, value in items]

    def get_many(self, keys: Any, /) -> list[bytes | None]:
        return [self.get(key) for key in keys]


def test_a_fill_that_loses_to_a_vanished_writer_returns_the_loaded_record() -> None:
    """When the fill loses and the winner is deleted again, the loaded record is returned
    uncached (a bounded number of tries, never a loop)."""
    repo = co.Repository(Counter, backend=co.MemoryBackend())
    store = VanishingBackend(repo.key_for(7))
    repo = co.Repository(Counter, backend=store)
    assert repo.get_or_load(7, lambda: Counter(7, 1)) == Counter(7, 1)
    assert 1 <= store.races <= 5
    store.races = 0
    assert repo.get_or_load_many([7, 8], lambda pks: [Counter(pk) for pk in pks]) == [
        Counter(7),
        Counter(8),
    ]
    assert 1 <= store.races <= 5


# -- item 11: leases never surface, leak or hang --------------------------------------------


class LostLeaseReply:
    """Makes the store's reply to each lease ``add`` get lost: the server applies the
    ``add``, the proxy swallows its reply, the client times out (``OutcomeUnknown``)."""

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.lost = 0

    def around(self, add: Callable[..., Any], key: str, *args: Any) -> Any:
        if not key.endswith(LEASE_SUFFIX):
            return add(key, *args)
        self.lost += 1
        self.proxy.drop_replies()
        try:
            return add(key, *args)
        finally:
            self.proxy.pass_through()


class LossyRedis(co.RedisBackend):
    """A real RedisBackend through a fault proxy that loses the lease add's reply."""

    faults: LostLeaseReply

    def add(self, key: str, value: bytes, /, ttl: float | None = None) -> bool:
        return bool(self.faults.around(super().add, key, value, ttl))

    def add_many(self, items: Any, /, ttl: float | None = None) -> list[bool]:
        first = items[0][0] if items else ""
        parent = super().add_many
        return list(self.faults.around(lambda _, *a: parent(*a), first, items, ttl))


class LossyMemcached(co.MemcachedBackend):
    """A real MemcachedBackend through a fault proxy that loses the lease add's reply."""

    faults: LostLeaseReply

    def add(self, key: str, value: bytes, /, ttl: float | None = None) -> bool:
        return bool(self.faults.around(super().add, key, value, ttl))

    def add_many(self, items: Any, /, ttl: float | None = None) -> list[bool]:
        first = items[0][0] if items else ""
        parent = super().add_many
        return list(self.faults.around(lambda _, *a: parent(*a), first, items, ttl))


@pytest.fixture(params=["redis", "memcached"])
def lossy(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A backend whose lease adds lose their reply, and a direct one to check the server."""
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        direct: co.Backend = request.getfixturevalue("redis_backend")
        host, _, port = server.url.removeprefix("redis://").rpartition("/")[0].rpartition(":")
        import redis

        with FaultProxy(host, int(port)) as proxy:
            client = redis.Redis(
                host=proxy.host, port=proxy.port, socket_timeout=0.3, socket_connect_timeout=2
            )
            store: Any = LossyRedis(client)
            store.faults = LostLeaseReply(proxy)
            yield store, direct
            store.close()
    else:
        mc: MemcachedServer = request.getfixturevalue("memcached_server")
        direct = request.getfixturevalue("memcached_backend")
        host, _, port = mc.servers[0].rpartition(":")
        with FaultProxy(host, int(port)) as proxy:
            store = LossyMemcached.from_servers(proxy.address, timeout=0.3, connect_timeout=2)
            store.faults = LostLeaseReply(proxy)
            yield store, direct
            store.close()


def test_a_lost_lease_reply_loads_once_and_leaves_no_lease(lossy: Any) -> None:
    """The lease add's reply is lost: the read loads anyway (never an error naming the
    internal lease key), caches the record, and frees the lease it may hold."""
    store, direct = lossy
    repo = co.Repository(Counter, backend=store)
    loads: list[int] = []

    def loader() -> Counter:
        loads.append(1)
        return Counter(7, 42, source="db")

    assert repo.get_or_load(7, loader) == Counter(7, 42, source="db")
    assert store.faults.lost == 1
    assert loads == [1]
    key = repo.key_for(7)
    assert direct.get(key + LEASE_SUFFIX) is None  # not orphaned
    assert co.Repository(Counter, backend=direct).get(7) == Counter(7, 42, source="db")
    got = repo.get_or_load_many([7, 8, 9], lambda pks: [Counter(pk, 1) for pk in pks])
    assert got == [Counter(7, 42, source="db"), Counter(8, 1), Counter(9, 1)]
    assert store.faults.lost == 2
    assert direct.get_many([repo.key_for(8) + LEASE_SUFFIX, repo.key_for(9) + LEASE_SUFFIX]) == [
        None,
        None,
    ]


class LeaseFailure(co.MemoryBackend):
    """A real MemoryBackend whose lease adds apply and then report the reply lost."""

    def add(self, key: str, value: bytes, /, ttl: float | None = None) -> bool:
        stored = super().add(key, value, ttl)
        if key.endswith(LEASE_SUFFIX):
            raise co.OutcomeUnknown(f"reply to add {key!r} lost", key=key)
        return stored

    def add_many(self, items: Any, /, ttl: float | None = None) -> list[bool]:
        stored = super().add_many(items, ttl)
        if any(key.endswith(LEASE_SUFFIX) for key, _ in items):
            raise co.BatchWriteError("replies lost", unknown=[key for key, _ in items])
        return stored


def test_an_unknown_lease_outcome_never_names_the_lease_key() -> None:
    """Whatever the store says about a lease, reads return the record and free the lease."""
    store = LeaseFailure()
    repo = co.Repository(Counter, backend=store)
    assert repo.get_or_load(1, lambda: Counter(1, 1)) == Counter(1, 1)
    assert repo.get_or_load_many([2, 3], lambda pks: [Counter(pk) for pk in pks]) == [
        Counter(2),
        Counter(3),
    ]
    assert [k for k in store._data if k.endswith(LEASE_SUFFIX)] == []


def test_a_lease_that_never_expires_blocks_get_or_load_only_for_lock_timeout(
    backend: co.Backend, capsys: pytest.CaptureFixture[str]
) -> None:
    """A lease key stored without expiry: get_or_load(lock_timeout=0.5) loads itself after
    0.5 s (and stores with an insert-if-absent)."""
    repo = co.Repository(Counter, backend=backend)
    backend.set(repo.key_for(7) + LEASE_SUFFIX, b"stuck forever")
    backend.set(repo.key_for(8) + LEASE_SUFFIX, b"stuck forever")
    started = time.perf_counter()
    got = in_thread(lambda: repo.get_or_load(7, lambda: Counter(7, 1), lock_timeout=0.5))
    one = time.perf_counter() - started
    assert got == Counter(7, 1)
    assert repo.get(7) == Counter(7, 1)
    started = time.perf_counter()
    many = in_thread(
        lambda: repo.get_or_load_many(
            [7, 8, 9], lambda pks: [Counter(pk, 2) for pk in pks], lock_timeout=0.5
        )
    )
    both = time.perf_counter() - started
    assert many == [Counter(7, 1), Counter(8, 2), Counter(9, 2)]
    assert 0.4 < one < 2.0
    assert 0.4 < both < 2.0
    with capsys.disabled():
        print(f"\n[hardening] stuck lease: {one:.2f}s / {both:.2f}s with lock_timeout=0.5", end=" ")


class FailingPoll(co.MemoryBackend):
    """A real MemoryBackend whose batch reads fail once a lease is held by someone else."""

    def get_many(self, keys: Any, /) -> list[bytes | None]:
        if any(key.endswith(LEASE_SUFFIX) for key in keys):
            raise co.BackendUnavailable(f"cannot read {keys!r}", key=keys[-1])
        return super().get_many(keys)


def test_a_failing_poll_names_the_record_key_not_the_lease() -> None:
    """The store failing while a caller waits for another's load: the error names the record."""
    store = FailingPoll()
    repo = co.Repository(Counter, backend=store)
    for call in (
        lambda: repo.get_or_load(7, lambda: Counter(7)),
        lambda: repo.get_or_load_many([7], lambda pks: [Counter(7)]),
    ):
        store.set(repo.key_for(7) + LEASE_SUFFIX, b"held elsewhere", 30)
        with pytest.raises(co.BackendUnavailable) as info:
            call()
        assert info.value.key == "counter:7"
        assert "\x00" not in str(info.value)
        assert "lease" not in str(info.value)


# -- item 4: a record read under another key is refused -------------------------------------


@pytest.fixture(params=["json", "msgpack", "signed-pickle"])
def any_serializer(request: pytest.FixtureRequest) -> co.Serializer:
    """json, msgpack and a signed pickle."""
    if request.param == "signed-pickle":
        return co.PickleSerializer(signing_key=b"k" * 32)
    return co.registry.get(str(request.param))


def test_a_record_copied_to_another_key_is_refused_on_every_read_path(
    backend: co.Backend, any_serializer: co.Serializer
) -> None:
    """The value of key 1 copied to key 2: every read of 2 raises DeserializationError
    naming both keys; nothing is written."""
    repo = co.Repository(Counter, backend=backend, serializer=any_serializer)
    repo.create(Counter(1, 10))
    payload = backend.get(repo.key_for(1))
    assert payload is not None
    backend.set(repo.key_for(2), payload)
    reads: list[Callable[[], Any]] = [
        lambda: repo.get(2),
        lambda: repo.get_or_none(2),
        lambda: repo.get_many([1, 2]),
        lambda: repo.update_with(2, lambda c: c),
        lambda: repo.patch(2, n=5),
        lambda: repo.get_or_create(Counter(2)),
        lambda: repo.get_or_load(2, lambda: Counter(2)),
        lambda: repo.get_or_load_many([2], lambda pks: [Counter(2)]),
    ]
    for read in reads:
        with pytest.raises(co.DeserializationError) as info:
            read()
        assert info.value.key == "counter:2"
        assert "'counter:2'" in str(info.value)
        assert "'counter:1'" in str(info.value)
    assert backend.get(repo.key_for(2)) == payload
    assert repo.get(1) == Counter(1, 10)


def test_a_misplaced_record_is_refused_for_composite_and_datetime_keys(
    backend: co.Backend,
) -> None:
    """Composite keys compare every part; datetime keys compare the rendered key, since an
    equal instant at another UTC offset is another key."""
    pairs = co.Repository(Pair, backend=backend)
    pairs.create(Pair("a", 1))
    backend.set(pairs.key_for(("a", 2)), backend.get(pairs.key_for(("a", 1))) or b"")
    with pytest.raises(co.DeserializationError, match="pair:a:1"):
        pairs.get(("a", 2))
    events = co.Repository(Event, backend=backend)
    utc = dt.datetime(2024, 1, 1, 12, tzinfo=dt.timezone.utc)
    paris = utc.astimezone(dt.timezone(dt.timedelta(hours=1)))
    assert utc == paris
    assert events.key_for(utc) != events.key_for(paris)
    events.create(Event(utc, "noon"))
    backend.set(events.key_for(paris), backend.get(events.key_for(utc)) or b"")
    with pytest.raises(co.DeserializationError, match="wrong key"):
        events.get(paris)
    assert events.get(utc) == Event(utc, "noon")


# -- item 3: auto ids survive a lost counter ------------------------------------------------


class CountingIncr(co.MemoryBackend):
    """A real MemoryBackend that counts counter increments."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.incrs = 0

    def incr(self, key: str, delta: int = 1, /) -> int:
        self.incrs += 1
        return super().incr(key, delta)


def test_a_lost_counter_gallops_past_the_stored_ids(backend: co.Backend) -> None:
    """The counter vanishes with ids 1..100 stored: create skips past them, no AlreadyExists."""
    tickets = co.Repository(Ticket, backend=backend)
    tickets.create_many([Ticket(None, f"t{i}") for i in range(100)])
    assert backend.delete("ticket:__seq__")
    new = tickets.create(Ticket(None, "after the loss"))
    assert new.id is not None
    assert new.id > 100
    assert tickets.get(new.id) == new
    assert tickets.get(100) == Ticket(100, "t99")  # nothing overwritten
    assert backend.delete("ticket:__seq__")
    batch = tickets.create_many([Ticket(None, "b1"), Ticket(None, "b2")])
    assert all(t.id is not None and t.id > 100 for t in batch)
    assert len({t.id for t in batch} | {new.id}) == 3
    assert tickets.get_many([t.id for t in batch]) == batch


def test_recovering_a_lost_counter_takes_log_n_round_trips() -> None:
    """1,000 stored ids and a lost counter: about log2(1000) increments, not 1,000."""
    store = CountingIncr()
    tickets = co.Repository(Ticket, backend=store)
    tickets.create_many([Ticket(None) for _ in range(1000)])
    store.delete("ticket:__seq__")
    store.incrs = 0
    created = tickets.create(Ticket(None))
    assert created.id is not None
    assert created.id > 1000
    assert store.incrs <= 12


def test_an_id_given_by_hand_is_skipped_not_refused(backend: co.Backend) -> None:
    """Ids given by hand ahead of the counter: the auto create takes the next free one."""
    tickets = co.Repository(Ticket, backend=backend)
    tickets.create_many([Ticket(1, "by hand"), Ticket(2, "by hand")])
    assert tickets.create(Ticket(None, "auto")).id == 3
    # In one batch an explicit id wins over an auto id that would take it.
    assert tickets.create_many([Ticket(None, "a"), Ticket(4, "explicit")]) == [
        Ticket(6, "a"),  # 4 was taken: the counter moved on by 2
        Ticket(4, "explicit"),
    ]
    assert tickets.get_many([3, 4, 6]) == [Ticket(3, "auto"), Ticket(4, "explicit"), Ticket(6, "a")]


def evicting_creates(
    tickets: co.Repository[Ticket], others: co.Repository[Counter]
) -> dict[str, int]:
    """1,000 auto-id creates in a cache whose other traffic evicts the counter.

    Each round creates a ticket, then stores 60 other records in batches of 10
    while reading the 20 most recent tickets between batches: the tickets stay
    hot, the counter (touched only by creates) goes cold and is evicted, as in a
    busy LRU cache. Returns the counts: AlreadyExists; ids handed out while their
    old record was still stored (found overwritten; must be 0); ids handed out
    again after their old record was evicted (what an evicting store cannot
    prevent).
    """
    issued: set[int] = set()
    counts = {"already_exists": 0, "reused_while_stored": 0, "reused_after_eviction": 0}
    recent: list[int] = []
    churn = 0
    for i in range(1000):
        title = f"ticket {i}"
        try:
            new = tickets.create(Ticket(None, title))
        except co.AlreadyExists:
            counts["already_exists"] += 1
            continue
        assert new.id is not None
        if new.id in issued:
            counts["reused_after_eviction"] += 1
        stored = tickets.get_or_none(new.id)
        if stored is not None and stored.title != title:
            counts["reused_while_stored"] += 1
        issued.add(new.id)
        recent = [*recent[-19:], new.id]
        for _ in range(6):
            tickets.get_many(recent)
            others.save_many([Counter(churn + k, source="y" * 200) for k in range(10)])
            churn += 10
    return counts


def test_1000_creates_on_an_evicting_memory_backend_never_fail_or_overwrite(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """MemoryBackend(max_entries=50): 0 AlreadyExists, 0 ids reused while stored."""
    store = co.MemoryBackend(max_entries=50)
    counts = evicting_creates(
        co.Repository(Ticket, backend=store), co.Repository(Counter, backend=store)
    )
    with capsys.disabled():
        print(f"\n[hardening] MemoryBackend(max_entries=50), 1,000 creates: {counts}", end=" ")
    assert counts["already_exists"] == 0
    assert counts["reused_while_stored"] == 0


@pytest.fixture
def lru_redis() -> Iterator[co.RedisBackend]:
    """A redis-server of the test's own with maxmemory 1.5 MB over its start and allkeys-lru."""
    try:
        binary = _binary("redis-server", None)
    except ServerMissing as exc:
        pytest.skip(str(exc))
    process = start_one_redis(binary, "--maxmemory-policy", "allkeys-lru")
    store = co.RedisBackend.from_url(f"redis://{process.address}/0")
    try:
        used = int(store.client.info("memory")["used_memory"])
        store.client.config_set("maxmemory", used + 300_000)
        yield store
    finally:
        store.close()
        process.stop()


def test_1000_creates_on_redis_allkeys_lru_never_fail_or_overwrite(
    lru_redis: co.RedisBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    """Redis with maxmemory + allkeys-lru evicts records and the counter: 0 AlreadyExists,
    0 ids reused while their record is stored."""
    counts = evicting_creates(
        co.Repository(Ticket, backend=lru_redis), co.Repository(Counter, backend=lru_redis)
    )
    evicted = int(lru_redis.client.info("stats")["evicted_keys"])
    with capsys.disabled():
        print(
            f"\n[hardening] Redis allkeys-lru, 1,000 creates: {counts}, {evicted} evicted", end=" "
        )
    assert evicted > 0
    assert counts["already_exists"] == 0
    assert counts["reused_while_stored"] == 0


# -- item 15: default namespaces never alias ------------------------------------------------


def test_classes_whose_names_differ_in_case_cannot_share_a_default_namespace() -> None:
    """URL and Url both default to 'url': the second repository is refused, with the fix."""

    @dataclasses.dataclass
    class URL:
        id: Annotated[int, co.Field(primary_key=True)]
        href: str = ""

    @dataclasses.dataclass
    class Url:
        id: Annotated[int, co.Field(primary_key=True)]
        text: str = ""

    store = co.MemoryBackend()
    urls = co.Repository(URL, backend=store, prefix="case-test:")
    with pytest.raises(co.ModelDefinitionError, match="namespace=") as info:
        co.Repository(Url, backend=store, prefix="case-test:")
    assert "URL" in str(info.value)
    assert "'url'" in str(info.value)
    other = co.Repository(Url, backend=store, prefix="case-test:", namespace="url_text")
    urls.create(URL(1, "https://example.invalid"))
    assert other.get_or_none(1) is None
    # the same class keeps sharing its namespace, and so does a redefinition of it
    assert co.Repository(URL, backend=store, prefix="case-test:").get(1) == URL(
        1, "https://example.invalid"
    )

    @dataclasses.dataclass
    class URL2:
        id: Annotated[int, co.Field(primary_key=True)]
        href: str = ""

    URL2.__name__ = "URL"
    again = co.Repository(URL2, backend=store, prefix="case-test:")
    assert again.namespace == "url"
    # another prefix or a key template does not collide
    co.Repository(Url, backend=store, prefix="elsewhere:")
    co.Repository(Url, backend=store, prefix="case-test:", key="u.{id}")


# -- item 16 / 17: messages that say the fix; repositories close what they own ---------------


@dataclasses.dataclass
class Customer:
    id: Annotated[int, co.Field(primary_key=True)]
    name: str = ""


def test_an_instance_passed_as_the_model_says_to_pass_the_class() -> None:
    """Repository(Customer(1)) says to pass the class; a non-class says what it got."""
    with pytest.raises(co.ModelDefinitionError, match=r"write Repository\(Customer, \.\.\.\)"):
        co.Repository(Customer(1))  # type: ignore[call-overload,arg-type]
    with pytest.raises(co.ModelDefinitionError, match=r"takes a dataclass class.*got int 5"):
        co.Repository(5)  # type: ignore[call-overload,arg-type]


def test_a_raw_client_as_backend_says_how_to_wrap_it(
    redis_server: RedisServer, memcached_server: MemcachedServer
) -> None:
    """A raw redis.Redis or pymemcache client: short message naming the wrapper."""
    import pymemcache
    import redis

    client = redis.Redis.from_url(redis_server.url)
    with pytest.raises(co.ConfigurationError) as info:
        co.Repository(Customer, backend=client)  # type: ignore[arg-type]
    message = str(info.value)
    assert "redis.client.Redis" in message
    assert "RedisBackend(client)" in message
    assert len(message) < 300
    client.close()
    host, _, port = memcached_server.servers[0].rpartition(":")
    mc = pymemcache.Client((host, int(port)))
    with pytest.raises(co.ConfigurationError, match=r"MemcachedBackend\(client\)"):
        co.Repository(Customer, backend=mc)  # type: ignore[arg-type]
    with pytest.raises(co.ConfigurationError, match=r"write backend=MemoryBackend\(\.\.\.\)"):
        co.Repository(Customer, backend=co.MemoryBackend)  # type: ignore[arg-type]
    with pytest.raises(co.ConfigurationError, match="missing: get, get_many"):
        co.Repository(Customer, backend=object())  # type: ignore[arg-type]


def test_an_update_function_returning_none_says_to_return_the_record(
    backend: co.Backend,
) -> None:
    """fn returned None: the message names the call and the fix; nothing is written."""
    repo = co.Repository(Customer, backend=backend)
    repo.create(Customer(1, "Ann"))

    def rename(c: Customer) -> None:
        c.name = "Bob"

    with pytest.raises(co.ValidationError) as info:
        repo.update_with(1, rename)  # type: ignore[arg-type]
    message = str(info.value)
    assert "update_with(1, fn): fn returned NoneType None, expected a Customer record" in message
    assert "must still return it" in message
    assert "nothing was written" in message
    assert repo.get(1) == Customer(1, "Ann")


def test_loaders_of_the_wrong_shape_say_what_was_expected(backend: co.Backend) -> None:
    """get_or_load / get_or_load_many loaders that return the wrong thing: the call, what
    was expected and the fix; nothing is cached."""
    repo = co.Repository(Customer, backend=backend)
    with pytest.raises(
        co.ValidationError, match=r"get_or_load\(1, loader\): the loader returned int 7"
    ):
        repo.get_or_load(1, lambda: 7)  # type: ignore[arg-type,return-value]
    bad_results: list[Any] = [7, Customer(1), {1: Customer(1)}, "abc", [7], [Customer(1), None]]
    for bad in bad_results:
        with pytest.raises(
            co.ValidationError, match=r"get_or_load_many.*iterable of Customer"
        ) as info:
            repo.get_or_load_many([1, 2], lambda pks, bad=bad: bad)
        assert "called with [1, 2]" in str(info.value)
    assert repo.get_many([1, 2]) == [None, None]
    assert repo.get_or_load_many([1, 2], lambda pks: iter([Customer(1)])) == [Customer(1), None]


def test_a_repository_closes_only_the_backend_it_owns(redis_backend: co.RedisBackend) -> None:
    """Built without backend=, the repository owns its MemoryBackend and closes it on
    close() or at the end of a with block; a backend passed in stays open."""
    owner = co.Repository(Customer)
    owner.create(Customer(1))
    with mock.patch.object(type(owner.backend), "close") as closed:
        with owner as same:
            assert same is owner
        assert closed.call_count == 1
        owner.close()
        assert closed.call_count == 2
    with co.Repository(Customer, backend=redis_backend) as borrower:
        borrower.create(Customer(2))
    borrower.close()
    assert co.Repository(Customer, backend=redis_backend).get(2) == Customer(2)  # still open


# -- updates keep the record's TTL ----------------------------------------------------------


def _bump(c: Counter) -> Counter:
    return dataclasses.replace(c, n=c.n + 1)


def test_updates_keep_the_remaining_ttl_unless_told_otherwise(
    backend: co.Backend, clock: FakeClock
) -> None:
    """save(ttl=1) then update / update_many / update_with / patch on a repository without
    a TTL: the record still expires. ttl=None makes it permanent; ttl=DEFAULT gives it the
    repository's TTL (none here)."""
    repo = co.Repository(Counter, backend=backend)
    repo.save_many([Counter(i) for i in range(1, 7)], ttl=1)
    repo.update(Counter(1, 1))
    repo.update_many([Counter(2, 1)])
    repo.update_with(3, _bump)
    repo.patch(4, n=1)
    repo.patch(5, n=1, ttl=None)
    repo.update(Counter(6, 1), ttl=co.DEFAULT)
    assert [c.n for c in repo.get_many(range(1, 7)) if c] == [1] * 6
    if isinstance(backend, co.MemoryBackend):
        clock.advance(1.5)
    else:
        deadline = time.monotonic() + 6  # memcached keeps whole seconds plus one
        while repo.get_many([1, 2, 3, 4]) != [None] * 4 and time.monotonic() < deadline:
            time.sleep(0.1)
    assert repo.get_many(range(1, 7)) == [None, None, None, None, Counter(5, 1), Counter(6, 1)]
    with pytest.raises(co.InvalidTTL):  # a new record has no TTL to keep
        repo.save(Counter(9), ttl=co.KEEP_TTL)  # type: ignore[arg-type]


def test_an_update_with_an_explicit_ttl_sets_it(backend: co.Backend, clock: FakeClock) -> None:
    """Passing ttl= to an update still sets that TTL, as before."""
    repo = co.Repository(Counter, backend=backend, ttl=1)
    repo.save(Counter(1), ttl=None)
    repo.patch(1, n=1, ttl=co.DEFAULT)
    repo.save(Counter(2), ttl=None)
    repo.update(Counter(2, 1))
    if isinstance(backend, co.MemoryBackend):
        clock.advance(1.5)
    else:
        deadline = time.monotonic() + 6
        while repo.get_or_none(1) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
    assert repo.get_many([1, 2]) == [None, Counter(2, 1)]


def test_a_hung_loader_holds_up_callers_of_its_process_only_for_lock_timeout(
    backend: co.Backend,
) -> None:
    """One caller's loader hangs: other callers in the same process wait lock_timeout, then
    load themselves; when the hung loader returns, its older result does not overwrite."""
    repo = co.Repository(Counter, backend=backend)
    release = threading.Event()
    entered = threading.Event()

    def hung() -> Counter:
        entered.set()
        release.wait(10)
        return Counter(7, 1, source="hung")

    first: list[Counter] = []
    thread = threading.Thread(target=lambda: first.append(repo.get_or_load(7, hung)))
    thread.start()
    assert entered.wait(5)
    started = time.perf_counter()
    got = in_thread(lambda: repo.get_or_load(7, lambda: Counter(7, 2, "second"), lock_timeout=0.5))
    waited = time.perf_counter() - started
    assert got == Counter(7, 2, "second")
    assert 0.4 < waited < 2.0
    release.set()
    thread.join(10)
    assert first == [Counter(7, 2, "second")]  # the fill lost to the record stored meanwhile
    assert repo.get(7) == Counter(7, 2, "second")
