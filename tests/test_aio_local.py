"""AsyncMemoryBackend and AsyncFileSystemBackend: construction, sharing, cancellation, errors.

The semantics are the contract's (tests/test_aio_contract.py); these tests cover what the
adapters add: the constructors and ``wrap``, a store shared with sync code, cancelled
filesystem writes (never torn), the worker threads, scans, and ``require_asyncio``.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import os
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

import cacheorm as co
from cacheorm._aio import require_asyncio

ValueOf = Callable[[str, int], bytes]


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` on a fresh asyncio loop."""
    return asyncio.run(coro)


class BlockingClock:
    """A clock whose reads block while ``gate`` is clear: holds a write mid-flight."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.reading = threading.Event()

    def __call__(self) -> float:
        self.reading.set()
        assert self.gate.wait(30), "the test never opened the gate"
        return time.time()


# -- construction -------------------------------------------------------------------


def test_constructors_take_the_sync_keywords(tmp_path: Path) -> None:
    """The constructors accept the sync backends' arguments and apply them."""

    async def main() -> None:
        async with co.AsyncMemoryBackend(max_entries=2) as memory:
            for key in ("a", "b", "c"):
                await memory.set(key, b"v")
            assert await memory.get_many(["a", "b", "c"]) == [None, b"v", b"v"]
            assert len(memory) == 2
            assert memory.sync_backend.max_entries == 2
        files = co.AsyncFileSystemBackend(tmp_path / "s", fsync=True, mode=0o640)
        async with files:
            await files.set("k", b"v")
            assert files.sync_backend.fsync is True
            assert files.sync_backend.mode == 0o640
            assert files.directory == tmp_path / "s"
        assert await files.get("k") == b"v"  # usable after aclose, like the sync one
        await files.aclose()

    run(main())


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda d: co.AsyncMemoryBackend(max_entries=0), ValueError, "max_entries"),
        (lambda d: co.AsyncMemoryBackend(clock=5), TypeError, "clock"),
        (lambda d: co.AsyncFileSystemBackend(d, mode=0o400), co.ConfigurationError, "mode"),
        (lambda d: co.AsyncFileSystemBackend(42), TypeError, "directory"),
        (lambda d: co.AsyncFileSystemBackend(d, max_workers=0), ValueError, "max_workers"),
        (lambda d: co.AsyncFileSystemBackend(d, max_workers=True), ValueError, "max_workers"),
    ],
)
def test_bad_constructor_arguments_raise(
    tmp_path: Path, make: Callable[[Path], object], error: type[Exception], match: str
) -> None:
    """A bad argument raises the sync backend's error (or ValueError for max_workers)."""
    with pytest.raises(error, match=match):
        make(tmp_path)


def test_wrap_takes_only_its_own_sync_class(tmp_path: Path) -> None:
    """wrap() refuses another class, naming both."""
    bad: Any = co.FileSystemBackend(tmp_path)
    with pytest.raises(TypeError, match=r"AsyncMemoryBackend\.wrap\(\) takes a MemoryBackend"):
        co.AsyncMemoryBackend.wrap(bad)
    bad = co.MemoryBackend()
    with pytest.raises(TypeError, match="not MemoryBackend"):
        co.AsyncFileSystemBackend.wrap(bad)


def test_repr_names_the_sync_backend(tmp_path: Path) -> None:
    """repr shows the class and the sync backend it runs on."""
    assert repr(co.AsyncMemoryBackend(max_entries=3)) == (
        "AsyncMemoryBackend(MemoryBackend(max_entries=3, stored=0))"
    )
    files = co.AsyncFileSystemBackend(tmp_path)
    assert (
        repr(files)
        == f"AsyncFileSystemBackend(FileSystemBackend(directory={str(tmp_path)!r}, fsync=False))"
    )


# -- sharing a store with sync code -------------------------------------------------


def test_a_wrapped_memory_backend_is_shared_with_sync_code() -> None:
    """Sync and async code see each other's writes, counters and cas tokens."""
    sync = co.MemoryBackend()
    shared = co.AsyncMemoryBackend.wrap(sync)
    assert shared.sync_backend is sync

    async def main() -> None:
        sync.set("from sync", b"1")
        assert await shared.get("from sync") == b"1"
        await shared.set("from async", b"2", ttl=100)
        assert sync.get("from async") == b"2"
        got = sync.gets("from async")
        assert got is not None
        assert await shared.cas("from async", b"3", got[1], ttl=co.KEEP_TTL) is True
        assert sync.get("from async") == b"3"
        assert sync.incr("n") == 1
        assert await shared.incr("n") == 2
        await shared.aclose()
        assert sync.get("n") == b"2"  # closing the adapter keeps the data

    run(main())


def test_filesystem_backends_share_a_directory(tmp_path: Path) -> None:
    """A sync backend, a wrapped one and another async one on the same directory agree."""
    sync = co.FileSystemBackend(tmp_path)
    wrapped = co.AsyncFileSystemBackend.wrap(sync)
    other = co.AsyncFileSystemBackend(tmp_path)
    assert wrapped.sync_backend is sync
    assert repr(wrapped) == repr(other)

    async def main() -> None:
        sync.set("k", b"sync")
        assert await wrapped.get("k") == b"sync"
        assert await other.add("k", b"async") is False
        assert await other.replace("k", b"async") is True
        assert sync.get("k") == b"async"
        assert await wrapped.counter_add("c", 5, 60) == 5
        assert sync.counter_add("c", 1) == 6
        ttl = sync.ttl_of("c")
        assert ttl is not None
        assert 59 < ttl <= 60
        await wrapped.aclose()
        await other.aclose()

    run(main())


def test_scan_and_purge_expired(tmp_path: Path) -> None:
    """scan lists keys in batches from the worker threads; purge_expired counts what it
    removed; clear empties both stores."""

    async def main() -> None:
        for store in (co.AsyncMemoryBackend(), co.AsyncFileSystemBackend(tmp_path)):
            await store.set_many([(f"s:{i}", b"v") for i in range(23)])
            await store.set("other", b"v")
            batches = [keys async for keys in store.scan("s:", 5)]
            assert sorted(len(keys) for keys in batches) == [3, 5, 5, 5, 5]
            assert sorted(k for keys in batches for k in keys) == sorted(
                f"s:{i}" for i in range(23)
            )
            with pytest.raises(ValueError, match="batch"):
                [keys async for keys in store.scan("s:", 0)]
            with pytest.raises(TypeError, match="keys must be str"):
                [keys async for keys in store.scan(b"s:")]  # type: ignore[arg-type]
            await store.clear()
            assert [keys async for keys in store.scan("")] == []
            await store.aclose()

    run(main())
    clock = FakeTime()
    files = co.AsyncFileSystemBackend(tmp_path, clock=clock)

    async def purge() -> None:
        await files.set_many([("gone:1", b"v"), ("gone:2", b"v")], ttl=1)
        await files.set("kept", b"v")
        clock.now += 2
        assert await files.purge_expired() == 2
        assert [keys async for keys in files.scan("")] == [["kept"]]
        await files.aclose()

    run(purge())


class FakeTime:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def open_fds() -> int:
    """How many file descriptors this process has open."""
    return len(os.listdir("/proc/self/fd"))


def test_leaving_a_scan_early_closes_the_sync_scan(tmp_path: Path) -> None:
    """Breaking out of ``async for`` closes the sync scan (its open directory too)."""

    async def main() -> None:
        store = co.AsyncFileSystemBackend(tmp_path)
        await store.set_many([(f"s:{i}", b"v") for i in range(50)])
        before = open_fds()
        scan = store.scan("s:", 1)
        async for keys in scan:
            assert len(keys) == 1
            assert open_fds() == before + 1  # the shard directory being listed
            break
        await scan.aclose()  # type: ignore[attr-defined]
        assert open_fds() == before
        await store.aclose()

    run(main())


def test_cancelling_a_scan_mid_batch_is_clean(tmp_path: Path) -> None:
    """A task cancelled while its scan lists a shard in a worker thread gets
    CancelledError; the thread finishes, the directory is closed, the store works."""
    clock = BlockingClock()

    async def main() -> None:
        store = co.AsyncFileSystemBackend(tmp_path, clock=clock)
        await store.set_many([(f"s:{i}", b"v") for i in range(50)])
        before = open_fds()
        clock.gate.clear()
        clock.reading.clear()

        async def listing() -> list[list[str]]:
            return [keys async for keys in store.scan("s:", 10)]

        task = asyncio.ensure_future(listing())
        await asyncio.get_running_loop().run_in_executor(None, clock.reading.wait)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        clock.gate.set()
        await store.aclose()  # the cancelled pull has finished in its thread
        gc.collect()
        assert open_fds() == before
        assert sum(len(keys) for keys in [keys async for keys in store.scan("s:")]) == 50
        await store.aclose()

    run(main())


# -- errors -------------------------------------------------------------------------


def test_errors_are_the_sync_backends_own(tmp_path: Path) -> None:
    """A BackendError raised in a worker thread reaches the caller with its key."""

    async def main() -> None:
        for store in (co.AsyncMemoryBackend(), co.AsyncFileSystemBackend(tmp_path)):
            await store.set("text", b"abc")
            with pytest.raises(co.BackendError, match="'text'") as info:
                await store.incr("text")
            assert info.value.key == "text"
            with pytest.raises(co.InvalidTTL):
                await store.add("k", b"v", ttl=co.KEEP_TTL)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="'k'"):
                await store.set("k", "text")  # type: ignore[arg-type]
            await store.aclose()

    run(main())


# -- worker threads and cancellation ------------------------------------------------


def test_filesystem_calls_run_in_worker_threads_with_the_callers_context(tmp_path: Path) -> None:
    """The file I/O runs off the loop thread, in this backend's pool, with the caller's
    context variables."""
    seen: list[tuple[str, str]] = []
    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

    def clock() -> float:
        seen.append((threading.current_thread().name, request_id.get()))
        return time.time()

    async def main() -> None:
        store = co.AsyncFileSystemBackend(tmp_path, clock=clock, max_workers=2)
        request_id.set("r-42")
        await store.set("k", b"v", ttl=10)
        await store.aclose()

    run(main())
    assert seen
    assert all(name.startswith("cacheorm-filesystem") for name, _ in seen)
    assert all(value == "r-42" for _, value in seen)


def test_a_cancelled_write_completes_and_aclose_waits_for_it(tmp_path: Path) -> None:
    """Cancelling a filesystem write that has started leaves it to finish in its thread;
    aclose() waits for it; a write cancelled before a thread took it never runs."""
    clock = BlockingClock()

    async def main() -> None:
        store = co.AsyncFileSystemBackend(tmp_path, clock=clock, max_workers=1)
        await store.set("k", b"old")
        clock.gate.clear()
        clock.reading.clear()
        started = asyncio.ensure_future(store.set("k", b"new"))
        queued = asyncio.ensure_future(store.set("queued", b"never"))
        await asyncio.get_running_loop().run_in_executor(None, clock.reading.wait)
        await asyncio.sleep(0.01)  # the queued call is submitted, waiting for the one thread
        started.cancel()
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await started
        with pytest.raises(asyncio.CancelledError):
            await queued
        closing = asyncio.ensure_future(store.aclose())
        await asyncio.sleep(0.05)
        assert not closing.done()  # the write is still held in its thread
        clock.gate.set()
        await closing
        assert await store.get("k") == b"new"  # it completed after its caller left
        assert await store.get("queued") is None
        await store.aclose()

    run(main())


def test_cancelled_filesystem_writes_are_never_torn(tmp_path: Path) -> None:
    """Thousands of writes of large values, cancelled at random points while readers
    read: every read and the final value of each key is one whole value written to it,
    and no temporary file is left."""
    keys, rounds, tasks_per_round = 8, 100, 24
    size = 64 * 1024

    def value_of(key: str, n: int) -> bytes:
        return (f"[{key} #{n}]".encode() * (size // 8))[:size]

    def whole(key: str, value: bytes | None) -> bool:
        if value is None:
            return True
        n = int(value[len(key) + 3 : value.index(b"]")])
        return value == value_of(key, n)

    counts = run(_cancel_writes(tmp_path, keys, rounds, tasks_per_round, value_of, whole))
    cancelled, finished, started, reads = counts
    assert cancelled + finished == rounds * tasks_per_round
    assert started - finished > 0  # cancelled while their thread was writing
    assert cancelled > started - finished  # and cancelled before a thread took them
    assert finished > 0
    assert reads > 0
    assert list(tmp_path.rglob(".tmp-*")) == []


async def _cancel_writes(
    directory: Path,
    keys: int,
    rounds: int,
    tasks_per_round: int,
    value_of: ValueOf,
    whole: Callable[[str, bytes | None], bool],
) -> tuple[int, int, int, int]:
    rng = random.Random(20261201)
    started = 0

    def clock() -> float:  # read once by each write, in its thread, under the shard lock
        nonlocal started
        started += 1
        return time.time()

    store = co.AsyncFileSystemBackend(directory, clock=clock, max_workers=4)
    readers_store = co.AsyncFileSystemBackend(directory)
    loop = asyncio.get_running_loop()
    names = [f"torn:{i}" for i in range(keys)]
    torn: list[str] = []
    reads = 0
    stop = False

    async def reader() -> None:
        nonlocal reads
        while not stop:
            for name, value in zip(names, await readers_store.get_many(names), strict=True):
                reads += 1
                if not whole(name, value):
                    torn.append(name)

    readers = [loop.create_task(reader()) for _ in range(2)]
    cancelled = finished = n = 0
    for _ in range(rounds):
        writes: list[asyncio.Future[Any]] = []
        for _ in range(tasks_per_round):
            n += 1
            name = rng.choice(names)
            if rng.random() < 0.5:
                write = store.set(name, value_of(name, n))
            else:
                write = store.set_many([(name, value_of(name, n))], ttl=3600)
            task = asyncio.ensure_future(write)
            writes.append(task)
            loop.call_later(rng.uniform(0, 0.02), task.cancel)
        for result in await asyncio.gather(*writes, return_exceptions=True):
            if isinstance(result, asyncio.CancelledError):
                cancelled += 1
            elif isinstance(result, BaseException):
                raise result
            else:
                finished += 1
    stop = True
    await asyncio.gather(*readers)
    await store.aclose()  # every write that started has landed now
    for name, value in zip(names, await store.get_many(names), strict=True):
        assert whole(name, value), name
    await store.aclose()
    await readers_store.aclose()
    assert torn == []
    return cancelled, finished, started, reads


# -- asyncio only -------------------------------------------------------------------


def test_require_asyncio_gives_the_running_loop() -> None:
    """Inside asyncio it returns the running loop."""

    async def main() -> None:
        assert require_asyncio("this test") is asyncio.get_running_loop()

    run(main())


def test_require_asyncio_outside_a_loop_names_the_caller() -> None:
    """Without a running loop it raises ConfigurationError saying what to do."""
    with pytest.raises(co.ConfigurationError, match="this call needs a running asyncio event loop"):
        require_asyncio("this call")


def test_under_trio_the_filesystem_backend_says_to_use_asyncio(tmp_path: Path) -> None:
    """Awaited under trio, AsyncFileSystemBackend raises a ConfigurationError naming trio's
    ways out, before any I/O."""
    trio = pytest.importorskip("trio")
    store = co.AsyncFileSystemBackend(tmp_path)

    async def main() -> None:
        await store.set("k", b"v")

    with pytest.raises(co.ConfigurationError) as info:
        trio.run(main)
    message = str(info.value)
    assert "AsyncFileSystemBackend needs a running asyncio event loop" in message
    assert "anyio's asyncio backend or trio-asyncio" in message
    assert store.sync_backend.get("k") is None


def test_the_backends_run_on_uvloop(tmp_path: Path) -> None:
    """Both backends, and require_asyncio, work on a uvloop event loop."""
    uvloop = pytest.importorskip("uvloop")

    async def main() -> None:
        assert type(require_asyncio("uvloop test")).__module__.startswith("uvloop")
        for store in (co.AsyncMemoryBackend(), co.AsyncFileSystemBackend(tmp_path)):
            async with store:
                await store.set("k", b"v")
                assert await store.get("k") == b"v"
                assert [keys async for keys in store.scan("")] == [["k"]]

    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


def test_scan_is_an_async_iterator() -> None:
    """scan() returns an async iterator without running anything yet."""
    scan = co.AsyncMemoryBackend().scan("")
    assert isinstance(scan, AsyncIterator)
    run(scan.aclose())  # type: ignore[attr-defined]
