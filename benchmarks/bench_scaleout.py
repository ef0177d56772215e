"""Scale-out benchmark: get_many over a 3-node Redis Cluster and a 3-server memcached pool.

For the 8-field ``User`` record of ``bench_core.py`` it stores 10,000 records
and times ``Repository.get_many`` of all 10,000 keys on:

* one redis-server, and a 3-master Redis Cluster (3 redis-server processes
  joined with ``redis-cli --cluster create``);
* one memcached, and a pool of 3 memcached processes (a pymemcache
  ``HashClient`` under ``MemcachedBackend.from_servers``);

and prints, for each, the time per call, the ratio ``scaled-out / single``
(target: the cluster within 1.5x of the single node), and the number of round
trips each node served per call. Round trips are counted, not assumed: at the
client, every request written to a node's socket is counted per node address
(redis-py ``Connection.send_packed_command``; for memcached, writes on a
socket connected to the node that start a request, i.e. not a continuation
of a partial ``send``),
and for Redis the server's own ``INFO commandstats`` shows which commands each
node ran.

Method: the single and the scaled-out repository run in alternating blocks
(one call each, in a rotating order, gc off), and the median of the per-block
ratios is reported with its quartiles. Every result is checked outside the
timed blocks. All servers are started here on free loopback ports.

Run it with ``python benchmarks/bench_scaleout.py [--quick] [--keys N] [--blocks N]
[--only redis|memcached]``. Exit status 2 when a server binary is missing.
"""

from __future__ import annotations

import argparse
import collections
import contextvars
import gc
import os
import platform
import shutil
import socket
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
for _path in (_HERE, _HERE.parent):  # bench_core, and the repository root for tests.servers
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import redis  # noqa: E402
import redis.cluster  # noqa: E402
import redis.connection  # noqa: E402
from bench_backends import make_records  # noqa: E402
from bench_core import User  # noqa: E402
from tests.servers import (  # noqa: E402
    ServerMissing,
    start_memcached,
    start_redis,
    start_redis_cluster,
)

import cacheorm as co  # noqa: E402

TARGET = 1.5

#: Requests written per node address while counting is on.
SENT: collections.Counter[str] = collections.Counter()
#: Set while redis-py writes, whose requests are counted once per packed command.
in_redis: contextvars.ContextVar[bool] = contextvars.ContextVar("in_redis", default=False)


@contextmanager
def counting() -> Iterator[collections.Counter[str]]:
    """Count, per node, the requests the clients write to their sockets."""
    send = redis.connection.AbstractConnection.send_packed_command
    sendall = socket.socket.sendall
    send_some = socket.socket.send
    partial: set[int] = set()

    def counted_send(self: Any, command: Any, check_health: bool = True) -> None:
        SENT[f"{self.host}:{self.port}"] += 1
        token = in_redis.set(True)
        try:
            send(self, command, check_health)
        finally:
            in_redis.reset(token)

    def counted_sendall(self: socket.socket, data: Any, *args: Any) -> None:
        if not in_redis.get():
            host, port = self.getpeername()[:2]
            SENT[f"{host}:{port}"] += 1
        sendall(self, data, *args)

    def counted_send_some(self: socket.socket, data: Any, *args: Any) -> int:
        if not in_redis.get() and id(self) not in partial:
            host, port = self.getpeername()[:2]
            SENT[f"{host}:{port}"] += 1
        sent: int = send_some(self, data, *args)
        if sent < len(data):
            partial.add(id(self))  # the rest of this request follows
        else:
            partial.discard(id(self))
        return sent

    SENT.clear()
    redis.connection.AbstractConnection.send_packed_command = counted_send  # type: ignore[method-assign]
    socket.socket.sendall = counted_sendall  # type: ignore[method-assign]
    socket.socket.send = counted_send_some  # type: ignore[method-assign]
    try:
        yield SENT
    finally:
        redis.connection.AbstractConnection.send_packed_command = send  # type: ignore[method-assign]
        socket.socket.sendall = sendall  # type: ignore[method-assign]
        socket.socket.send = send_some  # type: ignore[method-assign]


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    gc_was = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        result = fn()
        return (time.perf_counter_ns() - start) / 1e6, result
    finally:
        if gc_was:
            gc.enable()


def compare(
    name: str,
    single: co.Repository[User],
    scaled: co.Repository[User],
    records: list[User],
    blocks: int,
    nodes: list[str],
    commandstats: Callable[[], dict[str, dict[str, int]]] | None,
) -> bool:
    pks = [r.id for r in records]
    for repo in (single, scaled):
        repo.save_many(records)
        assert repo.get_many(pks) == records, f"{name}: get_many returned other records"
    # one counted call, outside the timed blocks
    before = commandstats() if commandstats else None
    with counting() as sent:
        assert scaled.get_many(pks) == records
    per_node = {node: sent.get(node, 0) for node in nodes}
    after = commandstats() if commandstats else None
    ratios: list[float] = []
    single_ms: list[float] = []
    scaled_ms: list[float] = []
    for block in range(blocks):
        order = [single, scaled] if block % 2 == 0 else [scaled, single]
        times = {}
        for repo in order:
            ms, got = timed(lambda repo=repo: repo.get_many(pks))
            times[id(repo)] = ms
            if got != records:
                raise SystemExit(f"{name}: a timed get_many returned other records")
        single_ms.append(times[id(single)])
        scaled_ms.append(times[id(scaled)])
        ratios.append(times[id(scaled)] / times[id(single)])
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    median = statistics.median(ratios)
    print(f"### {name}: get_many of {len(pks):,} keys\n")
    print("| | single node | scaled out | ratio (median) | quartiles |")
    print("|---|---|---|---|---|")
    print(
        f"| ms per call (median) | {statistics.median(single_ms):.1f} | "
        f"{statistics.median(scaled_ms):.1f} | {median:.2f} | {q[0]:.2f}-{q[2]:.2f} |"
    )
    print()
    print(
        "round trips per call, counted at the client: "
        + ", ".join(f"{node} {count}" for node, count in per_node.items())
    )
    if before is not None and after is not None:
        ran = []
        for node in nodes:
            diff = {
                cmd: after[node].get(cmd, 0) - before[node].get(cmd, 0)
                for cmd in after[node]
                if after[node].get(cmd, 0) != before[node].get(cmd, 0) and cmd not in ("info",)
            }
            ran.append(f"{node} " + ", ".join(f"{c} x{n}" for c, n in sorted(diff.items())))
        print("commands each node ran for that call (INFO commandstats): " + "; ".join(ran))
    met = median <= TARGET
    verdict = "met" if met else "NOT met"
    print(f"\ntarget: within {TARGET}x of the single node: {verdict} ({median:.2f}x)\n")
    return met


def redis_commandstats(clients: dict[str, redis.Redis]) -> Callable[[], dict[str, dict[str, int]]]:
    def read() -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for node, client in clients.items():
            stats = client.info("commandstats")
            out[node] = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}
        return out

    return read


def bench_redis(records: list[User], blocks: int) -> bool:
    single_server = start_redis()
    cluster = start_redis_cluster(3)
    try:
        single = co.Repository(User, backend=co.RedisBackend.from_url(single_server.url))
        nodes = [redis.cluster.ClusterNode(*a.rsplit(":", 1)) for a in cluster.startup_nodes]
        client = redis.cluster.RedisCluster(startup_nodes=nodes)
        scaled = co.Repository(User, backend=co.RedisBackend(client))
        admin = {
            a: redis.Redis(host=a.rsplit(":", 1)[0], port=int(a.rsplit(":", 1)[1]))
            for a in cluster.startup_nodes
        }
        try:
            return compare(
                "Redis: 3-master cluster vs one redis-server",
                single,
                scaled,
                records,
                blocks,
                cluster.startup_nodes,
                redis_commandstats(admin),
            )
        finally:
            for c in admin.values():
                c.close()
            single.backend.close()
            scaled.backend.close()
    finally:
        single_server.stop()
        cluster.stop()


def bench_memcached(records: list[User], blocks: int) -> bool:
    one = start_memcached(1)
    pool = start_memcached(3)
    try:
        single = co.Repository(User, backend=co.MemcachedBackend.from_servers(one.servers))
        scaled = co.Repository(User, backend=co.MemcachedBackend.from_servers(pool.servers))
        try:
            return compare(
                "Memcached: pool of 3 servers vs one memcached",
                single,
                scaled,
                records,
                blocks,
                pool.servers,
                None,
            )
        finally:
            single.backend.close()
            scaled.backend.close()
    finally:
        one.stop()
        pool.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1,000 keys, 5 blocks")
    parser.add_argument("--keys", type=int, help="keys per get_many (default 10,000)")
    parser.add_argument("--blocks", type=int, help="timed blocks (default 41)")
    parser.add_argument("--only", choices=["redis", "memcached"])
    # nox -s bench passes its arguments to bench_backends.py too: ignore theirs
    args, _ = parser.parse_known_args()
    keys = args.keys or (1_000 if args.quick else 10_000)
    blocks = args.blocks or (5 if args.quick else 41)
    for binary in ("redis-server", "redis-cli", "memcached"):
        if shutil.which(binary) is None:
            print(f"{binary} is not installed")
            return 2
    for var in ("REDIS_URL", "MEMCACHED_SERVERS", "REDIS_CLUSTER_NODES"):
        os.environ.pop(var, None)
    print("## cacheorm scale-out benchmark\n")
    print(
        f"Python {platform.python_version()} on {platform.machine()}, "
        f"{os.cpu_count()} CPUs; redis-py {redis.__version__}; {blocks} timed blocks "
        "per row, single and scaled-out interleaved\n"
    )
    records = make_records(1, keys)
    try:
        if args.only in (None, "redis"):
            bench_redis(records, blocks)
        if args.only in (None, "memcached"):
            bench_memcached(records, blocks)
    except ServerMissing as exc:
        print(exc)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
