"""A single Redis / Memcached server killed, hung and restarted under a live repository.

Each test starts a server of its own (never the session's), uses a
``Repository`` on it, then SIGKILLs it (connection refused), SIGSTOPs it
(connections accepted, nothing answered) or restarts it on the same port.
Every operation must then raise ``BackendUnavailable`` within the configured
timeout plus a small margin, and the same repository object must work again
once the server is back. The figures measured are printed, labelled
``[faults]`` (run with ``-s`` to see them).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from typing import Annotated, Any

import pytest

import cacheorm as co
from tests.servers import (
    ServerMissing,
    ServerProcess,
    start_memcached_processes,
    start_redis_process,
)

#: socket_timeout / socket_connect_timeout (Redis), timeout / connect_timeout (Memcached).
TIMEOUT = 0.3
#: What an operation may take beyond TIMEOUT: thread scheduling, one reconnect on loopback.
MARGIN = 0.25
BOUND = TIMEOUT + MARGIN


@dataclasses.dataclass
class Account:
    id: Annotated[int, co.Field(primary_key=True)]
    name: str
    balance: int = 0


def _add_one(account: Account) -> Account:
    return dataclasses.replace(account, balance=account.balance + 1)


Operation = Callable[["co.Repository[Account]"], object]


def operations(base: int) -> dict[str, Operation]:
    """Every operation kind on ids ``base + 1 ...``; from :func:`seed` each one succeeds."""
    b = base
    return {
        "get": lambda r: r.get(b + 1),
        "get_or_none": lambda r: r.get_or_none(b + 1),
        "get_many": lambda r: r.get_many([b + 1, b + 2, b + 9]),
        "exists": lambda r: r.exists(b + 1),
        "create": lambda r: r.create(Account(b + 10, "created")),
        "save": lambda r: r.save(Account(b + 1, "saved")),
        "update": lambda r: r.update(Account(b + 2, "updated")),
        "get_or_create": lambda r: r.get_or_create(Account(b + 11, "got")),
        "update_with": lambda r: r.update_with(b + 1, _add_one),
        "delete": lambda r: r.delete(b + 3),
        "create_many": lambda r: r.create_many([Account(b + 12, "m"), Account(b + 13, "n")]),
        "save_many": lambda r: r.save_many([Account(b + 14, "s"), Account(b + 1, "t")]),
        "update_many": lambda r: r.update_many([Account(b + 1, "u"), Account(b + 2, "v")]),
        "delete_many": lambda r: r.delete_many([b + 4, b + 14]),
    }


def seed(repo: co.Repository[Account], base: int) -> None:
    """Ids ``base + 1 .. base + 4`` stored, the other ids :func:`operations` uses absent."""
    repo.delete_many([base + i for i in range(1, 15)])
    repo.save_many([Account(base + i, f"a{i}") for i in range(1, 5)])


@dataclasses.dataclass
class Target:
    """A server of the test's own and a repository on it."""

    kind: str
    process: ServerProcess
    backend: co.Backend
    repo: co.Repository[Account]


@pytest.fixture(params=["redis", "memcached"])
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    """A fresh server, a backend on it with TIMEOUT, and a repository of Account."""
    backend: Any
    try:
        if request.param == "redis":
            pytest.importorskip("redis")
            server = start_redis_process()
            assert server.process is not None
            process = server.process
            backend = co.RedisBackend.from_url(
                server.url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT
            )
        else:
            pytest.importorskip("pymemcache")
            pool = start_memcached_processes(1)
            (process,) = pool.processes
            backend = co.MemcachedBackend.from_servers(
                process.address, timeout=TIMEOUT, connect_timeout=TIMEOUT
            )
    except ServerMissing as exc:
        pytest.skip(str(exc))
    repo = co.Repository(Account, backend=backend, serializer="json")
    try:
        yield Target(request.param, process, backend, repo)
    finally:
        backend.close()
        process.stop()


@dataclasses.dataclass
class Outcome:
    """What one call did and how long it took."""

    name: str
    started: float
    seconds: float
    error: BaseException | None


def attempt(name: str, operation: Operation, repo: co.Repository[Account]) -> Outcome:
    start = time.monotonic()
    try:
        operation(repo)
    except Exception as exc:
        return Outcome(name, start, time.monotonic() - start, exc)
    return Outcome(name, start, time.monotonic() - start, None)


def describe(outcome: Outcome) -> str:
    error = outcome.error
    what = "ok" if error is None else f"{type(error).__name__}: {str(error)[:90]}"
    return f"{outcome.name:<14} {outcome.seconds:7.3f}s  {what}"


def report(title: str, outcomes: list[Outcome]) -> None:
    print(f"\n[faults] {title}")
    for outcome in outcomes:
        print(f"[faults]   {describe(outcome)}")


def run_all(target: Target, base: int) -> list[Outcome]:
    return [attempt(name, op, target.repo) for name, op in operations(base).items()]


def assert_all_unavailable(target: Target, outcomes: list[Outcome]) -> None:
    """Every call raised BackendUnavailable naming the server, within BOUND."""
    wrong = [
        describe(o)
        for o in outcomes
        if not isinstance(o.error, co.BackendUnavailable)
        or o.error.server != target.process.address
        or o.seconds > BOUND
    ]
    assert not wrong, (
        f"{target.kind}: these did not raise BackendUnavailable naming "
        f"{target.process.address} within {BOUND}s:\n" + "\n".join(wrong)
    )


def assert_all_ok(target: Target, outcomes: list[Outcome]) -> None:
    wrong = [describe(o) for o in outcomes if o.error is not None]
    assert not wrong, f"{target.kind}: these failed on a healthy server:\n" + "\n".join(wrong)


def recover(target: Target, base: int, deadline: float = 5.0) -> tuple[float, int]:
    """Poll a read until it works: (seconds until it did, failed attempts before)."""
    start = time.monotonic()
    failures = 0
    while True:
        try:
            target.repo.get_or_none(base + 1)
        except co.BackendUnavailable:
            failures += 1
            if time.monotonic() - start > deadline:
                raise
            time.sleep(0.005)
            continue
        return time.monotonic() - start, failures


def test_a_killed_server_fails_every_operation_fast_and_a_restart_heals(
    target: Target,
) -> None:
    """SIGKILL: each operation raises BackendUnavailable within the timeout; after a restart
    on the same port the same repository works again at once."""
    seed(target.repo, 0)
    assert_all_ok(target, run_all(target, 0))  # the connections are open and in use

    target.process.kill()
    down = run_all(target, 100)
    report(f"{target.kind} killed (SIGKILL), timeout {TIMEOUT}s, bound {BOUND}s:", down)

    start = time.monotonic()
    target.process.restart()
    restarted = time.monotonic() - start
    recovered, failures = recover(target, 200)
    print(
        f"[faults] {target.kind} restart took {restarted:.3f}s; first successful op "
        f"{recovered:.3f}s after the server was up ({failures} failed attempts before)"
    )
    seed(target.repo, 200)
    after = run_all(target, 200)
    assert_all_unavailable(target, down)
    assert recovered <= BOUND
    assert_all_ok(target, after)
    assert target.repo.get(201) == Account(201, "u", 0)  # update_many came last


def test_a_hung_server_fails_every_operation_within_the_timeout(target: Target) -> None:
    """SIGSTOP: the server accepts but never answers; each operation raises BackendUnavailable
    within the timeout instead of hanging; after SIGCONT the same repository works again."""
    seed(target.repo, 0)
    assert_all_ok(target, run_all(target, 0))

    target.process.pause()
    try:
        down = run_all(target, 100)
    finally:
        target.process.resume()
    report(f"{target.kind} hung (SIGSTOP), timeout {TIMEOUT}s, bound {BOUND}s:", down)

    recovered, failures = recover(target, 200)
    print(
        f"[faults] {target.kind} first successful op {recovered:.3f}s after SIGCONT "
        f"({failures} failed attempts before)"
    )
    # Commands sent while hung run now, on ids 100+; these use 200+.
    seed(target.repo, 200)
    after = run_all(target, 200)
    assert_all_unavailable(target, down)
    assert recovered <= BOUND
    assert_all_ok(target, after)


def test_a_restart_the_client_did_not_see_is_transparent(target: Target) -> None:
    """Killed and restarted between two calls, the client's open connection is stale: the
    next call still reaches the new server (reads and idempotent writes work; a
    non-idempotent write works or says OutcomeUnknown)."""
    idempotent = {"get", "get_or_none", "get_many", "exists", "save", "delete", "save_many"}
    idempotent |= {"delete_many"}
    outcomes = []
    for name, operation in operations(0).items():
        seed(target.repo, 0)  # the connection is open and was just used
        target.process.kill()
        target.process.restart()  # empty now: NotFound is an answer from the new server
        outcomes.append(attempt(name, operation, target.repo))
    report(f"{target.kind} killed and restarted between calls (the first call after):", outcomes)
    wrong = [
        describe(o)
        for o in outcomes
        if o.error is not None
        and not isinstance(o.error, co.NotFound)
        and (o.name in idempotent or not isinstance(o.error, co.OutcomeUnknown))
    ]
    assert not wrong, f"{target.kind}: failed after an unseen restart:\n" + "\n".join(wrong)


def test_a_run_of_operations_across_a_kill_and_a_restart(target: Target) -> None:
    """A thread keeps operating while the server is killed and restarted: every call works,
    meets a domain error, or raises BackendUnavailable within the bound; none hangs; calls
    work again soon after the restart."""
    repo = target.repo
    seed(repo, 0)
    outcomes: list[Outcome] = []
    stop = threading.Event()
    cycle = list(operations(0).items())

    def run() -> None:
        i = 0
        while not stop.is_set():
            name, operation = cycle[i % len(cycle)]
            outcomes.append(attempt(name, operation, repo))
            i += 1

    def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert worker.is_alive(), "the worker thread died"
            assert time.monotonic() < deadline, f"{target.kind}: {what} within {timeout}s"
            time.sleep(0.002)

    def unavailable_since(when: float) -> int:
        return sum(
            1
            for o in list(outcomes)
            if o.started >= when and isinstance(o.error, co.BackendUnavailable)
        )

    def ok_since(when: float) -> int:
        return sum(1 for o in list(outcomes) if o.started >= when and o.error is None)

    worker = threading.Thread(target=run, name="faults-run", daemon=True)
    worker.start()
    try:
        wait_for(lambda: ok_since(0) >= 50, "50 calls worked")
        killed = time.monotonic()
        target.process.kill()
        wait_for(lambda: unavailable_since(killed) >= 20, "20 calls failed after the kill")
        restarting = time.monotonic()
        target.process.restart()
        up = time.monotonic()
        wait_for(lambda: ok_since(up) >= 20, "20 calls worked after the restart")
    finally:
        stop.set()
        worker.join(10)
    assert not worker.is_alive()

    first_error = next(o for o in outcomes if o.error is not None and o.started >= killed)
    first_ok = next(o for o in outcomes if o.error is None and o.started >= up)
    expected = (co.NotFound, co.AlreadyExists, co.BackendUnavailable)
    odd = [
        describe(o) for o in outcomes if o.error is not None and not isinstance(o.error, expected)
    ]
    slow = [describe(o) for o in outcomes if o.seconds > BOUND]
    down = [o for o in outcomes if killed <= o.started and o.started + o.seconds < restarting]
    to_error = first_error.started + first_error.seconds - killed
    to_ok = first_ok.started + first_ok.seconds - up
    print(
        f"\n[faults] {target.kind} run across kill/restart: {len(outcomes)} calls, "
        f"{sum(o.error is None for o in down)} ok / "
        f"{sum(isinstance(o.error, co.BackendUnavailable) for o in down)} unavailable from "
        f"the kill to the restart; first error {to_error:.3f}s after the kill; first "
        f"success {to_ok:.3f}s after the restart; slowest call "
        f"{max(o.seconds for o in outcomes):.3f}s"
    )
    assert not odd, f"{target.kind}: unexpected errors:\n" + "\n".join(odd)
    assert not slow, f"{target.kind}: calls over {BOUND}s:\n" + "\n".join(slow)
    assert to_ok <= BOUND
