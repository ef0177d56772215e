"""AsyncRedisBackend under faults: killed, paused and restarted servers, a fault proxy that
cuts and drops replies, pipelining, backpressure, and thousands of cancellations.

The counts measured are printed, labelled ``[aredis]`` (run with ``-s``), and asserted.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest

from cacheorm._aio_redis import AsyncRedisBackend
from cacheorm._errors import (
    BackendError,
    BackendUnavailable,
    BatchWriteError,
    OutcomeUnknown,
)
from tests.proxy import FaultProxy
from tests.servers import RedisServer, ServerMissing, ServerProcess, start_redis_process

redis = pytest.importorskip("redis")

T = TypeVar("T")

#: timeout / connect_timeout of the backends here.
TIMEOUT = 0.3
#: What an operation may take beyond TIMEOUT: scheduling, one reconnect on loopback.
BOUND = TIMEOUT + 0.25


def run(main: Callable[[], Awaitable[T]]) -> T:
    """Run ``main()`` in a fresh event loop."""

    async def wrapped() -> T:
        return await main()

    return asyncio.run(wrapped())


@pytest.fixture
def own() -> Iterator[RedisServer]:
    """A redis-server of this test's own, to kill, pause and restart."""
    try:
        server = start_redis_process()
    except ServerMissing as exc:
        pytest.skip(str(exc))
    yield server
    server.stop()


def _process(server: RedisServer) -> ServerProcess:
    assert server.process is not None
    return server.process


def _raw(server: RedisServer) -> Any:
    return redis.Redis.from_url(server.url)


def _calls(b: AsyncRedisBackend) -> dict[str, Callable[[], Awaitable[object]]]:
    """One call of every operation."""
    return {
        "get": lambda: b.get("k"),
        "get_many": lambda: b.get_many(["k", "j"]),
        "set": lambda: b.set("k", b"v"),
        "set_many": lambda: b.set_many([("k", b"v"), ("j", b"w")], ttl=60),
        "add": lambda: b.add("n", b"v"),
        "add_many": lambda: b.add_many([("n", b"v")]),
        "replace": lambda: b.replace("k", b"v"),
        "replace_many": lambda: b.replace_many([("k", b"v")]),
        "delete": lambda: b.delete("d"),
        "delete_many": lambda: b.delete_many(["d", "e"]),
        "exists": lambda: b.exists("k"),
        "incr": lambda: b.incr("c"),
        "gets": lambda: b.gets("k"),
        "cas": lambda: b.cas("k", b"v", "0" * 40),
        "touch": lambda: b.touch("k", 60),
        "ttl_of": lambda: b.ttl_of("k"),
        "counter_add": lambda: b.counter_add("ctr", 1),
    }


def test_killed_server_fails_fast_and_a_restart_heals(own: RedisServer) -> None:
    """Killed: every operation raises BackendUnavailable (a batch: BatchWriteError, nothing
    written) within the timeout; restarted: the same backend works again."""

    async def main() -> float:
        backend = AsyncRedisBackend.from_url(own.url, timeout=TIMEOUT, connect_timeout=TIMEOUT)
        async with backend:
            await backend.set("k", b"v")
            _process(own).kill()
            worst = 0.0
            for name, call in _calls(backend).items():
                start = time.monotonic()
                with pytest.raises((BackendUnavailable, BatchWriteError)) as info:
                    await call()
                worst = max(worst, time.monotonic() - start)
                if isinstance(info.value, BatchWriteError):
                    assert info.value.written == [], name
                    assert info.value.unknown == [], name
            await asyncio.get_running_loop().run_in_executor(None, _process(own).restart)
            for call in _calls(backend).values():
                await call()
            assert await backend.get("k") == b"v"
            return worst

    worst = run(main)
    print(f"[aredis] killed server: slowest failure {worst * 1000:.0f} ms")
    assert worst < BOUND


def test_hung_server_fails_within_the_timeout(own: RedisServer) -> None:
    """Paused: reads raise BackendUnavailable within the timeout, an incr OutcomeUnknown (it was
    sent); resumed: the backend works and the incr was applied exactly once."""

    async def main() -> float:
        backend = AsyncRedisBackend.from_url(own.url, timeout=TIMEOUT, connect_timeout=TIMEOUT)
        async with backend:
            await backend.set("k", b"v")
            _process(own).pause()
            try:
                start = time.monotonic()
                with pytest.raises(BackendUnavailable, match="timeout"):
                    await backend.get("k")
                elapsed = time.monotonic() - start
                with pytest.raises(OutcomeUnknown, match="may or may not"):
                    await backend.incr("c")
            finally:
                _process(own).resume()
            assert await backend.get("k") == b"v"
            await asyncio.sleep(0.05)
            assert await backend.get("c") == b"1"
            return elapsed

    elapsed = run(main)
    assert TIMEOUT * 0.8 <= elapsed < BOUND


def test_a_restart_between_calls_is_transparent(own: RedisServer) -> None:
    """A server restarted while the backend idles: the next calls (incr too) just work."""

    async def main() -> None:
        backend = AsyncRedisBackend.from_url(own.url, timeout=TIMEOUT)
        async with backend:
            await backend.set("k", b"v")
            await asyncio.get_running_loop().run_in_executor(None, _process(own).restart)
            assert await backend.get("k") is None  # no persistence: the data went
            assert await backend.incr("c") == 1
            assert backend._connection.connects == 2  # pyright: ignore[reportPrivateUsage]

    run(main)


def test_concurrent_gets_share_writes(redis_server: RedisServer) -> None:
    """1,000 concurrent gets go out in a handful of writes, each getting its own value."""

    async def main() -> tuple[int, int]:
        async with AsyncRedisBackend.from_url(redis_server.url) as backend:
            await backend.set_many([(f"pipe:{i}", f"v{i}".encode()) for i in range(1000)])
            connection = backend._connection  # pyright: ignore[reportPrivateUsage]
            before = connection.writes
            values = await asyncio.gather(*[backend.get(f"pipe:{i}") for i in range(1000)])
            right = sum(value == f"v{i}".encode() for i, value in enumerate(values))
            return right, connection.writes - before

    right, writes = run(main)
    print(f"[aredis] 1000 concurrent gets: {right} right, in {writes} write(s)")
    assert right == 1000
    assert writes <= 5


def test_backpressure_keeps_every_large_value_whole(redis_server: RedisServer) -> None:
    """64 tasks storing 1 MB each fill the socket buffer: writing pauses, every value is whole."""

    async def main() -> tuple[int, int]:
        async with AsyncRedisBackend.from_url(redis_server.url, timeout=30) as backend:
            values = {f"big:{i}": os.urandom(1 << 20) for i in range(64)}
            await asyncio.gather(*[backend.set(k, v) for k, v in values.items()])
            back = await asyncio.gather(*[backend.get(k) for k in values])
            whole = sum(got == want for got, want in zip(back, values.values(), strict=True))
            await backend.delete_many(list(values))
            return whole, backend._connection.pauses  # pyright: ignore[reportPrivateUsage]

    whole, pauses = run(main)
    print(f"[aredis] backpressure: {whole}/64 1 MB values whole, writing paused {pauses} time(s)")
    assert whole == 64
    assert pauses >= 1


# -- through the fault proxy ---------------------------------------------------------


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[FaultProxy]:
    """A fault proxy in front of the session's server."""
    host, _, port = redis_server.url.split("//")[1].split("/")[0].rpartition(":")
    with FaultProxy(host, int(port)) as fault_proxy:
        yield fault_proxy


def _through(proxy: FaultProxy, **options: Any) -> AsyncRedisBackend:
    options.setdefault("timeout", TIMEOUT)
    options.setdefault("connect_timeout", TIMEOUT)
    return AsyncRedisBackend(proxy.host, proxy.port, **options)


def test_dropped_reply_is_outcome_unknown_and_applied_once(
    redis_server: RedisServer, proxy: FaultProxy
) -> None:
    """A lost incr reply is OutcomeUnknown and the incr is never resent; a lost get reply
    is BackendUnavailable; after the fault, the backend works."""
    raw = _raw(redis_server)
    raw.delete("drop:c")

    async def main() -> None:
        async with _through(proxy) as backend:
            assert await backend.incr("drop:c") == 1
            proxy.drop_replies()
            with pytest.raises(OutcomeUnknown):
                await backend.incr("drop:c")
            with pytest.raises(BackendUnavailable):
                await backend.get("drop:c")
            with pytest.raises(BatchWriteError) as info:
                await backend.add_many([("drop:a", b"1"), ("drop:b", b"2")])
            assert info.value.unknown == ["drop:a", "drop:b"]
            proxy.pass_through()
            assert await backend.get("drop:c") == b"2"

    try:
        run(main)
    finally:
        raw.delete("drop:c", "drop:a", "drop:b")
        raw.close()


def test_cut_pipeline_resends_only_what_is_idempotent(
    redis_server: RedisServer, proxy: FaultProxy
) -> None:
    """Replies cut after 5 of 10: set_many resends the 5 lost SETs and succeeds; add_many is
    never resent: written = the 5 answered, unknown = the 5 others."""
    raw = _raw(redis_server)
    keys = [f"cut:{i}" for i in range(10)]
    raw.delete(*keys)

    async def main() -> None:
        async with _through(proxy) as backend:
            await backend.get("warm")  # connect before the fault
            proxy.cut_replies_after(5 * len(b"+OK\r\n"))
            await backend.set_many([(k, b"v") for k in keys], ttl=60)
            assert raw.mget(keys) == [b"v"] * 10
            raw.delete(*keys)
            proxy.cut_replies_after(5 * len(b"+OK\r\n"))
            with pytest.raises(BatchWriteError) as info:
                await backend.add_many([(k, b"a") for k in keys])
            assert info.value.written == keys[:5]
            assert info.value.unknown == keys[5:]
            assert info.value.not_written == []
            proxy.pass_through()
            assert await backend.get_many(keys) == [b"a"] * 10

    try:
        run(main)
    finally:
        raw.delete(*keys)
        raw.close()


def test_incr_through_random_cuts_is_never_applied_twice(
    redis_server: RedisServer, proxy: FaultProxy
) -> None:
    """300 incrs while the proxy cuts connections at random: the counter ends between the
    confirmed count and the confirmed plus unknown count; no result is seen twice."""
    raw = _raw(redis_server)
    raw.delete("cuts:c")
    rng = random.Random(7)

    async def main() -> tuple[int, int, int]:
        confirmed: list[int] = []
        unknown = unavailable = 0
        async with _through(proxy) as backend:
            for _ in range(300):
                if rng.random() < 0.1:
                    proxy.cut_replies_after(rng.randrange(0, 12))
                elif rng.random() < 0.3:
                    proxy.pass_through()
                try:
                    confirmed.append(await backend.incr("cuts:c"))
                except OutcomeUnknown:
                    unknown += 1
                except BackendUnavailable:
                    unavailable += 1
        assert len(set(confirmed)) == len(confirmed)
        return len(confirmed), unknown, unavailable

    try:
        ok, unknown, unavailable = run(main)
        final = int(raw.get("cuts:c"))
    finally:
        raw.delete("cuts:c")
        raw.close()
    print(
        f"[aredis] incr through cuts: {ok} confirmed, {unknown} unknown, "
        f"{unavailable} unavailable, counter {final}"
    )
    assert unknown > 0
    assert ok <= final <= ok + unknown


# -- cancellation --------------------------------------------------------------------


def _value(key: str, nonce: int) -> bytes:
    """A value that says which key it belongs to."""
    return f"{key}|{nonce}|".encode() + b"x" * (nonce % 300)


def _owner(value: bytes) -> str:
    return value.split(b"|", 1)[0].decode()


async def _cancellation_storm(
    backend: AsyncRedisBackend, rounds: int, tasks: int, seed: int, proxy: FaultProxy | None
) -> dict[str, int]:
    """Rounds of concurrent get/set on distinct keys, many cancelled or timed out at random."""
    rng = random.Random(seed)
    counts = dict.fromkeys(
        ["cancelled", "timed_out", "completed", "wrong", "failed", "gets", "sets"], 0
    )

    async def one(key: str, nonce: int) -> None:
        if rng.random() < 0.5:
            counts["sets"] += 1
            await backend.set(key, _value(key, nonce))
            counts["completed"] += 1
            return
        counts["gets"] += 1
        value = await backend.get(key)
        counts["completed"] += 1
        if value is not None and _owner(value) != key:
            counts["wrong"] += 1

    async def timed(key: str, nonce: int) -> None:
        try:
            await asyncio.wait_for(one(key, nonce), rng.choice([0, 0.0001, 0.0005, 0.002]))
        except asyncio.TimeoutError:
            counts["timed_out"] += 1

    for round_ in range(rounds):
        if proxy is not None:
            if rng.random() < 0.15:
                proxy.cut_replies_after(rng.randrange(0, 4000))
            else:
                proxy.pass_through()
        keys = [f"storm:{seed}:{round_ % 7}:{i}" for i in range(tasks)]
        running = [
            asyncio.ensure_future(timed(k, round_) if rng.random() < 0.3 else one(k, round_))
            for k in keys
        ]
        for _ in range(rng.randrange(0, 3)):
            await asyncio.sleep(0)
        for task in running:
            if rng.random() < 0.35:
                task.cancel()
        await asyncio.sleep(rng.choice([0, 0.0002, 0.001]))
        for task in running:
            if rng.random() < 0.2:
                task.cancel()
        for result in await asyncio.gather(*running, return_exceptions=True):
            if isinstance(result, asyncio.CancelledError):
                counts["cancelled"] += 1
            elif isinstance(result, (BackendError, BatchWriteError)):
                counts["failed"] += 1
            elif isinstance(result, BaseException):
                raise result
    if proxy is not None:
        proxy.pass_through()
    # Afterwards every key holds its own value, and the backend still answers in order.
    for round_ in range(7):
        keys = [f"storm:{seed}:{round_}:{i}" for i in range(tasks)]
        for key, value in zip(keys, await backend.get_many(keys), strict=True):
            if value is not None and _owner(value) != key:
                counts["wrong"] += 1
    return counts


def test_thousands_of_cancellations_never_hand_on_a_reply(redis_server: RedisServer) -> None:
    """>= 5,000 random cancellations and wait_for timeouts of concurrent get/set on distinct
    keys: every completed get returned its own key's value (0 wrong)."""

    async def main() -> dict[str, int]:
        async with AsyncRedisBackend.from_url(redis_server.url) as backend:
            counts = await _cancellation_storm(backend, 40, 400, seed=1, proxy=None)
            assert await backend.get("storm:none") is None
            return counts

    counts = run(main)
    print(f"[aredis] cancellation storm: {counts}")
    assert counts["wrong"] == 0
    assert counts["cancelled"] + counts["timed_out"] >= 5000
    assert counts["completed"] >= 2000
    assert counts["failed"] == 0


def test_cancellations_through_a_cutting_proxy(
    redis_server: RedisServer, proxy: FaultProxy
) -> None:
    """The same storm through a proxy that cuts connections mid-reply: 0 wrong values; lost
    replies are errors, never another key's value."""

    async def main() -> dict[str, int]:
        async with _through(proxy, timeout=2) as backend:
            counts = await _cancellation_storm(backend, 30, 300, seed=2, proxy=proxy)
            counts["connects"] = backend._connection.connects  # pyright: ignore[reportPrivateUsage]
            return counts

    counts = run(main)
    print(f"[aredis] cancellation storm through the proxy: {counts}")
    assert counts["wrong"] == 0
    assert counts["cancelled"] + counts["timed_out"] >= 2000
    assert counts["completed"] >= 1000
    assert counts["connects"] > 1


def test_uvloop(redis_server: RedisServer) -> None:
    """On uvloop: every operation, pipelining and a cancellation storm with 0 wrong values."""
    uvloop = pytest.importorskip("uvloop")

    async def main() -> dict[str, int]:
        async with AsyncRedisBackend.from_url(redis_server.url) as backend:
            for call in _calls(backend).values():
                await call()
            connection = backend._connection  # pyright: ignore[reportPrivateUsage]
            before = connection.writes
            await asyncio.gather(*[backend.get(f"uv:{i}") for i in range(500)])
            counts = await _cancellation_storm(backend, 10, 300, seed=3, proxy=None)
            counts["writes"] = connection.writes - before
            return counts

    counts = uvloop.run(main())
    print(f"[aredis] uvloop: {counts}")
    assert counts["wrong"] == 0
    assert counts["cancelled"] + counts["timed_out"] >= 1000
