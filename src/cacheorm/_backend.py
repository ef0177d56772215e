"""The contract every backend implements: bytes in, bytes out, with TTL.

Backends know nothing of models, serializers or repositories. Keys are
``str``; values are ``bytes``; ``ttl`` is a positive number of seconds or
``None`` for no expiry (the repository has already validated it); ``replace``,
``replace_many`` and ``cas`` also accept :data:`~cacheorm.KEEP_TTL`, which
keeps the remaining TTL of the value they replace. Batch
methods are one round trip per server: a backend must not implement them as a
loop of network calls.

Beyond :class:`Backend`, three optional capabilities, each a runtime-checkable
protocol a backend implements or not (a third-party backend that predates them
keeps working; the repository methods that need one raise
:class:`~cacheorm.ConfigurationError` naming the backend's class):

* :class:`TTLBackend`: ``touch``, ``touch_many`` and ``ttl_of``.
* :class:`CounterBackend`: ``counter_add``, a counter that gets its TTL when it is created.
* :class:`ScanBackend`: ``scan``, the live keys under a prefix, in batches.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from types import TracebackType
from typing import Protocol, runtime_checkable

from typing_extensions import Self

from cacheorm._ttl import BackendTTL

__all__ = [
    "AsyncBackend",
    "AsyncClosing",
    "AsyncCounterBackend",
    "AsyncScanBackend",
    "AsyncTTLBackend",
    "Backend",
    "CasToken",
    "Closing",
    "CounterBackend",
    "ScanBackend",
    "TTLBackend",
]

#: Opaque token from :meth:`Backend.gets`, handed back to :meth:`Backend.cas`.
CasToken = object


@runtime_checkable
class Backend(Protocol):
    """Byte storage with TTL, atomic insert/replace, counters and compare-and-set.

    Every method raises :class:`~cacheorm.BackendError` (or its subclass
    :class:`~cacheorm.BackendUnavailable`) when the store fails; a method that
    returns normally did what it reports.
    """

    def get(self, key: str, /) -> bytes | None:
        """The value under ``key``, or None if absent or expired."""
        ...

    def get_many(self, keys: Sequence[str], /) -> list[bytes | None]:
        """The values under ``keys``, in the same order, None where absent."""
        ...

    def set(self, key: str, value: bytes, /, ttl: float | None = None) -> None:
        """Store ``value`` under ``key`` whether or not it exists."""
        ...

    def set_many(self, items: Sequence[tuple[str, bytes]], /, ttl: float | None = None) -> None:
        """Store every ``(key, value)`` pair."""
        ...

    def add(self, key: str, value: bytes, /, ttl: float | None = None) -> bool:
        """Store only if ``key`` is absent, atomically; True if stored."""
        ...

    def add_many(
        self, items: Sequence[tuple[str, bytes]], /, ttl: float | None = None
    ) -> list[bool]:
        """``add`` for each pair, in order; a later pair sees earlier ones."""
        ...

    def replace(self, key: str, value: bytes, /, ttl: BackendTTL = None) -> bool:
        """Store only if ``key`` is present, atomically; True if stored.

        With ``ttl=KEEP_TTL`` the value keeps the remaining TTL of the one it replaces.
        """
        ...

    def replace_many(
        self, items: Sequence[tuple[str, bytes]], /, ttl: BackendTTL = None
    ) -> list[bool]:
        """``replace`` for each pair, in order."""
        ...

    def delete(self, key: str, /) -> bool:
        """Remove ``key``; True if it existed."""
        ...

    def delete_many(self, keys: Sequence[str], /) -> int:
        """Remove ``keys``; the number that existed."""
        ...

    def exists(self, key: str, /) -> bool:
        """True if ``key`` holds a live value."""
        ...

    def incr(self, key: str, delta: int = 1, /) -> int:
        """Add ``delta`` to the integer under ``key`` (0 if absent) atomically; the result.

        Counters are stored as ASCII decimal digits, as Redis and Memcached do.
        """
        ...

    def gets(self, key: str, /) -> tuple[bytes, CasToken] | None:
        """The value and a token for :meth:`cas`, or None if absent."""
        ...

    def cas(self, key: str, value: bytes, token: CasToken, /, ttl: BackendTTL = None) -> bool:
        """Store ``value`` only if ``key`` is unchanged since ``gets`` gave ``token``.

        With ``ttl=KEEP_TTL`` the value keeps the remaining TTL of the one it replaces.
        """
        ...

    def close(self) -> None:
        """Release connections; the backend is not used after this."""
        ...


@runtime_checkable
class TTLBackend(Protocol):
    """Optional capability: change and read the remaining TTL of keys.

    ``touch`` and ``touch_many`` are idempotent, so a backend may resend them
    after a lost reply.
    """

    def touch(self, key: str, /, ttl: float | None = None) -> bool:
        """Give the live value under ``key`` a new TTL (None: no expiry); True if it existed."""
        ...

    def touch_many(self, keys: Sequence[str], /, ttl: float | None = None) -> list[bool]:
        """``touch`` each key, in order; one round trip per server."""
        ...

    def ttl_of(self, key: str, /) -> float | None:
        """Seconds ``key`` has left: ``math.inf`` if it never expires, None if it is absent."""
        ...


@runtime_checkable
class CounterBackend(Protocol):
    """Optional capability: counters that never go below zero and get a TTL at creation."""

    def counter_add(self, key: str, delta: int, /, ttl: float | None = None) -> int:
        """Add ``delta`` (may be negative) to the counter under ``key``, atomically; the result.

        An absent counter starts at 0 and, in the same atomic step, gets
        ``ttl`` (None: no expiry); an existing one keeps its TTL. The result is
        clamped at 0, as memcached's ``decr`` does: a counter never goes
        negative. Not idempotent: never resent after a lost reply.
        """
        ...


@runtime_checkable
class ScanBackend(Protocol):
    """Optional capability: enumerate the live keys that start with a prefix."""

    def scan(self, prefix: str, /, batch: int = 500) -> Iterator[list[str]]:
        """The live keys starting with ``prefix``, in batches of about ``batch`` keys.

        Holds at most about one batch in memory. Keys written or deleted while
        the scan runs may or may not be listed; a key may be listed twice when
        the store resizes meanwhile (Redis ``SCAN``), never a key that was
        absent for the whole scan.
        """
        ...


class Closing:
    """Mixin: a backend is a context manager that calls ``close()`` on exit."""

    def close(self) -> None:
        """Release what the object holds (each backend and repository defines it)."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        """The object itself; :meth:`close` runs when the ``with`` block ends."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Call ``close()``, whatever happened in the block."""
        self.close()


# --- The async side -------------------------------------------------------------
#
# The same contract, awaited. An async backend's methods have the semantics,
# arguments and errors of the sync ones above (read their docstrings there);
# only ``close`` becomes ``aclose``. Cancelling a call (``task.cancel()``,
# ``asyncio.timeout``) is an interrupted request: the call raises
# ``CancelledError``, a write may or may not have happened, and the backend
# stays usable -- the cancelled call's reply is never handed to another call.


@runtime_checkable
class AsyncBackend(Protocol):
    """:class:`Backend`, awaited: byte storage with TTL for :class:`~cacheorm.AsyncRepository`."""

    async def get(self, key: str, /) -> bytes | None:
        """The value under ``key``, or None if absent or expired."""
        ...

    async def get_many(self, keys: Sequence[str], /) -> list[bytes | None]:
        """The values under ``keys``, in the same order, None where absent."""
        ...

    async def set(self, key: str, value: bytes, /, ttl: float | None = None) -> None:
        """Store ``value`` under ``key`` whether or not it exists."""
        ...

    async def set_many(
        self, items: Sequence[tuple[str, bytes]], /, ttl: float | None = None
    ) -> None:
        """Store every ``(key, value)`` pair."""
        ...

    async def add(self, key: str, value: bytes, /, ttl: float | None = None) -> bool:
        """Store only if ``key`` is absent, atomically; True if stored."""
        ...

    async def add_many(
        self, items: Sequence[tuple[str, bytes]], /, ttl: float | None = None
    ) -> list[bool]:
        """``add`` for each pair, in order; a later pair sees earlier ones."""
        ...

    async def replace(self, key: str, value: bytes, /, ttl: BackendTTL = None) -> bool:
        """Store only if ``key`` is present, atomically; True if stored."""
        ...

    async def replace_many(
        self, items: Sequence[tuple[str, bytes]], /, ttl: BackendTTL = None
    ) -> list[bool]:
        """``replace`` for each pair, in order."""
        ...

    async def delete(self, key: str, /) -> bool:
        """Remove ``key``; True if it existed."""
        ...

    async def delete_many(self, keys: Sequence[str], /) -> int:
        """Remove ``keys``; the number that existed."""
        ...

    async def exists(self, key: str, /) -> bool:
        """True if ``key`` holds a live value."""
        ...

    async def incr(self, key: str, delta: int = 1, /) -> int:
        """Add ``delta`` to the integer under ``key`` (0 if absent) atomically; the result."""
        ...

    async def gets(self, key: str, /) -> tuple[bytes, CasToken] | None:
        """The value and a token for :meth:`cas`, or None if absent."""
        ...

    async def cas(self, key: str, value: bytes, token: CasToken, /, ttl: BackendTTL = None) -> bool:
        """Store ``value`` only if ``key`` is unchanged since ``gets`` gave ``token``."""
        ...

    async def aclose(self) -> None:
        """Release connections; the backend is not used after this."""
        ...


@runtime_checkable
class AsyncTTLBackend(Protocol):
    """:class:`TTLBackend`, awaited."""

    async def touch(self, key: str, /, ttl: float | None = None) -> bool:
        """Give the live value under ``key`` a new TTL; True if it existed."""
        ...

    async def touch_many(self, keys: Sequence[str], /, ttl: float | None = None) -> list[bool]:
        """``touch`` each key, in order; one round trip per server."""
        ...

    async def ttl_of(self, key: str, /) -> float | None:
        """Seconds ``key`` has left: ``math.inf`` if it never expires, None if absent."""
        ...


@runtime_checkable
class AsyncCounterBackend(Protocol):
    """:class:`CounterBackend`, awaited."""

    async def counter_add(self, key: str, delta: int, /, ttl: float | None = None) -> int:
        """Add ``delta`` to the counter under ``key``, clamped at 0; TTL set at creation."""
        ...


@runtime_checkable
class AsyncScanBackend(Protocol):
    """:class:`ScanBackend`, as an async iterator of key batches."""

    def scan(self, prefix: str, /, batch: int = 500) -> AsyncIterator[list[str]]:
        """The live keys starting with ``prefix``, in batches of about ``batch`` keys."""
        ...


class AsyncClosing:
    """Mixin: an async backend is an async context manager that awaits ``aclose()`` on exit."""

    async def aclose(self) -> None:
        """Release what the object holds (each async backend defines it)."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        """The object itself; :meth:`aclose` runs when the ``async with`` block ends."""
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Await ``aclose()``, whatever happened in the block."""
        await self.aclose()
