"""``Repository.migrate`` and rewrite on read: walks, reports, resumes, loses no write."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

import pytest

import cacheorm as co
from cacheorm._versions import FAILURES_KEPT, REWRITE_ATTEMPTS
from tests.conftest import FakeClock

PK = Annotated[int, co.Field(primary_key=True)]


@dataclasses.dataclass
class Item:
    id: PK
    qty: int


@dataclasses.dataclass
class ItemV2:
    id: PK
    qty: str


def _qty_to_str(data: dict[str, Any]) -> dict[str, Any]:
    data["qty"] = str(data["qty"])
    return data


def _new(backend: co.Backend, **kw: Any) -> co.Repository[ItemV2]:
    return co.Repository(
        ItemV2,
        backend=backend,
        namespace="item",
        serializer="msgpack",
        read_also=["json"],
        version=2,
        upgrades={1: _qty_to_str},
        **kw,
    )


def _old(backend: co.Backend) -> co.Repository[Item]:
    return co.Repository(Item, backend=backend, namespace="item", serializer="json")


def test_migrate_rewrites_stale_records_and_reports(backend: co.Backend) -> None:
    """Old-format records are rewritten, current ones only read, bad ones named; re-run: no-op."""
    old, new = _old(backend), _new(backend)
    if isinstance(backend, co.MemcachedBackend):
        with pytest.raises(co.ConfigurationError, match="Memcached cannot enumerate keys"):
            new.migrate()
        return
    old.save_many([Item(i, i) for i in range(7)])
    new.save(ItemV2(100, "hundred"))
    backend.set("item:666", b"\x00not a record")
    seen: list[co.MigrationReport] = []
    report = new.migrate(batch=3, progress=seen.append)
    assert (report.scanned, report.rewritten, report.current, report.failed) == (9, 7, 1, 1)
    assert report.failures[0][0] == "item:666"
    assert "item:666" in report.failures[0][1]
    assert seen
    assert seen[-1] == report
    assert [r.scanned for r in seen] == sorted(r.scanned for r in seen)
    # Every record is now in the new format: a reader without read_also reads them all.
    plain = co.Repository(
        ItemV2, backend=backend, namespace="item", serializer="msgpack", version=2
    )
    assert plain.get_many(range(7)) == [ItemV2(i, str(i)) for i in range(7)]
    assert backend.get("item:666") == b"\x00not a record"  # left as it was
    again = new.migrate()
    assert (again.scanned, again.rewritten, again.current, again.failed) == (9, 0, 8, 1)


def test_migrate_keeps_a_record_written_during_the_rewrite(backend: co.Backend) -> None:
    """A write landing between migrate's read and its compare-and-set wins; it is then migrated."""
    old = _old(backend)
    writes: list[int] = []

    def racing_upgrade(data: dict[str, Any]) -> dict[str, Any]:
        if not writes:  # old code still running writes the record again, once
            writes.append(1)
            old.save(Item(1, 99))
        return _qty_to_str(data)

    new = co.Repository(
        ItemV2,
        backend=backend,
        namespace="item",
        serializer="msgpack",
        read_also=["json"],
        version=2,
        upgrades={1: racing_upgrade},
    )
    old.save(Item(1, 5))
    if isinstance(backend, co.MemcachedBackend):
        with pytest.raises(co.ConfigurationError, match="Memcached cannot enumerate keys"):
            new.migrate()
        assert old.get(1) == Item(1, 5)  # refused before anything was read or written
        return
    report = new.migrate()
    assert writes == [1]
    assert (report.rewritten, report.failed) == (1, 0)
    assert new.get(1) == ItemV2(1, "99")  # the concurrent write, upgraded; not the 5 read first


def test_rewrite_on_read_never_overwrites_a_concurrent_write(backend: co.Backend) -> None:
    """The read returns what it read; the stored record is the concurrent write, untouched."""
    old = _old(backend)
    new_writer = _new(backend)

    def racing_upgrade(data: dict[str, Any]) -> dict[str, Any]:
        new_writer.save(ItemV2(1, "written meanwhile"))
        return _qty_to_str(data)

    reader = co.Repository(
        ItemV2,
        backend=backend,
        namespace="item",
        serializer="msgpack",
        read_also=["json"],
        version=2,
        upgrades={1: racing_upgrade},
        rewrite_on_read=True,
    )
    old.save(Item(1, 5))
    assert reader.get(1) == ItemV2(1, "5")
    assert new_writer.get(1) == ItemV2(1, "written meanwhile")


def test_rewrite_on_read_keeps_the_ttl(clock: FakeClock) -> None:
    """The rewrite keeps the record's remaining TTL (compare-and-set with KEEP_TTL)."""
    backend = co.MemoryBackend(clock=clock)
    old = co.Repository(Item, backend=backend, namespace="item", serializer="json", ttl=100)
    new = _new(backend, rewrite_on_read=True)
    old.save(Item(1, 5))
    clock.advance(60)
    assert new.get(1) == ItemV2(1, "5")
    assert backend.get("item:1") != old.serializer.dumps({"id": 1, "qty": 5})
    clock.advance(39)
    assert new.get_or_none(1) == ItemV2(1, "5")
    clock.advance(2)
    assert new.get_or_none(1) is None


def test_migrate_keeps_the_ttl(clock: FakeClock) -> None:
    """Migrated records expire when they would have."""
    backend = co.MemoryBackend(clock=clock)
    old = co.Repository(Item, backend=backend, namespace="item", serializer="json", ttl=100)
    new = _new(backend)
    old.save(Item(1, 5))
    clock.advance(60)
    assert new.migrate().rewritten == 1
    clock.advance(41)
    assert new.get_or_none(1) is None


class _FlakyCas(co.MemoryBackend):
    """A memory backend whose record is rewritten by 'another process' before every cas."""

    def __init__(self, old: list[co.Repository[Item]]) -> None:
        super().__init__()
        self.old = old
        self.n = 0

    def cas(self, key: str, value: bytes, token: Any, /, ttl: Any = None) -> bool:
        self.n += 1
        self.old[0].save(Item(1, self.n))  # the old format again
        return super().cas(key, value, token, ttl=ttl)


def test_migrate_gives_up_on_a_record_that_keeps_changing() -> None:
    """A record rewritten by others on every attempt is reported, not looped on forever."""
    holder: list[co.Repository[Item]] = []
    backend = _FlakyCas(holder)
    holder.append(_old(backend))
    holder[0].save(Item(1, 0))
    report = _new(backend).migrate()
    assert report.failed == 1
    assert backend.n == REWRITE_ATTEMPTS
    assert "changed 10 times" in report.failures[0][1]
    assert _new(backend).get(1) == ItemV2(1, str(REWRITE_ATTEMPTS))


def test_migrate_counts_vanished_records() -> None:
    """A record deleted between the scan and the read is counted, not failed."""

    class Vanishing(co.MemoryBackend):
        def get_many(self, keys: Any, /) -> list[bytes | None]:
            self.delete_many(list(keys))
            return super().get_many(keys)

    backend = Vanishing()
    _old(backend).save(Item(1, 1))
    report = _new(backend).migrate()
    assert (report.scanned, report.vanished, report.failed) == (1, 1, 0)


def test_migrate_names_at_most_failures_kept() -> None:
    backend = co.MemoryBackend()
    for i in range(FAILURES_KEPT + 5):
        backend.set(f"item:{i}", b"\x01")
    report = _new(backend).migrate()
    assert report.failed == FAILURES_KEPT + 5
    assert len(report.failures) == FAILURES_KEPT


def test_migrate_reports_a_record_under_the_wrong_key() -> None:
    backend = co.MemoryBackend()
    old = _old(backend)
    old.save(Item(1, 1))
    backend.set("item:2", backend.get("item:1") or b"")
    report = _new(backend).migrate()
    assert report.failed == 1
    assert report.failures[0][0] == "item:2"
    assert "wrong key" in report.failures[0][1]


def test_migrate_on_a_repository_without_versions_counts_current() -> None:
    backend = co.MemoryBackend()
    repo = _old(backend)
    repo.save(Item(1, 1))
    backend.set("item:2", b"{")
    report = repo.migrate()
    assert (report.current, report.failed, report.rewritten) == (1, 1, 0)


def test_migrate_refuses_a_progress_that_is_not_callable() -> None:
    with pytest.raises(co.ConfigurationError, match="progress"):
        _new(co.MemoryBackend()).migrate(progress=3)  # type: ignore[arg-type]


def test_a_failed_rewrite_is_logged_and_the_read_still_succeeds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class NoCas(co.MemoryBackend):
        def gets(self, key: str, /) -> Any:
            raise co.BackendUnavailable("down for the test")

    backend = NoCas()
    _old(backend).save(Item(1, 1))
    assert _new(backend, rewrite_on_read=True).get(1) == ItemV2(1, "1")
    assert "could not rewrite 'item:1'" in caplog.text


def test_migrate_reports_a_rewrite_that_fails() -> None:
    class NoCas(co.MemoryBackend):
        def gets(self, key: str, /) -> Any:
            raise co.BackendUnavailable("down for the test")

    backend = NoCas()
    _old(backend).save(Item(1, 1))
    report = _new(backend).migrate()
    assert report.failed == 1
    assert "down for the test" in report.failures[0][1]
