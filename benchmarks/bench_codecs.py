"""Codec benchmark: the stdlib and fast (msgspec) paths against hand-written code.

For the 8-field record of ``bench_core`` it times, in the same process:

* **encode+decode**: record -> bytes -> record, for cacheorm's stdlib json,
  fast json, stdlib msgpack and fast msgpack paths (the compiled codec plus
  the serializer, or the compiled encoder plus msgspec), against the
  hand-written ``dataclass -> dict -> json.dumps`` / ``json.loads -> dict ->
  dataclass`` pair;
* **save+get, memory backend**: ``Repository.save`` + ``Repository.get`` on
  each path, against the hand-written pair calling the same ``MemoryBackend``;
* **get_many of 1,000 records from Redis** (a redis-server started on a free
  loopback port): ``Repository.get_many`` on the fast and stdlib json paths,
  against hand-written redis-py ``MGET`` + ``json.loads`` + dataclass.

Each round times every side back to back (the order rotates between rounds);
the ratio to the baseline is taken per round, and the table shows the median
with its quartiles. Run it with ``nox -s bench`` or
``python benchmarks/bench_codecs.py [--repeat N] [--quick]``. Needs msgspec
(``pip install cacheorm[fast]``) and, for the Redis part, redis-py and
redis-server (skipped with a note if missing).
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import sys
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
for _path in (_HERE, _HERE.parent):  # bench_core, and the repository root for tests.servers
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from bench_core import User, hand_decode, hand_encode, make_user  # noqa: E402

import cacheorm as co  # noqa: E402
from cacheorm import _fast  # noqa: E402

BASELINE = "hand-written json"

Timed = Callable[[], object]


def repository(serializer: str, *, fast: bool, backend: Any = None) -> co.Repository[User]:
    """A repository on the fast or the stdlib path (the switch is read at construction)."""
    saved = _fast.ENABLED
    _fast.ENABLED = fast
    try:
        repo = co.Repository(User, backend=backend or co.MemoryBackend(), serializer=serializer)
    finally:
        _fast.ENABLED = saved
    if fast and "_decode_payload" not in vars(repo):  # the fast path replaces the decoder
        raise SystemExit(f"the fast path is not in use for {serializer}: is msgspec installed?")
    return repo


def codec_sides(user: User) -> dict[str, Timed]:
    """Encode+decode of one record on every path, checked to give the record back."""
    sides: dict[str, Timed] = {BASELINE: lambda: hand_decode(hand_encode(user))}
    for serializer in ("json", "msgpack"):
        for fast in (False, True):
            repo = repository(serializer, fast=fast)
            encode = repo._encode
            dumps = repo._dumps
            load = repo._decode_payload  # the decode; save+get below adds the key check

            def side(
                encode: Callable[[Any], Any] = encode,
                dumps: Callable[[Any], bytes] = dumps,
                load: Callable[[str, bytes], Any] = load,
            ) -> object:
                return load("k", dumps(encode(user)))

            if side() != user:
                raise SystemExit(f"{serializer} (fast={fast}) did not give the record back")
            sides[f"{'fast' if fast else 'stdlib'} {serializer}"] = side
    return sides


def save_get_sides(user: User) -> dict[str, Timed]:
    """Repository.save + get on the memory backend, per path, and the hand-written pair."""
    backend = co.MemoryBackend()

    def hand() -> object:
        backend.set(f"user:{user.id}", hand_encode(user).encode())
        payload = backend.get(f"user:{user.id}")
        assert payload is not None
        return hand_decode(payload)

    sides: dict[str, Timed] = {BASELINE: hand}
    for serializer in ("json", "msgpack"):
        for fast in (False, True):
            repo = repository(serializer, fast=fast)

            def side(repo: co.Repository[User] = repo) -> object:
                repo.save(user)
                return repo.get(user.id)

            if side() != user:
                raise SystemExit(f"save+get on {serializer} (fast={fast}) lost the record")
            sides[f"{'fast' if fast else 'stdlib'} {serializer}"] = side
    return sides


def per_call_us(fn: Timed, number: int) -> float:
    return timeit.Timer(fn).timeit(number) / number * 1e6


def run(sides: dict[str, Timed], number: int, repeat: int) -> dict[str, tuple[float, list[float]]]:
    """Median µs per call of each side, and its per-round ratios to the baseline."""
    times: dict[str, list[float]] = {name: [] for name in sides}
    names = list(sides)
    gc.disable()
    try:
        for round_ in range(repeat):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                times[name].append(per_call_us(sides[name], number))
    finally:
        gc.enable()
    base = times[BASELINE]
    return {
        name: (statistics.median(t), [x / y for x, y in zip(t, base, strict=True)])
        for name, t in times.items()
    }


def redis_sides(n: int) -> tuple[dict[str, Timed], Callable[[], None], str]:
    """get_many of ``n`` records: fast json, stdlib json and hand-written redis-py."""
    import redis
    from bench_backends import make_records
    from tests.servers import start_redis

    from cacheorm import RedisBackend

    server = start_redis()
    client = redis.Redis.from_url(server.url, socket_connect_timeout=5.0, socket_timeout=5.0)
    try:
        records = make_records(1, n)
        fast = repository("json", fast=True, backend=RedisBackend(client))
        slow = repository("json", fast=False, backend=RedisBackend(client))
        fast.save_many(records)
        pks = [r.id for r in records]

        def hand() -> object:
            payloads = client.mget([f"user:{pk}" for pk in pks])
            return [None if p is None else hand_decode(p) for p in payloads]

        sides: dict[str, Timed] = {
            BASELINE: hand,
            "stdlib json": lambda: slow.get_many(pks),
            "fast json": lambda: fast.get_many(pks),
        }
        for name, side in sides.items():
            if side() != records:
                raise SystemExit(f"get_many on {name} did not return the records")
        version = client.info("server")["redis_version"]
    except BaseException:
        client.close()
        server.stop()
        raise

    def stop() -> None:
        client.close()
        server.stop()

    return sides, stop, f"Redis {version} (redis-py {redis.__version__}), TCP {server.url}"


def table(
    title: str, results: dict[str, tuple[float, list[float]]], targets: dict[str, str]
) -> None:
    print(f"\n{title}")
    print(f"{'side':<22}{'µs':>10}{'ratio':>8}{'quartiles':>14}  target")
    for name, (us, ratios) in results.items():
        low, _, high = statistics.quantiles(ratios, n=4)
        print(
            f"{name:<22}{us:>10.2f}{statistics.median(ratios):>8.2f}"
            f"{low:>8.2f}-{high:.2f}  {targets.get(name, '')}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=2_000, help="calls per timing")
    parser.add_argument("--repeat", type=int, default=51, help="rounds (medians are used)")
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    # nox passes the backend benchmarks' arguments (--only, --block) here too.
    args, _ = parser.parse_known_args()
    if args.quick:
        args.number, args.repeat = 200, 5
    import msgspec

    user = make_user()
    print(f"cacheorm {co.__version__} codec benchmark, msgspec {msgspec.__version__}")
    print(f"Python {platform.python_version()} on {platform.machine()}, {sys.platform}")
    print(f"{args.repeat} rounds x {args.number:,} calls per side; one 8-field record")
    print("ratio = side / hand-written json, median of per-round ratios (lower is better)")

    table(
        "encode+decode",
        run(codec_sides(user), args.number, args.repeat),
        {"fast json": "<= 0.35", "fast msgpack": "<= 0.30", "stdlib json": "<= 1.20"},
    )
    table("save+get, memory backend", run(save_get_sides(user), args.number, args.repeat), {})

    try:
        sides, stop, heading = redis_sides(1_000)
    except Exception as exc:  # no redis-server or redis-py: say so, do not fail the rest
        print(f"\nget_many of 1,000 from Redis: skipped ({exc})")
        return 0
    try:
        rounds = max(5, args.repeat // 3)
        table(
            f"get_many of 1,000 records, {heading}",
            run(sides, 1 if args.quick else 5, rounds),
            {"fast json": "<= 0.70"},
        )
    finally:
        stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
