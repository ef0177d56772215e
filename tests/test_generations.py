"""Namespace generations: ``Repository(..., generations=True)`` and its O(1) ``clear()``."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import time
from typing import Annotated

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cacheorm as co
from cacheorm._generation import SUFFIX, Generation, split

pytestmark = pytest.mark.filterwarnings("error")


@dataclasses.dataclass
class Item:
    id: Annotated[int, co.Field(primary_key=True, auto=True)]
    name: str


@dataclasses.dataclass
class Tagged:
    tag: Annotated[str, co.Field(primary_key=True)]
    n: int


@dataclasses.dataclass
class Stamped:
    at: Annotated[dt.datetime, co.Field(primary_key=True)]
    n: int


def _repo(backend: co.Backend, namespace: str = "gitem", ttl: float = 0.2) -> co.Repository[Item]:
    return co.Repository(
        Item, backend=backend, namespace=namespace, generations=True, generation_ttl=ttl
    )


def test_keys_carry_the_generation(backend: co.Backend) -> None:
    items = _repo(backend)
    key = items.key_for(1)
    base, generation = split(key)
    assert base == "gitem:1"
    assert generation > 1 << 40  # a clock reading, never a counter from 0
    assert backend.get("gitem:__gen__") == str(generation).encode()


def test_clear_hides_records_now_here_and_after_generation_ttl_elsewhere(
    backend: co.Backend,
) -> None:
    items = _repo(backend)
    other = _repo(backend)  # another process: its own cached generation
    neighbour = _repo(backend, namespace="gitems")
    created = items.create_many([Item(None, f"n{i}") for i in range(20)])
    neighbour.create(Item(None, "keep"))
    ids = [item.id for item in created]
    assert other.get(ids[0]).name == "n0"  # caches the old generation
    cleared = time.monotonic()
    items.clear()
    assert items.get_many(ids) == [None] * 20  # the clearing repository: at once
    assert items.get_or_none(ids[0]) is None
    if time.monotonic() - cleared < 0.15:  # still within the other's window:
        seen = other.get_or_none(ids[0])
        if isinstance(backend, co.ScanBackend):
            assert seen is None  # clear() also deleted the old generation's records
        else:
            assert seen is not None  # memcached: the old records are still there
    time.sleep(0.25)
    assert other.get_many(ids) == [None] * 20  # after generation_ttl
    assert neighbour.get(1).name == "keep"  # another namespace is untouched
    # auto ids are not reused after a clear
    assert items.create(Item(None, "next")).id == max(ids) + 1  # type: ignore[operator]
    assert other.get(max(ids) + 1).name == "next"  # type: ignore[operator]


def test_a_lost_generation_never_brings_old_records_back(backend: co.Backend) -> None:
    items = _repo(backend, ttl=1e-9)  # read the generation before every operation
    items.create(Item(None, "old"))
    items.clear()
    assert items.get_or_none(1) is None
    # the generation key is evicted (or deleted by an operator): a fresh one
    assert backend.delete("gitem:__gen__")
    assert items.get_or_none(1) is None
    items.create(Item(None, "new"))  # id 2
    assert backend.delete("gitem:__gen__")
    assert items.get_or_none(2) is None
    # lost and then bumped: incr re-creates it from 0, which is never used
    assert backend.delete("gitem:__gen__")
    items.clear()
    stored = backend.get("gitem:__gen__")
    assert stored is not None
    assert int(stored) > 1 << 40
    assert items.get_or_none(1) is None
    assert items.get_or_none(2) is None


def test_a_generation_reset_to_a_small_number_is_replaced(backend: co.Backend) -> None:
    items = _repo(backend, ttl=1e-9)
    backend.set("gitem:__gen__", b"1")  # as incr after a loss leaves it
    generation = split(items.key_for(1))[1]
    assert generation > 1 << 40
    assert backend.get("gitem:__gen__") == str(generation).encode()


def test_concurrent_clears_each_move_to_a_new_generation(backend: co.Backend) -> None:
    items = _repo(backend)
    items.create(Item(None, "x"))
    start = split(items.key_for(1))[1]
    repos = [_repo(backend) for _ in range(4)]
    barrier = threading.Barrier(4)

    def run(repo: co.Repository[Item]) -> None:
        barrier.wait()
        for _ in range(5):
            repo.clear()

    threads = [threading.Thread(target=run, args=(repo,)) for repo in repos]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stored = backend.get("gitem:__gen__")
    assert stored is not None
    assert int(stored) == start + 20
    time.sleep(0.25)
    assert items.get_or_none(1) is None


def test_one_repository_shared_by_threads(backend: co.Backend) -> None:
    items = _repo(backend, ttl=0.05)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                created = items.create(Item(None, "t"))
                items.get_or_none(created.id)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_count_and_scan_see_only_the_current_generation(backend: co.Backend) -> None:
    items = _repo(backend)
    if not isinstance(backend, co.ScanBackend):
        items.create(Item(None, "a"))
        assert items.clear() == 0  # memcached: nothing deleted, all unreachable
        assert items.get_or_none(1) is None
        with pytest.raises(co.ConfigurationError, match="cannot enumerate keys"):
            items.count()
        return
    items.create_many([Item(None, f"a{i}") for i in range(5)])
    stale = _repo(backend)
    assert stale.count() == 5
    items.clear()  # deletes the 5 records of the old generation
    stale.create(Item(None, "late"))  # id 6, written under the old generation
    assert items.count() == 0
    items.create_many([Item(None, "b"), Item(None, "c")])
    assert items.count() == 2
    assert sorted(item.name for item in items.scan()) == ["b", "c"]
    assert items.clear() == 3  # the current two and the late one of the old generation
    assert items.count() == 0


def test_clear_deletes_old_generations_where_the_backend_can_list_keys(
    backend: co.Backend,
) -> None:
    items = _repo(backend)
    items.create_many([Item(None, f"a{i}") for i in range(7)])
    first = items.key_for(1)
    if isinstance(backend, co.ScanBackend):
        assert items.clear() == 7
        assert backend.get(first) is None  # the old record is gone, not only unreachable
    else:  # memcached: unreachable, left to its TTL or the LRU
        assert items.clear() == 0
        assert backend.get(first) is not None
    assert items.get_or_none(1) is None
    assert backend.get("gitem:__seq__") == b"7"  # the counter is kept


def test_clear_with_a_key_function_bumps_only() -> None:
    store = co.MemoryBackend()
    tagged = co.Repository(
        Tagged, backend=store, key=lambda pk: f"t/{pk}", namespace="tg", generations=True
    )
    tagged.create(Tagged("a", 1))
    old = tagged.key_for("a")
    assert tagged.clear() == 0  # no known key shape: nothing listed, nothing deleted
    assert tagged.get_or_none("a") is None
    assert store.get(old) is not None  # left to its TTL
    with pytest.raises(co.ConfigurationError, match="key function"):
        tagged.count()


def test_text_keys_ending_like_a_suffix_stay_apart() -> None:
    store = co.MemoryBackend()
    tagged = co.Repository(Tagged, backend=store, namespace="tg", generations=True)
    tagged.create(Tagged("x#g5", 1))
    tagged.create(Tagged("x", 2))
    assert tagged.get("x#g5").n == 1
    assert tagged.get("x").n == 2
    assert tagged.count() == 2
    assert tagged.clear() == 2
    assert tagged.count() == 0


def test_records_with_datetime_keys_compare_without_the_generation() -> None:
    stamps = co.Repository(Stamped, generations=True, namespace="stamps")
    at = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    stamps.create(Stamped(at, 1))
    assert stamps.get(at).n == 1
    assert [s.n for s in stamps.scan()] == [1]
    key = stamps.key_for(at)
    # a record copied under another key is still refused
    stamps.backend.set(stamps.key_for(at + dt.timedelta(1)), stamps.backend.get(key) or b"")
    with pytest.raises(co.DeserializationError):
        stamps.get(at + dt.timedelta(1))


def test_get_or_load_and_updates_work_with_generations(backend: co.Backend) -> None:
    items = _repo(backend)
    loaded = items.get_or_load(5, lambda: Item(5, "loaded"))
    assert loaded.name == "loaded"
    items.update_with(5, lambda item: dataclasses.replace(item, name="changed"))
    assert items.get(5).name == "changed"
    items.clear()
    assert items.get_or_load(5, lambda: Item(5, "again")).name == "again"


def test_bad_generation_arguments() -> None:
    with pytest.raises(co.ConfigurationError, match="generations must be a bool"):
        co.Repository(Item, namespace="g1", generations=1)  # type: ignore[arg-type]
    for bad in (0, -1, float("inf"), True, "1"):
        with pytest.raises(co.ConfigurationError, match="generation_ttl"):
            co.Repository(Item, namespace="g1", generations=True, generation_ttl=bad)  # type: ignore[arg-type]
    with pytest.raises(co.ConfigurationError, match="needs generations=True"):
        co.Repository(Item, namespace="g1", generation_ttl=5)


def test_a_corrupt_generation_is_a_backend_error() -> None:
    store = co.MemoryBackend()
    items = _repo(store)
    store.set("gitem:__gen__", b"not a number")
    with pytest.raises(co.BackendError, match="gitem:__gen__"):
        items.get_or_none(1)


def test_without_generations_keys_are_unchanged() -> None:
    plain = co.Repository(Item, namespace="plainitem")
    assert plain.key_for(1) == "plainitem:1"
    assert plain._generation is None
    assert plain._key_for == plain._keys.render


def test_a_failed_bump_forgets_the_cached_generation() -> None:
    store = co.MemoryBackend()
    generation = Generation(store, "g:__gen__", 60)
    first = generation.current()
    store.set("g:__gen__", b"x")
    with pytest.raises(co.BackendError):
        generation.bump()
    store.set("g:__gen__", str(first + 7).encode())
    assert generation.current() == first + 7  # read again, not the old copy
    generation.forget()
    assert generation.current() == first + 7


@settings(max_examples=300, deadline=None)
@given(
    st.text(min_size=0, max_size=12, alphabet=st.sampled_from("ab#g0123456789:%")),
    st.integers(min_value=0, max_value=2**64),
    st.text(min_size=0, max_size=12, alphabet=st.sampled_from("ab#g0123456789:%")),
    st.integers(min_value=0, max_value=2**64),
)
def test_the_suffix_is_injective(a: str, ga: int, b: str, gb: int) -> None:
    key_a, key_b = f"{a}{SUFFIX}{ga}", f"{b}{SUFFIX}{gb}"
    assert split(key_a) == (a, ga)
    assert (key_a == key_b) == ((a, ga) == (b, gb))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=20), st.integers(min_value=1 << 40, max_value=2**63))
def test_rendered_keys_split_back_to_their_parts(tag: str, generation: int) -> None:
    if any(0xD800 <= ord(c) < 0xE000 for c in tag):
        return  # lone surrogates are refused as key parts
    store = co.MemoryBackend()
    store.set("tg:__gen__", str(generation).encode())
    tagged = co.Repository(Tagged, backend=store, namespace="tg", generations=True)
    key = tagged.key_for(tag)
    plain = co.Repository(Tagged, backend=store, namespace="tg")
    assert split(key) == (plain.key_for(tag), generation)
    from cacheorm._keyspace import _keyspace

    assert _keyspace(tagged).generation_of(key) == generation


def test_split_refuses_a_key_without_a_generation() -> None:
    for key in ("user:1", "user:1#g", "user:1#gx", "user:1#g1x"):
        with pytest.raises(ValueError, match="no generation suffix"):
            split(key)


def test_long_and_odd_text_keys_stay_valid(backend: co.Backend) -> None:
    tagged = co.Repository(
        Tagged, backend=backend, namespace="gtag", ttl=60, generations=True, generation_ttl=0.2
    )
    tags = ["x" * 400, "a b\tc#g1", "ünï:cödé", "#g", "7"]
    tagged.create_many([Tagged(tag, i) for i, tag in enumerate(tags)])
    assert [t.n for t in tagged.get_many(tags) if t is not None] == [0, 1, 2, 3, 4]
    tagged.clear()
    assert tagged.get_many(tags) == [None] * 5
    tagged.save(Tagged(tags[0], 9))
    assert tagged.get(tags[0]).n == 9
