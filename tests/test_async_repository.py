"""AsyncRepository: the async driver of the shared core, and what only async code can do.

The broad parity of AsyncRepository with Repository (every operation, on
every backend) is checked by running the sync suites through it
(tests/test_async_parity.py); this file checks the async-only parts: async
loaders, update functions and signal receivers, the single-flight across
tasks, cancellation, and the errors that tell sync and async apart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from pathlib import Path
from typing import Annotated, Any

import pytest

import cacheorm as co


@dataclasses.dataclass
class Item:
    id: Annotated[int, co.Field(primary_key=True)]
    name: str
    count: int = 0


@dataclasses.dataclass
class Auto:
    id: Annotated[int | None, co.Field(primary_key=True, auto=True)]
    name: str


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_crud_round_trip_on_the_default_async_memory_backend() -> None:
    async def main() -> None:
        async with co.AsyncRepository(Item) as items:
            assert isinstance(items.backend, co.AsyncMemoryBackend)
            assert await items.create(Item(1, "a")) == Item(1, "a")
            with pytest.raises(co.AlreadyExists):
                await items.create(Item(1, "b"))
            assert await items.get(1) == Item(1, "a")
            assert await items.get_or_none(2) is None
            assert await items.exists(1)
            assert not await items.exists(2)
            await items.save(Item(2, "b"))
            assert await items.get_many([2, 3, 1]) == [Item(2, "b"), None, Item(1, "a")]
            await items.update(Item(2, "c"))
            with pytest.raises(co.NotFound, match="to update not found"):
                await items.update(Item(9, "x"))
            assert await items.get_or_create(Item(2, "zzz")) == (Item(2, "c"), False)
            assert await items.get_or_create(Item(5, "e")) == (Item(5, "e"), True)
            assert await items.patch(5, name="f", count=2) == Item(5, "f", 2)
            assert await items.delete(5)
            assert not await items.delete(5)
            assert await items.delete_many([1, 2, 3]) == 2
            assert await items.create_many([Item(7, "g"), Item(8, "h")]) == [
                Item(7, "g"),
                Item(8, "h"),
            ]
            with pytest.raises(co.AlreadyExists) as taken:
                await items.create_many([Item(7, "x"), Item(10, "j")])
            assert taken.value.keys == [items.key_for(7)]
            await items.save_many([Item(11, "k")])
            with pytest.raises(co.NotFound) as absent:
                await items.update_many([Item(11, "K"), Item(12, "L")])
            assert absent.value.keys == [items.key_for(12)]
            assert await items.get(11) == Item(11, "K")
            assert items.key_of(Item(11, "K")) == items.key_for(11) == "item:11"
            assert items.pk_of(Item(11, "K")) == 11
            with pytest.raises(co.NotFound, match="item:404"):
                await items.get(404)

    run(main())


def test_auto_ids_and_ttls_follow_the_sync_rules() -> None:
    async def main() -> None:
        autos = co.AsyncRepository(Auto, ttl=60)
        first = await autos.create(Auto(None, "a"))
        second = await autos.create(Auto(None, "b"))
        assert (first.id, second.id) == (1, 2)
        made = await autos.create_many([Auto(None, "c"), Auto(None, "d")])
        assert [a.id for a in made] == [3, 4]
        with pytest.raises(co.InvalidTTL):
            await autos.save(Auto(9, "x"), ttl=-1)
        await autos.aclose()

    run(main())


def test_update_with_takes_sync_and_async_functions_and_counts_exactly() -> None:
    async def main() -> None:
        items = co.AsyncRepository(Item)
        await items.create(Item(1, "a"))

        async def bump_async(item: Item) -> Item:
            await asyncio.sleep(random.random() / 1000)
            return dataclasses.replace(item, count=item.count + 1)

        def bump(item: Item) -> Item:
            return dataclasses.replace(item, count=item.count + 1)

        async def worker(n: int) -> None:
            for i in range(50):
                await items.update_with(1, bump_async if (n + i) % 2 else bump)

        await asyncio.gather(*(worker(n) for n in range(8)))
        assert (await items.get(1)).count == 400

        with pytest.raises(co.ValidationError, match="expected a Item record"):
            await items.update_with(1, lambda item: None)  # type: ignore[arg-type,return-value]

    run(main())


def test_get_or_load_calls_the_loader_once_for_500_tasks() -> None:
    calls = 0

    async def main() -> None:
        nonlocal calls
        items = co.AsyncRepository(Item)

        async def loader() -> Item:
            nonlocal calls
            calls += 1
            await asyncio.sleep(0.05)
            return Item(1, "loaded")

        results = await asyncio.gather(*(items.get_or_load(1, loader) for _ in range(500)))
        assert all(r == Item(1, "loaded") for r in results)
        assert await items.get(1) == Item(1, "loaded")

        def plain() -> Item:
            return Item(2, "plain")

        assert await items.get_or_load(2, plain) == Item(2, "plain")

        async def many(pks: list[Any]) -> list[Item]:
            return [Item(pk, f"m{pk}") for pk in pks if pk != 4]

        loaded = await items.get_or_load_many([2, 3, 4], many)
        assert loaded == [Item(2, "plain"), Item(3, "m3"), None]

    run(main())
    assert calls == 1


def test_a_cancelled_loader_lets_the_waiting_tasks_load_and_frees_the_lease() -> None:
    async def main() -> None:
        backend = co.AsyncMemoryBackend()
        items = co.AsyncRepository(Item, backend=backend)
        started = asyncio.Event()

        async def slow() -> Item:
            started.set()
            await asyncio.sleep(10)
            return Item(1, "slow")

        async def fast() -> Item:
            return Item(1, "fast")

        leader = asyncio.create_task(items.get_or_load(1, slow, lock_timeout=5))
        await started.wait()
        follower = asyncio.create_task(items.get_or_load(1, fast, lock_timeout=5))
        await asyncio.sleep(0.01)
        leader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leader
        assert await asyncio.wait_for(follower, 2) == Item(1, "fast")
        # the leader's lease was released when it was cancelled
        assert await backend.get(items.key_for(1) + "\x00lease") is None

    run(main())


def test_async_signal_receivers_are_awaited_in_order() -> None:
    seen: list[str] = []

    async def main() -> None:
        items = co.AsyncRepository(Item, namespace="signalled_items")

        @items.signals.pre_save.connect
        async def before(event: co.WriteEvent[Item]) -> None:
            await asyncio.sleep(0)
            seen.append(f"pre {event.record.name} {event.repository is items}")

        @items.signals.post_save.connect
        def after(event: co.WriteEvent[Item]) -> None:
            seen.append(f"post {event.record.name}")

        @items.signals.pre_delete.connect
        async def veto(event: co.WriteEvent[Item]) -> None:
            raise PermissionError("no deletes")

        await items.save(Item(1, "a"))
        with pytest.raises(PermissionError):
            await items.delete(1)
        assert await items.get(1) == Item(1, "a")

    run(main())
    assert seen == ["pre a True", "post a"]


def test_the_sync_repository_refuses_async_functions_clearly() -> None:
    items = co.Repository(Item)
    items.create(Item(1, "a"))

    async def bump(item: Item) -> Item:
        return item

    async def loader() -> Item:
        return Item(2, "b")

    async def receiver(event: co.WriteEvent[Item]) -> None:
        return None

    with pytest.raises(co.ConfigurationError, match="async update functions need AsyncRepository"):
        items.update_with(1, bump)  # type: ignore[arg-type]
    with pytest.raises(co.ConfigurationError, match="async loaders need AsyncRepository"):
        items.get_or_load(2, loader)  # type: ignore[arg-type]
    assert items.get_or_none(2) is None
    with pytest.raises(co.ConfigurationError, match="async receiver cannot run on a sync"):
        items.signals.pre_save.connect(receiver)
    # a plain function returning an awaitable is found out when it is called
    items.signals.pre_save.connect(lambda event: receiver(event))
    with pytest.raises(co.ConfigurationError, match="async receivers"):
        items.save(Item(3, "c"))
    assert items.get_or_none(3) is None


def test_backends_of_the_wrong_kind_are_refused_with_the_fix() -> None:
    with pytest.raises(co.ConfigurationError, match=r"sync backend .*MemoryBackend.*AsyncMemory"):
        co.AsyncRepository(Item, backend=co.MemoryBackend())  # type: ignore[arg-type]
    with pytest.raises(co.ConfigurationError, match="expects a backend instance"):
        co.AsyncRepository(Item, backend=co.AsyncMemoryBackend)  # type: ignore[arg-type]
    with pytest.raises(co.ConfigurationError, match="missing async methods"):
        co.AsyncRepository(Item, backend=object())  # type: ignore[arg-type]
    with pytest.raises(co.ConfigurationError):
        co.Repository(Item, backend=co.AsyncMemoryBackend())  # type: ignore[arg-type]
    with pytest.raises(co.ModelDefinitionError):
        co.AsyncRepository(Item(1, "a"))  # type: ignore[arg-type]


def test_hooks_report_async_operations_once() -> None:
    events: list[co.OperationEvent] = []

    async def main() -> None:
        items = co.AsyncRepository(Item, namespace="hooked_items", hooks=[events.append])
        await items.create(Item(1, "a"))
        await items.get_many([1, 2])
        await items.patch(1, name="b")  # nested update_with: reported once, as patch
        with pytest.raises(co.NotFound):
            await items.get(2)

        async def loader(pks: list[Any]) -> list[Item]:
            return [Item(pk, "x") for pk in pks]

        await items.get_or_load_many([1, 3, 4], loader)

    run(main())
    assert [e.operation for e in events] == [
        "create",
        "get_many",
        "patch",
        "get",
        "get_or_load_many",
    ]
    assert (events[1].hits, events[1].misses) == (1, 1)
    assert events[3].outcome == "miss"
    assert events[4].loads == 2
    assert events[0].system == "memory"


def test_cancelling_writes_never_corrupts_or_mixes_records(tmp_path: Path) -> None:
    async def main() -> None:
        items = co.AsyncRepository(Item, backend=co.AsyncFileSystemBackend(tmp_path))
        cancelled = 0

        async def write(i: int) -> None:
            await items.save(Item(i, f"v{i}"))
            await items.update_with(i, lambda item: dataclasses.replace(item, count=item.count + 1))

        for round_ in range(20):
            tasks = [asyncio.create_task(write(round_ * 100 + i)) for i in range(100)]
            await asyncio.sleep(random.random() / 100)
            for task in random.sample(tasks, 30):
                cancelled += task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for item in await items.get_many(range(2000)):
            if item is not None:
                assert item.name == f"v{item.id}"
                assert item.count in (0, 1)
        assert cancelled > 0
        await items.backend.aclose()

    run(main())


@dataclasses.dataclass
class Post:
    id: Annotated[int, co.Field(primary_key=True)]
    author: Annotated[int | None, co.Ref(Item)]


def test_keyspace_operations_references_and_migration_run_async(tmp_path: Path) -> None:
    async def main() -> None:
        backend = co.AsyncFileSystemBackend(tmp_path)
        items = co.AsyncRepository(Item, backend=backend, ttl=100)
        await items.save_many([Item(i, f"n{i}") for i in range(25)])
        assert await items.count(batch=7) == 25
        assert sorted([item.id async for item in items.scan(batch=4)]) == list(range(25))
        assert await items.touch(3, ttl=50)
        assert not await items.touch(99)
        assert await items.touch_many([1, 99], ttl=None) == [True, False]
        assert await items.ttl_of(1) is None
        left = await items.ttl_of(3)
        assert left is not None
        assert 40 < left <= 50
        with pytest.raises(co.NotFound):
            await items.ttl_of(99)
        posts = co.AsyncRepository(Post, backend=backend)
        await posts.save_many([Post(1, 2), Post(2, None), Post(3, 2), Post(4, 77)])
        found = await posts.load_related(await posts.get_many([1, 2, 3]), "author", items)
        assert found == {2: Item(2, "n2")}
        with pytest.raises(co.NotFound, match="author"):
            await posts.load_related(await posts.get_many([4]), "author", items)
        assert await posts.load_related([None], "author", items, missing="none") == {}
        v2 = co.AsyncRepository(
            Item,
            backend=backend,
            version=2,
            upgrades={1: lambda d: {**d, "name": d["name"].upper()}},
        )
        report = await v2.migrate(batch=10)
        assert (report.scanned, report.rewritten) == (25, 25)
        assert (await items.get(4)).name == "N4"
        assert await items.clear(batch=6) == 25
        assert await items.count() == 0
        with pytest.raises(co.ConfigurationError, match="errors must be"):
            items.scan(errors="bogus")  # type: ignore[arg-type]
        await backend.aclose()

    run(main())


def test_generations_and_rewrite_on_read_work_on_the_async_side(tmp_path: Path) -> None:
    async def main() -> None:
        backend = co.AsyncFileSystemBackend(tmp_path)
        items = co.AsyncRepository(Item, backend=backend, generations=True, namespace="gen")
        with pytest.raises(co.ConfigurationError, match="has not been read yet"):
            items.key_for(1)
        await items.save_many([Item(i, "a") for i in range(5)])
        assert items.key_for(1).startswith("gen:1#g")
        other = co.AsyncRepository(Item, backend=backend, generations=True, namespace="gen")
        assert await other.count() == 5
        assert await other.clear() == 5  # a new generation; the old one's records deleted
        assert await other.get_or_none(1) is None
        assert await other.count() == 0
        # a sync repository on the same files sees the same generation
        sync = co.Repository(
            Item, backend=co.FileSystemBackend(tmp_path), generations=True, namespace="gen"
        )
        await other.save(Item(7, "b"))
        assert sync.get(7) == Item(7, "b")

        old = co.AsyncRepository(Item, backend=backend, namespace="ver")
        await old.save(Item(1, "x"))
        new = co.AsyncRepository(
            Item,
            backend=backend,
            namespace="ver",
            version=2,
            upgrades={1: lambda d: {**d, "count": 5}},
            rewrite_on_read=True,
        )
        assert await new.get(1) == Item(1, "x", 5)
        await new.aclose()  # waits for the rewrite task
        raw = await backend.get(new.key_for(1))
        assert raw is not None
        assert b'"~v":2' in raw
        await backend.aclose()

    run(main())


def test_raw_clients_are_refused_with_the_async_backend_to_use() -> None:
    import redis
    import redis.asyncio

    for client in (redis.Redis(), redis.asyncio.Redis()):
        with pytest.raises(co.ConfigurationError, match=r"raw redis\..*AsyncRedisBackend"):
            co.AsyncRepository(Item, backend=client)  # type: ignore[arg-type]


def test_a_get_or_load_cancelled_while_taking_its_lease_frees_it() -> None:
    class SlowAdd(co.AsyncMemoryBackend):
        async def add(self, key: str, value: bytes, /, ttl: float | None = None) -> bool:
            stored = await super().add(key, value, ttl)
            await asyncio.sleep(0.01)  # the add applied; its reply is on its way
            return stored

        async def add_many(self, items: Any, /, ttl: float | None = None) -> list[bool]:
            stored = await super().add_many(items, ttl)
            await asyncio.sleep(0.01)
            return stored

    async def main() -> None:
        backend = SlowAdd()
        items = co.AsyncRepository(Item, backend=backend)

        def loader() -> Item:
            return Item(1, "x")

        def many(pks: list[Any]) -> list[Item]:
            return [Item(pk, "x") for pk in pks]

        one = asyncio.create_task(items.get_or_load(1, loader))
        batch = asyncio.create_task(items.get_or_load_many([2, 3], many))
        await asyncio.sleep(0.005)  # both are inside their lease add
        one.cancel()
        batch.cancel()
        for task in (one, batch):
            with pytest.raises(asyncio.CancelledError):
                await task
        for pk in (1, 2, 3):
            assert await backend.get(items.key_for(pk) + "\x00lease") is None

    run(main())


def test_a_cancellation_during_the_lease_release_frees_it_and_still_cancels() -> None:
    class SlowRelease(co.AsyncMemoryBackend):
        releasing = asyncio.Event()

        async def get(self, key: str, /) -> bytes | None:
            if key.endswith("\x00lease"):
                self.releasing.set()
                await asyncio.sleep(0.02)  # the release's read is in flight
            return await super().get(key)

    async def main() -> None:
        backend = SlowRelease()
        items = co.AsyncRepository(Item, backend=backend)
        task = asyncio.create_task(items.get_or_load(1, lambda: Item(1, "x")))
        await backend.releasing.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task  # the cancellation is delivered, not swallowed
        assert await backend.get(items.key_for(1) + "\x00lease") is None  # and freed
        # a timeout around it is still a timeout
        backend.releasing.clear()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(items.get_or_load(2, lambda: Item(2, "y")), 0.01)
        assert await backend.get(items.key_for(2) + "\x00lease") is None

    run(main())
