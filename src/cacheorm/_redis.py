"""A Redis backend on redis-py: one command (one round trip) per operation, batches pipelined.

redis-py is an optional dependency (``pip install 'cacheorm[redis]'``); it is
imported when a :class:`RedisBackend` is built, so ``import cacheorm`` works
without it.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Sequence
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
    safe_repr,
)

if TYPE_CHECKING:
    import redis

__all__ = ["RedisBackend"]

#: The longest TTL sent, in milliseconds. Redis refuses an expiry whose
#: ``now_ms + ttl_ms`` overflows a signed 64-bit int; 2**62 ms (about 146
#: million years) leaves room for any clock.
_MAX_TTL_MS = 2**62

#: What :meth:`RedisBackend.gets` hands out: the SHA-1 hex digest of the value.
_TOKEN = re.compile(r"[0-9a-f]{40}")

#: The key types the batch fast path accepts without checking each key.
_STR = frozenset({str})

#: Compare-and-set on one key: store ARGV[2] (with PX ARGV[3] when given) only
#: if the key holds a value whose SHA-1 hex digest is ARGV[1]; 1 if stored.
_CAS_SCRIPT = """
local current = redis.call('GET', KEYS[1])
if not current or redis.sha1hex(current) ~= ARGV[1] then
  return 0
end
if ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
else
  redis.call('SET', KEYS[1], ARGV[2])
end
return 1
"""


def _import_redis() -> Any:
    """The ``redis`` module, or MissingDependency naming the ``redis`` extra."""
    try:
        import redis
    except ImportError:
        raise MissingDependency("RedisBackend", "redis") from None
    return redis


def _px(ttl: float | None) -> int | None:
    """``ttl`` in whole milliseconds, rounded up; None for no expiry.

    Raises:
        InvalidTTL: ``ttl`` is not a finite positive number, or is too long for Redis.
    """
    if ttl is None:
        return None
    _check_ttl(ttl)
    ms = ttl * 1000  # a float too large becomes inf, which the bound refuses
    if ms > _MAX_TTL_MS:
        raise InvalidTTL(
            f"ttl {safe_repr(ttl)} is too long for Redis: at most {_MAX_TTL_MS // 1000} seconds"
        )
    return math.ceil(ms)


def _server_address(client: Any) -> str:
    """``host:port`` or the unix socket path the client connects to; never a password."""
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", None)
    if not isinstance(kwargs, dict):
        return "<unknown redis server>"
    path = kwargs.get("path")
    if path:
        return str(path)
    host = str(kwargs.get("host", "localhost"))
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    return f"{host}:{kwargs.get('port', 6379)}"


def _key_list(keys: Sequence[str]) -> list[str]:
    """``keys`` as a list, each checked to be a str (all at once when every one is exactly str)."""
    keys = list(keys)
    if not set(map(type, keys)) <= _STR:
        for key in keys:
            _check_key(key)
    return keys


def _describe(keys: str | Sequence[str]) -> tuple[str, str | None]:
    """What an operation concerned, for a message, and the key to report."""
    if isinstance(keys, str):
        return f"key {safe_repr(keys)}", keys
    if not keys:
        return "no key", None
    if len(keys) == 1:
        return f"1 key {safe_repr(keys[0])}", keys[0]
    return f"{len(keys)} keys, the first {safe_repr(keys[0])}", keys[0]


class RedisBackend:
    """Stores bytes in Redis (or anything speaking its protocol: Valkey, KeyDB, ...).

    Every single-key operation is one Redis command and one round trip; a
    batch is one command (MGET, MSET, DEL) or one non-transactional pipeline,
    so one round trip too. ``add`` and ``replace`` are ``SET NX`` / ``SET XX``
    with the expiry in the same command, ``incr`` is INCRBY (it keeps the
    key's TTL) and ``cas`` is a one-key Lua script. TTLs are sent as whole
    milliseconds, rounded up; a write without a TTL clears any TTL the key had.

    Connection handling, timeouts and the retry policy are the redis-py
    client's. Every redis-py error is translated: connection failures and
    timeouts raise :class:`~cacheorm.BackendUnavailable`, anything else
    :class:`~cacheorm.BackendError`; both name the operation, the key and the
    server address (never a password) and chain the redis-py exception.

    Args:
        client: a ``redis.Redis`` client built with ``decode_responses=False``
            (the default). :meth:`close` closes it.

    Raises:
        MissingDependency: redis-py is not installed.
        TypeError: ``client`` is not a ``redis.Redis``.
        ConfigurationError: the client decodes responses to str.
    """

    def __init__(self, client: redis.Redis) -> None:
        redis_module = _import_redis()
        if not isinstance(client, redis_module.Redis):
            raise TypeError(
                f"RedisBackend needs a redis.Redis client, not {type(client).__name__}; "
                "use RedisBackend.from_url(url) to build one from a URL"
            )
        pool_kwargs = getattr(client.connection_pool, "connection_kwargs", {})
        if pool_kwargs.get("decode_responses"):
            raise ConfigurationError(
                "RedisBackend needs a redis client with decode_responses=False: values are bytes"
            )
        self._client: redis.Redis = client
        self._server = _server_address(client)
        password = pool_kwargs.get("password")
        self._password: str | None = str(password) if password else None
        self._db = pool_kwargs.get("db", 0)
        # Bound once: the hot paths then cost one attribute lookup per call.
        self._execute: Callable[..., Any] = client.execute_command
        self._cas_script: Callable[..., Any] = client.register_script(_CAS_SCRIPT)
        exceptions = redis_module.exceptions
        self._errors: tuple[type[BaseException], ...] = (
            exceptions.RedisError,
            OSError,
            UnicodeEncodeError,
        )
        self._unavailable: tuple[type[BaseException], ...] = (
            exceptions.ConnectionError,
            exceptions.TimeoutError,
            OSError,
        )
        self._response_error: type[BaseException] = exceptions.ResponseError

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisBackend:
        """A backend on a new client for ``url``, built by ``redis.Redis.from_url``.

        ``redis://[[user]:[password]@]host[:port][/db]``, ``rediss://...`` (TLS)
        and ``unix:///path/to/redis.sock[?db=N]`` are accepted. ``socket_timeout``
        and ``socket_connect_timeout`` default to 5 seconds; every other keyword
        (``retry``, ``max_connections``, ``ssl_*``, ...) goes to redis-py as is,
        so the retry policy is redis-py's for clients built from a URL unless
        ``retry=`` says otherwise.

        Args:
            url: the server's URL.
            **kwargs: more ``redis.Redis`` / connection pool options.

        Raises:
            MissingDependency: redis-py is not installed.
            ValueError: ``url`` is not a Redis URL (raised by redis-py).
            ConfigurationError: ``decode_responses`` was asked for.
        """
        redis_module = _import_redis()
        kwargs.setdefault("socket_connect_timeout", 5.0)
        kwargs.setdefault("socket_timeout", 5.0)
        client = redis_module.Redis.from_url(url, **kwargs)
        try:
            return cls(client)
        except BaseException:
            client.close()
            raise

    @property
    def client(self) -> redis.Redis:
        """The redis-py client, for commands this backend does not offer."""
        return self._client

    @property
    def server(self) -> str:
        """The server address, ``host:port`` or a unix socket path."""
        return self._server

    # -- error translation -------------------------------------------------

    def _fail(self, op: str, keys: str | Sequence[str], exc: BaseException) -> Exception:
        """The cacheorm exception for redis-py's ``exc`` during ``op`` on ``keys``."""
        what, key = _describe(keys)
        detail = str(exc) or type(exc).__name__
        if self._password:
            detail = detail.replace(self._password, "***")
        server = self._server
        if isinstance(exc, self._unavailable):
            return BackendUnavailable(
                f"redis {op} of {what} failed: server {server} is unavailable: {detail}",
                key=key,
                server=server,
            )
        if isinstance(exc, self._response_error) and "invalid expire time" in detail:
            return InvalidTTL(
                f"redis {op} of {what} refused the ttl on {server}: {detail}", key=key
            )
        return BackendError(
            f"redis {op} of {what} failed on {server}: {detail}", key=key, server=server
        )

    # -- the Backend protocol ----------------------------------------------

    def get(self, key: str, /) -> bytes | None:
        """The value under ``key`` (GET), or None if absent or expired."""
        _check_key(key)
        try:
            value: bytes | None = self._execute("GET", key, keys=(key,))
        except self._errors as exc:
            raise self._fail("GET", key, exc) from exc
        return value

    def get_many(self, keys: Sequence[str], /) -> list[bytes | None]:
        """The values under ``keys`` (one MGET), in the same order, None where absent."""
        keys = _key_list(keys)
        if not keys:
            return []
        try:
            values: list[bytes | None] = self._execute("MGET", *keys, keys=keys)
        except self._errors as exc:
            raise self._fail("MGET", keys, exc) from exc
        return values

    def set(self, key: str, value: bytes, /, ttl: float | None = None) -> None:
        """Store ``value`` under ``key`` (SET, with PX when ``ttl``), replacing any value and TTL.

        Raises:
            TypeError: ``value`` is not bytes, bytearray or memoryview.
            InvalidTTL: ``ttl`` is not positive, or too long for Redis.
        """
        data = _as_bytes(_check_key(key), value)
        try:
            if ttl is None:
                self._execute("SET", key, data)
            else:
                self._execute("SET", key, data, "PX", _px(ttl))
        except self._errors as exc:
            raise self._fail("SET", key, exc) from exc

    def set_many(self, items: Sequence[tuple[str, bytes]], /, ttl: float | None = None) -> None:
        """Store every pair: one MSET, or with ``ttl`` one pipeline of ``SET PX``.

        Nothing is sent if a key or value has the wrong type or ``ttl`` is invalid.
        """
        pairs = _as_items(items)
        px = _px(ttl)
        if not pairs:
            return
        try:
            if px is None:
                self._execute("MSET", *[part for pair in pairs for part in pair])
            else:
                pipe = self._client.pipeline(transaction=False)
                queue: Callable[..., Any] = pipe.execute_command
                for key, data in pairs:
                    queue("SET", key, data, "PX", px)
                pipe.execute()
        except self._errors as exc:
            raise self._fail("MSET" if px is None else "SET", [k for k, _ in pairs], exc) from exc

    def add(self, key: str, value: bytes, /, ttl: float | None = None) -> bool:
        """Store only if ``key`` is absent (``SET NX``, expiry included); True if stored."""
        return self._set_if("NX", key, value, ttl)

    def add_many(
        self, items: Sequence[tuple[str, bytes]], /, ttl: float | None = None
    ) -> list[bool]:
        """``add`` for each pair, in order, in one pipeline; a later pair sees earlier ones."""
        return self._write_many("NX", _as_items(items), _px(ttl))

    def replace(self, key: str, value: bytes, /, ttl: float | None = None) -> bool:
        """Store only if ``key`` holds a value (``SET XX``, expiry included); True if stored."""
        return self._set_if("XX", key, value, ttl)

    def _set_if(self, condition: str, key: str, value: bytes, ttl: float | None) -> bool:
        """One ``SET key value NX|XX [PX ms]``; True if the condition held and it stored."""
        data = _as_bytes(_check_key(key), value)
        px = _px(ttl)
        try:
            if px is None:
                stored = self._execute("SET", key, data, condition)
            else:
                stored = self._execute("SET", key, data, condition, "PX", px)
        except self._errors as exc:
            raise self._fail(f"SET {condition}", key, exc) from exc
        return stored is True

    def replace_many(
        self, items: Sequence[tuple[str, bytes]], /, ttl: float | None = None
    ) -> list[bool]:
        """``replace`` for each pair, in order, in one pipeline."""
        return self._write_many("XX", _as_items(items), _px(ttl))

    def _write_many(
        self, condition: str, pairs: list[tuple[str, bytes]], px: int | None
    ) -> list[bool]:
        """One pipeline of ``SET key value NX|XX [PX px]``; which pairs were stored."""
        if not pairs:
            return []
        expiry: tuple[Any, ...] = () if px is None else ("PX", px)
        try:
            pipe = self._client.pipeline(transaction=False)
            queue: Callable[..., Any] = pipe.execute_command
            for key, data in pairs:
                queue("SET", key, data, condition, *expiry)
            results = pipe.execute()
        except self._errors as exc:
            raise self._fail(f"SET {condition}", [k for k, _ in pairs], exc) from exc
        return [result is True for result in results]

    def delete(self, key: str, /) -> bool:
        """Remove ``key`` (DEL); True if it existed."""
        _check_key(key)
        try:
            removed: int = self._execute("DEL", key)
        except self._errors as exc:
            raise self._fail("DEL", key, exc) from exc
        return removed > 0

    def delete_many(self, keys: Sequence[str], /) -> int:
        """Remove ``keys`` (one DEL); the number that existed."""
        keys = _key_list(keys)
        if not keys:
            return 0
        try:
            removed: int = self._execute("DEL", *keys)
        except self._errors as exc:
            raise self._fail("DEL", keys, exc) from exc
        return removed

    def exists(self, key: str, /) -> bool:
        """True if ``key`` holds a live value (EXISTS)."""
        _check_key(key)
        try:
            found: int = self._execute("EXISTS", key)
        except self._errors as exc:
            raise self._fail("EXISTS", key, exc) from exc
        return found > 0

    def incr(self, key: str, delta: int = 1, /) -> int:
        """Add ``delta`` to the counter under ``key`` (INCRBY), starting from 0; the new value.

        The counter is stored as ASCII decimal digits and keeps the key's TTL.
        Redis counters are signed 64-bit integers.

        Raises:
            TypeError: ``delta`` is not an int.
            BackendError: the stored value is not an integer Redis accepts, or
                the result would overflow 64 bits.
        """
        _check_key(key)
        if isinstance(delta, bool) or not isinstance(delta, int):
            raise TypeError(f"incr delta must be an int, not {type(delta).__name__}")
        try:
            result: int = self._execute("INCRBY", key, delta)
        except self._errors as exc:
            raise self._fail("INCRBY", key, exc) from exc
        return result

    def gets(self, key: str, /) -> tuple[bytes, CasToken] | None:
        """The value (GET) and a token for :meth:`cas`, or None if absent.

        The token is the SHA-1 hex digest of the value, so it stands for the
        contents, not for a write: if the value changes from A to B and back
        to A, a ``cas`` with the token from A still succeeds. Compare-and-set
        stays linearizable for read-modify-write, since the value it was
        computed from is the one stored.
        """
        _check_key(key)
        try:
            value: bytes | None = self._execute("GET", key, keys=(key,))
        except self._errors as exc:
            raise self._fail("GET", key, exc) from exc
        if value is None:
            return None
        return value, hashlib.sha1(value, usedforsecurity=False).hexdigest()

    def cas(self, key: str, value: bytes, token: CasToken, /, ttl: float | None = None) -> bool:
        """Store ``value`` only if ``key`` still holds what ``gets`` read; True if stored.

        One Lua script on the key's server compares the SHA-1 of the stored
        value with ``token`` and runs SET (with PX when ``ttl``) if they match.
        A missing key, or a token :meth:`gets` did not make, gives False.
        """
        data = _as_bytes(_check_key(key), value)
        px = _px(ttl)
        if type(token) is not str or _TOKEN.fullmatch(token) is None:
            return False
        args: tuple[Any, ...] = (token, data) if px is None else (token, data, px)
        try:
            stored: int = self._cas_script(keys=(key,), args=args)
        except self._errors as exc:
            raise self._fail("CAS script", key, exc) from exc
        return stored == 1

    def close(self) -> None:
        """Close the redis-py client (also one passed in) and its pool if it owns one."""
        try:
            self._client.close()
        except self._errors as exc:
            raise self._fail("close", [], exc) from exc

    def __repr__(self) -> str:
        """The class, server address and database; never a password."""
        return f"RedisBackend(server={self._server!r}, db={self._db!r})"
