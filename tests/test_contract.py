"""The backend contract suite (``cacheorm.testing``) on every built-in backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import cacheorm as co
from cacheorm.testing import BackendContract
from tests.conftest import FakeClock
from tests.servers import MemcachedServer, RedisServer


class TestMemoryBackend(BackendContract):
    """MemoryBackend, with a fake clock so TTL tests do not sleep."""

    capabilities = frozenset({"ttl", "counter", "scan"})

    clock: FakeClock

    @pytest.fixture
    def backend(self) -> Iterator[co.Backend]:
        """An empty MemoryBackend on a fake clock."""
        self.clock = FakeClock()
        store = co.MemoryBackend(clock=self.clock)
        yield store
        store.close()

    def wait(self, seconds: float) -> None:
        """Move the fake clock instead of sleeping."""
        self.clock.advance(seconds)


class TestFileSystemBackend(BackendContract):
    """FileSystemBackend in a fresh directory, with a fake clock."""

    capabilities = frozenset({"ttl", "counter", "scan"})

    clock: FakeClock

    @pytest.fixture
    def backend(self, tmp_path: Path) -> Iterator[co.Backend]:
        """An empty FileSystemBackend on a fake clock."""
        self.clock = FakeClock(start=1_800_000_000.0)
        store = co.FileSystemBackend(tmp_path / "store", clock=self.clock)
        yield store
        store.close()

    def wait(self, seconds: float) -> None:
        """Move the fake clock instead of sleeping."""
        self.clock.advance(seconds)


class TestRedisBackend(BackendContract):
    """RedisBackend on this session's redis-server; TTLs really expire."""

    capabilities = frozenset({"ttl", "counter", "scan"})

    @pytest.fixture
    def backend(self, redis_server: RedisServer) -> Iterator[co.Backend]:
        """A RedisBackend on a flushed database."""
        store = co.RedisBackend.from_url(redis_server.url)
        store.client.flushdb()
        yield store
        store.close()


class TestMemcachedBackend(BackendContract):
    """MemcachedBackend on this session's memcached; TTLs really expire.

    memcached counts whole seconds, and cacheorm sends ``ceil(ttl) + 1``: a key may
    outlive its TTL by up to 2 s.
    """

    expiry_slack = 2.0
    capabilities = frozenset({"ttl", "counter"})  # memcached cannot enumerate keys
    ttl_precision = 2.0  # whole seconds, and cacheorm sends ceil(ttl) + 1

    @pytest.fixture
    def backend(self, memcached_server: MemcachedServer) -> Iterator[co.Backend]:
        """A MemcachedBackend on a flushed memcached."""
        store = co.MemcachedBackend.from_servers(memcached_server.servers)
        store.client.flush_all(noreply=False)
        yield store
        store.close()
