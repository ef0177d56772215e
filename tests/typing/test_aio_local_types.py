"""Inferred types of the embedded async backends, checked by ``mypy --strict`` and pyright."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator

from typing_extensions import assert_type

import cacheorm as co


async def check_async_memory_backend_types() -> None:
    async with co.AsyncMemoryBackend(max_entries=10) as store:
        assert_type(store, co.AsyncMemoryBackend)
        assert_type(await store.get("k"), bytes | None)
        assert_type(await store.get_many(["k"]), list[bytes | None])
        assert_type(await store.set("k", b"v", ttl=5), None)
        assert_type(await store.add("k", b"v"), bool)
        assert_type(await store.replace("k", b"v", ttl=co.KEEP_TTL), bool)
        assert_type(await store.delete_many(["k"]), int)
        assert_type(await store.incr("n", 2), int)
        assert_type(await store.gets("k"), tuple[bytes, co.CasToken] | None)
        assert_type(await store.ttl_of("k"), float | None)
        assert_type(await store.counter_add("c", 1, 60), int)
        assert_type(store.scan("k:"), AsyncIterator[list[str]])
        assert_type(store.sync_backend, co.MemoryBackend)
        backend: co.AsyncBackend = store
        ttl: co.AsyncTTLBackend = store
        counter: co.AsyncCounterBackend = store
        scan: co.AsyncScanBackend = store
        del backend, ttl, counter, scan
    shared = co.AsyncMemoryBackend.wrap(co.MemoryBackend())
    assert_type(shared, co.AsyncMemoryBackend)


async def check_async_filesystem_backend_types(path: pathlib.Path) -> None:
    store = co.AsyncFileSystemBackend(path, fsync=True, max_workers=4)
    assert_type(await store.get("k"), bytes | None)
    assert_type(await store.purge_expired(), int)
    assert_type(store.directory, pathlib.Path)
    assert_type(store.sync_backend, co.FileSystemBackend)
    assert_type(
        co.AsyncFileSystemBackend.wrap(co.FileSystemBackend(path)), co.AsyncFileSystemBackend
    )
    async for keys in store.scan("k:"):
        assert_type(keys, list[str])
    await store.aclose()
