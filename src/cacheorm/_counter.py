"""``Counter``: a named integer in a backend, with a TTL set when it is created."""

from __future__ import annotations

from cacheorm._backend import Backend, CounterBackend
from cacheorm._errors import BackendError, ConfigurationError, ValidationError
from cacheorm._keys import escape_factory
from cacheorm._ttl import TTL, normalize_ttl

__all__ = ["Counter"]

_escape = escape_factory("")


class Counter:
    """A counter under ``prefix + namespace + ":" + name`` (the name escaped like a key part).

    ``incr`` creates the counter, with the TTL, in the same atomic step as the
    first increment (Redis: one Lua script; memcached: ``add`` with the
    expiry, then ``incr``/``decr``, retried if another client created it in
    between; memory and filesystem: under their lock). An existing counter
    keeps its TTL: it is a window (for a rate limit, say), not refreshed by
    every count. A counter never goes below 0 on any backend: ``decr`` past 0
    leaves 0, as memcached's ``decr`` does.

    Counters are not idempotent: an increment whose reply is lost raises
    :class:`~cacheorm.OutcomeUnknown` and is never resent, so nothing is
    counted twice.

    Args:
        backend: a backend with the :class:`~cacheorm.CounterBackend`
            capability (every built-in backend has it).
        name: the counter's name: any non-empty str.
        ttl: the TTL given to the counter when it is created: seconds,
            ``timedelta``, or None / 0 for no expiry.
        namespace: the namespace of the key, ``"counter"`` by default.
        prefix: prepended to the key, like a repository's ``prefix``.

    Raises:
        ConfigurationError: the backend lacks the capability, or a bad name,
            namespace, prefix or TTL.
    """

    def __init__(
        self,
        backend: Backend,
        name: str,
        *,
        ttl: TTL = None,
        namespace: str = "counter",
        prefix: str = "",
    ) -> None:
        if not isinstance(backend, CounterBackend):
            kind = type(backend)
            raise ConfigurationError(
                f"Counter needs a backend with the CounterBackend capability (counter_add); "
                f"{kind.__module__}.{kind.__qualname__} does not have it"
            )
        for label, value in (("name", name), ("namespace", namespace)):
            if not isinstance(value, str) or not value:
                raise ConfigurationError(f"Counter {label} must be a non-empty str, not {value!r}")
        if not isinstance(prefix, str):
            raise ConfigurationError(f"Counter prefix must be a str, not {prefix!r}")
        self._backend: CounterBackend = backend
        self._store: Backend = backend
        self._ttl = normalize_ttl(ttl)
        self._name = name
        self._key = f"{prefix}{namespace}:{_escape(name)}"

    @property
    def key(self) -> str:
        """The backend key."""
        return self._key

    @property
    def name(self) -> str:
        """The counter's name."""
        return self._name

    @property
    def ttl(self) -> float | None:
        """The TTL given at creation, in seconds, or None for no expiry."""
        return self._ttl

    def __repr__(self) -> str:
        return f"Counter({self._key!r}, backend={type(self._store).__name__}, ttl={self._ttl!r})"

    def _amount(self, n: object, op: str) -> int:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValidationError(
                f"Counter {self._key!r}: {op} takes a non-negative int, not {n!r}",
                key=self._key,
                expected="int >= 0",
                actual=type(n).__name__,
            )
        return n

    def incr(self, n: int = 1) -> int:
        """Add ``n`` (creating the counter with its TTL if absent); the new value.

        Raises:
            ValidationError: ``n`` is not a non-negative int.
            BackendError: the key holds something that is not a counter.
            OutcomeUnknown: the increment was sent and its reply lost.
        """
        return self._backend.counter_add(self._key, self._amount(n, "incr"), self._ttl)

    def decr(self, n: int = 1) -> int:
        """Subtract ``n``, stopping at 0 (creating the counter at 0 if absent); the new value.

        Raises:
            ValidationError: ``n`` is not a non-negative int.
            BackendError, OutcomeUnknown: as :meth:`incr`.
        """
        return self._backend.counter_add(self._key, -self._amount(n, "decr"), self._ttl)

    def get(self) -> int:
        """The current value; 0 if the counter does not exist (or expired).

        Raises:
            BackendError: the key holds something that is not a counter.
        """
        value = self._store.get(self._key)
        if value is None:
            return 0
        text = value.rstrip(b" ")  # memcached pads a shrunk counter with spaces
        if not text.isdigit():
            raise BackendError(
                f"Counter {self._key!r} holds {value[:40]!r}, which is not a counter",
                key=self._key,
            )
        return int(text)

    def reset(self) -> bool:
        """Delete the counter (the next ``incr`` creates it, with a new TTL); True if it existed."""
        return self._store.delete(self._key)
