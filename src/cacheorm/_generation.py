"""Namespace generations: an O(1) ``clear()`` on every backend, memcached included.

A repository built with ``generations=True`` appends ``#g<number>`` to every
record key, where ``<number>`` is the namespace's current generation, stored
in the backend under ``<prefix><namespace>:__gen__`` without a TTL.
``clear()`` increments it; the records of the older generations can no
longer be named, so they are unreachable at once and leave the store by their
TTL or the LRU (memcached) or by a scan (backends that can list keys).

Why the suffix keeps keys injective: it is always last and all digits, and
``#g`` never occurs in a run of digits, so splitting a key at its last ``#g``
gives back the key without generation and the generation, whatever text the
key's parts (or a key function) produced.

Why an evicted or deleted generation never brings old records back: an absent
generation is created with ``add`` of ``time.time_ns()``, a value no earlier
generation of this namespace held (generations start from a clock reading and
grow by one per clear; a clock reading of nanoseconds is past them unless more
clears than nanoseconds have passed). A counter ``incr`` re-creates from 0
(so below ``_FLOOR``) is never used: whoever reads such a value replaces it,
by compare-and-set, with a fresh clock reading.

Each process caches the generation for ``generation_ttl`` seconds: within that
window a ``clear()`` made by another process is not yet seen here. The
clearing process sees its own clear at once.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from cacheorm._errors import BackendError, ConfigurationError
from cacheorm._flight import SingleFlight
from cacheorm._ops import Call, Op, drive

__all__ = ["SUFFIX", "Generation", "split"]

#: What separates a key from its generation.
SUFFIX = "#g"

#: Generations are clock readings in nanoseconds (about 1.7e18 in 2025); a
#: stored value below this one was created by ``incr`` from 0 after the
#: generation key was lost, and is never used.
_FLOOR = 1 << 40
#: How many compare-and-set rounds settling a lost generation may take.
_SETTLE_ATTEMPTS = 100


def split(key: str) -> tuple[str, int]:
    """``(key without generation, generation)`` of a key with a generation suffix.

    Raises:
        ValueError: ``key`` has no generation suffix.
    """
    base, sep, digits = key.rpartition(SUFFIX)
    if not sep or not digits.isdigit() or not digits.isascii():
        raise ValueError(f"{key!r} has no generation suffix")
    return base, int(digits)


class Generation:
    """The current generation of one namespace, cached in the process for ``ttl`` seconds.

    Reading and moving the generation are operations of :mod:`cacheorm._ops`
    (:meth:`refresh`, :meth:`bump_op`), shared by both repositories. The sync
    repository runs them on the spot (:meth:`current`, :meth:`bump`): the
    cached value and its deadline are one tuple, swapped at once, and a
    refresh takes a lock so that one thread reads the backend while the
    others wait for its answer. ``AsyncRepository`` (``awaits=True``) runs
    :meth:`refresh` before each operation, so building a key never needs I/O.
    """

    def __init__(self, backend: Any, key: str, ttl: float, *, awaits: bool = False) -> None:
        self.backend = backend
        self.key = key
        self.ttl = ttl
        self.awaits = awaits
        #: (generation, its key suffix, monotonic deadline of the cached copy)
        self._cached: tuple[int, str, float] = (0, "", -1.0)
        self._lock = threading.Lock()

    def stale(self) -> bool:
        """True if the cached generation must be read again before use."""
        return time.monotonic() >= self._cached[2]

    def current(self) -> int:
        """The generation keys are built with now (one backend read when the copy is stale)."""
        value, _, until = self._cached
        if time.monotonic() < until:
            return value
        if self.awaits:
            return self._known()[0]
        with self._lock:
            value, _, until = self._cached
            if time.monotonic() < until:
                return value
            return drive(self.refresh(), self.backend, SingleFlight())

    def suffix(self) -> str:
        """``#g<current generation>`` (rendered once per generation: this runs per key)."""
        _, suffix, until = self._cached
        if time.monotonic() < until:
            return suffix
        if self.awaits:
            return self._known()[1]
        self.current()
        return self._cached[1]

    def _known(self) -> tuple[int, str]:
        """AsyncRepository: the last generation read (its operations read it first)."""
        value, suffix, _ = self._cached
        if not suffix:
            raise ConfigurationError(
                f"namespace generation {self.key!r} has not been read yet: an AsyncRepository "
                "with generations=True reads it in each awaited operation; await one (for "
                "example `await repo.exists(pk)`) before calling key_for() or key_of()"
            )
        return value, suffix

    def bump(self) -> int:
        """Move the namespace to a new generation (one atomic ``incr``); the new one."""
        with self._lock:
            return drive(self.bump_op(), self.backend, SingleFlight())

    def bump_op(self) -> Op[int]:
        """The operation of :meth:`bump`.

        The local copy is updated at once, so this process never sees the old
        records again. If the ``incr`` fails, the local copy is dropped, so the
        next operation reads the generation again.
        """
        self._cached = (0, "", -1.0)
        new: int = yield Call("incr", (self.key, 1))
        if new < _FLOOR:  # the generation was lost: incr started it from 0
            new = yield from self._settle()
        return self._remember(new)

    def forget(self) -> None:
        """Drop the local copy: the next operation reads the generation from the backend."""
        self._cached = (0, "", -1.0)

    def _remember(self, value: int) -> int:
        """Cache ``value``, unless a newer generation is cached (a read that raced a bump)."""
        now = time.monotonic()
        known, _, until = self._cached
        if value < known and now < until:
            return known
        self._cached = (value, f"{SUFFIX}{value}", now + self.ttl)
        return value

    def value(self) -> Op[int]:
        """The current generation: the cached copy, or one read now if it is stale."""
        value, _, until = self._cached
        if time.monotonic() < until:
            return value
        return (yield from self.refresh())

    def refresh(self) -> Op[int]:
        """Read the generation from the backend (creating a lost one) and cache it."""
        raw = yield Call("get", (self.key,))
        if raw is not None:
            value = self._parse(raw)
            if value >= _FLOOR:
                return self._remember(value)
        # absent (first use, evicted) or re-created from 0
        return self._remember((yield from self._settle()))

    def _parse(self, raw: bytes) -> int:
        text = raw.strip()
        if not text.isdigit():
            raise BackendError(
                f"namespace generation {self.key!r} holds {raw[:40]!r}, not a decimal integer",
                key=self.key,
            )
        return int(text)

    def _settle(self) -> Op[int]:
        """Create an absent generation, or replace one re-created from 0, with a clock reading.

        ``add`` (absent) or compare-and-set (too small), then read back what
        won: another process may have created or moved it meanwhile.
        """
        for _ in range(_SETTLE_ATTEMPTS):
            found = yield Call("gets", (self.key,))
            if found is None:  # lost again: create it, then read back what won
                yield Call("add", (self.key, str(time.time_ns()).encode("ascii")))
                continue
            raw, token = found
            value = self._parse(raw)
            if value >= _FLOOR:
                return value
            yield Call("cas", (self.key, str(time.time_ns()).encode("ascii"), token))
            # read back either way: ours, or what another writer stored meanwhile
        raise BackendError(  # pragma: no cover - needs 100 lost races in a row
            f"namespace generation {self.key!r} could not be settled", key=self.key
        )
