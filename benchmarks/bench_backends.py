"""Backend benchmark: cacheorm on Redis and Memcached against hand-written client code.

For the 8-field ``User`` record of ``bench_core.py`` it times five operations
on a redis-server and a memcached that it starts itself on free loopback ports
(TCP, 127.0.0.1; never a server that is already running):

* create: ``Repository.create`` against ``SET key value NX`` (Redis) /
  ``add`` (Memcached);
* get: ``Repository.get`` against ``GET`` / ``get``;
* get_many: ``Repository.get_many`` of 1,000 keys against ``MGET`` /
  ``get_many``;
* update: ``Repository.update(obj, ttl=DEFAULT)`` against ``SET XX`` / ``replace``
  (both set the TTL; the default ``KEEP_TTL`` costs memcached a second round trip);
* delete: ``Repository.delete`` against ``DEL`` / ``delete``.

Each runs through cacheorm with the json and the msgpack serializer, and
through hand-written redis-py / pymemcache code in the same run: the json
baseline is ``bench_core``'s ``dataclass -> dict -> json -> bytes`` pair with an
f-string key ``f"user:{id}"`` (cacheorm's default key for ``User`` is the same);
a hand-written msgpack pair is timed too. The hand-written code checks replies
as cacheorm does (a refused ``NX`` / ``XX`` or a missing key raises), and the
Memcached calls pass ``noreply=False``, so every call waits for the server.
All four sides share one client (one connection), so no side gets a luckier one.

Method: loopback latency dominates and drifts, so the sides are interleaved.
Each phase is cut into blocks (500 single operations, or one ``get_many`` of
1,000 keys); for each block every side runs its own block back to back, in a
rotating order, with the garbage collector off during a block (as ``timeit``
does). Each block yields a ratio ``cacheorm time / baseline time`` from timings
taken milliseconds apart; the median of those ratios is reported with their
quartiles, and ops/s from the total time. Both cacheorm columns are against
the json baseline; a second table sets cacheorm msgpack against hand-written
msgpack, the like-for-like comparison. A round creates N=10,000 distinct
records per side, gets them, reads them in 10 ``get_many`` batches, updates
and deletes them; the results are checked outside the timed blocks after each
phase, so a failing operation cannot pass for a fast one. Each side has its own
id range (same number of digits), so the sides never share keys.

Run it with ``python benchmarks/bench_backends.py [--quick] [--rounds N]
[--only redis|memcached] [--block N]``; ``--quick`` is a smoke run (1,000
records, blocks of 100, ``get_many`` of 100). ``REDIS_URL`` and
``MEMCACHED_SERVERS`` are ignored. Exit status 2 when a server binary (or a
cacheorm backend) is missing, else 0, whether or not the targets are met.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import importlib
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
for _path in (_HERE, _HERE.parent):  # bench_core, and the repository root for tests.servers
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import msgpack  # noqa: E402
import pymemcache.client.base  # noqa: E402
import redis  # noqa: E402
from bench_core import Gender, User, hand_decode, hand_encode  # noqa: E402
from tests.servers import ServerMissing, start_memcached, start_redis  # noqa: E402

import cacheorm as co  # noqa: E402

#: Operations, in the order a round runs them.
PHASES = ("create", "get", "get_many", "update", "delete")

#: Ratio targets: cacheorm time / hand-written time, per operation.
TARGET_SINGLE = 1.10
TARGET_MANY = 1.20

#: The sides, in their base order; the first two are cacheorm, the others hand-written.
ORM_JSON, ORM_MSGPACK, HAND_JSON, HAND_MSGPACK = (
    "cacheorm json",
    "cacheorm msgpack",
    "hand json",
    "hand msgpack",
)
SIDES = (ORM_JSON, ORM_MSGPACK, HAND_JSON, HAND_MSGPACK)


@dataclasses.dataclass(frozen=True)
class Config:
    n: int  # records per side per round
    rounds: int
    block: int  # single operations per timed block
    batch: int  # keys per get_many call (one call per timed block)
    warmup: int  # records per side in the untimed warm-up round


# --- records --------------------------------------------------------------------------

_EPOCH = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


def make_records(first_id: int, n: int) -> list[User]:
    """``n`` distinct records with ids ``first_id ...``, varied in every field."""
    return [
        User(
            id=first_id + i,
            name=f"User number {i}",
            email=None if i % 5 == 0 else f"user{i}@example.com",
            height=150.0 + (i % 500) / 10,
            married=i % 2 == 0,
            gender=Gender(i % 3),
            tags=["beta", "newsletter", f"cohort-{i % 7}"][: 1 + i % 3],
            created_at=_EPOCH + datetime.timedelta(seconds=i, microseconds=i % 1000),
        )
        for i in range(n)
    ]


def changed(user: User) -> User:
    """The record ``update`` writes: two fields changed."""
    return dataclasses.replace(user, height=user.height + 1.0, tags=[*user.tags, "updated"])


# --- the hand-written baselines ----------------------------------------------------------


def hand_json_dumps(user: User) -> bytes:
    return hand_encode(user).encode()


def hand_msgpack_dumps(user: User) -> bytes:
    d = dict(user.__dict__)
    d["gender"] = user.gender.value
    d["created_at"] = user.created_at.isoformat()
    return msgpack.packb(d)


def hand_msgpack_loads(payload: bytes) -> User:
    d = msgpack.unpackb(payload)
    d["gender"] = Gender(d["gender"])
    d["created_at"] = datetime.datetime.fromisoformat(d["created_at"])
    return User(**d)


CODECS: dict[str, tuple[Callable[[User], bytes], Callable[[bytes], User]]] = {
    HAND_JSON: (hand_json_dumps, hand_decode),
    HAND_MSGPACK: (hand_msgpack_dumps, hand_msgpack_loads),
}


@dataclasses.dataclass
class Side:
    """One way of storing records: the five operations and the records it works on."""

    name: str
    create: Callable[[User], object]
    get: Callable[[int], User]
    get_many: Callable[[list[int]], list[User | None]]
    update: Callable[[User], object]
    delete: Callable[[int], object]
    records: list[User] = dataclasses.field(default_factory=list)
    updated: list[User] = dataclasses.field(default_factory=list)


def hand_redis(name: str, client: redis.Redis) -> Side:
    """Hand-written redis-py code: f-string keys, SET NX / GET / MGET / SET XX / DEL."""
    dumps, loads = CODECS[name]

    def create(user: User) -> User:
        if not client.set(f"user:{user.id}", dumps(user), nx=True):
            raise KeyError(f"user:{user.id} exists")
        return user

    def get(pk: int) -> User:
        payload = client.get(f"user:{pk}")
        if payload is None:
            raise KeyError(f"user:{pk}")
        return loads(payload)

    def get_many(pks: list[int]) -> list[User | None]:
        payloads = client.mget([f"user:{pk}" for pk in pks])
        return [None if payload is None else loads(payload) for payload in payloads]

    def update(user: User) -> User:
        if not client.set(f"user:{user.id}", dumps(user), xx=True):
            raise KeyError(f"user:{user.id}")
        return user

    def delete(pk: int) -> bool:
        return client.delete(f"user:{pk}") == 1

    return Side(name, create, get, get_many, update, delete)


def hand_memcached(name: str, client: pymemcache.client.base.Client) -> Side:
    """Hand-written pymemcache code: add / get / get_many / replace / delete, noreply=False."""
    dumps, loads = CODECS[name]

    def create(user: User) -> User:
        if not client.add(f"user:{user.id}", dumps(user), noreply=False):
            raise KeyError(f"user:{user.id} exists")
        return user

    def get(pk: int) -> User:
        payload = client.get(f"user:{pk}")
        if payload is None:
            raise KeyError(f"user:{pk}")
        return loads(payload)

    def get_many(pks: list[int]) -> list[User | None]:
        keys = [f"user:{pk}" for pk in pks]
        found = client.get_many(keys)
        return [None if (payload := found.get(key)) is None else loads(payload) for key in keys]

    def update(user: User) -> User:
        if not client.replace(f"user:{user.id}", dumps(user), noreply=False):
            raise KeyError(f"user:{user.id}")
        return user

    def delete(pk: int) -> bool:
        return client.delete(f"user:{pk}", noreply=False)

    return Side(name, create, get, get_many, update, delete)


def orm_side(name: str, backend: Any, serializer: str) -> Side:
    repo = co.Repository(User, backend=backend, serializer=serializer)
    check(repo.key_for(1) == "user:1", f"cacheorm key {repo.key_for(1)!r} is not 'user:1'")

    # The same semantics as the hand-written SET XX / replace: the repository's
    # TTL (none), not the default KEEP_TTL, which on memcached reads the
    # remaining TTL first (a meta get, then cas: two round trips).
    def update(user: User) -> User:
        return repo.update(user, ttl=co.DEFAULT)

    return Side(name, repo.create, repo.get, repo.get_many, update, repo.delete)


def backend_class(name: str) -> Any:
    """``cacheorm.<name>``, or the class from its private module while it is not exported."""
    cls = getattr(co, name, None)
    if cls is None:
        module = {"RedisBackend": "cacheorm._redis", "MemcachedBackend": "cacheorm._memcached"}
        cls = getattr(importlib.import_module(module[name]), name)
    return cls


# --- servers --------------------------------------------------------------------------


@dataclasses.dataclass
class Target:
    """A started server, the four sides on it, and an independent client to check with."""

    title: str
    baseline: str  # what the baseline is, for the output
    sides: dict[str, Side]
    count_present: Callable[[list[str]], int]
    stop: Callable[[], None]


def build_target(
    stop_server: Callable[[], None],
    connect: Callable[[], Any],
    backend_name: str,
    hand_side: Callable[[str, Any], Side],
    count: Callable[[Any, list[str]], int],
    title: Callable[[Any], str],
    baseline: str,
) -> Target:
    """The sides on a started server, sharing one client built by ``connect``."""
    clients: list[Any] = []

    def client() -> Any:
        clients.append(connect())
        return clients[-1]

    def stop() -> None:
        for each in clients:
            each.close()
        stop_server()

    try:
        backend = backend_class(backend_name)
        admin = client()
        # One client (one connection) for all four sides: on a multi-threaded
        # memcached, separate connections land on different server threads,
        # which favoured one side or another by up to 3x per block.
        shared = client()
        sides = {
            ORM_JSON: orm_side(ORM_JSON, backend(shared), "json"),
            ORM_MSGPACK: orm_side(ORM_MSGPACK, backend(shared), "msgpack"),
            HAND_JSON: hand_side(HAND_JSON, shared),
            HAND_MSGPACK: hand_side(HAND_MSGPACK, shared),
        }
        heading = title(admin)
    except BaseException:
        stop()
        raise

    def count_present(keys: list[str]) -> int:
        return sum(count(admin, chunk) for chunk in chunks(keys, 1000))

    return Target(heading, baseline, sides, count_present, stop)


def redis_target() -> Target:
    server = start_redis()
    return build_target(
        server.stop,
        # The timeouts RedisBackend.from_url sets, for every side.
        lambda: redis.Redis.from_url(server.url, socket_connect_timeout=5.0, socket_timeout=5.0),
        "RedisBackend",
        hand_redis,
        lambda admin, keys: admin.exists(*keys),
        lambda admin: (
            f"Redis {admin.info('server')['redis_version']} (redis-py {redis.__version__}), "
            f"TCP {server.url}"
        ),
        "hand-written redis-py + json",
    )


def memcached_target() -> Target:
    server = start_memcached()
    host, port = server.servers[0].rsplit(":", 1)
    return build_target(
        server.stop,
        # The options MemcachedBackend.from_servers sets, for every side.
        lambda: pymemcache.client.base.Client(
            (host, int(port)), connect_timeout=5.0, timeout=5.0, default_noreply=False
        ),
        "MemcachedBackend",
        hand_memcached,
        lambda admin, keys: len(admin.get_many(keys)),
        lambda admin: (
            f"Memcached {admin.version().decode()} (pymemcache "
            f"{metadata.version('pymemcache')}), TCP {host}:{port}"
        ),
        "hand-written pymemcache + json",
    )


# --- timing ---------------------------------------------------------------------------


def chunks(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def timed(fn: Callable[[Any], Any], args: list[Any]) -> tuple[int, list[Any]]:
    """Call ``fn`` on each of ``args`` with the collector off; nanoseconds and results."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        results = list(map(fn, args))
        elapsed = time.perf_counter_ns() - start
    finally:
        if gc_was_enabled:
            gc.enable()
    return elapsed, results


@dataclasses.dataclass
class Timings:
    """Block times in ns, per phase and side; block ``i`` of every side did the same work."""

    ns: dict[str, dict[str, list[int]]] = dataclasses.field(
        default_factory=lambda: {phase: {side: [] for side in SIDES} for phase in PHASES}
    )
    ops: dict[str, dict[str, int]] = dataclasses.field(
        default_factory=lambda: {phase: dict.fromkeys(SIDES, 0) for phase in PHASES}
    )


def phase_args(side: Side, phase: str, n: int, batch: int) -> list[Any]:
    """What the phase's operation is called with, one item per call."""
    ids = [user.id for user in side.records[:n]]
    if phase == "create":
        return side.records[:n]
    if phase == "update":
        return side.updated[:n]
    if phase == "get_many":
        return list(chunks(ids, batch))
    return ids


def run_round(target: Target, cfg: Config, n: int, timings: Timings, round_: int) -> None:
    """One create / get / get_many / update / delete cycle over ``n`` records per side."""
    names = list(target.sides)
    for phase in PHASES:
        # A timed block: cfg.block single operations, or one get_many call.
        per_block = 1 if phase == "get_many" else cfg.block
        blocks = {
            name: list(chunks(phase_args(target.sides[name], phase, n, cfg.batch), per_block))
            for name in names
        }
        results: dict[str, list[Any]] = {name: [] for name in names}
        nblocks = len(blocks[names[0]])
        for b in range(nblocks):
            # Rotate the order, and reverse it every other cycle, so that no side
            # always runs first or always follows the same side.
            k = (b + round_) % len(names)
            order = names[k:] + names[:k]
            if ((b + round_) // len(names)) % 2:
                order.reverse()
            for name in order:
                side = target.sides[name]
                ns, out = timed(getattr(side, phase), blocks[name][b])
                timings.ns[phase][name].append(ns)
                timings.ops[phase][name] += (
                    sum(map(len, blocks[name][b])) if phase == "get_many" else len(blocks[name][b])
                )
                results[name].extend(out)
        for name in names:
            verify(target, target.sides[name], phase, n, results[name])


def check(ok: bool, message: str) -> None:
    """Raise unless ``ok``; unlike ``assert``, ``python -O`` does not skip it."""
    if not ok:
        raise RuntimeError(f"benchmark check failed: {message}")


def verify(target: Target, side: Side, phase: str, n: int, results: list[Any]) -> None:
    """Check a phase did what it reports; raise RuntimeError otherwise."""
    records, keys = side.records[:n], [f"user:{user.id}" for user in side.records[:n]]
    what = f"{target.title}: {side.name} {phase}"
    if phase == "create":
        check(results == records, f"{what}: returned other records")
        present = target.count_present(keys)
        check(present == n, f"{what}: {present} of {n} records stored")
    elif phase == "get":
        check(results == records, f"{what}: read back other records")
    elif phase == "get_many":
        got = [user for batch in results for user in batch]
        check(len(got) == n, f"{what}: {len(got)} records for {n} keys")
        check(got == records, f"{what}: read back other records")
    elif phase == "update":
        stored = [
            user for pks in chunks([u.id for u in records], 1000) for user in side.get_many(pks)
        ]
        check(stored == side.updated[:n], f"{what}: the updates were not stored")
    elif phase == "delete":
        check(all(results), f"{what}: {results.count(False)} deletes found nothing")
        present = target.count_present(keys)
        check(present == 0, f"{what}: {present} records left")


# --- report ---------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    phase: str
    ops_per_s: dict[str, float]
    ratios: dict[tuple[str, str], list[float]]  # (cacheorm side, baseline side) -> ratios


def summarize(timings: Timings) -> list[Row]:
    rows = []
    for phase in PHASES:
        ns = timings.ns[phase]
        ops_per_s = {side: timings.ops[phase][side] / (sum(ns[side]) / 1e9) for side in SIDES}
        ratios = {
            (ours, theirs): [a / b for a, b in zip(ns[ours], ns[theirs], strict=True)]
            for ours, theirs in (
                (ORM_JSON, HAND_JSON),
                (ORM_MSGPACK, HAND_JSON),
                (ORM_MSGPACK, HAND_MSGPACK),
            )
        }
        rows.append(Row(phase, ops_per_s, ratios))
    return rows


def quartiles(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.2f}-{values[0]:.2f}"
    low, _, high = statistics.quantiles(values, n=4)
    return f"{low:.2f}-{high:.2f}"


def label(phase: str, cfg: Config) -> str:
    return f"get_many ({cfg.batch:,} keys; keys/s)" if phase == "get_many" else phase


def target_of(phase: str) -> float:
    return TARGET_MANY if phase == "get_many" else TARGET_SINGLE


def report(target: Target, cfg: Config, rows: list[Row]) -> list[str]:
    """Print the Markdown tables for one server; return the missed targets."""
    med = statistics.median
    print(f"### {target.title}\n")
    print(
        "| operation | cacheorm json ops/s | cacheorm msgpack ops/s | baseline ops/s "
        "| ratio json | ratio msgpack | quartiles json | quartiles msgpack |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    missed = []
    for row in rows:
        rj, rm = row.ratios[ORM_JSON, HAND_JSON], row.ratios[ORM_MSGPACK, HAND_JSON]
        ops = row.ops_per_s
        print(
            f"| {label(row.phase, cfg)} | {ops[ORM_JSON]:,.0f} | {ops[ORM_MSGPACK]:,.0f} "
            f"| {ops[HAND_JSON]:,.0f} | {med(rj):.2f} | {med(rm):.2f} "
            f"| {quartiles(rj)} | {quartiles(rm)} |"
        )
        for side, ratios in (("json", rj), ("msgpack", rm)):
            if med(ratios) > target_of(row.phase):
                missed.append(f"{row.phase} {side} {med(ratios):.2f} > {target_of(row.phase):.2f}")
    nblocks = len(rows[0].ratios[ORM_JSON, HAND_JSON])
    print(
        f"\nbaseline = {target.baseline}; both ratio columns are against it. ratio = time per "
        f"operation cacheorm / baseline, median of the per-block ratios ({nblocks} blocks for "
        "single operations), quartiles = 25th-75th percentile; lower is better, 1.00 = as "
        "fast as hand-written.\n"
    )
    print("Fair msgpack comparison: cacheorm msgpack against hand-written msgpack.\n")
    print("| operation | hand msgpack ops/s | cacheorm msgpack ops/s | ratio | quartiles |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        ratios = row.ratios[ORM_MSGPACK, HAND_MSGPACK]
        print(
            f"| {label(row.phase, cfg)} | {row.ops_per_s[HAND_MSGPACK]:,.0f} "
            f"| {row.ops_per_s[ORM_MSGPACK]:,.0f} | {med(ratios):.2f} | {quartiles(ratios)} |"
        )
    print(
        f"\nTargets (against the json baseline): <= {TARGET_SINGLE:.2f} on single operations, "
        f"<= {TARGET_MANY:.2f} on get_many: "
        + ("all met." if not missed else "MISSED: " + "; ".join(missed) + ".")
        + "\n"
    )
    return missed


def bench(target: Target, cfg: Config) -> list[str]:
    """Run the rounds on one server and print its tables; the missed targets."""
    for i, side in enumerate(target.sides.values()):
        # Ids of the same number of digits for every side, so keys have one length.
        side.records = make_records((i + 1) * 10_000_000, cfg.n)
        side.updated = [changed(user) for user in side.records]
    keys = [f"user:{user.id}" for side in target.sides.values() for user in side.records]
    check(target.count_present(keys) == 0, f"{target.title}: the server is not empty")
    run_round(target, cfg, cfg.warmup, Timings(), 0)  # connections, caches, lazy imports
    timings = Timings()
    for round_ in range(cfg.rounds):
        run_round(target, cfg, cfg.n, timings, round_)
    return report(target, cfg, summarize(timings))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1,000 records, 1 round")
    parser.add_argument("--rounds", type=int, help="rounds of N records per side (default 3)")
    parser.add_argument("--only", choices=["redis", "memcached"], help="one server only")
    parser.add_argument("--block", type=int, help="single operations per timed block")
    args = parser.parse_args()

    if args.quick:
        cfg = Config(
            n=1_000, rounds=args.rounds or 1, block=args.block or 100, batch=100, warmup=100
        )
    else:
        cfg = Config(
            n=10_000, rounds=args.rounds or 3, block=args.block or 500, batch=1_000, warmup=1_000
        )
    if cfg.rounds < 1 or cfg.block < 1:
        parser.error("--rounds and --block must be positive")

    servers = {
        "redis": ("redis-server", redis_target),
        "memcached": ("memcached", memcached_target),
    }
    chosen = [args.only] if args.only else list(servers)
    for name in chosen:
        if shutil.which(servers[name][0]) is None:
            print(f"{servers[name][0]} is not installed (apt-get install {servers[name][0]})")
            return 2
    # The benchmark starts its own servers: never one named by the environment.
    for var in ("REDIS_URL", "MEMCACHED_SERVERS"):
        os.environ.pop(var, None)

    print(f"## cacheorm {co.__version__} backend benchmark\n")
    print(
        f"Python {platform.python_version()} ({platform.python_implementation()}) on "
        f"{platform.machine()}, {platform.system()} {platform.release()}, "
        f"{os.cpu_count()} CPUs; msgpack {metadata.version('msgpack')}"
    )
    print(
        f"{cfg.rounds} round(s) x {cfg.n:,} records per side per operation (8-field record), "
        f"timed blocks of {cfg.block:,} operations or one get_many of {cfg.batch:,} keys, "
        "sides interleaved block by block; gc off in timed blocks\n"
    )
    for name in chosen:
        try:
            target = servers[name][1]()
        except ServerMissing as exc:
            print(exc)
            return 2
        except (ImportError, AttributeError) as exc:
            print(f"the cacheorm backend for {name} is not available: {exc}")
            return 2
        try:
            bench(target, cfg)
        finally:
            target.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
