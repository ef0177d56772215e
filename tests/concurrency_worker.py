"""A worker process for the multi-process tests in tests/test_concurrency.py.

Run as ``python -m tests.concurrency_worker KIND ADDRESS JOB THREADS COUNT``:

* KIND, ADDRESS: ``redis URL``, ``memcached HOST:PORT`` or ``filesystem DIR``.
* JOB ``increment``: THREADS threads each apply COUNT ``update_with`` increments
  to record 1's ``n``.
* JOB ``load``: THREADS threads, each with its own repository (so only the
  backend lease coordinates them), call ``get_or_load(7, ...)`` at once; the
  loader counts its calls in the backend counter ``loads``.

It waits for the file ``ADDRESS.go`` / the ``go`` key before starting, so both
processes begin together, and prints one JSON line with what it saw.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import threading
import time
from typing import Annotated

import cacheorm as co


@dataclasses.dataclass(frozen=True)
class Counter:
    """The record every worker increments."""

    id: Annotated[int, co.Field(primary_key=True)]
    n: int = 0
    source: str = ""


def open_backend(kind: str, address: str) -> co.Backend:
    """A new backend of ``kind`` at ``address``."""
    if kind == "redis":
        return co.RedisBackend.from_url(address)
    if kind == "memcached":
        return co.MemcachedBackend.from_servers(address)
    if kind == "filesystem":
        return co.FileSystemBackend(address)
    raise SystemExit(f"unknown backend kind {kind!r}")


def main(argv: list[str]) -> int:
    """Run one job and print its JSON summary."""
    kind, address, job, threads, count = argv[0], argv[1], argv[2], int(argv[3]), int(argv[4])
    gate = open_backend(kind, address)
    deadline = time.monotonic() + 30
    while gate.get("go") is None:  # the test sets it once every worker is up
        if time.monotonic() > deadline:
            raise SystemExit("never told to go")
        time.sleep(0.005)
    summary: dict[str, object] = {}
    lock = threading.Lock()
    errors: list[str] = []

    def increment() -> None:
        backend = open_backend(kind, address)
        repo = co.Repository(Counter, backend=backend)
        calls = 0

        def bump(c: Counter) -> Counter:
            nonlocal calls
            calls += 1
            return dataclasses.replace(c, n=c.n + 1)

        try:
            for _ in range(count):
                repo.update_with(1, bump)
        except Exception as exc:  # reported to the test, which fails on it
            errors.append(repr(exc))
        with lock:
            summary["calls"] = int(summary.get("calls", 0)) + calls  # type: ignore[call-overload]
        backend.close()

    def load() -> None:
        backend = open_backend(kind, address)
        repo = co.Repository(Counter, backend=backend)

        def loader() -> Counter:
            backend.incr("loads", 1)
            time.sleep(0.3)
            return Counter(7, 42, source="loader")

        try:
            got = repo.get_or_load(7, loader)
            with lock:
                summary.setdefault("results", []).append(got.n)  # type: ignore[attr-defined]
        except Exception as exc:
            errors.append(repr(exc))
        backend.close()

    target = increment if job == "increment" else load
    workers = [threading.Thread(target=target) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    summary["errors"] = errors
    print(json.dumps(summary))
    gate.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
