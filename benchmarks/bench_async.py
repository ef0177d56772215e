"""Async benchmark: cacheorm's AsyncRepository against hand-written asyncio client code.

For the 8-field ``User`` record of ``bench_core.py`` (about 190 bytes of json)
it measures, on servers it starts itself on free loopback ports (a
redis-server, a 3-master Redis Cluster and a memcached; never a server that is
already running):

* ``get`` and ``create`` (distinct keys) with C concurrent tasks, for C in
  1, 16, 64 and 256: ops/s, the speedup ``cacheorm ops/s / baseline ops/s``
  (higher is better) and the client CPU per operation (``time.process_time``
  over the timed block / operations; the servers are other processes, but
  they share the machine's cores);
* ``get_many`` of 100 keys with one task: cacheorm against ``MGET`` + decode,
  and the cluster against one node.

The baselines are hand-written, each doing the full encode/decode of the
record as ``bench_core`` does (``dataclass -> dict -> json.dumps``;
``json.loads -> dataclass``, f-string keys ``user:{id}``):

* Redis: ``redis.asyncio`` (redis-py, with hiredis when installed) on a
  connection pool of C, ``GET`` / ``SET key value NX`` / ``MGET``;
* Redis Cluster: ``redis.asyncio.cluster.RedisCluster`` with at most C
  connections per node, ``GET`` / ``SET NX`` / ``mget_nonatomic``;
* Memcached: aiomcache with a pool of C, ``get`` / ``add`` / ``multi_get``.

The contenders are ``cacheorm.AsyncRepository`` on ``AsyncRedisBackend.from_url``,
``AsyncRedisBackend.from_cluster`` and ``AsyncMemcachedBackend.from_servers``,
with the json serializer: the fast codec path (msgspec/orjson) when installed,
and the stdlib codec path (``CACHEORM_FAST=0``) as a second contender, so the
protocol's share of the gain can be told from the codec's. Each side is built
by a small factory; a side that this build (or this environment) lacks is
reported as unavailable and the others still run.

Method: the sides of a server run in rotating order, one timed block each (a
fixed number of operations shared by C tasks, garbage collector off), in
several rounds; the speedup is the median of the per-round ratios, ops/s and
CPU µs/op come from the totals. ``create`` writes keys no side has written;
``get`` reads back what ``create`` wrote. Results are checked outside the
timed blocks (the records read back, the keys stored, counted by a separate
synchronous client), so a failing operation cannot pass for a fast one. Each
block has a time limit, so a hung client fails the run instead of hanging it.
The whole benchmark runs on uvloop (when installed) and on the plain asyncio
event loop.

Run it with ``python benchmarks/bench_async.py [--quick] [--only redis|cluster|memcached]
[--loop uvloop|asyncio|both] [--concurrency 1,16,64,256] [--ops N] [--rounds N]
[--profile]``. ``--quick`` is a smoke run (few operations, one round, one
loop). ``--profile`` adds a cProfile of cacheorm's ``get`` and ``create`` at
C=64 (top functions by own time, µs per operation). Exit status 2 when a
server binary is missing, 1 when a side failed (raised, or returned or
stored the wrong records), else 0, whether or not the targets are met and
whatever is unavailable.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import gc
import importlib
import io
import os
import platform
import pstats
import shutil
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar, cast

_HERE = Path(__file__).resolve().parent
for _path in (_HERE, _HERE.parent):  # bench_core, and the repository root for tests.servers
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import pymemcache.client.base  # noqa: E402
import redis  # noqa: E402
import redis.asyncio  # noqa: E402
import redis.asyncio.cluster  # noqa: E402
import redis.cluster  # noqa: E402
from bench_backends import make_records  # noqa: E402
from bench_core import User, hand_decode, hand_encode  # noqa: E402
from tests.servers import (  # noqa: E402
    ServerMissing,
    start_memcached,
    start_redis,
    start_redis_cluster,
)

import cacheorm as co  # noqa: E402
from cacheorm import _fast  # noqa: E402

#: Concurrent tasks per measurement.
CONCURRENCY = (1, 16, 64, 256)
#: Keys per get_many call.
MANY = 100
#: Tasks (and baseline pool size) that store the records get_many reads.
FILL = 16
#: A timed block taking longer than this fails the run (a hung client).
BLOCK_TIMEOUT = 300.0

#: Targets from issue 12: speedup = cacheorm ops/s / baseline ops/s (higher is better).
TARGETS_SPEEDUP = {
    # (server, operation, concurrency): minimum speedup against the baseline
    ("redis", "get", 64): 5.0,
    ("redis", "create", 64): 5.0,
    ("redis", "get", 1): 1.2,
    ("redis", "create", 1): 1.2,
    ("memcached", "get", 64): 3.0,
    ("memcached", "create", 64): 3.0,
}
TARGET_MANY_SPEEDUP = 1.2  # Redis get_many of 100 against MGET + decode
TARGET_CLUSTER_RATIO = 1.5  # cluster get_many time / one node's, at most

SERVERS = ("redis", "cluster", "memcached")
TITLES = {
    "redis": "Redis, one server",
    "cluster": "Redis Cluster, 3 masters",
    "memcached": "Memcached, one server",
}
BASELINE, ORM, ORM_STDLIB = "baseline", "cacheorm", "cacheorm stdlib json"
ROLES = (BASELINE, ORM, ORM_STDLIB)


class Unavailable(Exception):
    """A side this build or environment cannot run; the message says why."""


@dataclasses.dataclass
class Notes:
    """What could not run: sides missing from this build, and sides that failed (bugs)."""

    unavailable: dict[str, str] = dataclasses.field(default_factory=dict)
    failed: dict[str, str] = dataclasses.field(default_factory=dict)

    def fail(self, what: str, exc: BaseException) -> None:
        self.failed[what] = f"{type(exc).__name__}: {exc}"


def check(ok: bool, message: str) -> None:
    """Raise unless ``ok``; unlike ``assert``, ``python -O`` does not skip it."""
    if not ok:
        raise RuntimeError(f"benchmark check failed: {message}")


def chunks(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def dumps(user: User) -> bytes:
    return hand_encode(user).encode()


# --- servers ---------------------------------------------------------------------------


@dataclasses.dataclass
class Servers:
    """The started servers, and synchronous admin clients to check and flush them with."""

    redis_url: str
    cluster_nodes: list[str]
    memcached: list[str]
    versions: dict[str, str]
    stops: list[Callable[[], None]]

    def count_present(self, server: str, keys: list[str]) -> int:
        """How many of ``keys`` the server holds, asked by a new synchronous client."""
        present = 0
        if server == "redis":
            with redis.Redis.from_url(self.redis_url) as admin:
                for chunk in chunks(keys, 1000):
                    present += int(admin.exists(*chunk))
        elif server == "cluster":
            admin = redis.cluster.RedisCluster(startup_nodes=self._cluster_nodes())
            try:
                for chunk in chunks(keys, 1000):
                    present += sum(v is not None for v in admin.mget_nonatomic(chunk))
            finally:
                admin.close()
        else:
            host, port = self.memcached[0].rsplit(":", 1)
            mc = pymemcache.client.base.Client((host, int(port)), timeout=10.0)
            try:
                for chunk in chunks(keys, 1000):
                    present += len(mc.get_many(chunk))
            finally:
                mc.close()
        return present

    def flush(self, server: str) -> None:
        """Empty the server between measurements."""
        if server == "redis":
            with redis.Redis.from_url(self.redis_url) as admin:
                admin.flushall()
        elif server == "cluster":
            for node in self.cluster_nodes:
                host, port = node.rsplit(":", 1)
                with redis.Redis(host=host, port=int(port)) as admin:
                    admin.flushall()
        else:
            host, port = self.memcached[0].rsplit(":", 1)
            mc = pymemcache.client.base.Client((host, int(port)), timeout=10.0)
            try:
                mc.flush_all(noreply=False)
            finally:
                mc.close()

    def _cluster_nodes(self) -> list[redis.cluster.ClusterNode]:
        return [
            redis.cluster.ClusterNode(host, int(port))  # type: ignore[no-untyped-call]
            for host, port in (a.rsplit(":", 1) for a in self.cluster_nodes)
        ]

    def stop(self) -> None:
        for stop in self.stops:
            stop()


def start_servers(chosen: list[str]) -> Servers:
    """Start the servers ``chosen`` needs (the cluster comparison needs one redis-server)."""
    servers = Servers("", [], [], {}, [])
    try:
        if "redis" in chosen or "cluster" in chosen:
            single = start_redis()
            servers.stops.append(single.stop)
            servers.redis_url = single.url
            with redis.Redis.from_url(single.url) as admin:
                servers.versions["Redis"] = str(admin.info("server")["redis_version"])
        if "cluster" in chosen:
            cluster = start_redis_cluster(3)
            servers.stops.append(cluster.stop)
            servers.cluster_nodes = cluster.startup_nodes
        if "memcached" in chosen:
            mc = start_memcached(1)
            servers.stops.append(mc.stop)
            servers.memcached = mc.servers
            host, port = mc.servers[0].rsplit(":", 1)
            client = pymemcache.client.base.Client((host, int(port)), timeout=10.0)
            try:
                servers.versions["memcached"] = client.version().decode()
            finally:
                client.close()
    except BaseException:
        servers.stop()
        raise
    return servers


# --- sides -----------------------------------------------------------------------------


@dataclasses.dataclass
class Side:
    """One client on one server: the three operations, and how to close it."""

    name: str
    get: Callable[[int], Awaitable[User]]
    create: Callable[[User], Awaitable[object]]
    get_many: Callable[[list[int]], Awaitable[Sequence[User | None]]]
    aclose: Callable[[], Awaitable[object]]


K = TypeVar("K")

#: Builds one side on the started servers for C concurrent tasks (a pool of C, say).
Factory = Callable[[Servers, int], Awaitable[Side]]


def hand_redis_ops(
    name: str, client: Any, mget: Callable[[list[str]], Awaitable[list[bytes | None]]]
) -> Side:
    """Hand-written GET / SET NX / MGET + json on a redis.asyncio client (or cluster client)."""

    async def get(pk: int) -> User:
        payload = await client.get(f"user:{pk}")
        if payload is None:
            raise KeyError(f"user:{pk}")
        return hand_decode(payload)

    async def create(user: User) -> User:
        if not await client.set(f"user:{user.id}", dumps(user), nx=True):
            raise KeyError(f"user:{user.id} exists")
        return user

    async def get_many(pks: list[int]) -> list[User | None]:
        payloads = await mget([f"user:{pk}" for pk in pks])
        return [None if payload is None else hand_decode(payload) for payload in payloads]

    return Side(name, get, create, get_many, client.aclose)


async def hand_redis(servers: Servers, concurrency: int) -> Side:
    pool = redis.asyncio.ConnectionPool.from_url(
        servers.redis_url,
        max_connections=concurrency,
        socket_timeout=5.0,
        # 256 connections opened at once on a busy 2-core machine can take over 5 s
        socket_connect_timeout=30.0,
    )
    client = redis.asyncio.Redis(connection_pool=pool)

    async def mget(keys: list[str]) -> list[bytes | None]:
        return cast("list[bytes | None]", await client.mget(keys))

    async def aclose() -> None:
        await client.aclose()
        await pool.disconnect()

    side = hand_redis_ops(f"redis.asyncio pool of {concurrency}", client, mget)
    side.aclose = aclose
    return side


async def hand_cluster(servers: Servers, concurrency: int) -> Side:
    nodes = [
        redis.asyncio.cluster.ClusterNode(host, int(port))
        for host, port in (a.rsplit(":", 1) for a in servers.cluster_nodes)
    ]
    client = redis.asyncio.cluster.RedisCluster(
        startup_nodes=nodes,
        max_connections=max(concurrency, 1),
        socket_timeout=5.0,
        socket_connect_timeout=30.0,
    )
    await client.initialize()

    async def mget(keys: list[str]) -> list[bytes | None]:
        return cast("list[bytes | None]", await client.mget_nonatomic(keys))

    return hand_redis_ops(f"redis.asyncio RedisCluster, {concurrency} conns/node", client, mget)


async def hand_memcached(servers: Servers, concurrency: int) -> Side:
    try:
        import aiomcache
    except ImportError as exc:
        raise Unavailable(f"aiomcache is not installed ({exc})") from exc
    host, port = servers.memcached[0].rsplit(":", 1)
    client = aiomcache.Client(host, int(port), pool_size=concurrency)

    async def get(pk: int) -> User:
        payload = await client.get(f"user:{pk}".encode())
        if payload is None:
            raise KeyError(f"user:{pk}")
        return hand_decode(payload)

    async def create(user: User) -> User:
        if not await client.add(f"user:{user.id}".encode(), dumps(user)):
            raise KeyError(f"user:{user.id} exists")
        return user

    async def get_many(pks: list[int]) -> list[User | None]:
        payloads = await client.multi_get(*[f"user:{pk}".encode() for pk in pks])
        return [None if payload is None else hand_decode(payload) for payload in payloads]

    return Side(f"aiomcache pool of {concurrency}", get, create, get_many, client.close)


#: Where a class lives before it is exported from ``cacheorm``.
PRIVATE_MODULES = {
    "AsyncRepository": "cacheorm._async_repository",
    "AsyncRedisBackend": "cacheorm._aio_redis",
    "AsyncMemcachedBackend": "cacheorm._aio_memcached",
}


def cacheorm_class(name: str) -> Any:
    """``cacheorm.<name>`` (or its private module's); Unavailable while this build lacks it."""
    cls = getattr(co, name, None)
    if cls is None:
        try:
            cls = getattr(importlib.import_module(PRIVATE_MODULES[name]), name)
        except (ImportError, AttributeError) as exc:
            raise Unavailable(f"cacheorm.{name} is not in this build") from exc
    return cls


def orm_factory(build_backend: Callable[[Servers], Any], *, fast: bool) -> Factory:
    """A factory of cacheorm sides: an AsyncRepository (json) on ``build_backend(servers)``."""

    async def factory(servers: Servers, concurrency: int) -> Side:
        repository_class = cacheorm_class("AsyncRepository")
        backend = build_backend(servers)
        saved = _fast.ENABLED
        _fast.ENABLED = fast  # read when the repository is built
        try:
            repo = repository_class(User, backend=backend, serializer="json")
        except BaseException:
            await backend.aclose()
            raise
        finally:
            _fast.ENABLED = saved
        check(repo.key_for(1) == "user:1", f"cacheorm key {repo.key_for(1)!r} is not 'user:1'")
        name = f"{'' if fast else 'stdlib json '}{type(backend).__name__}"

        async def aclose() -> None:
            await repo.aclose()
            await backend.aclose()  # a backend passed in is the caller's to close

        return Side(name, repo.get, repo.create, repo.get_many, aclose)

    return factory


def orm_redis(servers: Servers) -> Any:
    return cacheorm_class("AsyncRedisBackend").from_url(servers.redis_url)


def orm_cluster(servers: Servers) -> Any:
    return cacheorm_class("AsyncRedisBackend").from_cluster(servers.cluster_nodes)


def orm_memcached(servers: Servers) -> Any:
    return cacheorm_class("AsyncMemcachedBackend").from_servers(servers.memcached)


#: Per server: the factory of each side, the baseline first.
FACTORIES: dict[str, dict[str, Factory]] = {
    "redis": {
        BASELINE: hand_redis,
        ORM: orm_factory(orm_redis, fast=True),
        ORM_STDLIB: orm_factory(orm_redis, fast=False),
    },
    "cluster": {
        BASELINE: hand_cluster,
        ORM: orm_factory(orm_cluster, fast=True),
        ORM_STDLIB: orm_factory(orm_cluster, fast=False),
    },
    "memcached": {
        BASELINE: hand_memcached,
        ORM: orm_factory(orm_memcached, fast=True),
        ORM_STDLIB: orm_factory(orm_memcached, fast=False),
    },
}


async def build_sides(
    servers: Servers, server: str, concurrency: int, notes: Notes
) -> dict[str, Side]:
    """The sides of ``server`` that can run; why the others cannot goes to ``notes``."""
    sides: dict[str, Side] = {}
    for role, factory in FACTORIES[server].items():
        if role == ORM_STDLIB and not fast_path_installed():
            continue  # the fast contender is the stdlib one already
        try:
            sides[role] = await factory(servers, concurrency)
        except (Unavailable, ImportError) as exc:
            notes.unavailable[f"{TITLES[server]}: {role}"] = str(exc)
        except Exception as exc:
            notes.fail(f"{TITLES[server]}: {role} (building it, C={concurrency})", exc)
    return sides


async def close_all(sides: dict[Any, Side], notes: Notes) -> None:
    """Close every side, each within 30 s; a failure to close is noted, not raised."""
    for key, side in list(sides.items()):
        del sides[key]
        try:
            await asyncio.wait_for(side.aclose(), 30.0)
        except Exception as exc:
            notes.fail(f"{side.name}: aclose", exc)


async def attempt(
    sides: dict[Any, Side], key: Any, what: str, notes: Notes, body: Awaitable[None]
) -> bool:
    """Await ``body``; if it fails, note it, close the side and drop it from ``sides``."""
    try:
        await body
    except Exception as exc:
        notes.fail(what, exc)
        await close_all({key: sides.pop(key)}, notes)
        return False
    return True


def fast_path_installed() -> bool:
    try:
        import msgspec  # noqa: F401
    except ImportError:
        return False
    return _fast.ENABLED


# --- timing ----------------------------------------------------------------------------


@dataclasses.dataclass
class Block:
    """One timed block: operations, wall and CPU nanoseconds."""

    ops: int
    wall_ns: int
    cpu_ns: int


async def timed_block(
    op: Callable[[Any], Awaitable[Any]],
    args: Sequence[Any],
    concurrency: int,
    profiler: cProfile.Profile | None = None,
    *,
    collect: bool = True,
) -> tuple[Block, list[Any]]:
    """Run ``op`` on every one of ``args`` from ``concurrency`` tasks; the time and results.

    The collector is off while the tasks run; ``collect`` runs it first (untimed:
    the caller of a series of short blocks collects once before the series).
    ``profiler`` is on while the tasks run.
    """
    results: list[Any] = [None] * len(args)
    work = iter(enumerate(args))

    async def worker() -> None:
        for i, arg in work:
            results[i] = await op(arg)

    if collect:
        gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    tasks: list[asyncio.Task[None]] = []
    try:
        if profiler is not None:
            profiler.enable()
        cpu, start = time.process_time_ns(), time.perf_counter_ns()
        tasks = [asyncio.ensure_future(worker()) for _ in range(concurrency)]
        await asyncio.wait_for(asyncio.gather(*tasks), BLOCK_TIMEOUT)
        wall, cpu = time.perf_counter_ns() - start, time.process_time_ns() - cpu
    finally:
        if profiler is not None:
            profiler.disable()
        if gc_was_enabled:
            gc.enable()
        # A failed or timed-out block: stop the other tasks before the error goes up.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return Block(len(args), wall, cpu), results


@dataclasses.dataclass
class Measured:
    """The blocks of every side for one (server, operation, concurrency)."""

    blocks: dict[str, list[Block]] = dataclasses.field(default_factory=dict)

    def add(self, role: str, block: Block) -> None:
        self.blocks.setdefault(role, []).append(block)

    def ops_per_s(self, role: str) -> float:
        blocks = self.blocks[role]
        return sum(b.ops for b in blocks) / (sum(b.wall_ns for b in blocks) / 1e9)

    def cpu_us(self, role: str) -> float:
        blocks = self.blocks[role]
        return sum(b.cpu_ns for b in blocks) / sum(b.ops for b in blocks) / 1e3

    def speedup(self, role: str, against: str = BASELINE) -> float | None:
        """Median of the per-round ratios of ops/s (``role`` / ``against``)."""
        if role not in self.blocks or against not in self.blocks:
            return None
        return statistics.median(
            (b.ops / b.wall_ns) / (a.ops / a.wall_ns)
            for b, a in zip(self.blocks[role], self.blocks[against], strict=True)
        )


@dataclasses.dataclass
class Config:
    concurrency: tuple[int, ...]
    ops: int  # operations per timed block (at least per_task per task)
    per_task: int
    rounds: int
    many_calls: int  # get_many calls (blocks of one call each) per side
    loops: list[str]
    profile: bool


def block_ops(cfg: Config, concurrency: int) -> int:
    return max(cfg.ops, cfg.per_task * concurrency)


def rotated(names: list[K], round_: int) -> list[K]:
    """``names`` rotated by ``round_``, reversed every other cycle: no side always goes first."""
    k = round_ % len(names)
    order = names[k:] + names[:k]
    return order[::-1] if (round_ // len(names)) % 2 else order


#: Distinct ids for every block: side slot * 10M + a running offset (same digit count).
_next_offset: dict[str, int] = {}


def fresh_records(role: str, n: int) -> list[User]:
    slot = ROLES.index(role) + 1
    offset = _next_offset.get(role, 0)
    check(offset + n < 10_000_000, "ran out of distinct ids")
    _next_offset[role] = offset + n
    return make_records(slot * 10_000_000 + offset, n)


async def measure_server(
    servers: Servers, server: str, cfg: Config, notes: Notes
) -> dict[tuple[str, int], Measured]:
    """get and create at each concurrency on one server."""
    out: dict[tuple[str, int], Measured] = {}
    for concurrency in cfg.concurrency:
        servers.flush(server)
        out["create", concurrency], out["get", concurrency] = await measure_at(
            servers, server, cfg, concurrency, notes
        )
    servers.flush(server)
    return out


async def measure_at(
    servers: Servers, server: str, cfg: Config, concurrency: int, notes: Notes
) -> tuple[Measured, Measured]:
    """create and get with ``concurrency`` tasks; checked outside the timed blocks.

    A side that fails (raises, or does not pass a check) is noted, closed and
    left out of the table; the other sides go on.
    """
    sides = await build_sides(servers, server, concurrency, notes)
    n = block_ops(cfg, concurrency)
    created, read = Measured(), Measured()

    def what(name: str, op: str) -> str:
        return f"{TITLES[server]}: {name} {op}, C={concurrency}"

    async def warm_up(name: str) -> None:
        """Untimed: connections, caches, lazy imports."""
        warm = fresh_records(name, min(n, 2 * concurrency))
        await timed_block(sides[name].create, warm, concurrency, collect=False)
        _, got = await timed_block(
            sides[name].get, [u.id for u in warm], concurrency, collect=False
        )
        check(got == warm, f"{what(name, 'warm-up get')}: read back other records")

    async def create(name: str, records: list[User]) -> None:
        block, results = await timed_block(sides[name].create, records, concurrency)
        check(results == records, f"{what(name, 'create')}: returned other records")
        present = servers.count_present(server, [f"user:{u.id}" for u in records])
        check(present == n, f"{what(name, 'create')}: {present} of {n} records stored")
        created.add(name, block)

    async def get(name: str, records: list[User]) -> None:
        block, results = await timed_block(sides[name].get, [u.id for u in records], concurrency)
        check(results == records, f"{what(name, 'get')}: read back other records")
        read.add(name, block)

    try:
        for name in list(sides):
            await attempt(sides, name, what(name, "warm-up"), notes, warm_up(name))
        for round_ in range(cfg.rounds):
            order = rotated(list(sides), round_)
            records = {name: fresh_records(name, n) for name in order}
            for name in order:
                if name in sides:
                    await attempt(
                        sides, name, what(name, "create"), notes, create(name, records[name])
                    )
            for name in reversed(order):
                if name in sides:
                    await attempt(sides, name, what(name, "get"), notes, get(name, records[name]))
        for measured in (created, read):  # a side that failed has no figures
            for name in list(measured.blocks):
                if name not in sides:
                    del measured.blocks[name]
    finally:
        await close_all(sides, notes)
    return created, read


async def measure_many(
    servers: Servers, chosen: list[str], cfg: Config, notes: Notes
) -> dict[tuple[str, str], list[float]]:
    """get_many of MANY keys at C=1: µs per call of every side, block by block, interleaved."""
    sides: dict[tuple[str, str], Side] = {}
    targets = [s for s in SERVERS if s in chosen or (s == "redis" and "cluster" in chosen)]
    quiet = Notes()  # measure_server reports what is unavailable
    for server in targets:
        servers.flush(server)
        # Pools of FILL (the baseline's) so the records go in quickly; one task reads.
        for role, side in (await build_sides(servers, server, FILL, quiet)).items():
            sides[server, role] = side
    notes.failed.update(quiet.failed)
    times: dict[tuple[str, str], list[float]] = {key: [] for key in sides}
    records: dict[tuple[str, str], list[User]] = {}

    def what(key: tuple[str, str]) -> str:
        return f"{TITLES[key[0]]}: {sides[key].name} get_many"

    async def fill(key: tuple[str, str]) -> None:
        records[key] = fresh_records(key[1], MANY * min(cfg.many_calls, 10))
        await timed_block(sides[key].create, records[key], FILL, collect=False)

    async def call(key: tuple[str, str], i: int) -> None:
        batch = records[key][(i % 10) * MANY : (i % 10 + 1) * MANY]
        block, results = await timed_block(
            sides[key].get_many, [[u.id for u in batch]], 1, collect=False
        )
        check(list(results[0]) == batch, f"{what(key)}: read back other records")
        times[key].append(block.wall_ns / 1e3)

    try:
        for key in list(sides):
            await attempt(sides, key, what(key) + " (filling)", notes, fill(key))
        for i in range(cfg.many_calls):
            gc.collect()  # once per cycle of calls: one per call would take longer than they do
            for key in rotated(list(sides), i):
                await attempt(sides, key, what(key), notes, call(key, i))
    finally:
        await close_all(sides, notes)
        for server in targets:
            servers.flush(server)
    return {key: us for key, us in times.items() if len(us) == cfg.many_calls}


async def profile_contender(servers: Servers, server: str, cfg: Config, notes: Notes) -> str:
    """cProfile of cacheorm's get and create at C=64, and get_many of MANY keys at C=1.

    Top functions by own time, per operation (per get_many call).
    """
    sides: dict[str, Side] = {}
    try:
        sides[ORM] = await FACTORIES[server][ORM](servers, 64)
    except Exception as exc:
        return f"{TITLES[server]}: cacheorm is unavailable, nothing to profile ({exc})\n"
    side = sides[ORM]
    out = io.StringIO()
    try:
        n = block_ops(cfg, 64)
        warm = fresh_records(ORM, n)  # connections, caches, lazy imports: not profiled
        await timed_block(side.create, warm, 64)
        await timed_block(side.get, [u.id for u in warm], 64)
        records = fresh_records(ORM, n)
        stored = fresh_records(ORM, MANY * min(100, cfg.many_calls))  # for get_many
        await timed_block(side.create, stored, 64)
        for label, op, args, concurrency in (
            ("create", side.create, records, 64),
            ("get", side.get, [u.id for u in records], 64),
            (f"get_many of {MANY}", side.get_many, list(chunks([u.id for u in stored], MANY)), 1),
        ):
            n = len(args)
            # Wall time (cProfile's default): a process_time timer costs a system
            # call per event and drowns the figures; run on a quiet machine.
            profiler = cProfile.Profile()
            await timed_block(op, args, concurrency, profiler)
            stats = pstats.Stats(profiler, stream=out)
            total = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
            out.write(
                f"#### {TITLES[server]}: cacheorm {label}, C={concurrency}, {n:,} calls, "
                f"profiled {total / n * 1e6:.1f} µs/call (cProfile inflates small calls)"
                "\n\n```\n"
            )
            rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)  # type: ignore[attr-defined]
            out.write(f"{'own µs':>10} {'cum µs':>10} {'calls':>9}  function (per call)\n")
            for (path, line, func), (_cc, calls, tottime, cumtime, _callers) in rows[:25]:
                where = f"{Path(path).name}:{line}({func})" if line else func
                out.write(
                    f"{tottime / n * 1e6:>10.2f} {cumtime / n * 1e6:>10.2f} "
                    f"{calls / n:>9.2f}  {where}\n"
                )
            out.write("```\n\n")
    except Exception as exc:
        notes.fail(f"{TITLES[server]}: cacheorm profile", exc)
    finally:
        await close_all(sides, notes)
        servers.flush(server)
    return out.getvalue()


# --- report ----------------------------------------------------------------------------


def fmt_speedup(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def report_server(
    server: str, results: dict[tuple[str, int], Measured], cfg: Config, loop: str
) -> None:
    roles = [r for r in ROLES if any(r in m.blocks for m in results.values())]
    names = {BASELINE: "baseline", ORM: "cacheorm", ORM_STDLIB: "cacheorm stdlib json"}
    print(f"### {TITLES[server]} — {loop}\n")
    head = "| C | op | " + " | ".join(f"{names[r]} ops/s" for r in roles)
    head += "".join(f" | {names[r]} speedup" for r in roles if r != BASELINE)
    head += "".join(f" | {names[r]} CPU µs/op" for r in roles) + " |"
    print(head)
    print("|---:|---|" + "---:|" * (len(roles) * 2 + len(roles) - 1))
    for concurrency in cfg.concurrency:
        for op in ("get", "create"):
            m = results[op, concurrency]
            cells = [f"{m.ops_per_s(r):,.0f}" if r in m.blocks else "—" for r in roles]
            cells += [fmt_speedup(m.speedup(r)) for r in roles if r != BASELINE]
            cells += [f"{m.cpu_us(r):.1f}" if r in m.blocks else "—" for r in roles]
            print(f"| {concurrency} | {op} | " + " | ".join(cells) + " |")
    print()


def report_many(times: dict[tuple[str, str], list[float]], loop: str) -> list[tuple[str, bool]]:
    """The get_many table; the verdicts of its targets."""
    verdicts: list[tuple[str, bool]] = []
    if not times:
        return verdicts
    med = statistics.median
    print(f"### get_many of {MANY} keys, one task — {loop}\n")
    print("| server | side | µs per call (median) | keys/s |")
    print("|---|---|---:|---:|")
    for (server, role), us in times.items():
        print(f"| {TITLES[server]} | {role} | {med(us):,.0f} | {MANY / med(us) * 1e6:,.0f} |")
    print()

    def ratio(a: tuple[str, str], b: tuple[str, str]) -> float | None:
        if a not in times or b not in times:
            return None
        return med(x / y for x, y in zip(times[a], times[b], strict=True))

    rows = []
    for server in SERVERS:
        for role in (ORM, ORM_STDLIB):
            r = ratio((server, BASELINE), (server, role))
            if r is not None:
                rows.append((f"{TITLES[server]}: {role} speedup over the baseline", r))
                if server == "redis" and role == ORM:
                    verdicts.append(
                        (f"Redis get_many of {MANY} >= {TARGET_MANY_SPEEDUP}x: {r:.2f}x",
                         r >= TARGET_MANY_SPEEDUP)
                    )  # fmt: skip
    for role in (BASELINE, ORM, ORM_STDLIB):
        r = ratio(("cluster", role), ("redis", role))
        if r is not None:
            rows.append((f"{role}: cluster time / one node's time", r))
            if role == ORM:
                verdicts.append(
                    (f"cluster get_many within {TARGET_CLUSTER_RATIO}x of one node: {r:.2f}x",
                     r <= TARGET_CLUSTER_RATIO)
                )  # fmt: skip
    if rows:
        print("| comparison | median of per-call ratios |")
        print("|---|---:|")
        for label, r in rows:
            print(f"| {label} | {r:.2f} |")
        print()
    return verdicts


def verdicts_of(
    results: dict[str, dict[tuple[str, int], Measured]], cfg: Config
) -> list[tuple[str, bool]]:
    out = []
    for (server, op, concurrency), minimum in TARGETS_SPEEDUP.items():
        m = results.get(server, {}).get((op, concurrency))
        value = None if m is None else m.speedup(ORM)
        if value is not None:
            out.append(
                (f"{TITLES[server]} {op} at C={concurrency} >= {minimum}x: {value:.2f}x",
                 value >= minimum)
            )  # fmt: skip
    del cfg
    return out


# --- main ------------------------------------------------------------------------------


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def run_on(name: str, coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` on a new event loop of kind ``name``, cleaning up as ``asyncio.run`` does.

    (``asyncio.Runner`` takes a loop factory only from Python 3.11 on.)
    A task still running once ``coro`` is done (every client was closed by
    then) is a client's leak: it is printed, cancelled and waited for 10 s at
    most, so a task that ignores cancellation cannot hang the benchmark.
    """
    loop = loop_factory(name)()
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(coro)
    finally:
        try:
            left = asyncio.all_tasks(loop)
            if left:
                print(f"### {len(left)} task(s) left running on {name} after every client closed\n")
                for task in left:
                    print(f"- {task!r}")
                    task.cancel()
                print()
                _, pending = loop.run_until_complete(asyncio.wait(left, timeout=10.0))
                for task in pending:
                    print(f"- still running 10 s after cancel(): {task!r}\n")
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


async def bench_loop(
    servers: Servers, chosen: list[str], cfg: Config, loop: str, notes: Notes
) -> list[tuple[str, bool]]:
    results: dict[str, dict[tuple[str, int], Measured]] = {}
    gc.collect()
    gc.freeze()  # modules and the like: later collections need not scan them again
    for server in chosen:
        results[server] = await measure_server(servers, server, cfg, notes)
        report_server(server, results[server], cfg, loop)
    times = await measure_many(servers, chosen, cfg, notes)
    verdicts = verdicts_of(results, cfg) + report_many(times, loop)
    if cfg.profile:
        print(f"### Where cacheorm's time goes — {loop}\n")
        for server in chosen:
            print(await profile_contender(servers, server, cfg, notes))
    return verdicts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: few ops, 1 round, 1 loop")
    parser.add_argument("--only", choices=SERVERS, help="one server only")
    parser.add_argument("--loop", choices=["uvloop", "asyncio", "both"], help="event loop(s)")
    parser.add_argument("--concurrency", help="comma-separated task counts (default 1,16,64,256)")
    parser.add_argument("--ops", type=int, help="operations per timed block (default 3,000)")
    parser.add_argument("--rounds", type=int, help="rounds: timed blocks per side (default 7)")
    parser.add_argument("--profile", action="store_true", help="cProfile cacheorm at C=64")
    # nox -s bench passes its arguments to the other scripts too: ignore theirs
    args, _ = parser.parse_known_args()
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # tables appear as they are measured

    try:
        import uvloop  # noqa: F401

        have_uvloop = True
    except ImportError:
        have_uvloop = False
    if args.loop in ("uvloop", "both") and not have_uvloop:
        print("uvloop is not installed (pip install uvloop)")
        return 2
    if args.loop == "both" or (args.loop is None and not args.quick):
        loops = ["uvloop", "asyncio"] if have_uvloop else ["asyncio"]
    else:
        loops = [args.loop or ("uvloop" if have_uvloop else "asyncio")]
    concurrency = (
        tuple(int(c) for c in args.concurrency.split(",")) if args.concurrency else CONCURRENCY
    )
    cfg = Config(
        concurrency=concurrency,
        ops=args.ops or (200 if args.quick else 3_000),
        per_task=2 if args.quick else 10,
        rounds=args.rounds or (1 if args.quick else 7),
        many_calls=10 if args.quick else 300,
        loops=loops,
        profile=args.profile,
    )
    if cfg.rounds < 1 or cfg.ops < 1 or min(cfg.concurrency) < 1:
        parser.error("--rounds, --ops and --concurrency must be positive")

    chosen = [args.only] if args.only else list(SERVERS)
    binaries = {"redis": ["redis-server"], "cluster": ["redis-server", "redis-cli"]}
    for server in chosen:
        for binary in binaries.get(server, ["memcached"]):
            if shutil.which(binary) is None:
                print(f"{binary} is not installed (apt-get install {binary})")
                return 2
    # The benchmark starts its own servers: never one named by the environment.
    for var in ("REDIS_URL", "MEMCACHED_SERVERS", "REDIS_CLUSTER_NODES"):
        os.environ.pop(var, None)

    try:
        servers = start_servers(chosen)
    except ServerMissing as exc:
        print(exc)
        return 2
    try:
        print(f"## cacheorm {co.__version__} async benchmark\n")
        print(
            f"Python {platform.python_version()} ({platform.python_implementation()}) on "
            f"{platform.machine()}, {platform.system()} {platform.release()}, "
            f"{os.cpu_count()} CPUs; "
            + ", ".join(f"{name} {v}" for name, v in servers.versions.items())
            + " (loopback TCP)"
        )
        print(
            f"redis-py {redis.__version__} (hiredis {version('hiredis')}), "
            f"aiomcache {version('aiomcache')}, uvloop {version('uvloop')}; "
            "cacheorm codec path: "
            + (
                f"fast (msgspec {version('msgspec')}, orjson {version('orjson')})"
                if fast_path_installed()
                else "stdlib json"
            )
        )
        print(
            f"{cfg.rounds} round(s); a timed block = max({cfg.ops:,}, {cfg.per_task} x C) "
            "operations "
            f"shared by C tasks, gc off; get_many: {cfg.many_calls} calls of {MANY} keys "
            "per side; event loop(s): " + ", ".join(cfg.loops) + "\n"
        )
        print(
            "speedup = cacheorm ops/s / baseline ops/s (median of the per-round ratios; "
            "higher is better). CPU µs/op = client process CPU time / operations.\n"
        )
        notes = Notes()
        verdicts: list[tuple[str, bool]] = []
        for loop in cfg.loops:
            verdicts += [
                (f"[{loop}] {text}", ok)
                for text, ok in run_on(loop, bench_loop(servers, chosen, cfg, loop, notes))
            ]
        if notes.unavailable:
            print("### Unavailable sides\n")
            for what, why in notes.unavailable.items():
                print(f"- {what}: {why}")
            print()
        if notes.failed:
            print("### FAILED sides (left out of the tables)\n")
            for what, why in notes.failed.items():
                print(f"- {what}: {why}")
            print()
        print("### Targets\n")
        if not verdicts:
            print("- none measured (cacheorm's async classes are unavailable)")
        for text, ok in verdicts:
            print(f"- {'met' if ok else 'MISSED'}: {text}")
        print()
    finally:
        servers.stop()
    return 1 if notes.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
