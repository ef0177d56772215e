"""The embedded async backends: the memory and filesystem stores, awaited.

Both are one adapter, :class:`_AsyncAdapter`, over the sync backend of the same
store: every method awaits the sync method of the same name through one
``_call`` hook, so the semantics, validation, errors and TTL rules are the sync
backend's own, written once. :class:`AsyncMemoryBackend` runs the call inline
(a dictionary under a lock never blocks the event loop);
:class:`AsyncFileSystemBackend` runs it in a worker thread.
"""

# pyright: reportPrivateUsage=false

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, ClassVar, Generic, Protocol, TypeVar

from typing_extensions import ParamSpec, Self

from cacheorm._aio import require_asyncio
from cacheorm._backend import (
    AsyncClosing,
    Backend,
    CasToken,
    CounterBackend,
    ScanBackend,
    TTLBackend,
)
from cacheorm._filesystem import _DEFAULT_MODE, FileSystemBackend
from cacheorm._memory import MemoryBackend
from cacheorm._ttl import BackendTTL

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["AsyncFileSystemBackend", "AsyncMemoryBackend"]

_P = ParamSpec("_P")
_R = TypeVar("_R")


class _SyncStore(Backend, TTLBackend, CounterBackend, ScanBackend, Protocol):
    """What the adapter wraps: a sync backend with every capability, and ``clear``."""

    def clear(self) -> None:
        """Remove every entry."""
        ...


_S = TypeVar("_S", bound=_SyncStore)


def _next_batch(batches: Iterator[list[str]]) -> list[str] | None:
    """The next batch of a sync scan, or None at its end (StopIteration cannot cross a future)."""
    return next(batches, None)


class _AsyncAdapter(AsyncClosing, Generic[_S]):
    """The async protocols over a sync backend: each method awaits ``_call(sync method)``.

    A subclass names the sync class it wraps (``_wraps``) and says how a call
    runs (``_call``); everything else is here, once.
    """

    _wraps: ClassVar[type]
    _sync: _S

    def _attach(self, backend: _S) -> None:
        """Adopt ``backend`` as the store this object awaits."""
        self._sync = backend

    @classmethod
    def wrap(cls, backend: _S) -> Self:
        """An async backend on an existing sync one: both see and write the same data.

        Sync and async code in one process then share one store (and, for the
        filesystem, one object with its options). Closing either leaves the
        data in place.

        Args:
            backend: the sync backend to share.

        Raises:
            TypeError: ``backend`` is not an instance of the sync class this wraps.
        """
        if not isinstance(backend, cls._wraps):
            raise TypeError(
                f"{cls.__name__}.wrap() takes a {cls._wraps.__name__}, not {type(backend).__name__}"
            )
        adapter = cls.__new__(cls)
        adapter._attach(backend)
        return adapter

    @property
    def sync_backend(self) -> _S:
        """The sync backend whose store this one shares (the object calls run on)."""
        return self._sync

    def __repr__(self) -> str:
        """The class and the sync backend it runs on."""
        return f"{type(self).__name__}({self._sync!r})"

    async def _call(self, fn: Callable[_P, _R], /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        """Run one sync backend call and give its result (or raise its error)."""
        raise NotImplementedError

    # -- AsyncBackend -----------------------------------------------------------

    async def get(self, key: str, /) -> bytes | None:
        """The value under ``key``, or None if absent or expired."""
        return await self._call(self._sync.get, key)

    async def get_many(self, keys: Sequence[str], /) -> list[bytes | None]:
        """The values under ``keys``, in the same order, None where absent or expired."""
        return await self._call(self._sync.get_many, keys)

    async def set(self, key: str, value: bytes, /, ttl: float | None = None) -> None:
        """Store ``value`` under ``key``, replacing any value and TTL it had."""
        await self._call(self._sync.set, key, value, ttl)

    async def set_many(
        self, items: Sequence[tuple[str, bytes]], /, ttl: float | None = None
    ) -> None:
        """Store every ``(key, value)`` pair; nothing is stored if a value is not bytes."""
        await self._call(self._sync.set_many, items, ttl)

    async def add(self, key: str, value: bytes, /, ttl: float | None = None) -> bool:
        """Store only if ``key`` is absent or expired; True if stored."""
        return await self._call(self._sync.add, key, value, ttl)

    async def add_many(
        self, items: Sequence[tuple[str, bytes]], /, ttl: float | None = None
    ) -> list[bool]:
        """``add`` for each pair, in order; a later pair sees earlier ones."""
        return await self._call(self._sync.add_many, items, ttl)

    async def replace(self, key: str, value: bytes, /, ttl: BackendTTL = None) -> bool:
        """Store only if ``key`` holds a live value; True if stored (``KEEP_TTL`` keeps its TTL)."""
        return await self._call(self._sync.replace, key, value, ttl)

    async def replace_many(
        self, items: Sequence[tuple[str, bytes]], /, ttl: BackendTTL = None
    ) -> list[bool]:
        """``replace`` for each pair, in order (``KEEP_TTL`` keeps each entry's TTL)."""
        return await self._call(self._sync.replace_many, items, ttl)

    async def delete(self, key: str, /) -> bool:
        """Remove ``key``; True if it held a live value."""
        return await self._call(self._sync.delete, key)

    async def delete_many(self, keys: Sequence[str], /) -> int:
        """Remove ``keys``; the number that held a live value."""
        return await self._call(self._sync.delete_many, keys)

    async def exists(self, key: str, /) -> bool:
        """True if ``key`` holds a live value."""
        return await self._call(self._sync.exists, key)

    async def incr(self, key: str, delta: int = 1, /) -> int:
        """Add ``delta`` to the ASCII counter under ``key`` (0 if absent); the new value."""
        return await self._call(self._sync.incr, key, delta)

    async def gets(self, key: str, /) -> tuple[bytes, CasToken] | None:
        """The value and a token for :meth:`cas`, or None if absent or expired."""
        return await self._call(self._sync.gets, key)

    async def cas(self, key: str, value: bytes, token: CasToken, /, ttl: BackendTTL = None) -> bool:
        """Store ``value`` only if ``key`` is unchanged since ``gets`` gave ``token``."""
        return await self._call(self._sync.cas, key, value, token, ttl)

    async def aclose(self) -> None:
        """Release what the adapter holds; the sync backend and its data stay usable."""

    # -- AsyncTTLBackend, AsyncCounterBackend, AsyncScanBackend -----------------

    async def touch(self, key: str, /, ttl: float | None = None) -> bool:
        """Give the live value under ``key`` a new TTL (None: no expiry); True if it existed."""
        return await self._call(self._sync.touch, key, ttl)

    async def touch_many(self, keys: Sequence[str], /, ttl: float | None = None) -> list[bool]:
        """``touch`` each key, in order."""
        return await self._call(self._sync.touch_many, keys, ttl)

    async def ttl_of(self, key: str, /) -> float | None:
        """Seconds ``key`` has left: ``math.inf`` if it never expires, None if it is absent."""
        return await self._call(self._sync.ttl_of, key)

    async def counter_add(self, key: str, delta: int, /, ttl: float | None = None) -> int:
        """Add ``delta`` to the counter under ``key``, never below 0; TTL set at creation."""
        return await self._call(self._sync.counter_add, key, delta, ttl)

    async def scan(self, prefix: str, /, batch: int = 500) -> AsyncIterator[list[str]]:
        """The live keys starting with ``prefix``, ``batch`` at a time, as an async iterator.

        Each batch is one call (for the filesystem, one trip to a worker
        thread); leaving the loop early closes the sync scan.
        """
        batches = await self._call(self._sync.scan, prefix, batch)
        pulling = False
        try:
            while True:
                pulling = True
                keys = await self._call(_next_batch, batches)
                pulling = False
                if keys is None:
                    return
                yield keys
        finally:
            # A pull cancelled mid-flight may still be running the sync scan in its
            # thread: closing it now would collide; it is closed when dropped instead.
            close = getattr(batches, "close", None)
            if close is not None and not pulling:
                await self._call(close)

    # -- extras -------------------------------------------------------------------

    async def clear(self) -> None:
        """Remove every entry."""
        await self._call(self._sync.clear)


class AsyncMemoryBackend(_AsyncAdapter[MemoryBackend]):
    """:class:`~cacheorm.MemoryBackend`, awaited: an in-process LRU dictionary with TTL.

    Every call runs inline on the event loop: the store is a dictionary under
    a lock, so a call never waits on I/O, and a cancelled call either did not
    start or completed. It implements ``AsyncBackend`` and the
    TTL, counter and scan capabilities, with the sync backend's semantics and
    errors. ``AsyncMemoryBackend.wrap(memory_backend)`` shares an existing
    :class:`~cacheorm.MemoryBackend` (say, one that sync code in the same
    process uses) instead of creating one. Use it with ``async with`` or
    ``await aclose()``; closing leaves the data readable.

    Args:
        max_entries: evict the least recently used entry to stay at most this
            many entries; None for no limit.
        clock: a zero-argument callable returning seconds, used for TTLs;
            ``time.monotonic`` by default.

    Raises:
        ValueError: ``max_entries`` is not a positive int or None.
        TypeError: ``clock`` is not callable.
    """

    _wraps = MemoryBackend

    def __init__(
        self, max_entries: int | None = None, clock: Callable[[], float] | None = None
    ) -> None:
        self._attach(MemoryBackend(max_entries, clock))

    async def _call(self, fn: Callable[_P, _R], /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        return fn(*args, **kwargs)

    def __len__(self) -> int:
        """The number of live entries."""
        return len(self._sync)


class AsyncFileSystemBackend(_AsyncAdapter[FileSystemBackend]):
    """:class:`~cacheorm.FileSystemBackend`, awaited: one file per key, file I/O off the loop.

    Each call runs the sync backend's method in a worker thread of a
    ``concurrent.futures.ThreadPoolExecutor`` that this backend owns (not the
    loop's default executor), so the event loop never waits on the disk;
    ``scan`` fetches each batch that way too. Calls need a running asyncio
    loop (uvloop works): under trio they raise :class:`~cacheorm.ConfigurationError`.

    Cancelling a call (``task.cancel()``, a timeout) cancels the wait, not the
    write: a call that has started in its thread runs to its end, and since
    every write is a temporary file renamed over the entry under the shard's
    lock, a reader sees the old value or the new one, never a torn file. A
    call cancelled before its thread picked it up never runs. :meth:`aclose`
    waits for the calls still running, so after it every cancelled write has
    landed or not happened; the store stays usable afterwards (a new pool
    starts on the next call), like the sync backend after ``close()``.

    The data is shared with every process and every backend, sync or async, on
    the same directory; ``AsyncFileSystemBackend.wrap(filesystem_backend)``
    reuses an existing :class:`~cacheorm.FileSystemBackend` object. The
    constructor does what the sync one does (create the directory, remove
    dead writers' temporary files) right away, on the calling thread.

    Args:
        directory: where the entries live; created if missing.
        clock: a zero-argument callable returning wall-clock seconds, used for
            TTLs; ``time.time`` by default.
        fsync: also ``fsync`` each written file and its directory.
        mode: permission bits of the files the store creates (``0o600``).
        remove_orphans: remove temporary files of dead writers now.
        max_workers: threads in this backend's pool; None for
            ``concurrent.futures``' default (``min(32, CPUs + 4)``).

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: ``max_workers`` is not a positive int or None.
        ConfigurationError: the platform has no ``fcntl``, or ``mode`` is not
            permission bits that let the owner read and write.
        BackendError: the directory cannot be created or listed.
    """

    _wraps = FileSystemBackend
    _max_workers: int | None = None

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        clock: Callable[[], float] | None = None,
        fsync: bool = False,
        mode: int = _DEFAULT_MODE,
        remove_orphans: bool = True,
        max_workers: int | None = None,
    ) -> None:
        if max_workers is not None and (
            isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1
        ):
            raise ValueError(f"max_workers must be a positive int or None, not {max_workers!r}")
        self._attach(
            FileSystemBackend(
                directory, clock=clock, fsync=fsync, mode=mode, remove_orphans=remove_orphans
            )
        )
        self._max_workers = max_workers

    def _attach(self, backend: FileSystemBackend) -> None:
        super()._attach(backend)
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    @property
    def directory(self) -> Path:
        """The absolute path of the store directory."""
        return self._sync.directory

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    self._max_workers, thread_name_prefix="cacheorm-filesystem"
                )
            return self._pool

    async def _call(self, fn: Callable[_P, _R], /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        require_asyncio(type(self).__name__)
        bound = functools.partial(fn, *args, **kwargs)
        future = self._executor().submit(contextvars.copy_context().run, bound)
        return await asyncio.wrap_future(future)

    async def aclose(self) -> None:
        """Wait for the calls still running in worker threads, then stop the threads.

        Cancelling this wait leaves the threads to finish on their own.
        """
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.shield(asyncio.get_running_loop().run_in_executor(None, pool.shutdown))

    async def purge_expired(self) -> int:
        """Remove expired entries (and dead writers' temporary files); how many entries.

        See :meth:`cacheorm.FileSystemBackend.purge_expired`.
        """
        return await self._call(self._sync.purge_expired)
