"""AsyncMemcachedBackend: cancelled and timed-out requests never hand a reply to another.

Thousands of concurrent gets and sets of distinct keys, whose values spell
their key, are cancelled or timed out at random moments (queued, written,
half answered), on a real memcached and through the fault proxy with lost,
cut and reset replies. Every value read must be its own key's; a lost write
reply is OutcomeUnknown, and increments are never applied twice.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest

pytest.importorskip("pymemcache")

from pymemcache.client.base import Client  # type: ignore[import-untyped]

from cacheorm._aio_memcached import AsyncMemcachedBackend
from cacheorm._errors import BackendUnavailable, BatchWriteError, OutcomeUnknown
from tests.proxy import FaultProxy
from tests.servers import MemcachedServer

#: The fewest cancellations (or timeouts) each stress test must cause.
CANCELLATIONS = 5000


def value_of(key: str, version: int, size: int) -> bytes:
    """A value that says which key it belongs to, ``size`` bytes at least."""
    head = f"{key}|{version}|".encode()
    return head + b"." * max(0, size - len(head))


def owner(value: bytes) -> str:
    """The key a value was written for."""
    return value.split(b"|", 1)[0].decode()


class Tally:
    """What happened to the requests of a stress run."""

    def __init__(self) -> None:
        self.cancelled = 0
        self.completed = 0
        self.wrong: list[tuple[str, bytes]] = []
        self.failures: dict[str, int] = {}
        self.dropped = 0

    def check(self, key: str, value: bytes | None) -> None:
        self.completed += 1
        if value is not None and owner(value) != key:
            self.wrong.append((key, value[:40]))

    def check_many(self, keys: list[str], values: list[bytes | None]) -> None:
        for key, value in zip(keys, values, strict=True):
            self.check(key, value)

    def failed(self, exc: BaseException) -> None:
        name = type(exc).__name__
        self.failures[name] = self.failures.get(name, 0) + 1


async def one_request(
    store: AsyncMemcachedBackend, rng: random.Random, keys: list[str], tally: Tally
) -> None:
    """A random get, get_many, set or set_many of random keys, its values checked."""
    choice = rng.random()
    size = rng.choice([10, 200, 5000, 70_000])
    if choice < 0.4:
        key = rng.choice(keys)
        tally.check(key, await store.get(key))
    elif choice < 0.55:
        some = rng.sample(keys, rng.randint(2, 20))
        tally.check_many(some, await store.get_many(some))
    elif choice < 0.9:
        key = rng.choice(keys)
        await store.set(key, value_of(key, rng.randrange(10**6), size))
        tally.completed += 1
    else:
        some = rng.sample(keys, rng.randint(2, 10))
        await store.set_many([(k, value_of(k, rng.randrange(10**6), size)) for k in some])
        tally.completed += 1


async def stress(
    store: AsyncMemcachedBackend, rng: random.Random, keys: list[str], tally: Tally, rounds: int
) -> None:
    """Rounds of concurrent requests, a random share cancelled or timed out at random moments."""
    loop = asyncio.get_running_loop()
    for _ in range(rounds):
        tasks = []
        for _ in range(rng.randint(20, 120)):
            request = one_request(store, rng, keys, tally)
            how = rng.random()
            if how < 0.3:
                tasks.append(loop.create_task(asyncio.wait_for(request, rng.uniform(0, 0.004))))
            else:
                task = loop.create_task(request)
                if how < 0.7:
                    loop.call_later(rng.uniform(0, 0.004), task.cancel)
                tasks.append(task)
        if rng.random() < 0.5:
            await asyncio.sleep(0)
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(outcome, (asyncio.CancelledError, asyncio.TimeoutError)):
                tally.cancelled += 1
            elif isinstance(outcome, BaseException):
                if not isinstance(outcome, (BackendUnavailable, OutcomeUnknown, BatchWriteError)):
                    raise outcome
                tally.failed(outcome)


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def flush(address: str) -> None:
    host, _, port = address.rpartition(":")
    client = Client((host, int(port)), default_noreply=False, timeout=5.0)
    client.flush_all(noreply=False)
    client.close()


KEYS = [f"cancel:{n}" for n in range(400)] + [f"long key {n} " + "z" * 260 for n in range(20)]


def test_random_cancellations_never_give_a_wrong_value(memcached_server: MemcachedServer) -> None:
    """5,000+ cancellations and timeouts in flight: each value read is its key's; one connection."""
    address = memcached_server.servers[0]
    flush(address)
    rng = random.Random(1234)
    tally = Tally()

    async def main() -> None:
        store = AsyncMemcachedBackend.from_servers(address, timeout=5.0)
        await store.set_many([(k, value_of(k, 0, 100)) for k in KEYS])
        conn = store._single.conn
        while tally.cancelled < CANCELLATIONS:
            await stress(store, rng, KEYS, tally, 20)
        # Every reply of a cancelled request was read and dropped: the connection
        # never fell out of step, so it was never replaced.
        assert store._single.conn is conn
        tally.dropped = conn.dropped
        values = await store.get_many(KEYS)
        tally.check_many(KEYS, values)
        assert all(v is not None for v in values)
        await store.aclose()

    run(main())
    assert tally.wrong == []
    assert tally.cancelled >= CANCELLATIONS
    assert tally.completed > 1000
    assert tally.dropped > 1000  # replies of requests cancelled after they were written
    assert tally.failures == {}
    print(f"cancelled {tally.cancelled}, completed {tally.completed}, dropped {tally.dropped}")


@pytest.fixture
def proxy(memcached_server: MemcachedServer) -> Iterator[FaultProxy]:
    host, _, port = memcached_server.servers[0].rpartition(":")
    flush(memcached_server.servers[0])
    with FaultProxy(host, int(port)) as faults:
        yield faults


def test_cancellations_through_lost_and_cut_replies_never_give_a_wrong_value(
    proxy: FaultProxy, memcached_server: MemcachedServer
) -> None:
    """With replies dropped, cut part-way and connections reset at random: 0 wrong values."""
    rng = random.Random(99)
    tally = Tally()

    async def main() -> None:
        store = AsyncMemcachedBackend.from_servers(proxy.address, timeout=0.3, connect_timeout=1.0)
        await store.set_many([(k, value_of(k, 0, 100)) for k in KEYS])
        while tally.cancelled < CANCELLATIONS:
            fault = rng.random()
            if fault < 0.15:
                proxy.cut_replies_after(rng.randint(0, 20_000))
            elif fault < 0.2:
                proxy.drop_replies()
            elif fault < 0.25:
                proxy.reset()
            else:
                proxy.pass_through()
            await stress(store, rng, KEYS, tally, 4)
        proxy.pass_through()
        await store.aclose()
        async with AsyncMemcachedBackend.from_servers(proxy.address) as patient:
            tally.check_many(KEYS, await patient.get_many(KEYS))

    run(main())
    assert tally.wrong == []
    assert tally.cancelled >= CANCELLATIONS
    assert tally.completed > 1000
    assert set(tally.failures) <= {"BackendUnavailable", "OutcomeUnknown", "BatchWriteError"}
    assert tally.failures  # the faults did fail some requests
    print(f"cancelled {tally.cancelled}, completed {tally.completed}, failed {tally.failures}")


def test_lost_write_replies_are_outcome_unknown(proxy: FaultProxy) -> None:
    """A write whose reply is lost (dropped, or the connection cut) raises OutcomeUnknown."""

    async def main() -> None:
        store = AsyncMemcachedBackend.from_servers(proxy.address, timeout=0.3)
        await store.set("k", b"1")
        proxy.drop_replies()
        writes = (store.add("new", b"1"), store.incr("n"), store.delete("k"), store.set("k", b"2"))
        for write in writes:
            with pytest.raises(OutcomeUnknown, match="may or may not"):
                await write
        with pytest.raises(BatchWriteError) as batch:
            await store.set_many([("a", b"1"), ("b", b"2")])
        assert sorted(batch.value.unknown) == ["a", "b"]
        with pytest.raises(BackendUnavailable):
            await store.get("k")
        proxy.pass_through()
        await asyncio.sleep(0.05)
        assert await store.get("new") == b"1"  # it was applied: the server saw it
        proxy.cut_replies_after(0)
        with pytest.raises(OutcomeUnknown):
            await store.cas("new", b"2", b"1")
        proxy.pass_through()
        await store.aclose()

    run(main())


def test_lost_increment_replies_never_double_count(proxy: FaultProxy) -> None:
    """Concurrent incr with replies lost and cut: confirmed <= final <= confirmed + unknown."""
    rng = random.Random(7)

    async def main() -> tuple[int, int, int]:
        store = AsyncMemcachedBackend.from_servers(proxy.address, timeout=0.2, connect_timeout=1.0)
        confirmed = unknown = 0
        for _ in range(60):
            fault = rng.random()
            if fault < 0.2:
                proxy.cut_replies_after(rng.randint(0, 60))
            elif fault < 0.3:
                proxy.drop_replies()
            elif fault < 0.4:
                proxy.reset()
            else:
                proxy.pass_through()
            outcomes = await asyncio.gather(
                *[store.incr("counter") for _ in range(rng.randint(1, 30))], return_exceptions=True
            )
            for outcome in outcomes:
                if isinstance(outcome, OutcomeUnknown):
                    unknown += 1
                elif isinstance(outcome, BackendUnavailable):
                    pass  # never sent
                elif isinstance(outcome, BaseException):
                    raise outcome
                else:
                    confirmed += 1
        proxy.pass_through()
        await asyncio.sleep(0.3)
        final = await store.get("counter")
        await store.aclose()
        return confirmed, unknown, int(final or 0)

    confirmed, unknown, final = run(main())
    assert confirmed > 100
    assert unknown > 0
    assert confirmed <= final <= confirmed + unknown
    print(f"incr: confirmed {confirmed}, unknown {unknown}, final {final}")


def test_cancellations_on_uvloop(memcached_server: MemcachedServer) -> None:
    """The same storm on a uvloop event loop: no wrong value, one connection throughout."""
    uvloop = pytest.importorskip("uvloop")
    address = memcached_server.servers[0]
    flush(address)
    rng = random.Random(4321)
    tally = Tally()

    async def main() -> None:
        store = AsyncMemcachedBackend.from_servers(address)
        await store.set_many([(k, value_of(k, 0, 100)) for k in KEYS])
        conn = store._single.conn
        while tally.cancelled < 1000:
            await stress(store, rng, KEYS, tally, 10)
        assert store._single.conn is conn
        tally.check_many(KEYS, await store.get_many(KEYS))
        await store.aclose()

    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    assert tally.wrong == []
    assert tally.failures == {}
