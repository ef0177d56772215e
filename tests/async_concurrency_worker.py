"""A worker process for the multi-process test in tests/test_async_reliability.py.

Run as ``python -m tests.async_concurrency_worker KIND ADDRESS TASKS COUNT``:
KIND is ``redis`` (ADDRESS a URL) or ``memcached`` (ADDRESS ``host:port``). TASKS
asyncio tasks, on one AsyncRepository, each apply COUNT ``update_with``
increments to record 1's ``n``. It waits for the key ``go`` before starting, so
both processes begin together, and prints one JSON line: how many times the
update function ran, and the errors.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import time
from typing import Annotated, Any

import cacheorm as co


@dataclasses.dataclass(frozen=True)
class Counter:
    """The record every task increments."""

    id: Annotated[int, co.Field(primary_key=True)]
    n: int = 0


def open_backend(kind: str, address: str) -> Any:
    """A new async backend of ``kind`` at ``address`` (call it on the loop that uses it)."""
    if kind == "redis":
        return co.AsyncRedisBackend.from_url(address)
    if kind == "memcached":
        return co.AsyncMemcachedBackend.from_servers(address)
    raise SystemExit(f"unknown backend kind {kind!r}")


async def run(kind: str, address: str, tasks: int, count: int) -> dict[str, object]:
    """Wait for ``go``, run the increments, and say what happened."""
    calls = 0
    errors: list[str] = []

    def bump(counter: Counter) -> Counter:
        nonlocal calls
        calls += 1
        return dataclasses.replace(counter, n=counter.n + 1)

    async with open_backend(kind, address) as backend:
        deadline = time.monotonic() + 30
        while await backend.get("go") is None:
            if time.monotonic() > deadline:
                raise SystemExit("never told to go")
            await asyncio.sleep(0.005)
        repo = co.AsyncRepository(Counter, backend=backend)

        async def work() -> None:
            for _ in range(count):
                try:
                    await repo.update_with(1, bump)
                except co.CacheORMError as exc:  # pragma: no cover - reported, then asserted
                    errors.append(repr(exc))

        await asyncio.gather(*(work() for _ in range(tasks)))
    return {"calls": calls, "errors": errors}


def main(argv: list[str]) -> int:
    """Run the job and print its JSON summary."""
    kind, address, tasks, count = argv[0], argv[1], int(argv[2]), int(argv[3])
    print(json.dumps(asyncio.run(run(kind, address, tasks, count))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
