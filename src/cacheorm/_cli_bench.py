"""``cacheorm bench``: cacheorm against hand-written client code, on the user's own server.

A compact, time-boxed version of ``benchmarks/bench_backends.py`` (which
starts its own servers and is not installed with the package). For an
6-field record it times create, get, get_many, update and delete through a
:class:`~cacheorm.Repository` (json) and through hand-written redis-py /
pymemcache code with ``json`` and an f-string key, on one shared client (one
connection), so neither side gets a luckier connection.

Rounds of ``--batch`` records run until ``--seconds`` have passed; within a
round the two sides alternate which goes first, and each phase's ratio
(cacheorm time / hand-written time) is taken from timings milliseconds apart.
The median ratio over rounds is reported with its quartiles. Results are
checked outside the timed blocks, so a failing operation cannot pass for a
fast one. Keys live under a random ``cacheorm-bench:<hex>:`` prefix with a
10-minute TTL and are deleted by each round; nothing else on the server is
touched.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib
import json
import secrets
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TextIO

import cacheorm as co

__all__ = ["BenchUser", "Result", "add_parser", "run_bench", "write_chart"]

PHASES = ("create", "get", "get_many", "update", "delete")
#: Seconds every key the benchmark writes lives at most, should it be interrupted.
KEY_TTL = 600
CHART_SUFFIXES = (".png", ".svg")

_DESCRIPTION = """\
Time create, get, get_many, update and delete through cacheorm and through
hand-written client code (redis-py or pymemcache with json) on your server,
and print the ratio cacheorm time / hand-written time per operation (below
1.00 cacheorm is faster). Keys go under a random cacheorm-bench:<hex>: prefix
with a 10-minute TTL and are deleted as it goes; nothing else is touched.
A progress bar goes to stderr, the table to stdout.
"""


@dataclasses.dataclass(frozen=True)
class BenchUser:
    """The benchmark's record: six fields of the common kinds."""

    id: Annotated[int, co.Field(primary_key=True)]
    name: str
    email: str | None
    age: int
    active: bool
    tags: list[str]


def make_records(first_id: int, n: int) -> list[BenchUser]:
    """``n`` distinct records with ids from ``first_id``."""
    return [
        BenchUser(
            id=first_id + i,
            name=f"User number {i}",
            email=None if i % 5 == 0 else f"user{i}@example.com",
            age=18 + i % 70,
            active=i % 2 == 0,
            tags=["beta", "newsletter", f"cohort-{i % 7}"][: 1 + i % 3],
        )
        for i in range(n)
    ]


def _hand_dumps(user: BenchUser) -> bytes:
    return json.dumps(
        {
            "id": user.id,
            "name": user.name,
            "email": user.email,
            "age": user.age,
            "active": user.active,
            "tags": user.tags,
        },
        separators=(",", ":"),
    ).encode()


def _hand_loads(payload: bytes) -> BenchUser:
    d = json.loads(payload)
    return BenchUser(d["id"], d["name"], d["email"], d["age"], d["active"], d["tags"])


@dataclasses.dataclass
class _Side:
    """One way of storing records: the five operations."""

    name: str
    create: Callable[[BenchUser], object]
    get: Callable[[int], BenchUser]
    get_many: Callable[[list[int]], list[BenchUser | None]]
    update: Callable[[BenchUser], object]
    delete: Callable[[int], object]


def _orm_side(backend: co.Backend, prefix: str) -> _Side:
    repo = co.Repository(
        BenchUser, backend=backend, serializer="json", prefix=prefix, namespace="orm", ttl=KEY_TTL
    )

    # Like the hand-written replace, set the TTL: the default KEEP_TTL reads the
    # remaining TTL first on memcached (two round trips), which replace does not.
    def update(user: BenchUser) -> BenchUser:
        return repo.update(user, ttl=co.DEFAULT)

    return _Side("cacheorm", repo.create, repo.get, repo.get_many, update, repo.delete)


def _hand_redis(client: Any, prefix: str) -> _Side:
    """Hand-written redis-py code: SET NX / GET / MGET / SET XX / DEL."""

    def create(user: BenchUser) -> BenchUser:
        if not client.set(f"{prefix}hand:{user.id}", _hand_dumps(user), nx=True, ex=KEY_TTL):
            raise KeyError(f"{prefix}hand:{user.id} exists")
        return user

    def get(pk: int) -> BenchUser:
        payload = client.get(f"{prefix}hand:{pk}")
        if payload is None:
            raise KeyError(pk)
        return _hand_loads(payload)

    def get_many(pks: list[int]) -> list[BenchUser | None]:
        payloads = client.mget([f"{prefix}hand:{pk}" for pk in pks])
        return [None if payload is None else _hand_loads(payload) for payload in payloads]

    def update(user: BenchUser) -> BenchUser:
        if not client.set(f"{prefix}hand:{user.id}", _hand_dumps(user), xx=True, ex=KEY_TTL):
            raise KeyError(user.id)
        return user

    def delete(pk: int) -> bool:
        return bool(client.delete(f"{prefix}hand:{pk}") == 1)

    return _Side("hand-written redis-py + json", create, get, get_many, update, delete)


def _hand_memcached(client: Any, prefix: str) -> _Side:
    """Hand-written pymemcache code: add / get / get_many / replace / delete, noreply=False."""

    def create(user: BenchUser) -> BenchUser:
        key = f"{prefix}hand:{user.id}"
        if not client.add(key, _hand_dumps(user), expire=KEY_TTL, noreply=False):
            raise KeyError(f"{key} exists")
        return user

    def get(pk: int) -> BenchUser:
        payload = client.get(f"{prefix}hand:{pk}")
        if payload is None:
            raise KeyError(pk)
        return _hand_loads(payload)

    def get_many(pks: list[int]) -> list[BenchUser | None]:
        keys = [f"{prefix}hand:{pk}" for pk in pks]
        found = client.get_many(keys)
        return [None if (p := found.get(key)) is None else _hand_loads(p) for key in keys]

    def update(user: BenchUser) -> BenchUser:
        key = f"{prefix}hand:{user.id}"
        if not client.replace(key, _hand_dumps(user), expire=KEY_TTL, noreply=False):
            raise KeyError(user.id)
        return user

    def delete(pk: int) -> bool:
        return bool(client.delete(f"{prefix}hand:{pk}", noreply=False))

    return _Side("hand-written pymemcache + json", create, get, get_many, update, delete)


@dataclasses.dataclass(frozen=True)
class Result:
    """One operation's figures: time per record on each side and the ratio's quartiles."""

    phase: str
    orm_us: float
    hand_us: float
    ratio: float
    ratio_low: float
    ratio_high: float


class _Progress:
    """A plain-text progress bar on ``stream``: redrawn in place on a terminal, lines otherwise."""

    WIDTH = 30

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.shown = -1

    def update(self, fraction: float, note: str) -> None:
        fraction = min(max(fraction, 0.0), 1.0)
        percent = int(fraction * 100)
        if self.tty:
            done = int(fraction * self.WIDTH)
            bar = "#" * done + "-" * (self.WIDTH - done)
            self.stream.write(f"\r[{bar}] {percent:3d}%  {note}")
        elif percent // 10 > self.shown // 10:
            self.stream.write(f"bench: {percent:3d}%  {note}\n")
        else:
            return
        self.shown = percent
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _timed(fn: Callable[[Any], Any], args: list[Any]) -> tuple[int, list[Any]]:
    """Nanoseconds to call ``fn`` on each of ``args`` (the garbage collector off), and results."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        results = [fn(arg) for arg in args]
        return time.perf_counter_ns() - start, results
    finally:
        if enabled:
            gc.enable()


def _check(ok: bool, side: _Side, phase: str) -> None:
    if not ok:
        raise co.BackendError(f"bench: {side.name} returned wrong results for {phase}")


def _round(sides: list[_Side], records: list[BenchUser], times: dict[tuple[str, str], int]) -> None:
    """One round: every phase on every side, timed per side; results checked untimed."""
    ids = [r.id for r in records]
    updated = [dataclasses.replace(r, age=r.age + 1, tags=[*r.tags, "updated"]) for r in records]
    phase_args: dict[str, list[Any]] = {"create": records, "get_many": [ids], "update": updated}
    for phase in PHASES:
        for side in sides:
            fn: Callable[[Any], Any] = getattr(side, phase)
            args: list[Any] = phase_args.get(phase, ids)
            elapsed, results = _timed(fn, args)
            times[side.name, phase] = elapsed
            if phase in ("get", "get_many"):
                got = results[0] if phase == "get_many" else results
                _check(got == records, side, phase)
        if phase == "delete":
            for side in sides:
                _check(side.get_many(ids) == [None] * len(ids), side, phase)


def run_bench(
    backend: co.Backend,
    *,
    seconds: float,
    batch: int = 100,
    progress: TextIO | None = None,
) -> tuple[list[Result], int]:
    """Benchmark ``backend`` (a RedisBackend or MemcachedBackend) for about ``seconds``.

    Returns:
        The figures per operation, and the number of timed rounds.
    """
    prefix = f"cacheorm-bench:{secrets.token_hex(4)}:"
    client = getattr(backend, "client", None)
    if isinstance(backend, co.RedisBackend):
        hand = _hand_redis(client, prefix)
    elif isinstance(backend, co.MemcachedBackend):
        hand = _hand_memcached(client, prefix)
    else:
        raise co.ConfigurationError(f"bench needs Redis or memcached, not {type(backend).__name__}")
    orm = _orm_side(backend, prefix)
    per_round: dict[str, list[float]] = {phase: [] for phase in PHASES}
    totals: dict[tuple[str, str], int] = dict.fromkeys(
        ((side, phase) for side in (orm.name, hand.name) for phase in PHASES), 0
    )
    bar = _Progress(progress if progress is not None else sys.stderr)
    rounds = 0
    first_id = 1
    try:
        _round([orm, hand], make_records(first_id, batch), {})  # warm-up, untimed
        start = time.monotonic()
        while True:
            first_id += batch
            order = [orm, hand] if rounds % 2 == 0 else [hand, orm]
            times: dict[tuple[str, str], int] = {}
            _round(order, make_records(first_id, batch), times)
            rounds += 1
            for phase in PHASES:
                per_round[phase].append(times[orm.name, phase] / max(times[hand.name, phase], 1))
                for side in (orm.name, hand.name):
                    totals[side, phase] += times[side, phase]
            elapsed = time.monotonic() - start
            bar.update(elapsed / seconds, f"round {rounds}")
            if elapsed >= seconds:
                break
    finally:
        bar.close()
    results: list[Result] = []
    for phase in PHASES:
        ratios = sorted(per_round[phase])
        if len(ratios) >= 2:
            low, _, high = statistics.quantiles(ratios, n=4)
        else:
            low = high = ratios[0]
        results.append(
            Result(
                phase,
                orm_us=totals[orm.name, phase] / (rounds * batch) / 1_000,
                hand_us=totals[hand.name, phase] / (rounds * batch) / 1_000,
                ratio=statistics.median(ratios),
                ratio_low=low,
                ratio_high=high,
            )
        )
    return results, rounds


def format_table(results: list[Result], *, baseline: str, batch: int) -> list[str]:
    """The ratio table, one line each."""
    lines = [
        f"{'operation':<22}{'cacheorm':>12}{'hand-written':>15}{'ratio':>8}  quartiles",
        f"{'':<22}{'us/record':>12}{'us/record':>15}",
    ]
    for r in results:
        name = f"get_many ({batch}/call)" if r.phase == "get_many" else r.phase
        lines.append(
            f"{name:<22}{r.orm_us:>12.1f}{r.hand_us:>15.1f}{r.ratio:>8.2f}  "
            f"{r.ratio_low:.2f}-{r.ratio_high:.2f}"
        )
    lines.append(
        f"ratio = cacheorm (json) time / {baseline} time, median over rounds; "
        "below 1.00 cacheorm is faster."
    )
    return lines


def _matplotlib_figure() -> Any:
    """``matplotlib.figure.Figure``, or MissingDependency naming the ``cli`` extra."""
    try:
        return importlib.import_module("matplotlib.figure").Figure
    except ImportError as exc:
        raise co.MissingDependency("cacheorm bench --chart", "cli") from exc


def write_chart(results: list[Result], path: Path, *, title: str) -> None:
    """Draw the ratios as horizontal bars into ``path`` (PNG or SVG, by its suffix)."""
    figure_class = _matplotlib_figure()
    figure = figure_class(figsize=(7, 3.2), layout="constrained")
    axes = figure.add_subplot()
    names = [r.phase for r in results][::-1]
    ratios = [r.ratio for r in results][::-1]
    errors = [
        [r.ratio - r.ratio_low for r in results][::-1],
        [r.ratio_high - r.ratio for r in results][::-1],
    ]
    colours = ["#3b7dd8" if ratio <= 1.0 else "#d8793b" for ratio in ratios]
    axes.barh(names, ratios, xerr=errors, color=colours, capsize=3)
    axes.axvline(1.0, color="black", linewidth=1)
    for y, (ratio, above) in enumerate(zip(ratios, errors[1], strict=True)):
        axes.annotate(
            f"{ratio:.2f}",
            (ratio + above, y),
            xytext=(4, -3),
            textcoords="offset points",
            fontsize=8,
        )
    axes.set_xlabel("cacheorm time / hand-written time (lower is better, 1.0 = parity)")
    axes.set_title(title, fontsize=9)
    figure.savefig(path, format=path.suffix[1:])


def add_parser(new_parser: Callable[..., argparse.ArgumentParser]) -> None:
    """Register ``bench`` with the CLI's subcommands."""
    from cacheorm._cli import add_backend_options

    bench = new_parser(
        "bench",
        help="time cacheorm against hand-written client code on your server",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  cacheorm bench --redis redis://127.0.0.1:6379/0 --chart bench.png",
    )
    add_backend_options(bench, required=True, filesystem=False, several=False)
    bench.add_argument(
        "--seconds",
        type=float,
        default=10.0,
        metavar="N",
        help="how long to run the timed rounds (default: 10)",
    )
    bench.add_argument(
        "--batch", type=int, default=100, metavar="N", help="records per round (default: 100)"
    )
    bench.add_argument(
        "--chart",
        type=Path,
        metavar="FILE",
        help="also draw the ratios into FILE.png or FILE.svg (needs cacheorm[cli])",
    )
    bench.set_defaults(run=_run)


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from cacheorm._cli import open_backend

    if not args.seconds > 0 or args.seconds > 3600:
        parser.error(f"--seconds must be more than 0 and at most 3600, not {args.seconds:g}")
    if not 1 <= args.batch <= 10_000:
        parser.error(f"--batch must be from 1 to 10000, not {args.batch}")
    if args.memcached is not None and "," in args.memcached:
        parser.error("bench takes one memcached server, HOST:PORT")
    if args.chart is not None:
        if args.chart.suffix.lower() not in CHART_SUFFIXES:
            parser.error(f"--chart must end in .png or .svg, not {str(args.chart)!r}")
        _matplotlib_figure()  # fail now, not after the run
    backend, label = open_backend(args)
    baseline = "hand-written redis-py + json" if args.redis else "hand-written pymemcache + json"
    try:
        print(f"cacheorm bench on {label}: about {args.seconds:g} s", file=sys.stderr)
        results, rounds = run_bench(backend, seconds=args.seconds, batch=args.batch)
    finally:
        backend.close()
    print(f"cacheorm {co.__version__} on {label}: {rounds} rounds of {args.batch} records")
    for line in format_table(results, baseline=baseline, batch=args.batch):
        print(line)
    if args.chart is not None:
        write_chart(results, args.chart, title=f"cacheorm {co.__version__} on {label}")
        print(f"chart written to {args.chart}")
    return 0
