"""Coordination helpers for read-modify-write and read-through loading.

* :func:`backoff_delays`: jittered exponential sleeps between retries.
* :class:`SingleFlight`: within one process, one caller per key runs the work
  and the others wait for its result (or its exception).
* :class:`Lease`: across processes, a short-lived lock held in the backend
  (``add`` with a TTL), so a crashed holder blocks nobody for longer than the
  lease's timeout.
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from cacheorm._backend import Backend
from cacheorm._errors import BackendError
from cacheorm._observe import get_logger

_log = get_logger("repository")

__all__ = ["LEASE_SUFFIX", "Lease", "SingleFlight", "backoff_delays", "new_token"]

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
    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: R | None = None
        self.error: BaseException | None = None


class SingleFlight(Generic[R]):
    """Run ``fn`` once per key at a time in this process; concurrent callers share the outcome."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[str, _Call[R]] = {}

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
        with self._lock:
            call = self._calls.get(key)
            leader = call is None
            if call is None:
                call = self._calls[key] = _Call()
        if not leader:
            if not call.done.wait(timeout):
                return (fallback or fn)()
            if call.error is not None:
                raise call.error
            return call.result  # type: ignore[return-value]
        try:
            call.result = fn()
            return call.result
        except BaseException as exc:
            call.error = exc
            raise
        finally:
            with self._lock:
                del self._calls[key]
            call.done.set()


class Lease:
    """A lock on one key held in the backend for at most ``timeout`` seconds.

    The lease key is internal: errors of the store while taking it are
    reported by :meth:`acquire`'s return value, never raised, so a read never
    surfaces it.

    Taken with an atomic ``add`` of a random token, so exactly one caller of
    any process holds it; it expires on its own if the holder dies.
    Releasing deletes it only if it still holds this holder's token (a
    holder that outlived its lease must not free someone else's).
    """

    __slots__ = ("_backend", "_held", "_token", "key", "timeout")

    def __init__(self, backend: Backend, key: str, timeout: float) -> None:
        self._backend = backend
        self.key = key
        self.timeout = timeout
        self._token = new_token()
        self._held = False

    def acquire(self) -> bool | None:
        """Take the lease if nobody holds it.

        Returns:
            True if taken, False if another caller holds it, None if the store
            failed (the reply to the ``add`` may have been lost, so this holder
            may hold it or not). The lease is only an optimisation: the caller
            loads anyway on None, and :meth:`release` frees the lease if the
            ``add`` did apply, so it never blocks others until it expires.
        """
        try:
            self._held = self._backend.add(self.key, self._token, self.timeout)
        except BackendError:
            return None
        return self._held

    def release(self) -> None:
        """Give the lease back if it is still this holder's (best effort, never raises)."""
        try:
            if self._backend.get(self.key) == self._token:
                self._backend.delete(self.key)
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
