"""The backend contract suite on every async backend (``cacheorm.testing.AsyncBackendContract``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from cacheorm.testing import AsyncBackendContract
from tests.conftest import FakeClock, async_backend_maker


class _FakeClockContract(AsyncBackendContract):
    """An embedded backend on a fake clock, so TTL tests do not sleep."""

    capabilities = frozenset({"ttl", "counter", "scan"})
    kind: str
    clock: FakeClock

    @pytest.fixture
    def make_backend(self, request: pytest.FixtureRequest) -> Callable[[], Any]:
        """The backend of ``kind``, on a fresh fake clock."""
        self.clock = FakeClock(start=1_800_000_000.0)
        return async_backend_maker(request, self.kind, self.clock)

    def wait(self, seconds: float) -> None:
        """Move the fake clock instead of sleeping."""
        self.clock.advance(seconds)


class TestAsyncMemoryBackend(_FakeClockContract):
    """AsyncMemoryBackend."""

    kind = "memory"


class TestAsyncFileSystemBackend(_FakeClockContract):
    """AsyncFileSystemBackend in a fresh directory."""

    kind = "filesystem"


class _ServerContract(AsyncBackendContract):
    """An async backend on this session's servers; TTLs really expire."""

    kind: str

    @pytest.fixture
    def make_backend(self, request: pytest.FixtureRequest) -> Callable[[], Any]:
        """The backend of ``kind`` on flushed servers."""
        return async_backend_maker(request, self.kind)


class TestAsyncRedisBackend(_ServerContract):
    """AsyncRedisBackend on one redis-server."""

    kind = "redis"
    capabilities = frozenset({"ttl", "counter", "scan"})


class TestAsyncRedisClusterBackend(_ServerContract):
    """AsyncRedisBackend on the 3-node Redis Cluster."""

    kind = "redis_cluster"
    capabilities = frozenset({"ttl", "counter", "scan"})


class TestAsyncMemcachedBackend(_ServerContract):
    """AsyncMemcachedBackend on one memcached (whole-second TTLs, ``ceil(ttl) + 1`` sent)."""

    kind = "memcached"
    capabilities = frozenset({"ttl", "counter"})  # memcached cannot enumerate keys
    expiry_slack = 2.0
    ttl_precision = 2.0


class TestAsyncMemcachedPoolBackend(TestAsyncMemcachedBackend):
    """AsyncMemcachedBackend on the 3-server pool."""

    kind = "memcached_pool"
