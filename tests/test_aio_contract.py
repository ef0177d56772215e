"""The backend contract suite on every async backend (``cacheorm.testing.AsyncBackendContract``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import cacheorm as co
from cacheorm.testing import AsyncBackendContract, Portal
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


# -- a third-party async backend ------------------------------------------------------------

THIRD_PARTY = """
import pytest
import cacheorm as co
from cacheorm.testing import AsyncBackendContract


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class ContractOnAsyncMemory(AsyncBackendContract):
    @pytest.fixture
    def make_backend(self):
        self.clock = Clock()

        async def make():
            return self.make(self.clock)

        return make

    def make(self, clock):
        return co.AsyncMemoryBackend(clock=clock)

    def wait(self, seconds):
        self.clock.now += seconds
"""


def test_a_correct_third_party_async_backend_passes(pytester: pytest.Pytester) -> None:
    """A subclass whose async factory builds a correct backend passes every test."""
    pytester.makeconftest(THIRD_PARTY)
    pytester.makepyfile(
        """
        from conftest import ContractOnAsyncMemory

        class TestMine(ContractOnAsyncMemory):
            pass
        """
    )
    result = pytester.runpytest("-q", "-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0
    assert outcomes["passed"] >= 70


def test_an_async_backend_whose_replies_cross_fails(pytester: pytest.Pytester) -> None:
    """A backend that answers a get with the previous get's reply fails the suite,
    the cancellation test included."""
    pytester.makeconftest(THIRD_PARTY)
    pytester.makepyfile(
        """
        import asyncio
        import cacheorm as co
        from conftest import ContractOnAsyncMemory


        class Crossed(co.AsyncMemoryBackend):
            last = None

            async def get(self, key, /):
                await asyncio.sleep(0)
                reply, self.last = self.last, await super().get(key)
                return reply if reply is not None else self.last


        class TestCrossed(ContractOnAsyncMemory):
            def make(self, clock):
                return Crossed(clock=clock)
        """
    )
    result = pytester.runpytest("-q", "-p", "no:cacheprovider")
    assert result.parseoutcomes()["failed"] > 5
    result.stdout.fnmatch_lines(["*test_cancelled_calls_never_see_another_calls_reply*"])


def test_make_backend_must_be_given_and_build_an_async_backend(pytester: pytest.Pytester) -> None:
    """No make_backend fixture, or one building a sync backend, is an error naming the class."""
    pytester.makepyfile(
        """
        import pytest
        import cacheorm as co
        from cacheorm.testing import AsyncBackendContract


        class TestForgot(AsyncBackendContract):
            pass


        class TestSync(AsyncBackendContract):
            @pytest.fixture
            def make_backend(self):
                return co.MemoryBackend
        """
    )
    result = pytester.runpytest("-q", "-p", "no:cacheprovider", "-k", "test_get_of_a_missing_key")
    assert result.parseoutcomes()["errors"] == 2
    result.stdout.fnmatch_lines(
        [
            "*TestForgot must define a `make_backend` fixture*",
            "*TestSync.make_backend built a MemoryBackend, which is not an AsyncBackend*",
        ]
    )


def test_the_async_backend_fixture_gives_an_empty_backend_on_the_portal(
    async_backend: co.AsyncBackend, portal: Portal
) -> None:
    """``async_backend`` (tests/conftest.py) is empty and usable on ``portal``'s loop."""
    backend = portal.wrap(async_backend)
    assert backend.get_many(["k", "counter"]) == [None, None]
    backend.set("k", b"v")
    assert backend.get("k") == b"v"
    assert portal.call(async_backend.incr("counter", 3)) == 3
