"""The charts of docs/benchmarks.md: `cacheorm bench` on a local Redis and memcached.

Starts a redis-server and a memcached on free loopback ports (as the other
benchmarks do), runs the command line's benchmark (``cacheorm bench``: create,
get, get_many, update and delete, cacheorm against hand-written client code
with the same json, the two sides alternating) for ``--seconds`` each, prints
the ratio tables and writes ``docs/img/bench-redis.svg`` and
``docs/img/bench-memcached.svg``. Part of ``nox -s bench``; needs the ``cli``
extra (matplotlib).

    python benchmarks/bench_charts.py [--seconds N] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if str(_HERE.parent) not in sys.path:  # the repository root, for tests.servers
    sys.path.insert(0, str(_HERE.parent))

from tests.servers import start_memcached, start_redis  # noqa: E402

import cacheorm as co  # noqa: E402
from cacheorm._cli_bench import format_table, run_bench, write_chart  # noqa: E402

BATCH = 100


def main(argv: list[str] | None = None) -> int:
    """Run both benchmarks and write their charts; 0 on success."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per server (default 10)")
    parser.add_argument("--out", type=Path, default=_HERE.parent / "docs" / "img")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    redis_server = start_redis()
    memcached_server = start_memcached()
    try:
        targets = [
            ("redis", "Redis", co.RedisBackend.from_url(redis_server.url)),
            (
                "memcached",
                "memcached",
                co.MemcachedBackend.from_servers(memcached_server.servers),
            ),
        ]
        for name, label, backend in targets:
            with backend:
                results, rounds = run_bench(backend, seconds=args.seconds, batch=BATCH)
            print(f"\n{label}: {rounds} rounds of {BATCH} records, json")
            for line in format_table(results, baseline=f"hand-written {label} + json", batch=BATCH):
                print(line)
            path = args.out / f"bench-{name}.svg"
            write_chart(
                results,
                path,
                title=f"cacheorm vs hand-written {label} client code (json, median of "
                f"{rounds} rounds, bars: quartiles)",
            )
            print(f"chart: {path}")
    finally:
        redis_server.stop()
        memcached_server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
