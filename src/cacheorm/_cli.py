"""The command line: the ``cacheorm`` console script and ``python -m cacheorm``.

Plain argparse, so the CLI needs nothing beyond the standard library (and the
client library of the backend it is pointed at). Each subcommand lives in its
own ``_cli_*`` module; none of them is imported by ``import cacheorm``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import cacheorm as co

__all__ = ["add_backend_options", "main", "open_backend", "without_password"]

DESCRIPTION = """\
Typed, cache-backed persistence for plain Python dataclasses, on Redis,
Memcached, the filesystem or memory. Run a command with --help for its options.
"""

EPILOG = """\
examples:
  cacheorm demo
  cacheorm demo --redis redis://127.0.0.1:6379/0
  cacheorm inspect --model myapp.models:User --redis redis://127.0.0.1:6379/0 42 7
  cacheorm bench --memcached 127.0.0.1:11211 --seconds 5 --chart bench.svg

Exit status: 0 on success, 1 when cacheorm reports an error (printed on one
line to stderr), 2 for a bad command line.
"""


def add_backend_options(
    parser: argparse.ArgumentParser,
    *,
    required: bool,
    filesystem: bool = True,
    several: bool = True,
) -> None:
    """Add ``--redis``, ``--memcached`` and (optionally) ``--filesystem`` and ``--cluster``."""
    group = parser.add_argument_group("where the records are" + (" (one of)" if required else ""))
    where = group.add_mutually_exclusive_group(required=required)
    where.add_argument(
        "--redis", metavar="URL", help="a Redis URL: redis://, rediss:// (TLS) or unix://"
    )
    where.add_argument(
        "--memcached",
        metavar="HOST:PORT[,HOST:PORT...]" if several else "HOST:PORT",
        help="a memcached server"
        + (", or several (a pool) separated by commas" if several else ""),
    )
    if filesystem:
        where.add_argument("--filesystem", metavar="DIR", help="a directory of record files")
    if several:
        group.add_argument(
            "--cluster", action="store_true", help="with --redis: the URL is a Redis Cluster node"
        )


def open_backend(args: argparse.Namespace) -> tuple[co.Backend, str]:
    """The backend the command line asks for, and how to describe it (without a password)."""
    if args.redis is not None:
        shown = without_password(args.redis)
        if getattr(args, "cluster", False):
            cluster = co.RedisBackend.from_url(args.redis, cluster=True)
            return cluster, f"the Redis Cluster of {shown}"
        return co.RedisBackend.from_url(args.redis), f"Redis at {shown}"
    if args.memcached is not None:
        servers = [s.strip() for s in args.memcached.split(",") if s.strip()]
        pool = co.MemcachedBackend.from_servers(servers)
        if len(servers) > 1:
            return pool, f"a memcached pool of {', '.join(servers)}"
        return pool, f"memcached at {args.memcached}"
    if getattr(args, "filesystem", None) is not None:
        return co.FileSystemBackend(args.filesystem), f"the filesystem under {args.filesystem}"
    return co.MemoryBackend(), "the in-memory backend (MemoryBackend)"


def without_password(url: str) -> str:
    """``url`` with any password replaced by ``***``, for printing."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    from cacheorm import _cli_bench, _cli_demo, _cli_inspect

    parser = argparse.ArgumentParser(
        prog=prog,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    version = f"cacheorm {co.__version__}"
    parser.add_argument("--version", action="version", version=version, help="print the version")
    commands = parser.add_subparsers(title="commands", dest="command")
    commands.required = True
    for module in (_cli_demo, _cli_inspect, _cli_bench):
        module.add_parser(commands.add_parser)
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Run the command line ``argv`` (``sys.argv[1:]`` by default); the exit status."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if getattr(args, "cluster", False) and args.redis is None:
        parser.error("--cluster needs --redis URL")
    try:
        status: int = args.run(parser, args)
    except co.CacheORMError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return status
