"""An in-process backend: an LRU dictionary of bytes with TTL, behind one lock."""

from __future__ import annotations

import itertools
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence

from cacheorm._backend import CasToken, Closing
from cacheorm._checks import as_bytes as _as_bytes
from cacheorm._checks import as_items as _as_items
from cacheorm._checks import check_batch as _check_batch
from cacheorm._checks import check_delta as _check_delta
from cacheorm._checks import check_key as _check_key
from cacheorm._checks import check_ttl as _check_ttl
from cacheorm._errors import BackendError, InvalidTTL
from cacheorm._ttl import KEEP_TTL, BackendTTL

__all__ = ["MemoryBackend"]

#: How many least recently used entries a full cache inspects for expired ones
#: before it evicts a live entry; bounded so that an insert stays O(1).
_EXPIRED_SCAN = 8

#: What :meth:`MemoryBackend.incr` accepts as a stored counter: ASCII digits,
#: optionally negative, as Redis writes them.
_COUNTER = re.compile(rb"-?[0-9]+")


class _Entry:
    """One stored value, its absolute expiry time (clock seconds) and its version."""

    __slots__ = ("expires_at", "value", "version")

    def __init__(self, value: bytes, expires_at: float | None, version: int) -> None:
        self.value = value
        self.expires_at = expires_at
        self.version = version


class MemoryBackend(Closing):
    """The embedded default backend: an LRU dictionary of bytes with TTL.

    Data lives in this process only; it is not shared with other processes and
    is lost when the process exits. Every operation, batch ones included, runs
    under one lock, so the backend is safe to share between threads and its
    add, replace, incr and cas are atomic. Expired entries are invisible and
    removed lazily. Reads (``get``, ``get_many``, ``gets``) and writes mark an
    entry as recently used; ``exists`` does not. ``replace``, ``replace_many``
    and ``cas`` with ``ttl=KEEP_TTL`` keep the entry's expiry time (or its
    lack of one). It is a context manager, like every backend.

    Args:
        max_entries: evict the least recently used entry (an expired one first,
            when one is among the oldest few) to stay at most this many entries;
            None for no limit.
        clock: a zero-argument callable returning seconds, used for TTLs;
            ``time.monotonic`` by default.

    Raises:
        ValueError: ``max_entries`` is not a positive int or None.
    """

    def __init__(
        self, max_entries: int | None = None, clock: Callable[[], float] | None = None
    ) -> None:
        if max_entries is not None and (
            isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1
        ):
            raise ValueError(f"max_entries must be a positive int or None, not {max_entries!r}")
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be a callable returning seconds, not {clock!r}")
        self._max_entries = max_entries
        self._clock: Callable[[], float] = time.monotonic if clock is None else clock
        self._lock = threading.Lock()
        self._data: OrderedDict[str, _Entry] = OrderedDict()
        self._version = 0

    @property
    def max_entries(self) -> int | None:
        """The entry limit, or None when unbounded."""
        return self._max_entries

    # -- helpers; the caller holds the lock --------------------------------

    def _live(self, key: str, now: float) -> _Entry | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        if entry.expires_at is not None and entry.expires_at <= now:
            del self._data[key]
            return None
        return entry

    def _store(self, key: str, value: bytes, expires_at: float | None, now: float) -> None:
        self._version += 1
        entry = _Entry(value, expires_at, self._version)
        data = self._data
        if key in data:
            data[key] = entry
            data.move_to_end(key)
            return
        if self._max_entries is not None and len(data) >= self._max_entries:
            stale = [
                k
                for k, e in itertools.islice(data.items(), _EXPIRED_SCAN)
                if e.expires_at is not None and e.expires_at <= now
            ]
            for k in stale:
                del data[k]
            if not stale:
                data.popitem(last=False)
        data[key] = entry

    @staticmethod
    def _deadline(ttl: float | None, now: float) -> float | None:
        return None if ttl is None else now + ttl

    # -- the Backend protocol ----------------------------------------------

    def get(self, key: str, /) -> bytes | None:
        """The value under ``key``, or None if absent or expired."""
        _check_key(key)
        with self._lock:
            entry = self._live(key, self._clock())
            if entry is None:
                return None
            self._data.move_to_end(key)
            return entry.value

    def get_many(self, keys: Sequence[str], /) -> list[bytes | None]:
        """The values under ``keys``, in the same order, None where absent or expired."""
        keys = [_check_key(key) for key in keys]
        result: list[bytes | None] = []
        with self._lock:
            now = self._clock()
            for key in keys:
                entry = self._live(key, now)
                if entry is None:
                    result.append(None)
                else:
                    self._data.move_to_end(key)
                    result.append(entry.value)
        return result

    def set(self, key: str, value: bytes, /, ttl: float | None = None) -> None:
        """Store ``value`` under ``key``, replacing any value and TTL it had.

        Raises:
            TypeError: ``value`` is not bytes, bytearray or memoryview.
        """
        data = _as_bytes(_check_key(key), value)
        _check_ttl(ttl)
        with self._lock:
            now = self._clock()
            self._store(key, data, self._deadline(ttl, now), now)

    def set_many(self, items: Sequence[tuple[str, bytes]], /, ttl: float | None = None) -> None:
        """Store every ``(key, value)`` pair; nothing is stored if a value is not bytes."""
        pairs = _as_items(items)
        _check_ttl(ttl)
        with self._lock:
            now = self._clock()
            expires_at = self._deadline(ttl, now)
            for key, value in pairs:
                self._store(key, value, expires_at, now)

    def add(self, key: str, value: bytes, /, ttl: float | None = None) -> bool:
        """Store only if ``key`` is absent or expired; True if stored."""
        return self._write_if([(_check_key(key), _as_bytes(key, value))], ttl, present=False)[0]

    def add_many(
        self, items: Sequence[tuple[str, bytes]], /, ttl: float | None = None
    ) -> list[bool]:
        """``add`` for each pair, in order; a later pair sees earlier ones."""
        return self._write_if(_as_items(items), ttl, present=False)

    def replace(self, key: str, value: bytes, /, ttl: BackendTTL = None) -> bool:
        """Store only if ``key`` holds a live value; True if stored.

        With ``ttl=KEEP_TTL`` the entry keeps its expiry time.
        """
        return self._write_if([(_check_key(key), _as_bytes(key, value))], ttl, present=True)[0]

    def replace_many(
        self, items: Sequence[tuple[str, bytes]], /, ttl: BackendTTL = None
    ) -> list[bool]:
        """``replace`` for each pair, in order (``KEEP_TTL`` keeps each entry's expiry)."""
        return self._write_if(_as_items(items), ttl, present=True)

    def _write_if(
        self, pairs: list[tuple[str, bytes]], ttl: BackendTTL, *, present: bool
    ) -> list[bool]:
        """Store each pair whose key's liveness equals ``present``, under one lock."""
        keep = ttl is KEEP_TTL
        if ttl is KEEP_TTL:
            if not present:
                raise InvalidTTL("ttl=KEEP_TTL keeps the TTL of a value replaced: not for add")
            seconds = None
        else:
            _check_ttl(ttl)
            seconds = ttl
        result: list[bool] = []
        with self._lock:
            now = self._clock()
            expires_at = self._deadline(seconds, now)
            for key, value in pairs:
                entry = self._live(key, now)
                ok = (entry is not None) is present
                if ok:
                    if keep and entry is not None:
                        expires_at = entry.expires_at
                    self._store(key, value, expires_at, now)
                result.append(ok)
        return result

    def delete(self, key: str, /) -> bool:
        """Remove ``key``; True if it held a live value."""
        _check_key(key)
        with self._lock:
            if self._live(key, self._clock()) is None:
                return False
            del self._data[key]
            return True

    def delete_many(self, keys: Sequence[str], /) -> int:
        """Remove ``keys``; the number that held a live value."""
        keys = [_check_key(key) for key in keys]
        removed = 0
        with self._lock:
            now = self._clock()
            for key in keys:
                if self._live(key, now) is not None:
                    del self._data[key]
                    removed += 1
        return removed

    def exists(self, key: str, /) -> bool:
        """True if ``key`` holds a live value; does not refresh its recency."""
        _check_key(key)
        with self._lock:
            return self._live(key, self._clock()) is not None

    def incr(self, key: str, delta: int = 1, /) -> int:
        """Add ``delta`` to the counter under ``key``, starting from 0; the new value.

        The counter is stored as ASCII decimal digits and keeps the key's TTL.

        Raises:
            BackendError: the stored value is not an ASCII integer.
        """
        _check_key(key)
        if isinstance(delta, bool) or not isinstance(delta, int):
            raise TypeError(f"incr delta must be an int, not {type(delta).__name__}")
        with self._lock:
            now = self._clock()
            entry = self._live(key, now)
            if entry is None:
                current, expires_at = 0, None
            else:
                if _COUNTER.fullmatch(entry.value) is None:
                    raise BackendError(
                        f"cannot incr key {key!r}: its value is not an ASCII integer",
                        key=key,
                    )
                try:
                    current = int(entry.value)
                except ValueError:  # more digits than int() accepts
                    raise BackendError(
                        f"cannot incr key {key!r}: its value is too long an integer", key=key
                    ) from None
                expires_at = entry.expires_at
            result = current + delta
            self._store(key, str(result).encode("ascii"), expires_at, now)
            return result

    def gets(self, key: str, /) -> tuple[bytes, CasToken] | None:
        """The value and its version token for :meth:`cas`, or None if absent or expired."""
        _check_key(key)
        with self._lock:
            entry = self._live(key, self._clock())
            if entry is None:
                return None
            self._data.move_to_end(key)
            return entry.value, entry.version

    def cas(self, key: str, value: bytes, token: CasToken, /, ttl: BackendTTL = None) -> bool:
        """Store ``value`` only if ``key`` is live and unwritten since ``gets`` gave ``token``.

        With ``ttl=KEEP_TTL`` the entry keeps its expiry time.
        """
        data = _as_bytes(_check_key(key), value)
        if ttl is not KEEP_TTL:
            _check_ttl(ttl)
        with self._lock:
            now = self._clock()
            entry = self._live(key, now)
            if entry is None or type(token) is not int or entry.version != token:
                return False
            expires_at = entry.expires_at if ttl is KEEP_TTL else self._deadline(ttl, now)
            self._store(key, data, expires_at, now)
            return True

    def close(self) -> None:
        """Do nothing: there is nothing to release. The data stays readable."""

    # -- optional capabilities: TTLBackend, CounterBackend, ScanBackend -------

    def touch(self, key: str, /, ttl: float | None = None) -> bool:
        """Give the live value under ``key`` a new TTL (None: no expiry); True if it existed."""
        return self.touch_many([key], ttl)[0]

    def touch_many(self, keys: Sequence[str], /, ttl: float | None = None) -> list[bool]:
        """``touch`` each key, under one lock; a touch is not a use (LRU order is kept)."""
        keys = [_check_key(key) for key in keys]
        _check_ttl(ttl)
        result: list[bool] = []
        with self._lock:
            now = self._clock()
            expires_at = self._deadline(ttl, now)
            for key in keys:
                entry = self._live(key, now)
                if entry is not None:
                    entry.expires_at = expires_at
                result.append(entry is not None)
        return result

    def ttl_of(self, key: str, /) -> float | None:
        """Seconds ``key`` has left (exact, by the clock); ``math.inf`` if none, None if absent."""
        _check_key(key)
        with self._lock:
            now = self._clock()
            entry = self._live(key, now)
            if entry is None:
                return None
            return math.inf if entry.expires_at is None else entry.expires_at - now

    def counter_add(self, key: str, delta: int, /, ttl: float | None = None) -> int:
        """Add ``delta`` to the counter under ``key``, never below 0, under the lock; the result.

        An absent counter starts at 0 with ``ttl``; an existing one keeps its TTL.

        Raises:
            BackendError: the stored value is not an ASCII integer.
        """
        _check_key(key)
        _check_delta(delta)
        _check_ttl(ttl)
        with self._lock:
            now = self._clock()
            entry = self._live(key, now)
            if entry is None:
                current, expires_at = 0, self._deadline(ttl, now)
            else:
                current = self._counter_value(key, entry.value)
                expires_at = entry.expires_at
            result = max(0, current + delta)
            self._store(key, str(result).encode("ascii"), expires_at, now)
            return result

    @staticmethod
    def _counter_value(key: str, value: bytes) -> int:
        if _COUNTER.fullmatch(value) is None:
            raise BackendError(
                f"cannot count with key {key!r}: its value is not an ASCII integer", key=key
            )
        try:
            return int(value)
        except ValueError:  # more digits than int() accepts
            raise BackendError(
                f"cannot count with key {key!r}: its value is too long an integer", key=key
            ) from None

    def scan(self, prefix: str, /, batch: int = 500) -> Iterator[list[str]]:
        """The live keys starting with ``prefix``, ``batch`` at a time.

        The keys are listed under the lock once (a list of the matching key
        strings, not of values), then handed out in batches; a key deleted
        meanwhile may still be listed.
        """
        _check_key(prefix)
        _check_batch(batch)
        with self._lock:
            now = self._clock()
            keys = [
                key
                for key, entry in self._data.items()
                if key.startswith(prefix) and (entry.expires_at is None or entry.expires_at > now)
            ]
        for start in range(0, len(keys), batch):
            yield keys[start : start + batch]

    # -- extras ------------------------------------------------------------

    def clear(self) -> None:
        """Remove every entry."""
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        """The number of live entries; expired ones are removed on the way."""
        with self._lock:
            now = self._clock()
            expired = [
                key
                for key, entry in self._data.items()
                if entry.expires_at is not None and entry.expires_at <= now
            ]
            for key in expired:
                del self._data[key]
            return len(self._data)

    def __repr__(self) -> str:
        """The class, its entry limit and how many entries it holds, expired ones included."""
        return f"MemoryBackend(max_entries={self._max_entries!r}, stored={len(self._data)})"
