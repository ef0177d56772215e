"""Repository semantics: CRUD, batches, TTL, auto ids, errors; on every backend."""

from __future__ import annotations

import dataclasses
import datetime
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Annotated, Any

import pytest

import cacheorm as co
from tests.conftest import FakeClock


@dataclasses.dataclass
class User:
    id: Annotated[int, co.Field(primary_key=True)]
    name: str
    email: str | None = None
    tags: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Collection:
    collector: Annotated[int, co.Field(primary_key=True)]
    article: Annotated[int, co.Field(primary_key=True)]
    mark: str = ""


@dataclasses.dataclass(frozen=True)
class Ticket:
    id: Annotated[int | None, co.Field(primary_key=True, auto=True)]
    title: str


@dataclasses.dataclass
class Note:
    id: Annotated[int, co.Field(primary_key=True, auto=True)]
    text: str


class CountingBackend(co.MemoryBackend):
    """A real MemoryBackend that counts how often each method is called."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.calls: Counter[str] = Counter()

    def get(self, key: str, /) -> bytes | None:
        self.calls["get"] += 1
        return super().get(key)

    def get_many(self, keys: Sequence[str], /) -> list[bytes | None]:
        self.calls["get_many"] += 1
        return super().get_many(keys)

    def set(self, key: str, value: bytes, /, ttl: float | None = None) -> None:
        self.calls["set"] += 1
        super().set(key, value, ttl)

    def set_many(self, items: Sequence[tuple[str, bytes]], /, ttl: float | None = None) -> None:
        self.calls["set_many"] += 1
        super().set_many(items, ttl)

    def add(self, key: str, value: bytes, /, ttl: float | None = None) -> bool:
        self.calls["add"] += 1
        return super().add(key, value, ttl)

    def add_many(
        self, items: Sequence[tuple[str, bytes]], /, ttl: float | None = None
    ) -> list[bool]:
        self.calls["add_many"] += 1
        return super().add_many(items, ttl)

    def replace_many(
        self, items: Sequence[tuple[str, bytes]], /, ttl: float | None = None
    ) -> list[bool]:
        self.calls["replace_many"] += 1
        return super().replace_many(items, ttl)

    def delete_many(self, keys: Sequence[str], /) -> int:
        self.calls["delete_many"] += 1
        return super().delete_many(keys)

    def incr(self, key: str, delta: int = 1, /) -> int:
        self.calls["incr"] += 1
        return super().incr(key, delta)


@pytest.fixture
def users(backend: co.Backend, serializer_name: str) -> co.Repository[User]:
    """A User repository on each backend, with each serializer."""
    return co.Repository(User, backend=backend, serializer=serializer_name)


# --- single-record CRUD -----------------------------------------------------------


def test_create_then_get_returns_an_equal_record(users: co.Repository[User]) -> None:
    """create stores the record and get reads back an equal one."""
    sam = User(id=1, name="Sam", tags=["a", "b"])
    assert users.create(sam) is sam
    got = users.get(1)
    assert got == sam
    assert got is not sam


def test_create_refuses_an_existing_key_and_keeps_the_old_record(
    users: co.Repository[User],
) -> None:
    """create is insert-if-absent: AlreadyExists names the key; the stored record is unchanged."""
    users.create(User(id=1, name="Sam"))
    with pytest.raises(co.AlreadyExists) as info:
        users.create(User(id=1, name="Impostor"))
    assert info.value.key == "user:1"
    assert info.value.keys == ["user:1"]
    assert "user:1" in str(info.value)
    assert info.value.model is User
    assert users.get(1).name == "Sam"


def test_get_missing_raises_not_found_naming_the_key(users: co.Repository[User]) -> None:
    """get of an absent key raises NotFound (a LookupError) with model and key."""
    with pytest.raises(co.NotFound) as info:
        users.get(404)
    assert isinstance(info.value, LookupError)
    assert info.value.key == "user:404"
    assert str(info.value) == "User 404 not found (key 'user:404')"


def test_get_or_none_and_exists(users: co.Repository[User]) -> None:
    """get_or_none returns None on a miss; exists reflects presence."""
    assert users.get_or_none(1) is None
    assert users.exists(1) is False
    users.save(User(id=1, name="Sam"))
    assert users.get_or_none(1) == User(id=1, name="Sam")
    assert users.exists(1) is True


def test_save_is_an_upsert(users: co.Repository[User]) -> None:
    """save inserts when absent and overwrites when present."""
    users.save(User(id=1, name="Sam"))
    users.save(User(id=1, name="Sam Two"))
    assert users.get(1).name == "Sam Two"


def test_update_replaces_only_an_existing_record(users: co.Repository[User]) -> None:
    """update writes over an existing record and raises NotFound, writing nothing, otherwise."""
    with pytest.raises(co.NotFound) as info:
        users.update(User(id=1, name="Ghost"))
    assert info.value.key == "user:1"
    assert users.exists(1) is False
    users.create(User(id=1, name="Sam"))
    users.update(User(id=1, name="Sam", email="s@example.com"))
    assert users.get(1).email == "s@example.com"


def test_delete_reports_whether_the_record_existed(users: co.Repository[User]) -> None:
    """delete returns True once, then False; the record is gone."""
    users.save(User(id=1, name="Sam"))
    assert users.delete(1) is True
    assert users.delete(1) is False
    assert users.get_or_none(1) is None


def test_get_or_create_returns_the_stored_record_when_present(
    users: co.Repository[User],
) -> None:
    """get_or_create inserts once, then returns the stored record with created=False."""
    first, created = users.get_or_create(User(id=1, name="Sam"))
    assert (first, created) == (User(id=1, name="Sam"), True)
    again, created_again = users.get_or_create(User(id=1, name="Other"))
    assert (again, created_again) == (User(id=1, name="Sam"), False)


# --- batches ------------------------------------------------------------------------


def test_get_many_keeps_input_order_with_none_for_misses(users: co.Repository[User]) -> None:
    """get_many returns records in the order asked, None where absent, duplicates included."""
    users.save_many([User(id=i, name=f"u{i}") for i in (1, 2, 3)])
    got = users.get_many([3, 99, 1, 3])
    assert [u.name if u else None for u in got] == ["u3", None, "u1", "u3"]
    assert users.get_many([]) == []


def test_batches_are_one_backend_call_each() -> None:
    """Each batch operation makes exactly one backend call, whatever the batch size."""
    backend = CountingBackend()
    repo = co.Repository(User, backend=backend)
    records = [User(id=i, name=f"u{i}") for i in range(50)]
    repo.create_many(records)
    repo.save_many(records)
    repo.update_many(records)
    repo.get_many(range(60))
    assert repo.delete_many(range(60)) == 50
    assert backend.calls == Counter(
        add_many=1, set_many=1, replace_many=1, get_many=1, delete_many=1
    )


def test_create_many_writes_the_free_keys_and_lists_the_taken_ones(
    users: co.Repository[User],
) -> None:
    """create_many never overwrites: AlreadyExists lists every taken key; the rest are written."""
    users.save_many([User(id=2, name="old2"), User(id=4, name="old4")])
    with pytest.raises(co.AlreadyExists) as info:
        users.create_many([User(id=i, name=f"new{i}") for i in range(1, 6)])
    assert info.value.keys == ["user:2", "user:4"]
    assert "2 of 5" in str(info.value)
    names = [u.name if u else None for u in users.get_many(range(1, 6))]
    assert names == ["new1", "old2", "new3", "old4", "new5"]


def test_update_many_writes_the_present_and_lists_the_missing(
    users: co.Repository[User],
) -> None:
    """update_many replaces present records only: NotFound lists the missing keys."""
    users.save_many([User(id=1, name="a"), User(id=3, name="c")])
    with pytest.raises(co.NotFound) as info:
        users.update_many([User(id=i, name=f"new{i}") for i in (1, 2, 3, 4)])
    assert info.value.keys == ["user:2", "user:4"]
    assert [u.name if u else None for u in users.get_many([1, 2, 3, 4])] == [
        "new1",
        None,
        "new3",
        None,
    ]


def test_empty_batches_do_nothing() -> None:
    """Empty batches make no backend call and return empty results."""
    backend = CountingBackend()
    repo = co.Repository(User, backend=backend)
    assert repo.create_many([]) == []
    assert repo.save_many([]) == []
    assert repo.update_many([]) == []
    assert repo.delete_many([]) == 0
    assert sum(backend.calls.values()) == 0


def test_a_bad_record_in_a_batch_writes_nothing(users: co.Repository[User]) -> None:
    """Batches validate every record before any I/O: one bad record means nothing is written."""
    batch = [User(id=1, name="ok"), User(id=2, name=None)]  # type: ignore[arg-type]
    for operation in (users.save_many, users.create_many):
        with pytest.raises(co.ValidationError) as info:
            operation(batch)
        assert info.value.path == "$.name"
        assert users.get_many([1, 2]) == [None, None]


# --- composite keys ------------------------------------------------------------------


def test_composite_keys_are_tuples_in_declaration_order(backend: co.Backend) -> None:
    """Several primary-key fields make a composite key passed as a tuple."""
    marks = co.Repository(Collection, backend=backend)
    marks.create(Collection(collector=1, article=42, mark="star"))
    assert marks.key_for((1, 42)) == "collection:1:42"
    assert marks.get((1, 42)).mark == "star"
    assert marks.get_or_none((42, 1)) is None
    assert marks.get_many([(1, 42), (2, 2)]) == [Collection(1, 42, "star"), None]
    with pytest.raises(co.ValidationError):
        marks.get(1)


def test_composite_key_templates(backend: co.Backend) -> None:
    """A brace or % template renders the composite key; get takes the same tuple."""
    for template in ("collection.{collector}.{article}", "collection.%s.%d"):
        marks = co.Repository(Collection, backend=backend, key=template)
        marks.save(Collection(collector=1, article=42))
        assert marks.key_for((1, 42)) == "collection.1.42"
        assert marks.get((1, 42)) == Collection(1, 42)
        marks.delete((1, 42))


# --- auto ids --------------------------------------------------------------------------


def test_auto_ids_come_from_a_counter_and_frozen_records_are_returned_with_them(
    backend: co.Backend,
) -> None:
    """create fills a None auto key from an atomic counter and returns a new frozen record."""
    tickets = co.Repository(Ticket, backend=backend)
    first = tickets.create(Ticket(id=None, title="a"))
    second = tickets.create(Ticket(id=None, title="b"))
    assert (first.id, second.id) == (1, 2)
    assert tickets.get(2) == Ticket(id=2, title="b")
    explicit = tickets.create(Ticket(id=100, title="given"))
    assert explicit.id == 100
    batch = tickets.create_many([Ticket(None, "c"), Ticket(50, "d"), Ticket(None, "e")])
    assert [t.id for t in batch] == [3, 50, 4]
    assert tickets.get(4).title == "e"


def test_auto_ids_work_with_a_plain_int_annotation(backend: co.Backend) -> None:
    """An `int` auto key may be None before create; saving it without an id is refused."""
    notes = co.Repository(Note, backend=backend)
    note = notes.create(Note(id=None, text="hello"))  # type: ignore[arg-type]
    assert note.id == 1
    assert notes.get(1).text == "hello"
    with pytest.raises(co.ValidationError):
        notes.save(Note(id=None, text="no id"))  # type: ignore[arg-type]


def test_auto_id_create_is_validated_before_the_counter_moves() -> None:
    """A bad record on an auto-id create raises before the counter is incremented."""
    backend = CountingBackend()
    tickets = co.Repository(Ticket, backend=backend)
    with pytest.raises(co.ValidationError):
        tickets.create(Ticket(id=None, title=3))  # type: ignore[arg-type]
    assert backend.calls["incr"] == 0
    assert tickets.create(Ticket(id=None, title="ok")).id == 1


def test_get_or_create_with_an_auto_id_creates(backend: co.Backend) -> None:
    """get_or_create of a record without an id always creates it."""
    tickets = co.Repository(Ticket, backend=backend)
    record, created = tickets.get_or_create(Ticket(id=None, title="x"))
    assert created is True
    assert record.id == 1


def test_concurrent_auto_id_creates_get_distinct_ids(backend: co.Backend) -> None:
    """16 threads creating records with auto ids get 16 distinct ids."""
    tickets = co.Repository(Ticket, backend=backend)
    ids: list[int | None] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(10):
            made = tickets.create(Ticket(id=None, title="t"))
            with lock:
                ids.append(made.id)

    threads = [threading.Thread(target=work) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(i for i in ids if i is not None) == list(range(1, 161))


def test_concurrent_creates_of_one_key_have_exactly_one_winner(backend: co.Backend) -> None:
    """16 threads creating the same primary key: one succeeds, 15 get AlreadyExists."""
    repo = co.Repository(User, backend=backend)
    outcomes: list[str] = []
    barrier = threading.Barrier(16)

    def work(n: int) -> None:
        barrier.wait()
        try:
            repo.create(User(id=7, name=f"t{n}"))
            outcomes.append("created")
        except co.AlreadyExists:
            outcomes.append("exists")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Counter(outcomes) == Counter(created=1, exists=15)


# --- TTL ----------------------------------------------------------------------------------


def test_repository_ttl_expires_records(clock: FakeClock) -> None:
    """The repository TTL applies to writes; records vanish after it."""
    repo = co.Repository(User, backend=co.MemoryBackend(clock=clock), ttl=60)
    repo.save(User(id=1, name="Sam"))
    clock.advance(59.9)
    assert repo.exists(1)
    clock.advance(0.2)
    assert repo.get_or_none(1) is None


def test_per_call_ttl_overrides_and_none_means_no_expiry(clock: FakeClock) -> None:
    """A per-call TTL wins over the default; None or 0 never expire; DEFAULT is the default."""
    repo = co.Repository(
        User, backend=co.MemoryBackend(clock=clock), ttl=datetime.timedelta(seconds=10)
    )
    repo.save(User(id=1, name="default"))
    repo.save(User(id=2, name="short"), ttl=1)
    repo.save(User(id=3, name="forever"), ttl=None)
    repo.save(User(id=4, name="zero"), ttl=0)
    repo.save(User(id=5, name="explicit default"), ttl=co.DEFAULT)
    repo.save(User(id=6, name="long"), ttl=datetime.timedelta(hours=1))
    clock.advance(2)
    assert [u is not None for u in repo.get_many(range(1, 7))] == [True, False] + [True] * 4
    clock.advance(10)
    assert [u is not None for u in repo.get_many(range(1, 7))] == [
        False,
        False,
        True,
        True,
        False,
        True,
    ]
    assert repo.ttl == 10.0


@pytest.mark.parametrize("bad", [-1, -0.5, float("nan"), float("inf"), True, "10", [1], 10**400])
def test_bad_ttls_raise_before_any_io(bad: Any) -> None:
    """A negative, NaN, infinite, bool or non-numeric TTL raises InvalidTTL; nothing is written."""
    backend = CountingBackend()
    repo = co.Repository(User, backend=backend)
    for call in (
        lambda: repo.save(User(1, "a"), ttl=bad),
        lambda: repo.create(User(1, "a"), ttl=bad),
        lambda: repo.update(User(1, "a"), ttl=bad),
        lambda: repo.save_many([User(1, "a")], ttl=bad),
        lambda: repo.create_many([User(1, "a")], ttl=bad),
        lambda: repo.get_or_create(User(1, "a"), ttl=bad),
    ):
        with pytest.raises(co.InvalidTTL) as info:
            call()
        assert isinstance(info.value, ValueError)
    with pytest.raises(co.InvalidTTL):
        co.Repository(User, backend=backend, ttl=bad)
    assert sum(backend.calls.values()) == 0


def test_negative_timedelta_ttl_is_refused() -> None:
    """A negative timedelta is as invalid as a negative number."""
    with pytest.raises(co.InvalidTTL, match="negative"):
        co.Repository(User, ttl=datetime.timedelta(seconds=-1))


# --- validation and errors ------------------------------------------------------------------


def test_saving_the_wrong_type_of_object_is_a_validation_error(
    users: co.Repository[User],
) -> None:
    """A record of another class is refused before any I/O, naming both classes."""
    with pytest.raises(co.ValidationError, match="User repository got Collection"):
        users.save(Collection(1, 2))  # type: ignore[arg-type]
    with pytest.raises(co.ValidationError, match="got NoneType None, expected a User record"):
        users.update(None)  # type: ignore[arg-type]
    with pytest.raises(co.ValidationError) as info:
        users.create(["x" * 2000])  # type: ignore[arg-type]
    assert len(str(info.value)) < 300  # a huge value is cut, not printed whole


def test_a_bad_primary_key_type_is_a_validation_error(users: co.Repository[User]) -> None:
    """get('1') on an int key raises ValidationError naming the model and field."""
    with pytest.raises(co.ValidationError) as info:
        users.get("1")
    assert "User.id" in str(info.value)
    assert info.value.model is User


def test_a_bad_primary_key_in_a_record_reports_the_field(users: co.Repository[User]) -> None:
    """save of a record whose key field has the wrong type names the field path."""
    with pytest.raises(co.ValidationError) as info:
        users.save(User(id="x", name="Sam"))  # type: ignore[arg-type]
    assert info.value.path == "$.id"
    assert users.backend.get("user:x") is None


def test_stored_garbage_is_a_deserialization_error(users: co.Repository[User]) -> None:
    """Bytes that do not decode raise DeserializationError naming key and serializer."""
    users.backend.set("user:1", b"\xff\x00garbage")
    with pytest.raises(co.DeserializationError) as info:
        users.get(1)
    assert info.value.key == "user:1"
    assert info.value.serializer == users.serializer.name
    assert "user:1" in str(info.value)
    with pytest.raises(co.DeserializationError):
        users.get_many([1])


def test_repository_construction_errors() -> None:
    """Bad backend, serializer, namespace, prefix or key arguments fail at construction."""
    with pytest.raises(co.ConfigurationError, match="Backend protocol"):
        co.Repository(User, backend=object())  # type: ignore[arg-type]
    with pytest.raises(co.SerializerNotFound, match="known: json, msgpack, pickle"):
        co.Repository(User, serializer="yaml")
    with pytest.raises(co.ConfigurationError, match="serializer must be"):
        co.Repository(User, serializer=42)  # type: ignore[arg-type]
    with pytest.raises(co.ConfigurationError, match="namespace"):
        co.Repository(User, namespace="")
    with pytest.raises(co.ConfigurationError, match="prefix"):
        co.Repository(User, prefix=3)  # type: ignore[arg-type]
    with pytest.raises(co.ConfigurationError, match="key must be"):
        co.Repository(User, key=3)  # type: ignore[arg-type]


def test_namespace_prefix_and_introspection() -> None:
    """namespace and prefix shape keys; the repository exposes what it was built with."""
    backend = co.MemoryBackend()
    repo = co.Repository(User, backend=backend, namespace="people", prefix="app:", ttl=5)
    assert repo.key_for(3) == "app:people:3"
    assert repo.key_of(User(3, "x")) == "app:people:3"
    assert repo.pk_of(User(3, "x")) == 3
    assert repo.model is User
    assert repo.backend is backend
    assert repo.namespace == "people"
    assert repo.serializer.name == "json"
    assert "Repository(User" in repr(repo)


def test_default_backend_is_a_private_memory_backend() -> None:
    """Without a backend a repository stores records in its own MemoryBackend."""
    first = co.Repository(User)
    second = co.Repository(User)
    first.save(User(1, "a"))
    assert isinstance(first.backend, co.MemoryBackend)
    assert first.get(1).name == "a"
    assert second.get_or_none(1) is None


# -- on real servers -----------------------------------------------------------------


def _commandstats(client: Any) -> dict[str, int]:
    """Redis ``INFO commandstats`` as {command: calls}."""
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(entry["calls"]) for name, entry in stats.items()}


def test_repository_batches_are_one_redis_command_each(redis_backend: co.RedisBackend) -> None:
    """On Redis, get_many of 1,000 records is one MGET and delete_many one DEL, counted by Redis."""
    repo = co.Repository(User, backend=redis_backend)
    repo.save_many([User(id=i, name=f"u{i}") for i in range(1000)])
    redis_backend.client.config_resetstat()
    records = repo.get_many([*range(1000), 5000])
    assert len([r for r in records if r is not None]) == 1000
    assert records[-1] is None
    assert repo.delete_many(range(1000)) == 1000
    calls = _commandstats(redis_backend.client)
    calls.pop("config|resetstat", None)
    calls.pop("info", None)
    # the miss (5000) is checked with one EXISTS, to tell it from a key of another type
    assert calls == {"mget": 1, "exists": 1, "del": 1}


def test_repository_create_on_redis_is_one_set_nx_with_its_expiry(
    redis_backend: co.RedisBackend,
) -> None:
    """create with a TTL is a single SET carrying NX and PX, never SETNX then EXPIRE."""
    repo = co.Repository(User, backend=redis_backend, ttl=60)
    redis_backend.client.config_resetstat()
    repo.create(User(id=1, name="Sam"))
    calls = _commandstats(redis_backend.client)
    assert calls.get("set") == 1
    assert "setnx" not in calls
    assert "expire" not in calls
    assert "pexpire" not in calls
    assert 59_000 < redis_backend.client.pttl("user:1") <= 60_000


@pytest.mark.parametrize("server_backend", ["redis_backend", "memcached_backend"])
def test_repository_ttl_really_expires_on_servers(
    request: pytest.FixtureRequest, server_backend: str
) -> None:
    """A record written with a 1 s TTL is readable at once and gone after it has passed."""
    backend: co.Backend = request.getfixturevalue(server_backend)
    repo = co.Repository(User, backend=backend, ttl=1)
    repo.create(User(id=1, name="Sam"))
    repo.save(User(id=2, name="Kim"), ttl=None)
    assert repo.get(1).name == "Sam"
    time.sleep(3.0 if server_backend == "memcached_backend" else 1.2)
    assert repo.get_or_none(1) is None
    assert repo.get(2).name == "Kim"
