"""Coordination helpers for read-modify-write and read-through loading.

* :func:`backoff_delays`: jittered exponential sleeps between retries.
* :class:`SingleFlight`: within one process, one caller per key runs the work
  and the others wait for its result (or its exception).
* :class:`Lease`: across processes, a short-lived lock held in the backend
  (``add`` with a TTL), so a crashed holder blocks nobody for longer than the
  lease's timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import threading
from collections.abc import Awaitable, Callable, Generator, Iterator
from typing import Any, Generic, TypeVar

from cacheorm._errors import BackendError
from cacheorm._observe import get_logger
from cacheorm._ops import Call, Cleanup

_log = get_logger("repository")

__all__ = [
    "LEASE_SUFFIX",
    "AsyncSingleFlight",
    "Lease",
    "SingleFlight",
    "backoff_delays",
    "new_token",
]

R = TypeVar("R")

#: Appended to a record's key to name its load lease. Key parts never contain
#: a raw NUL (the key layer escapes control characters), so no record key of a
#: template or default scheme ends with it.
LEASE_SUFFIX = "\x00lease"


def backoff_delays(first: float = 0.001, cap: float = 0.05) -> Iterator[float]:
    """Endless "full jitter" exponential delays: uniform in ``[0, min(cap, first * 2**n)]``."""
    ceiling = first
    uniform = random.uniform
    while True:
        yield uniform(0.0, ceiling)
        ceiling = min(cap, ceiling * 2)


class _Call(Generic[R]):
    """One call under way for a key: its outcome, and a way to wait for it."""

    __slots__ = ("abandoned", "done", "error", "result")

    def __init__(self, done: Any) -> None:
        self.done = done  # a threading.Event or an asyncio.Event
        self.result: R | None = None
        self.error: BaseException | None = None
        #: The leader stopped without an outcome to share (it was cancelled).
        self.abandoned = False

    def outcome(self) -> R:
        """The leader's result, or its exception raised."""
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]


class _Flights(Generic[R]):
    """The bookkeeping of a single-flight, shared by the sync and the async one."""

    def __init__(self, event: Callable[[], Any]) -> None:
        self._lock = threading.Lock()
        self._calls: dict[str, _Call[R]] = {}
        self._event = event

    def _join(self, key: str) -> tuple[_Call[R], bool]:
        """The call under way for ``key`` (joined), or a new one this caller leads."""
        with self._lock:
            call = self._calls.get(key)
            if call is not None:
                return call, False
            call = self._calls[key] = _Call(self._event())
            return call, True

    @contextlib.contextmanager
    def _leading(self, key: str, call: _Call[R]) -> Generator[None, None, None]:
        """Around the leader's work: publish its outcome to the callers waiting for it."""
        try:
            yield
        except Exception as exc:
            call.error = exc
            raise
        except BaseException:  # cancelled or interrupted: followers run their own call
            call.abandoned = True
            raise
        finally:
            with self._lock:
                del self._calls[key]
            call.done.set()


class SingleFlight(_Flights[R]):
    """Run ``fn`` once per key at a time in this process; concurrent callers share the outcome."""

    def __init__(self) -> None:
        super().__init__(threading.Event)

    def run(
        self,
        key: str,
        fn: Callable[[], R],
        timeout: float | None = None,
        fallback: Callable[[], R] | None = None,
    ) -> R:
        """``fn()``, or the result (or exception) of a call for ``key`` already under way.

        A caller that waits ``timeout`` seconds for a call under way without
        seeing it finish returns ``fallback()`` instead (``fn()`` if None).
        """
        call, leader = self._join(key)
        if not leader:
            if not call.done.wait(timeout) or call.abandoned:
                return (fallback or fn)()
            return call.outcome()
        with self._leading(key, call):
            call.result = fn()
        return call.result


class AsyncSingleFlight(_Flights[R]):
    """:class:`SingleFlight` for tasks of one event loop: waiting never blocks the loop.

    A leader that is cancelled shares no outcome: the tasks waiting for it
    run ``fallback()`` (they are not cancelled with it).
    """

    def __init__(self) -> None:
        super().__init__(asyncio.Event)

    async def run(
        self,
        key: str,
        fn: Callable[[], Awaitable[R]],
        timeout: float,
        fallback: Callable[[], Awaitable[R]],
    ) -> R:
        """``await fn()``, or the outcome of a call for ``key`` already under way."""
        call, leader = self._join(key)
        if not leader:
            try:
                await asyncio.wait_for(call.done.wait(), timeout)
            except asyncio.TimeoutError:
                return await fallback()
            if call.abandoned:
                return await fallback()
            return call.outcome()
        with self._leading(key, call):
            call.result = await fn()
        return call.result


class Lease:
    """A lock on one key held in the backend for at most ``timeout`` seconds.

    The lease key is internal: errors of the store while taking it are
    reported by :meth:`acquire`'s return value, never raised, so a read never
    surfaces it.

    Taken with an atomic ``add`` of a random token, so exactly one caller of
    any process holds it; it expires on its own if the holder dies.
    Releasing deletes it only if it still holds this holder's token (a
    holder that outlived its lease must not free someone else's).

    Its methods are operations of :mod:`cacheorm._ops` (they yield backend
    calls), so the sync and the async repository share them.
    """

    __slots__ = ("_held", "_token", "key", "timeout")

    def __init__(self, key: str, timeout: float) -> None:
        self.key = key
        self.timeout = timeout
        self._token = new_token()
        self._held = False

    def acquire(self) -> Generator[Any, Any, bool | None]:
        """Take the lease if nobody holds it.

        Returns:
            True if taken, False if another caller holds it, None if the store
            failed (the reply to the ``add`` may have been lost, so this holder
            may hold it or not). The lease is only an optimisation: the caller
            loads anyway on None, and :meth:`release` frees the lease if the
            ``add`` did apply, so it never blocks others until it expires.
        """
        try:
            self._held = yield Call("add", (self.key, self._token, self.timeout))
        except BackendError:
            return None
        except BaseException:
            # Interrupted (a cancelled task) with the add in flight: it may have
            # applied. Free the lease if it is ours, so nobody waits for it.
            yield from self.release()
            raise
        return self._held

    def release(self) -> Generator[Any, Any, None]:
        """Give the lease back if it is still this holder's (best effort, never raises)."""
        try:
            # Cleanup: these run to their end even if the task is cancelled meanwhile.
            if (yield Cleanup("get", (self.key,))) == self._token:
                yield Cleanup("delete", (self.key,))
            elif self._held:
                _log.warning(
                    "a get_or_load lease expired while its loader ran (lock_timeout=%gs): "
                    "other callers may have loaded too; make lock_timeout longer than the "
                    "slowest load",
                    self.timeout,
                )
        except BackendError:
            pass  # it expires on its own after `timeout`
        self._held = False


def new_token() -> bytes:
    """A value no other lease holder, in any process, will write."""
    return os.urandom(16) + str(os.getpid()).encode()
