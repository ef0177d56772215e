"""A backend on a memcached server, through a pymemcache ``Client``.

Keys:
    memcached keys are at most 250 bytes, with no spaces or control characters.
    A key is sent as its UTF-8 bytes (after the client's ``key_prefix``) when
    those are legal, which one fast test decides. Any other key (too long,
    empty, or with a space, a control character or another non-printable
    character) is sent as a mapped key: up to 64 of its legal bytes, the byte
    ``0xFF``, then the 40 hex digits of its BLAKE2b-160 hash. ``0xFF`` never
    occurs in UTF-8 (nor in the ``surrogatepass`` form used for keys holding
    lone surrogates), so a mapped key can never equal a key sent as-is, and no
    key text is reserved.

TTL:
    memcached counts expiry in whole seconds on a clock that ticks once a
    second, so an item stored with expiry ``N`` lives between ``N - 1`` and
    ``N`` seconds. A TTL is sent as ``ceil(ttl) + 1``: an item never expires
    before its TTL, and may live up to ``ceil(ttl) + 1 - ttl`` seconds longer
    (1 s for whole-second TTLs, under 2 s for fractional ones). memcached reads
    an expiry over 30 days (2,592,000 s) as a Unix time, so longer TTLs are sent
    as ``int(time.time()) + ceil(ttl) + 1``, which assumes the server's clock
    agrees with this process's. memcached parses expiry as a signed 32-bit
    number: it silently reads a later time (after 2038-01-19) as "now",
    "never" or a wrong delay, so a TTL ending after ``2**31 - 1`` is refused
    with :class:`~cacheorm.InvalidTTL` before anything is sent. A write without
    a TTL clears the expiry the key had.

Value size:
    memcached refuses an item larger than its ``item_size_max`` (``-I``,
    1 MiB by default), and deletes the value the key held when it refuses a
    ``set``. So values are checked before sending: the limit is the server's
    ``item_size_max`` (read once with ``stats settings``) minus the key's
    length and :data:`ITEM_OVERHEAD` bytes, or ``max_value_size`` when given.
    A larger value raises :class:`~cacheorm.ValueTooLarge` and nothing is sent,
    for a batch not even the other pairs. A refusal by the server itself is
    reported as ``ValueTooLarge`` too (the key's old value is then gone).

Counters:
    ``incr`` uses memcached's atomic ``incr`` while the counter is between 0 and
    ``2**64 - 1``; negative deltas and counters outside that range use a
    ``gets``/``cas`` loop on signed decimal digits that keeps the key's TTL
    (read with the meta command ``mg``, memcached 1.6 or later).
"""

from __future__ import annotations

import hashlib
import importlib
import math
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cacheorm._backend import CasToken
from cacheorm._checks import as_bytes as _as_bytes
from cacheorm._checks import as_items as _as_items
from cacheorm._checks import check_key as _check_key
from cacheorm._checks import check_ttl as _check_ttl
from cacheorm._errors import (
    BackendError,
    BackendUnavailable,
    ConfigurationError,
    InvalidTTL,
    MissingDependency,
    ValueTooLarge,
)

if TYPE_CHECKING:
    from pymemcache.client.base import Client  # type: ignore[import-untyped]

__all__ = ["ITEM_OVERHEAD", "MemcachedBackend"]

#: The longest key memcached accepts, in bytes (``key_prefix`` included).
KEY_MAX = 250

#: Bytes of an item that are not its value or key, subtracted from
#: ``item_size_max`` for the value limit. memcached 1.6 (64-bit, CAS on) uses
#: 59: a 48-byte header, 8 bytes of CAS, the key's NUL and the value's CRLF.
ITEM_OVERHEAD = 64

#: Values up to this size fit under any legal ``item_size_max`` (1 KiB at
#: least) whatever the key, so they are sent without asking the server.
_ALWAYS_FITS = 512

#: The byte between a mapped key's readable part and its hash; never in UTF-8.
_MARKER = b"\xff"

#: How many bytes of the original key a mapped key keeps, at most.
_READABLE = 64

#: Bytes memcached keys may not contain.
_UNSAFE = bytes(range(0x21)) + b"\x7f"

#: The longest expiry memcached reads as a delay; longer ones are Unix times.
_RELATIVE_MAX = 30 * 24 * 3600

#: The latest Unix time memcached can parse as an expiry (signed 32 bits).
_EXPTIME_MAX = 2**31 - 1

#: memcached's ``incr`` works on unsigned 64-bit counters.
_U64 = 2**64

#: How many times ``incr`` retries a compare-and-set lost to other writers.
_INCR_ATTEMPTS = 1000


def _expire(ttl: float | None) -> int:
    """The memcached expiry for ``ttl`` seconds: 0 for None, else a delay or a Unix time."""
    if ttl is None:
        return 0
    _check_ttl(ttl)
    seconds = math.ceil(ttl) + 1
    if seconds <= _RELATIVE_MAX:
        return seconds
    at = int(time.time()) + seconds
    if at > _EXPTIME_MAX:
        raise InvalidTTL(
            f"ttl {ttl!r} ends after 2038-01-19 (Unix time {_EXPTIME_MAX}), "
            "the latest expiry memcached can represent"
        )
    return at


def _describe_server(server: object) -> str:
    """``host:port`` (``[host]:port`` for IPv6) or ``unix:<path>``."""
    if isinstance(server, tuple) and len(server) == 2:
        host, port = server
        host = str(host)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"unix:{server}"


def _parse_counter(value: bytes) -> int | None:
    """The integer in ``value``: ASCII digits, optionally negative, then optional spaces.

    memcached's own ``incr`` pads a shorter result with spaces, so those are
    accepted. None when ``value`` is not such an integer.
    """
    text = value.rstrip(b" ")
    digits = text[1:] if text[:1] == b"-" else text
    if not digits or not digits.isdigit():
        return None
    try:
        return int(text)
    except ValueError:  # more digits than int() accepts
        return None


class MemcachedBackend:
    """A backend on one memcached server, through a pymemcache ``Client``.

    Keys that memcached cannot take as they are get a deterministic mapped key,
    TTLs are rounded up to whole seconds (plus one), and values over the
    server's item size limit are refused before sending; see the module
    documentation. Every write waits for the server's reply. The backend is safe
    to share between threads: its one connection carries one request and reply
    at a time, under a lock (for parallel requests, give threads their own
    backends). Atomicity comes from memcached (``add``, ``incr``, ``cas``).

    Args:
        client: a ``pymemcache.client.base.Client`` with the default serde (so
            values are bytes) and ``ignore_exc=False``. Its ``key_prefix`` is
            honoured.
        max_value_size: the largest value accepted, in bytes; None to use the
            server's ``item_size_max`` less the key and :data:`ITEM_OVERHEAD`.

    Raises:
        MissingDependency: pymemcache is not installed.
        ConfigurationError: the client is not a pymemcache ``Client``, has a
            serde, ignores errors or has a ``key_prefix`` that leaves no room
            for keys; or ``max_value_size`` is not a positive int or None.
    """

    def __init__(self, client: Client, max_value_size: int | None = None) -> None:
        pymemcache = _import_pymemcache()
        if not isinstance(client, pymemcache.Client):
            raise ConfigurationError(
                "MemcachedBackend needs a pymemcache.client.base.Client, not "
                f"{type(client).__name__} (pooled and hashing clients come later)"
            )
        serde = client.serde
        if not (
            isinstance(serde, pymemcache.LegacyWrappingSerde)
            and getattr(serde.serialize, "__func__", None)
            is pymemcache.LegacyWrappingSerde._default_serialize
            and getattr(serde.deserialize, "__func__", None)
            is pymemcache.LegacyWrappingSerde._default_deserialize
        ):
            raise ConfigurationError(
                "MemcachedBackend needs a pymemcache Client without serde, serializer or "
                "deserializer: values must come back as the bytes stored"
            )
        if client.ignore_exc:
            raise ConfigurationError(
                "MemcachedBackend needs a pymemcache Client with ignore_exc=False: "
                "errors must not read as cache misses"
            )
        if max_value_size is not None and (
            isinstance(max_value_size, bool)
            or not isinstance(max_value_size, int)
            or max_value_size < 1
        ):
            raise ConfigurationError(
                f"max_value_size must be a positive int or None, not {max_value_size!r}"
            )
        prefix: bytes = client.key_prefix
        room = KEY_MAX - len(prefix) - len(_MARKER) - 40
        if room < 0 or prefix.translate(None, _UNSAFE) != prefix:
            raise ConfigurationError(
                f"the client's key_prefix {prefix!r} leaves no room for keys or is not a "
                f"legal memcached key part (at most {KEY_MAX - 41} bytes, no spaces or "
                "control characters)"
            )
        self._client = client
        self._prefix = prefix
        self._plain_max = KEY_MAX - len(prefix)
        self._readable = min(_READABLE, room)
        self._address = _describe_server(client.server)
        self._max_value_size = max_value_size
        #: The server's item_size_max, once read.
        self._item_size_max: int | None = None
        #: Values up to this size need no size check.
        self._unchecked = _ALWAYS_FITS if max_value_size is None else max_value_size
        self._errors: tuple[type[Exception], ...] = (pymemcache.MemcacheError, OSError)
        self._unavailable: tuple[type[Exception], ...] = (
            OSError,
            pymemcache.MemcacheUnexpectedCloseError,
        )
        self._client_error: type[Exception] = pymemcache.MemcacheClientError
        #: One request and its reply at a time on the client's one connection.
        self._lock = threading.Lock()

    @classmethod
    def from_servers(
        cls,
        servers: str | Sequence[str],
        /,
        *,
        max_value_size: int | None = None,
        **client_kwargs: Any,
    ) -> MemcachedBackend:
        """A backend on a new pymemcache ``Client`` for the server at ``servers``.

        Args:
            servers: one address, ``"host:port"``, ``"[ipv6]:port"``,
                ``"unix:/path"`` or ``"/path"``, alone or in a one-item list.
            max_value_size: as for the constructor.
            **client_kwargs: passed to ``Client``; ``connect_timeout`` and
                ``timeout`` default to 5 seconds, ``default_noreply`` to False.

        Raises:
            ConfigurationError: no address, several addresses (pools come
                later), or an address that cannot be parsed.
            MissingDependency: pymemcache is not installed.
        """
        pymemcache = _import_pymemcache()
        addresses = [servers] if isinstance(servers, str) else list(servers)
        if len(addresses) != 1:
            raise ConfigurationError(
                "MemcachedBackend.from_servers takes exactly one server address for now "
                f"(pools come later), not {len(addresses)}: {addresses!r}"
            )
        try:
            server = pymemcache.normalize_server_spec(addresses[0])
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(
                f"cannot parse memcached address {addresses[0]!r}: {exc}"
            ) from exc
        client_kwargs.setdefault("connect_timeout", 5.0)
        client_kwargs.setdefault("timeout", 5.0)
        client_kwargs.setdefault("default_noreply", False)
        return cls(pymemcache.Client(server, **client_kwargs), max_value_size=max_value_size)

    @property
    def client(self) -> Client:
        """The pymemcache ``Client`` this backend talks through."""
        return self._client

    @property
    def max_value_size(self) -> int | None:
        """The configured value size limit, or None to follow the server's."""
        return self._max_value_size

    # -- keys, sizes and errors --------------------------------------------

    def _bkey(self, key: str) -> bytes:
        """The memcached key (before ``key_prefix``) for ``key``; TypeError if not a str."""
        if not isinstance(key, str):
            _check_key(key)
        if key.isprintable() and " " not in key:
            raw = key.encode()
            if 0 < len(raw) <= self._plain_max:
                return raw
        return self._mapped(key)

    def _bkeys(self, keys: Sequence[str]) -> list[bytes]:
        """:meth:`_bkey` for each key, inlined for ordinary keys (batches are hot)."""
        plain_max = self._plain_max
        bkey = self._bkey
        result: list[bytes] = []
        append = result.append
        for key in keys:
            if isinstance(key, str) and key.isprintable() and " " not in key:
                raw = key.encode()
                if 0 < len(raw) <= plain_max:
                    append(raw)
                    continue
            append(bkey(key))
        return result

    def _mapped(self, key: str) -> bytes:
        """The mapped key: readable part, marker, hash of the UTF-8 (surrogatepass) bytes."""
        raw = key.encode("utf-8", "surrogatepass")
        readable = raw.translate(None, _UNSAFE)[: self._readable]
        digest = hashlib.blake2b(raw, digest_size=20).hexdigest().encode("ascii")
        return readable + _MARKER + digest

    def _check_size(self, key: str, bkey: bytes, size: int) -> None:
        """Raise ValueTooLarge if a ``size``-byte value cannot be stored under ``bkey``."""
        limit = self._limit(bkey, key)
        if size > limit:
            raise ValueTooLarge(
                f"value for key {key!r} is {size} bytes, over the {limit}-byte limit of "
                f"memcached at {self._address}; nothing was written",
                size=size,
                limit=limit,
                key=key,
                server=self._address,
            )

    def _limit(self, bkey: bytes, key: str | None) -> int:
        """The largest value storable under ``bkey``, reading item_size_max if needed."""
        if self._max_value_size is not None:
            return self._max_value_size
        return self._item_limit(key) - len(self._prefix) - len(bkey)

    def _item_limit(self, key: str | None) -> int:
        """The server's ``item_size_max`` less :data:`ITEM_OVERHEAD`, read once."""
        if self._item_size_max is None:
            try:
                with self._lock:
                    stats = self._client.stats("settings")
            except self._errors as exc:
                raise self._fail(exc, key) from exc
            self._item_size_max = int(stats.get(b"item_size_max", 1024 * 1024))
            if self._max_value_size is None:
                self._unchecked = max(0, self._item_size_max - ITEM_OVERHEAD - KEY_MAX)
        return self._item_size_max - ITEM_OVERHEAD

    def _fail(
        self,
        exc: Exception,
        key: str | None = None,
        size: int | None = None,
        bkey: bytes = b"",
    ) -> BackendError:
        """The cacheorm error for a pymemcache or socket error; raise it ``from exc``.

        ``size`` (the value's, or the largest of a batch) turns the server's
        "object too large" refusal into :class:`~cacheorm.ValueTooLarge`.
        """
        server = self._address
        about = "" if key is None else f" for key {key!r}"
        if isinstance(exc, self._unavailable):
            reason = str(exc) or type(exc).__name__
            return BackendUnavailable(
                f"memcached at {server} is unavailable{about}: {reason}", key=key, server=server
            )
        detail = exc.args[0] if exc.args else ""
        text = (
            detail.decode("utf-8", "replace") if isinstance(detail, bytes) else str(detail)
        ) or type(exc).__name__
        if size is not None and "too large" in text:
            try:  # the real limit, when the server still answers
                limit = self._item_limit(key) - len(self._prefix) - len(bkey)
            except BackendError:
                limit = size - 1
            return ValueTooLarge(
                f"memcached at {server} refused a {size}-byte value{about} as too large "
                f"({text}); the key's previous value, if any, is gone",
                size=size,
                limit=limit,
                key=key,
                server=server,
            )
        return BackendError(f"memcached at {server} failed{about}: {text}", key=key, server=server)

    def _pairs(
        self, items: Sequence[tuple[str, bytes]]
    ) -> tuple[list[tuple[str, bytes]], list[bytes], int]:
        """Checked pairs, their memcached keys and the largest value's size (size-checked)."""
        pairs = _as_items(items)
        bkeys = self._bkeys([key for key, _ in pairs])
        largest = 0
        for (key, value), bkey in zip(pairs, bkeys, strict=True):
            size = len(value)
            if size > self._unchecked:
                self._check_size(key, bkey, size)
            largest = max(largest, size)
        return pairs, bkeys, largest

    def _unconfirmed(self, keys: Sequence[str]) -> BackendError:
        """The error for writes the server did not confirm."""
        shown = ", ".join(repr(k) for k in keys[:10])
        more = f" and {len(keys) - 10} more" if len(keys) > 10 else ""
        return BackendError(
            f"memcached at {self._address} did not store key(s) {shown}{more}",
            key=keys[0] if len(keys) == 1 else None,
            server=self._address,
        )

    # -- the Backend protocol ----------------------------------------------

    def get(self, key: str, /) -> bytes | None:
        """The value under ``key``, or None if absent or expired."""
        bkey = self._bkey(key)
        try:
            with self._lock:
                value: bytes | None = self._client.get(bkey)
        except self._errors as exc:
            raise self._fail(exc, key) from exc
        return value

    def get_many(self, keys: Sequence[str], /) -> list[bytes | None]:
        """The values under ``keys``, in the same order, None where absent; one round trip."""
        bkeys = self._bkeys(keys)
        if not bkeys:
            return []
        try:
            with self._lock:
                found: dict[bytes, bytes] = self._client.get_many(bkeys)
        except self._errors as exc:
            raise self._fail(exc) from exc
        get = found.get
        return [get(b) for b in bkeys]

    def set(self, key: str, value: bytes, /, ttl: float | None = None) -> None:
        """Store ``value`` under ``key``, replacing any value and TTL it had.

        Raises:
            TypeError: ``key`` is not a str or ``value`` not bytes-like.
            ValueTooLarge: ``value`` is over the size limit; nothing was sent.
        """
        if not self._store_if("set", key, value, ttl):
            raise self._unconfirmed([key])

    def set_many(self, items: Sequence[tuple[str, bytes]], /, ttl: float | None = None) -> None:
        """Store every ``(key, value)`` pair in one round trip; a repeated key keeps its last value.

        Nothing is sent if a key or value is invalid, the TTL is invalid or a
        value is too large.
        """
        pairs, bkeys, largest = self._pairs(items)
        expire = _expire(ttl)
        if not pairs:
            return
        values = {bkey: value for bkey, (_, value) in zip(bkeys, pairs, strict=True)}
        try:
            with self._lock:
                failed: list[bytes] = self._client.set_many(values, expire, noreply=False)
        except self._errors as exc:
            raise self._fail(exc, pairs[0][0] if len(pairs) == 1 else None, largest) from exc
        if failed:
            missed = set(failed)
            raise self._unconfirmed(
                [k for (k, _), b in zip(pairs, bkeys, strict=True) if b in missed]
            )

    def add(self, key: str, value: bytes, /, ttl: float | None = None) -> bool:
        """Store only if ``key`` is absent or expired, atomically; True if stored."""
        return self._store_if("add", key, value, ttl)

    def add_many(
        self, items: Sequence[tuple[str, bytes]], /, ttl: float | None = None
    ) -> list[bool]:
        """``add`` for each pair, in order; a later pair sees earlier ones.

        One round trip, or one per repetition when a key occurs more than once.
        """
        return self._write_if(b"add", items, ttl)

    def replace(self, key: str, value: bytes, /, ttl: float | None = None) -> bool:
        """Store only if ``key`` holds a live value, atomically; True if stored."""
        return self._store_if("replace", key, value, ttl)

    def _store_if(self, command: str, key: str, value: bytes, ttl: float | None) -> bool:
        """One memcached ``set``, ``add`` or ``replace``; True if the server stored the value."""
        bkey = self._bkey(key)
        data = _as_bytes(key, value)
        expire = _expire(ttl)
        if len(data) > self._unchecked:
            self._check_size(key, bkey, len(data))
        try:
            with self._lock:
                stored: bool = getattr(self._client, command)(bkey, data, expire, noreply=False)
        except self._errors as exc:
            raise self._fail(exc, key, len(data), bkey) from exc
        return stored

    def replace_many(
        self, items: Sequence[tuple[str, bytes]], /, ttl: float | None = None
    ) -> list[bool]:
        """``replace`` for each pair, in order; round trips as for :meth:`add_many`."""
        return self._write_if(b"replace", items, ttl)

    def _write_if(
        self, command: bytes, items: Sequence[tuple[str, bytes]], ttl: float | None
    ) -> list[bool]:
        """Send ``command`` (add or replace) for each pair, in waves of distinct keys.

        pymemcache has no public add_many, and ``Client._store_cmd`` (private but
        unchanged through pymemcache 4.x) takes a dict, so a batch that repeats
        a key goes in waves: wave n holds the n-th occurrence of each key, and
        memcached runs the waves in order, as the memory backend runs pairs.
        """
        pairs, bkeys, largest = self._pairs(items)
        expire = _expire(ttl)
        results = [False] * len(pairs)
        waves: list[dict[bytes, tuple[int, bytes]]] = []
        occurrences: dict[bytes, int] = {}
        for index, ((_, value), bkey) in enumerate(zip(pairs, bkeys, strict=True)):
            wave = occurrences.get(bkey, 0)
            occurrences[bkey] = wave + 1
            if wave == len(waves):
                waves.append({})
            waves[wave][bkey] = (index, value)
        for wave_items in waves:
            values = {bkey: value for bkey, (_, value) in wave_items.items()}
            try:
                with self._lock:
                    replies = self._client._store_cmd(command, values, expire, False)
            except self._errors as exc:
                raise self._fail(exc, pairs[0][0] if len(pairs) == 1 else None, largest) from exc
            for bkey, (index, _) in wave_items.items():
                results[index] = replies[bkey] is True
        return results

    def delete(self, key: str, /) -> bool:
        """Remove ``key``; True if it held a live value."""
        bkey = self._bkey(key)
        try:
            with self._lock:
                deleted: bool = self._client.delete(bkey, noreply=False)
        except self._errors as exc:
            raise self._fail(exc, key) from exc
        return deleted

    def delete_many(self, keys: Sequence[str], /) -> int:
        """Remove ``keys`` in one round trip; the number that held a live value.

        pymemcache's ``delete_many`` pipelines the deletes in one round trip but
        does not say which existed, so its private ``_misc_cmd`` is used directly.
        """
        prefix = self._prefix
        commands = [b"delete " + prefix + bkey + b"\r\n" for bkey in self._bkeys(keys)]
        if not commands:
            return 0
        try:
            with self._lock:
                lines: list[bytes] = self._client._misc_cmd(commands, b"delete", False)
        except self._errors as exc:
            raise self._fail(exc) from exc
        return sum(1 for line in lines if line == b"DELETED")

    def exists(self, key: str, /) -> bool:
        """True if ``key`` holds a live value (read with ``get``, which leaves the TTL alone)."""
        return self.get(key) is not None

    def incr(self, key: str, delta: int = 1, /) -> int:
        """Add ``delta`` to the counter under ``key``, starting from 0; the new value.

        The counter is stored as ASCII decimal digits and keeps the key's TTL.
        memcached's own atomic ``incr`` serves counters from 0 to ``2**64 - 1``
        and non-negative deltas; anything else (negative values, larger ones)
        goes through a ``gets``/``cas`` loop. memcached's ``incr`` also accepts,
        and may pad with spaces, forms the memory backend refuses (``b"+5"``,
        ``b" 5"``, ``b"5 x"``).

        Raises:
            TypeError: ``delta`` is not an int.
            BackendError: the stored value is not an integer.
        """
        bkey = self._bkey(key)
        if isinstance(delta, bool) or not isinstance(delta, int):
            raise TypeError(f"incr delta must be an int, not {type(delta).__name__}")
        if delta < 0 or delta >= _U64:
            return self._incr_cas(key, bkey, delta)
        client, lock = self._client, self._lock
        for _ in range(_INCR_ATTEMPTS):
            try:
                with lock:
                    result: int | None = client.incr(bkey, delta, noreply=False)
                    created = result is None and client.add(
                        bkey, str(delta).encode("ascii"), 0, noreply=False
                    )
            except self._client_error as exc:
                detail = exc.args[0] if exc.args else b""
                if not (isinstance(detail, bytes) and b"non-numeric" in detail):
                    raise self._fail(exc, key) from exc
                # The value is negative, over 2**64 - 1 or not a number.
                return self._incr_cas(key, bkey, delta)
            except self._errors as exc:
                raise self._fail(exc, key) from exc
            if created:
                return delta
            if result is not None:
                if result < delta:  # memcached wrapped around 2**64: add it back
                    self._incr_cas(key, bkey, _U64, missing_ok=True)
                    return result + _U64
                return result
        raise BackendError(
            f"cannot incr key {key!r}: it keeps vanishing and reappearing",
            key=key,
            server=self._address,
        )

    def _incr_cas(self, key: str, bkey: bytes, delta: int, *, missing_ok: bool = False) -> int:
        """``incr`` by a ``gets``/``cas`` loop on signed digits, keeping the TTL.

        With ``missing_ok``, a missing key stays missing (and ``delta`` is returned).
        """
        client, lock = self._client, self._lock
        meta = b"mg " + self._prefix + bkey + b" t c"
        for _ in range(_INCR_ATTEMPTS):
            try:
                with lock:
                    value, token = client.gets(bkey)
                if value is None:
                    if missing_ok:
                        return delta
                    with lock:
                        created = client.add(bkey, str(delta).encode("ascii"), 0, noreply=False)
                    if created:
                        return delta
                    continue
                current = _parse_counter(value)
                if current is None:
                    raise BackendError(
                        f"cannot incr key {key!r}: its value is not an ASCII integer",
                        key=key,
                        server=self._address,
                    )
                with lock:
                    reply: bytes = client.raw_command(meta, b"\r\n")
                flags = reply.split()
                if flags[:1] != [b"HD"]:
                    continue  # gone since gets
                remaining = next((int(f[1:]) for f in flags if f[:1] == b"t"), -1)
                tokens = [f[1:] for f in flags if f[:1] == b"c"]
                if tokens and tokens[0] != token:
                    continue  # changed since gets
                if remaining < 0:
                    expire = 0
                elif remaining <= _RELATIVE_MAX:
                    expire = max(remaining, 1)
                else:
                    expire = int(time.time()) + remaining
                result = current + delta
                with lock:
                    stored = client.cas(
                        bkey, str(result).encode("ascii"), token, expire, noreply=False
                    )
            except self._errors as exc:
                raise self._fail(exc, key) from exc
            if stored:
                return result
        raise BackendError(
            f"cannot incr key {key!r}: other writers kept changing it",
            key=key,
            server=self._address,
        )

    def gets(self, key: str, /) -> tuple[bytes, CasToken] | None:
        """The value and its CAS token (bytes of digits) for :meth:`cas`, or None if absent."""
        bkey = self._bkey(key)
        try:
            with self._lock:
                value, token = self._client.gets(bkey)
        except self._errors as exc:
            raise self._fail(exc, key) from exc
        if value is None:
            return None
        return value, token

    def cas(self, key: str, value: bytes, token: CasToken, /, ttl: float | None = None) -> bool:
        """Store ``value`` only if ``key`` is live and unwritten since ``gets`` gave ``token``.

        A token that memcached could not have given (not an int or bytes of
        digits under ``2**64``) returns False without asking the server.
        """
        bkey = self._bkey(key)
        data = _as_bytes(key, value)
        expire = _expire(ttl)
        if len(data) > self._unchecked:
            self._check_size(key, bkey, len(data))
        if type(token) is bytes:
            if not (token.isdigit() and token.isascii() and len(token) <= 20):
                return False
            number = int(token)
        elif type(token) is int:
            number = token
        else:
            return False
        if not 0 <= number < _U64:
            return False
        try:
            with self._lock:
                stored: bool | None = self._client.cas(bkey, data, number, expire, noreply=False)
        except self._errors as exc:
            raise self._fail(exc, key, len(data), bkey) from exc
        return stored is True

    def close(self) -> None:
        """Close the connection; the backend is not used after this."""
        with self._lock:
            self._client.close()

    def __repr__(self) -> str:
        """The class and the server address."""
        return f"MemcachedBackend(server={self._address!r})"


class _Pymemcache:
    """The pymemcache names this module uses, imported when a backend is built.

    ``import cacheorm`` must work without pymemcache, so nothing here runs at
    import time.
    """

    def __init__(self) -> None:
        try:
            base = importlib.import_module("pymemcache.client.base")
            exceptions = importlib.import_module("pymemcache.exceptions")
            serde = importlib.import_module("pymemcache.serde")
        except ImportError as exc:
            raise MissingDependency("MemcachedBackend", "memcached") from exc
        self.Client: type[Any] = base.Client
        self.normalize_server_spec: Any = base.normalize_server_spec
        self.LegacyWrappingSerde: Any = serde.LegacyWrappingSerde
        self.MemcacheError: type[Exception] = exceptions.MemcacheError
        self.MemcacheClientError: type[Exception] = exceptions.MemcacheClientError
        self.MemcacheUnexpectedCloseError: type[Exception] = exceptions.MemcacheUnexpectedCloseError


def _import_pymemcache() -> _Pymemcache:
    """pymemcache's names; MissingDependency if it is not installed."""
    return _Pymemcache()
