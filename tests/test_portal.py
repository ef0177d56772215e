"""``cacheorm.testing.Portal``: blocking calls into an event loop in a background thread."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, runtime_checkable

import pytest

from cacheorm.testing import Portal


class Thing:
    """An async object with every kind of method the proxy handles."""

    label = "a thing"

    def __init__(self) -> None:
        self.closed = 0
        self.finished: list[str] = []
        self.loops: set[int] = set()

    async def double(self, x: int, *, plus: int = 0) -> int:
        self.loops.add(id(asyncio.get_running_loop()))
        await asyncio.sleep(0)
        return 2 * x + plus

    async def fail(self) -> None:
        raise KeyError("from the loop")

    def plain(self) -> str:
        return threading.current_thread().name

    async def count(self, n: int) -> AsyncIterator[int]:
        try:
            for i in range(n):
                yield i
        finally:
            self.finished.append(f"count({n})")

    async def aclose(self) -> None:
        self.closed += 1


@runtime_checkable
class Doubling(Protocol):
    def double(self, x: int, *, plus: int = 0) -> int: ...


@pytest.fixture
def portal() -> Any:
    with Portal(name="test-portal") as running:
        yield running


def test_call_runs_on_the_loop_thread_and_returns_or_raises(portal: Portal) -> None:
    """call() gives the coroutine's result, or raises its exception."""

    async def where() -> str:
        return threading.current_thread().name

    assert portal.call(where()) == "test-portal"
    with pytest.raises(KeyError, match="from the loop"):
        portal.call(Thing().fail())
    assert portal.loop.is_running()
    assert repr(portal) == "Portal(_UnixSelectorEventLoop, running)"


def test_calls_from_many_threads_share_the_loop(portal: Portal) -> None:
    """Threads calling at once run concurrently on the one loop."""
    thing = Thing()
    entered = asyncio.Event()

    async def meet(i: int) -> int:
        if i == 7:
            entered.set()
        await asyncio.wait_for(entered.wait(), 10)  # every call waits for the last one
        return await thing.double(i)

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(lambda i: portal.call(meet(i)), range(8))) == [2 * i for i in range(8)]
    assert len(thing.loops) == 1


def test_call_from_the_loop_thread_is_refused(portal: Portal) -> None:
    """A call from the portal's own thread would deadlock: RuntimeError, and the
    coroutine is closed (no 'never awaited' warning)."""

    async def nested() -> str:
        inner = Thing().double(1)
        with pytest.raises(RuntimeError, match="would wait forever"):
            portal.call(inner)
        with pytest.raises(RuntimeError, match="from outside"):
            portal.close()
        return "refused"

    assert portal.call(nested()) == "refused"


def test_a_timeout_cancels_the_call(portal: Portal) -> None:
    """call(timeout=...) raises TimeoutError and cancels the coroutine."""
    cancelled = threading.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(TimeoutError):
        portal.call(slow(), timeout=0.05)
    assert cancelled.wait(5)


def test_close_cancels_what_runs_and_is_idempotent() -> None:
    """close() cancels pending tasks, finishes async generators and stops the thread;
    afterwards call() refuses (closing the coroutine), and close() again does nothing."""
    portal = Portal()
    cancelled = threading.Event()
    thing = Thing()

    async def forever() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def start() -> AsyncIterator[int]:
        asyncio.get_running_loop().create_task(forever())
        counting = thing.count(5)
        assert await counting.__anext__() == 0
        return counting

    counting = portal.call(start())
    portal.close()
    assert cancelled.is_set()
    assert thing.finished == ["count(5)"]
    assert portal.loop.is_closed()
    assert repr(portal).endswith("closed)")
    with pytest.raises(RuntimeError, match="closed"):
        portal.call(thing.double(1))
    portal.close()
    del counting


def test_loop_factory_picks_the_loop() -> None:
    """Portal(loop_factory=uvloop.new_event_loop) runs on uvloop."""
    uvloop = pytest.importorskip("uvloop")
    with Portal(loop_factory=uvloop.new_event_loop) as portal:

        async def kind() -> str:
            return type(asyncio.get_running_loop()).__module__

        assert portal.call(kind()).startswith("uvloop")


def test_iterate_pulls_each_item_and_closes_early_exits(portal: Portal) -> None:
    """iterate() yields every item; leaving early closes the async generator; an
    exception of the generator reaches the caller."""
    thing = Thing()
    assert list(portal.iterate(thing.count(3))) == [0, 1, 2]
    assert thing.finished == ["count(3)"]
    for i in portal.iterate(thing.count(10)):
        if i == 2:
            break
    assert thing.finished == ["count(3)", "count(10)"]

    async def broken() -> AsyncIterator[int]:
        yield 1
        raise ValueError("broken")

    items = portal.iterate(broken())
    assert next(items) == 1
    with pytest.raises(ValueError, match="broken"):
        next(items)


def test_wrap_makes_a_blocking_proxy(portal: Portal) -> None:
    """Coroutine methods block, plain methods run on the loop, async iterators become
    iterators, attributes read through; the proxy's class has exactly the methods."""
    thing = Thing()
    proxy = portal.wrap(thing)
    assert proxy.portal_target is thing
    assert proxy.double(4, plus=1) == 9
    assert proxy.plain() == "test-portal"
    assert list(proxy.count(2)) == [0, 1]
    assert proxy.label == "a thing"
    assert proxy.closed == 0
    with pytest.raises(KeyError):
        proxy.fail()
    with pytest.raises(AttributeError):
        proxy.missing
    assert isinstance(proxy, Doubling)
    assert not isinstance(portal.wrap(object()), Doubling)
    assert type(proxy).__name__ == "BlockingThing"
    assert "double" in vars(type(proxy))
    assert repr(proxy).startswith("<blocking <")


def test_a_proxy_closes_through_aclose(portal: Portal) -> None:
    """An object with aclose() gets close(); ``with proxy`` calls close() on exit; an
    object with neither cannot be used in ``with``."""
    thing = Thing()
    proxy = portal.wrap(thing)
    with proxy as entered:
        assert entered is proxy
    assert thing.closed == 1
    proxy.close()
    assert thing.closed == 2
    bare = portal.wrap(object())
    with pytest.raises(AttributeError), bare:
        pass


def test_a_slow_caller_does_not_block_the_loop(portal: Portal) -> None:
    """While one thread waits on a long call, another's call completes."""

    async def slow() -> str:
        await asyncio.sleep(0.3)
        return "slow"

    async def fast() -> str:
        return "fast"

    with ThreadPoolExecutor(2) as pool:
        waiting = pool.submit(portal.call, slow())
        time.sleep(0.05)
        started = time.monotonic()
        assert portal.call(fast()) == "fast"
        assert time.monotonic() - started < 0.2
        assert waiting.result() == "slow"
