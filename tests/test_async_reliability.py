"""Reliability of AsyncRepository on real servers: the sync suites' promises, async-native.

* ``update_with`` from 8 tasks x 500, and from 2 processes x 4 tasks x 250: exact.
* 500 tasks missing one key: one load.
* A server killed mid-run: ``BackendUnavailable`` within the timeout, and the same
  repository works again after a restart.
* A reply cut by a fault proxy: ``OutcomeUnknown``, and the write applied at most once.
* Hostile keys, TTLs and payloads: the keys and bytes of the sync Repository.
* Thousands of random cancellations of mixed operations: every record intact under
  its key, and no task ever given another's record.

The parity of the sync suites themselves is tests/test_async_parity.py.
"""

# pyright: reportUnknownMemberType=false, reportUnknownArgumentType=false
# pyright: reportUnknownVariableType=false
# (the redis client's connection attributes are untyped.)

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import pytest

import cacheorm as co
from cacheorm._flight import LEASE_SUFFIX
from cacheorm.testing import Portal
from tests.async_concurrency_worker import Counter
from tests.conftest import async_backend_maker
from tests.proxy import FaultProxy
from tests.servers import ServerProcess, start_memcached_processes, start_redis_process
from tests.test_hostile import BAD_TTLS, HOSTILE_PARTS, Doc

ROOT = Path(__file__).resolve().parent.parent

#: The server kinds of the cancellation and lease tests.
SERVER_KINDS = ["redis", "memcached", "redis_cluster", "memcached_pool"]

#: connect_timeout / timeout of the backends the fault tests kill servers under.
TIMEOUT = 0.3
#: What an operation may take beyond TIMEOUT: scheduling, one reconnect on loopback.
BOUND = TIMEOUT + 0.35


def _bump(counter: Counter) -> Counter:
    return dataclasses.replace(counter, n=counter.n + 1)


def _on(portal: Portal, make: Callable[[], Any]) -> Any:
    """``make()`` run on the portal's loop (async backends bind to the loop they start on)."""

    async def build() -> Any:
        return make()

    return portal.call(build())


# -- update_with: exact under contention ----------------------------------------------------


def test_8_tasks_x_500_update_with_increments_are_exact(
    async_backend: co.AsyncBackend, portal: Portal, capsys: pytest.CaptureFixture[str]
) -> None:
    """Half the tasks yield inside their update function, so reads and writes interleave."""
    calls = 0

    def bump(counter: Counter) -> Counter:
        nonlocal calls
        calls += 1
        return _bump(counter)

    async def slow_bump(counter: Counter) -> Counter:
        await asyncio.sleep(0)  # let the other tasks read the same version meanwhile
        return bump(counter)

    async def main() -> int:
        repo = co.AsyncRepository(Counter, backend=async_backend)
        await repo.create(Counter(1))

        async def work(fn: Callable[[Counter], Any]) -> None:
            for _ in range(500):
                await repo.update_with(1, fn, attempts=1000)

        await asyncio.gather(*(work(bump if i % 2 else slow_bump) for i in range(8)))
        return (await repo.get(1)).n

    started = time.perf_counter()
    assert portal.call(main()) == 4000
    assert calls >= 4000
    with capsys.disabled():
        print(
            f"\n[{type(async_backend).__name__}] 8 tasks x 500 update_with: n=4000 in "
            f"{time.perf_counter() - started:.2f}s, {calls - 4000} conflicts retried",
            end=" ",
        )


@pytest.fixture(params=["redis", "memcached"])
def shared_server(request: pytest.FixtureRequest) -> tuple[str, str, co.Backend]:
    """A server another process can reach: (kind, address, a sync backend on it)."""
    if request.param == "redis":
        url = request.getfixturevalue("redis_server").url
        return "redis", url, request.getfixturevalue("redis_backend")
    address = request.getfixturevalue("memcached_server").servers[0]
    return "memcached", address, request.getfixturevalue("memcached_backend")


def test_2_processes_x_4_tasks_x_250_increments_are_exact(
    shared_server: tuple[str, str, co.Backend], capsys: pytest.CaptureFixture[str]
) -> None:
    kind, address, store = shared_server
    co.Repository(Counter, backend=store).create(Counter(1))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
    argv = [sys.executable, "-m", "tests.async_concurrency_worker", kind, address, "4", "250"]
    started = time.perf_counter()
    procs = [
        subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    time.sleep(0.5)  # let both import and connect before the gate opens
    store.set("go", b"1")
    outputs: list[dict[str, Any]] = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
        outputs.append(json.loads(out.decode().strip().splitlines()[-1]))
    assert [o["errors"] for o in outputs] == [[], []]
    assert co.Repository(Counter, backend=store).get(1).n == 2000
    calls = sum(int(o["calls"]) for o in outputs)
    with capsys.disabled():
        print(
            f"\n[{kind}] 2 processes x 4 tasks x 250 update_with: n=2000 in "
            f"{time.perf_counter() - started:.2f}s, {calls - 2000} conflicts retried",
            end=" ",
        )


# -- read-through: one load --------------------------------------------------------------


def test_500_tasks_missing_one_key_call_the_loader_once(
    async_backend: co.AsyncBackend, portal: Portal
) -> None:
    loads = 0

    async def loader() -> Counter:
        nonlocal loads
        loads += 1
        await asyncio.sleep(0.05)  # every other task arrives while this load runs
        return Counter(7, n=42)

    async def main() -> list[Counter]:
        repo = co.AsyncRepository(Counter, backend=async_backend)
        return await asyncio.gather(*(repo.get_or_load(7, loader) for _ in range(500)))

    assert portal.call(main()) == [Counter(7, n=42)] * 500
    assert loads == 1


def test_20_repositories_missing_one_key_share_one_load_through_the_lease(
    async_backend: co.AsyncBackend, portal: Portal
) -> None:
    """Separate repositories have separate single-flights: only the backend lease joins them."""
    loads = 0

    async def loader() -> Counter:
        nonlocal loads
        loads += 1
        await asyncio.sleep(0.2)
        return Counter(8, n=1)

    async def main() -> list[Counter]:
        repos = [co.AsyncRepository(Counter, backend=async_backend) for _ in range(20)]
        return await asyncio.gather(*(r.get_or_load(8, loader) for r in repos))

    assert portal.call(main()) == [Counter(8, n=1)] * 20
    assert loads == 1


# -- a server killed and restarted ----------------------------------------------------------


@pytest.fixture(params=["redis", "memcached"])
def killable(request: pytest.FixtureRequest, portal: Portal) -> Iterator[tuple[ServerProcess, Any]]:
    """A server of this test's own, and an async backend on it with TIMEOUT."""
    if request.param == "redis":
        server = start_redis_process()
        assert server.process is not None
        process = server.process
        url = server.url
        backend = _on(
            portal,
            lambda: co.AsyncRedisBackend.from_url(url, timeout=TIMEOUT, connect_timeout=TIMEOUT),
        )
    else:
        (process,) = start_memcached_processes(1).processes
        address = process.address
        backend = _on(
            portal,
            lambda: co.AsyncMemcachedBackend.from_servers(
                address, timeout=TIMEOUT, connect_timeout=TIMEOUT
            ),
        )
    try:
        yield process, backend
    finally:
        portal.call(backend.aclose())
        process.stop()


def test_a_killed_server_is_backend_unavailable_in_time_and_the_same_repository_recovers(
    killable: tuple[ServerProcess, Any], portal: Portal, capsys: pytest.CaptureFixture[str]
) -> None:
    process, backend = killable
    repo = co.AsyncRepository(Counter, backend=backend)
    operations: dict[str, Callable[[], Awaitable[object]]] = {
        "get": lambda: repo.get(1),
        "get_many": lambda: repo.get_many([1, 2]),
        "save": lambda: repo.save(Counter(2)),
        "create": lambda: repo.create(Counter(3)),
        "update_with": lambda: repo.update_with(1, _bump),
        "get_or_load": lambda: repo.get_or_load(4, lambda: Counter(4)),
        "delete": lambda: repo.delete(2),
    }

    async def timed(operation: Callable[[], Awaitable[object]]) -> tuple[float, BaseException]:
        started = time.monotonic()
        try:
            await operation()
        except co.BackendUnavailable as exc:
            return time.monotonic() - started, exc
        raise AssertionError("an operation on a dead server succeeded")

    async def running_then_killed() -> dict[str, tuple[float, BaseException]]:
        await repo.create(Counter(1))
        for _ in range(50):  # traffic on the connection, then the kill mid-run
            await repo.update_with(1, _bump)
        process.kill()
        return {name: await timed(op) for name, op in operations.items()}

    down = portal.call(running_then_killed())
    slow = {name: f"{s:.3f}s" for name, (s, _) in down.items() if s > BOUND}
    assert not slow, f"not BackendUnavailable within {BOUND}s: {slow}"
    process.restart()

    async def recovered() -> Counter:
        deadline = time.monotonic() + 10
        while True:
            try:
                await repo.save(Counter(1, n=99))
                return await repo.get(1)
            except co.BackendUnavailable:
                assert time.monotonic() < deadline, "the repository never recovered"
                await asyncio.sleep(0.05)

    assert portal.call(recovered()) == Counter(1, n=99)
    slowest = max(seconds for seconds, _ in down.values())
    with capsys.disabled():
        print(
            f"\n[{type(backend).__name__}] killed: {len(down)} operations BackendUnavailable, "
            f"slowest {slowest:.3f}s (bound {BOUND:g}s); the same repository recovered",
            end=" ",
        )


# -- lost replies: at most once -------------------------------------------------------------


@pytest.fixture(params=["redis", "memcached"])
def proxied(
    request: pytest.FixtureRequest, portal: Portal
) -> Iterator[tuple[FaultProxy, Any, co.Backend]]:
    """A fault proxy to this session's server, an async backend through it, a sync one direct."""
    if request.param == "redis":
        direct: co.Backend = request.getfixturevalue("redis_backend")
        client: Any = direct.client  # type: ignore[attr-defined]
        kwargs: dict[str, Any] = client.connection_pool.connection_kwargs
        host, port = str(kwargs["host"]), int(kwargs["port"])
    else:
        direct = request.getfixturevalue("memcached_backend")
        host, _, port_text = request.getfixturevalue("memcached_server").servers[0].rpartition(":")
        port = int(port_text)
    proxy = FaultProxy(host, port)
    if request.param == "redis":
        url = f"redis://{proxy.address}/0"
        redis_class = co.AsyncRedisBackend
        backend = _on(portal, lambda: redis_class.from_url(url, timeout=2))
    else:
        address = proxy.address
        backend = _on(portal, lambda: co.AsyncMemcachedBackend.from_servers(address, timeout=2))
    try:
        yield proxy, backend, direct
    finally:
        portal.call(backend.aclose())
        proxy.close()


def test_a_cut_reply_is_outcome_unknown_and_never_applied_twice(
    proxied: tuple[FaultProxy, Any, co.Backend],
    portal: Portal,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Cut every reply after 0, 1, 2, ... bytes: each update_with / incr applies at most once.

    An error that is not OutcomeUnknown (a lost read, say) must have written nothing; a
    success exactly once; an OutcomeUnknown zero or one time, never twice.
    """
    proxy, backend, direct = proxied
    repo = co.AsyncRepository(Counter, backend=backend)
    reader = co.Repository(Counter, backend=direct)
    seen = {"ok": 0, "unknown": 0, "unavailable": 0}

    async def once(operation: Callable[[], Awaitable[object]]) -> str:
        try:
            await operation()
        except co.OutcomeUnknown:
            return "unknown"
        except co.BackendUnavailable:
            return "unavailable"
        return "ok"

    def value(kind: str) -> int:
        if kind == "update_with":
            return reader.get(1).n
        raw = direct.get("hits")
        return int(raw) if raw is not None else 0

    operations: dict[str, Callable[[], Awaitable[object]]] = {
        "update_with": lambda: repo.update_with(1, _bump),
        "incr": lambda: backend.incr("hits", 1),
    }
    reader.save(Counter(1))
    direct.set("hits", b"0")
    for limit in range(120):
        for kind, operation in operations.items():
            before = value(kind)
            proxy.set_mode("cut_replies_after", limit)
            outcome = portal.call(once(operation))
            proxy.set_mode("pass")
            applied = value(kind) - before
            seen[outcome] += 1
            if outcome == "ok":
                assert applied == 1, (kind, limit, applied)
            elif outcome == "unknown":
                assert applied in (0, 1), (kind, limit, applied)
            else:
                assert applied == 0, f"{kind} at {limit} bytes: unavailable, yet applied"
    assert seen["unknown"] > 0, f"no reply was cut mid-write: {seen}"
    assert seen["ok"] > 0, seen
    with capsys.disabled():
        print(f"\n[{type(backend).__name__}] replies cut at 0..119 bytes: {seen}", end=" ")


# -- hostile input: the sync side's keys, bytes and refusals ------------------------------


def test_hostile_keys_payloads_and_ttls_behave_as_on_the_sync_side(
    async_backend: co.AsyncBackend, portal: Portal
) -> None:
    """The same keys and stored bytes as Repository, and every bad TTL refused unsent."""
    sync = co.Repository(Doc, backend=co.MemoryBackend())
    records = [
        Doc(id=part, text=f"record {i}\r\n\x00 {part}", n=i) for i, part in enumerate(HOSTILE_PARTS)
    ]

    async def main() -> None:
        repo = co.AsyncRepository(Doc, backend=async_backend)
        for record in records:
            await repo.create(record)
            sync.create(record)
        for record in records:
            key = repo.key_for(record.id)
            assert key == sync.key_for(record.id)
            assert await async_backend.get(key) == sync.backend.get(key), key
            assert await repo.get(record.id) == record
        assert await repo.get_many([r.id for r in records]) == records
        bad: list[Any] = [param.values[0] for param in BAD_TTLS]
        for ttl in bad:
            with pytest.raises(co.InvalidTTL):
                await repo.save(Doc(id="ttl"), ttl=ttl)
            with pytest.raises(co.InvalidTTL):
                await repo.update_with(records[0].id, lambda d: d, ttl=ttl)
            with pytest.raises(co.InvalidTTL):
                await repo.get_or_load("ttl", lambda: Doc(id="ttl"), ttl=ttl)
        assert not await repo.exists("ttl")
        assert await repo.delete_many([r.id for r in records]) == len(records)

    portal.call(main())


def test_a_raw_redis_client_as_async_backend_is_not_called_a_sync_backend(
    redis_server: Any,
) -> None:
    import redis

    client = redis.Redis.from_url(redis_server.url)
    try:
        with pytest.raises(co.ConfigurationError) as info:
            co.AsyncRepository(Counter, backend=client)  # type: ignore[arg-type]
    finally:
        client.close()
    message = str(info.value)
    assert "redis.client.Redis" in message
    assert "AsyncRedisBackend" in message
    assert "the sync backend" not in message
    assert "use the sync Repository" not in message


# -- cancellations ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Rec:
    id: Annotated[int, co.Field(primary_key=True)]
    body: str
    version: int = 0


def _body(pk: int) -> str:
    """A body only record ``pk`` has, of a length that differs between records."""
    return hashlib.sha256(str(pk).encode()).hexdigest() * (1 + pk % 9)


def _next_version(record: Rec) -> Rec:
    return dataclasses.replace(record, version=record.version + 1)


def _intact(record: object, pk: int) -> bool:
    return isinstance(record, Rec) and record.id == pk and record.body == _body(pk)


@pytest.fixture(params=SERVER_KINDS)
def server_backend(
    request: pytest.FixtureRequest, portal: Portal
) -> Iterator[tuple[str, Any, Callable[[], Any]]]:
    """An async backend on each server kind, and the callable that made it (for another)."""
    kind = str(request.param)
    make = async_backend_maker(request, kind)
    backend = _on(portal, make)
    yield kind, backend, make
    portal.call(backend.aclose())


_IDS = list(range(1, 151))
_OPS = ["get", "get_or_none", "get_many", "save", "update_with", "delete", "get_or_load"]


class Storm:
    """Rounds of 64 random operations, most of them cancelled at random points.

    Every record a task receives is checked to be the one it asked for, intact.
    ``faults`` (a fault proxy's connection cuts) make store errors an allowed
    outcome; without them any error fails the test.
    """

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.counts = {"tasks": 0, "cancelled": 0, "completed": 0, "failed": 0, "wrong": 0}
        self.wrong: list[str] = []

    def check(self, what: str, pk: int, record: object) -> None:
        if record is not None and not _intact(record, pk):
            self.counts["wrong"] += 1
            self.wrong.append(f"{what}({pk}) -> {record!r:.80}")

    async def one(self, repo: co.AsyncRepository[Rec], op: str, pk: int) -> None:
        try:
            if op == "get":
                self.check(op, pk, await repo.get(pk))
            elif op == "get_or_none":
                self.check(op, pk, await repo.get_or_none(pk))
            elif op == "get_many":
                pks = [pk, pk % len(_IDS) + 1, (pk * 7) % len(_IDS) + 1]
                for p, record in zip(pks, await repo.get_many(pks), strict=True):
                    self.check(op, p, record)
            elif op == "save":
                await repo.save(Rec(pk, _body(pk), self.rng.randrange(1000)))
            elif op == "update_with":
                self.check(op, pk, await repo.update_with(pk, _next_version))
            elif op == "delete":
                await repo.delete(pk)
            else:
                # A lease whose release a cut connection lost outlives its holder:
                # wait for one only briefly.
                loaded = await repo.get_or_load(pk, lambda: Rec(pk, _body(pk)), lock_timeout=0.05)
                self.check(op, pk, loaded)
        except co.NotFound:
            pass  # deleted by another task meanwhile

    async def run(
        self,
        repo: co.AsyncRepository[Rec],
        cancellations: int,
        faults: Callable[[random.Random], None] | None = None,
    ) -> None:
        """Rounds until ``cancellations`` tasks were cancelled."""
        rng = self.rng
        await repo.save_many([Rec(pk, _body(pk)) for pk in _IDS])
        deadline = time.monotonic() + 60
        while self.counts["cancelled"] < cancellations:
            assert time.monotonic() < deadline, f"too slow: {self.counts}"
            if faults is not None:
                faults(rng)
            tasks = [
                asyncio.ensure_future(self.one(repo, rng.choice(_OPS), rng.choice(_IDS)))
                for _ in range(64)
            ]
            for _ in range(rng.randrange(4)):
                await asyncio.sleep(0)  # let some requests go out, some replies come back
            if rng.random() < 0.5:
                await asyncio.sleep(rng.random() * 0.002)
            for task in tasks:
                if rng.random() < 0.6:
                    task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for task, result in zip(tasks, results, strict=True):
                self.counts["tasks"] += 1
                if task.cancelled():
                    self.counts["cancelled"] += 1
                elif faults is not None and isinstance(result, co.BackendUnavailable):
                    self.counts["failed"] += 1  # a cut connection: allowed, and counted
                elif isinstance(result, BaseException):
                    raise result
                else:
                    self.counts["completed"] += 1

    async def check_all(self, repo: co.AsyncRepository[Rec]) -> None:
        """Every record stored is intact and under its own key."""
        for pk, record in zip(_IDS, await repo.get_many(_IDS), strict=True):
            self.check("final", pk, record)
        for pk in _IDS:
            self.check("final-get", pk, await repo.get_or_none(pk))

    def summary(self, where: str) -> str:
        c = self.counts
        return (
            f"[{where}] {c['tasks']} operations, {c['cancelled']} cancelled, {c['completed']} "
            f"completed, {c['failed']} failed on a cut connection, {c['wrong']} wrong records"
        )


def test_thousands_of_random_cancellations_never_hand_out_a_wrong_record(
    server_backend: tuple[str, Any, Callable[[], Any]],
    portal: Portal,
    capsys: pytest.CaptureFixture[str],
) -> None:
    kind, backend, make = server_backend
    storm = Storm(12)
    repo = co.AsyncRepository(Rec, backend=backend)
    portal.call(storm.run(repo, 5000), timeout=300)
    portal.call(storm.check_all(repo))  # every record intact, under its own key
    fresh = _on(portal, make)  # and read back on a new connection
    try:
        portal.call(storm.check_all(co.AsyncRepository(Rec, backend=fresh)))
    finally:
        portal.call(fresh.aclose())
    assert storm.wrong == [], storm.wrong[:10]
    assert storm.counts["cancelled"] >= 5000
    with capsys.disabled():
        print(f"\n{storm.summary(kind)}", end=" ")


def test_cancellations_while_a_proxy_cuts_replies_never_hand_out_a_wrong_record(
    proxied: tuple[FaultProxy, Any, co.Backend],
    portal: Portal,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """As above, and in a third of the rounds the proxy cuts the connection mid-reply."""
    proxy, backend, direct = proxied
    storm = Storm(21)

    def faults(rng: random.Random) -> None:
        if rng.random() < 0.33:
            proxy.set_mode("cut_replies_after", rng.randrange(4000))
        else:
            proxy.set_mode("pass")

    repo = co.AsyncRepository(Rec, backend=backend)
    portal.call(storm.run(repo, 2000, faults), timeout=300)
    proxy.set_mode("pass")
    portal.call(storm.check_all(repo))
    reader = co.Repository(Rec, backend=direct)  # the sync side reads the same records
    for pk, record in zip(_IDS, reader.get_many(_IDS), strict=True):
        storm.check("sync", pk, record)
    assert storm.wrong == [], storm.wrong[:10]
    assert storm.counts["failed"] > 0, storm.counts
    with capsys.disabled():
        print(f"\n{storm.summary(type(backend).__name__ + ' through a cutting proxy')}", end=" ")


def test_a_get_or_load_cancelled_at_any_point_leaves_no_lease(
    server_backend: tuple[str, Any, Callable[[], Any]], portal: Portal
) -> None:
    """Cancel get_or_load of 400 missing keys at random points: no lease may stay behind.

    Cancelled while the lease's ``add`` is in flight, or while the lease is being
    released after the load: its release (a Cleanup request) runs to its end either way.
    """
    _, backend, _ = server_backend
    rng = random.Random(5)

    async def main() -> dict[int, int]:
        repo = co.AsyncRepository(Counter, backend=backend)
        left: dict[int, int] = {}  # cancel point (loop iterations after the call) -> leases left
        for pk in range(400):
            task = asyncio.ensure_future(repo.get_or_load(pk, lambda: Counter(0)))
            point = rng.randrange(20)
            for _ in range(point):
                await asyncio.sleep(0)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            if await backend.get(repo.key_for(pk) + LEASE_SUFFIX) is not None:
                left[point] = left.get(point, 0) + 1
        return left

    assert portal.call(main()) == {}
