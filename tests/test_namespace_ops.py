"""Repository.clear / count / scan: exactly one repository's records, on every backend."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import pytest

import cacheorm as co
from tests.conftest import FakeClock


@dataclasses.dataclass
class User:
    id: Annotated[int, co.Field(primary_key=True, auto=True)]
    name: str


@dataclasses.dataclass
class Tag:
    name: Annotated[str, co.Field(primary_key=True)]


@dataclasses.dataclass
class Article:
    collector: str
    article: int
    title: str = ""


@dataclasses.dataclass
class Pos:
    a: Annotated[str, co.Field(primary_key=True)]
    b: Annotated[int, co.Field(primary_key=True)]


@dataclasses.dataclass
class Cart:
    user: Annotated[int, co.Field(primary_key=True, hash_tag=True)]
    item: Annotated[str, co.Field(primary_key=True)]


def _scans(backend: co.Backend) -> bool:
    return isinstance(backend, co.ScanBackend)


def test_clear_count_and_scan_cover_one_namespace(backend: co.Backend) -> None:
    """count, scan and clear see this repository's records only: not a namespace that
    extends its name (users, user:x), not the auto-id counter, not a load lease."""
    users = co.Repository(User, backend=backend)
    if not _scans(backend):
        for call in (users.clear, users.count, users.scan):
            with pytest.raises(co.ConfigurationError) as info:
                call()
            message = str(info.value)
            assert "MemcachedBackend does not have it" in message
            assert "cannot enumerate keys" in message
            assert "delete_many" in message
        return
    created = users.create_many([User(None, f"u{i}") for i in range(40)])  # type: ignore[arg-type]
    plural = co.Repository(User, backend=backend, namespace="users")
    plural.save(User(1, "plural"))
    nested = co.Repository(Tag, backend=backend, namespace="user:x")
    nested.save(Tag("1"))  # key "user:x:1": not a key of shape "user:<int>"
    prefixed = co.Repository(User, backend=backend, prefix="app:")
    prefixed.save(User(1, "prefixed"))
    backend.set("user:7\x00lease", b"token", 30)  # a get_or_load lease
    backend.set("user:abc", b"{}")  # not an int key: not a User record
    assert users.count() == 40
    assert users.count(batch=3) == 40
    assert sorted(u.id for u in users.scan(batch=7)) == [u.id for u in created]
    assert users.clear(batch=9) == 40
    assert users.count() == 0
    assert list(users.scan()) == []
    assert users.clear() == 0
    assert plural.get(1).name == "plural"
    assert nested.get("1") == Tag("1")
    assert prefixed.get(1).name == "prefixed"
    assert backend.get("user:7\x00lease") == b"token"
    assert backend.get("user:abc") == b"{}"
    # The auto-id counter survives: ids are never reused.
    assert users.create(User(None, "next")).id == 41  # type: ignore[arg-type]


def test_templates_and_hash_tags_are_matched_by_shape(backend: co.Backend) -> None:
    """A template's keys are found by its literal head and shape; a hash-tagged default
    key too (on a cluster its records sit on several nodes)."""
    if not _scans(backend):
        return
    articles = co.Repository(
        Article, backend=backend, key="collection.{collector}.{article}", prefix="t:"
    )
    articles.save_many([Article(f"c {i}.x", i) for i in range(12)])
    single = co.Repository(User, backend=backend, key="collection.{id}", prefix="t:")
    single.save(User(5, "solo"))
    backend.set("t:collection.a.notint", b"{}")
    assert articles.count() == 12
    assert single.count() == 1
    assert {a.article for a in articles.scan(batch=5)} == set(range(12))
    assert articles.clear() == 12
    assert single.get(5) == User(5, "solo")
    positional = co.Repository(Pos, backend=backend, key="pos.%s.%d")
    positional.save_many([Pos("a.b", 1), Pos("c", 2)])
    backend.set("pos.x.y", b"{}")
    assert positional.count() == 2
    assert positional.clear() == 2
    assert backend.get("pos.x.y") == b"{}"
    assert backend.get("t:collection.a.notint") == b"{}"
    carts = co.Repository(Cart, backend=backend)
    carts.save_many([Cart(u, f"item {i}") for u in range(5) for i in range(3)])
    assert carts.count() == 15
    assert carts.clear(batch=4) == 15
    assert carts.count() == 0


def test_a_prefix_with_glob_characters_is_literal(backend: co.Backend) -> None:
    """Glob characters of a prefix or namespace (Redis SCAN MATCH) match only themselves."""
    if not _scans(backend):
        return
    odd = co.Repository(Tag, backend=backend, prefix="a*[b]?\\", namespace="n*")
    near = co.Repository(Tag, backend=backend, prefix="aX[b]?\\", namespace="nn")
    odd.save_many([Tag("1"), Tag("2")])
    near.save_many([Tag("1"), Tag("2")])
    assert odd.count() == 2
    assert odd.clear() == 2
    assert near.count() == 2


def test_key_functions_and_headless_templates_are_refused() -> None:
    """Keys of no known shape, or with no literal head, cannot be told apart: a clear error."""
    store = co.MemoryBackend()
    by_function = co.Repository(Tag, backend=store, key=lambda pk: f"tag/{pk}")
    with pytest.raises(co.ConfigurationError, match="key function"):
        by_function.count()
    headless = co.Repository(Tag, backend=store, key="{name}")
    with pytest.raises(co.ConfigurationError, match="literal text before the first placeholder"):
        headless.clear()
    with_prefix = co.Repository(Tag, backend=store, key="{name}", prefix="tags/")
    with_prefix.save(Tag("a"))
    store.set("other", b"{}")
    assert with_prefix.count() == 1
    with pytest.raises(co.ConfigurationError, match="errors must be 'raise' or 'skip'"):
        with_prefix.scan(errors="ignore")  # type: ignore[arg-type]
    for bad in (0, -1):
        with pytest.raises(ValueError, match="batch must be a positive int"):
            with_prefix.count(batch=bad)
    with pytest.raises(TypeError, match="batch must be a positive int"):
        with_prefix.count(batch=2.5)  # type: ignore[arg-type]


def test_scan_raises_or_skips_records_that_do_not_decode(backend: co.Backend) -> None:
    """A record that does not decode is a DeserializationError naming its key, or skipped."""
    if not _scans(backend):
        return
    tags = co.Repository(Tag, backend=backend)
    tags.save_many([Tag("a"), Tag("b")])
    backend.set("tag:bad", b"\xff not json")
    with pytest.raises(co.DeserializationError) as info:
        list(tags.scan())
    assert info.value.key == "tag:bad"
    assert sorted(t.name for t in tags.scan(errors="skip")) == ["a", "b"]
    assert tags.count() == 3


class _CountingBackend(co.MemoryBackend):
    """A memory backend that records the size of each get_many."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock=clock)
        self.reads: list[int] = []

    def get_many(self, keys: Sequence[str], /) -> list[bytes | None]:
        self.reads.append(len(keys))
        return super().get_many(keys)


def test_scan_reads_one_batch_at_a_time_and_skips_expired_records(clock: FakeClock) -> None:
    """scan is a lazy generator: one get_many of at most ``batch`` keys per step; expired
    records are neither counted nor listed."""
    store = _CountingBackend(clock)
    tags = co.Repository(Tag, backend=store)
    tags.save_many([Tag(f"t{i}") for i in range(25)])
    tags.save_many([Tag(f"short{i}") for i in range(5)], ttl=10)
    records = tags.scan(batch=10)
    assert store.reads == []
    next(records)
    assert store.reads == [10]
    rest = list(records)
    assert len(rest) == 29
    assert max(store.reads) <= 10
    clock.advance(11)
    assert tags.count() == 25


def test_records_deleted_during_a_scan_are_left_out(backend: co.Backend) -> None:
    """A key listed by the scan but deleted before its batch is read is not yielded."""
    if not _scans(backend):
        return
    tags = co.Repository(Tag, backend=backend)
    tags.save_many([Tag(f"t{i:02d}") for i in range(20)])
    seen: list[str] = []
    for tag in tags.scan(batch=20):
        if not seen:
            tags.delete_many([f"t{i:02d}" for i in range(20)])
        seen.append(tag.name)
    # Redis and the filesystem read each batch with one get_many after listing it:
    # the first record was read before the delete, the others after.
    assert len(seen) <= 20
    assert tags.count() == 0


def test_clear_during_get_or_load_does_not_break_it(backend: co.Backend) -> None:
    """clear leaves the lease of a running get_or_load alone: the load completes and caches."""
    if not _scans(backend):
        return
    tags = co.Repository(Tag, backend=backend)
    started = threading.Event()
    release = threading.Event()
    results: list[Tag] = []

    def loader() -> Tag:
        started.set()
        assert release.wait(10)
        return Tag("slow")

    worker = threading.Thread(target=lambda: results.append(tags.get_or_load("slow", loader)))
    worker.start()
    assert started.wait(10)
    tags.save(Tag("other"))
    assert tags.clear() == 1
    assert backend.get("tag:slow\x00lease") is not None
    release.set()
    worker.join(10)
    assert results == [Tag("slow")]
    assert tags.get("slow") == Tag("slow")
    assert backend.get("tag:slow\x00lease") is None


@pytest.fixture
def big_namespace(redis_backend: co.RedisBackend) -> co.Repository[Tag]:
    """2,000 tags in Redis."""
    tags = co.Repository(Tag, backend=redis_backend)
    tags.save_many([Tag(f"t{i}") for i in range(2000)])
    return tags


def test_redis_clear_of_thousands_in_batches(big_namespace: co.Repository[Tag]) -> None:
    """Thousands of records are counted, scanned and cleared batch by batch."""
    assert big_namespace.count(batch=100) == 2000
    assert sum(1 for _ in big_namespace.scan(batch=250)) == 2000
    assert big_namespace.clear(batch=300) == 2000
    assert big_namespace.count() == 0


def test_filesystem_scan_leaves_out_what_it_did_not_write(tmp_path: Path) -> None:
    """Files planted in the store (a FIFO, a directory or a malformed file named like an
    entry, an entry copied under another name, a shard that is a link) are not listed;
    long keys are read whole; a vanished store is a BackendError."""
    store = co.FileSystemBackend(tmp_path / "store")
    long_key = "ns:" + "k" * 20_000
    store.set_many([("ns:a", b"1"), ("ns:b", b"2"), (long_key, b"3")])
    shard = tmp_path / "store" / hashlib.sha256(b"ns:a").hexdigest()[:2]
    entry = shard / hashlib.sha256(b"ns:a").hexdigest()
    os.mkfifo(shard / ("a" * 64))
    (shard / ("b" * 64)).mkdir()
    (shard / ("c" * 64)).write_bytes(b"not an entry")
    shutil.copy(entry, shard / ("d" * 64))
    (tmp_path / "elsewhere").mkdir()
    os.symlink(entry, shard / ("e" * 64))
    used = {p.name for p in (tmp_path / "store").iterdir()}
    free = next(f"{i:02x}" for i in range(256) if f"{i:02x}" not in used)
    os.symlink(tmp_path / "elsewhere", tmp_path / "store" / free)
    found = sorted(key for keys in store.scan("ns:", 2) for key in keys)
    assert found == sorted(["ns:a", "ns:b", long_key])
    shutil.rmtree(tmp_path / "store")
    with pytest.raises(co.BackendError, match="could not list"):
        list(store.scan("ns:"))


def test_redis_scan_leaves_out_keys_that_are_not_utf8(redis_backend: co.RedisBackend) -> None:
    """A key another program wrote in bytes that are not UTF-8 is not cacheorm's: left out."""
    redis_backend.client.set(b"ns:\xff\xfe", b"x")
    redis_backend.set("ns:ok", b"y")
    assert [key for keys in redis_backend.scan("ns:") for key in keys] == ["ns:ok"]
