"""memcached's text and meta protocol without I/O, shared by the sync and async backends.

Everything here is pure: the request bytes of every command, the readers
that turn reply bytes into results (checking every key a reply names against
the request), the key mapping, the expiry rules, and the cacheorm errors for
failures and refusals. :class:`~cacheorm.MemcachedBackend` reads replies from
a blocking socket through its own reader; :class:`ReplyParser` is the
incremental one (``feed`` bytes as they arrive, ``next_reply`` when a whole
reply is there) of :class:`~cacheorm.AsyncMemcachedBackend`. A reader is a
function of one argument, the reader object, which has ``line()``,
``block(size)``, ``expect`` (what the request asked for) and ``progress`` (a
list a batch reader fills reply by reply, so that a connection lost part-way
still says which replies arrived).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

from cacheorm._checks import check_key as _check_key
from cacheorm._checks import check_ttl as _check_ttl
from cacheorm._errors import (
    BackendError,
    BackendUnavailable,
    BatchWriteError,
    ConfigurationError,
    InvalidTTL,
    OutcomeUnknown,
    ValueTooLarge,
    describe_keys,
)
from cacheorm._observe import get_logger

_log = get_logger("memcached")

_T = TypeVar("_T")

#: The longest key memcached accepts, in bytes (``key_prefix`` included).
KEY_MAX = 250

#: Bytes of an item that are not its value or key, subtracted from
#: ``item_size_max`` for the value limit. memcached 1.6 (64-bit, CAS on) uses
#: 59: a 48-byte header, 8 bytes of CAS, the key's NUL and the value's CRLF.
ITEM_OVERHEAD = 64

#: Values up to this size fit under any legal ``item_size_max`` (1 KiB at
#: least) whatever the key, so they are sent without asking the server.
ALWAYS_FITS = 512

#: The byte between a mapped key's readable part and its hash; never in UTF-8.
MARKER = b"\xff"

#: How many bytes of the original key a mapped key keeps, at most.
READABLE = 64

#: Bytes memcached keys may not contain.
UNSAFE = bytes(range(0x21)) + b"\x7f"

#: The longest expiry memcached reads as a delay; longer ones are Unix times.
RELATIVE_MAX = 30 * 24 * 3600

#: The latest Unix time memcached can parse as an expiry (signed 32 bits).
EXPTIME_MAX = 2**31 - 1

#: memcached's ``incr`` works on unsigned 64-bit counters.
U64 = 2**64

#: How many key -> server placements a pool remembers (hashing is pure Python).
PLACEMENTS_MAX = 1 << 16

#: Replies to a write that mean the server answered it.
WRITE_REPLIES = frozenset([b"STORED", b"NOT_STORED", b"EXISTS", b"NOT_FOUND", b"DELETED"])

#: Replies in a batch that confirm the write: stored, or (for a delete) the key is gone.
CONFIRMED = frozenset([b"STORED", b"DELETED", b"NOT_FOUND"])

#: The request for the server's settings (``item_size_max``).
STATS_SETTINGS = b"stats settings\r\n"


# -- expiry, counters, messages ----------------------------------------------------------


def expire(ttl: float | None) -> int:
    """The memcached expiry for ``ttl`` seconds: 0 for None, else a delay or a Unix time."""
    if ttl is None:
        return 0
    _check_ttl(ttl)
    seconds = math.ceil(ttl) + 1
    if seconds <= RELATIVE_MAX:
        return seconds
    at = int(time.time()) + seconds
    if at > EXPTIME_MAX:
        raise InvalidTTL(
            f"ttl {ttl!r} ends after 2038-01-19 (Unix time {EXPTIME_MAX}), "
            "the latest expiry memcached can represent"
        )
    return at


def kept_expire(remaining: int) -> int:
    """The expiry that keeps ``remaining`` seconds (memcached's ``t`` flag; -1: none)."""
    if remaining < 0:
        return 0
    if remaining <= RELATIVE_MAX:
        return max(remaining, 1)
    return int(time.time()) + remaining


def previous_value(command: bytes) -> str:
    """What became of a key's previous value when memcached could not store ``command``.

    memcached (1.6) unlinks the old item only when a ``set`` fails for want
    of memory or because the value is too large, so stale data is not served;
    ``add``, ``replace`` and ``cas`` leave it as it was.
    """
    if command == b"set":
        return "; the key's previous value, if any, is gone (memcached deletes it when a set fails)"
    if command in (b"replace", b"cas"):
        return "; nothing was written and the key's previous value is kept"
    if command == b"add":
        return "; nothing was written"
    return ""


def describe_server(server: object) -> str:
    """``host:port`` (``[host]:port`` for IPv6) or ``unix:<path>``."""
    address = cast("tuple[object, ...]", server) if isinstance(server, tuple) else None
    if address is not None and len(address) == 2:
        host, port = address
        host = str(host)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"unix:{server}"


def ring_name(server: object) -> str:
    """The name pymemcache's ``HashClient`` gives ``server`` on its ring (``host:port``)."""
    if isinstance(server, tuple):
        pair = cast("tuple[object, ...]", server)
        if len(pair) == 2:
            return f"{pair[0]}:{pair[1]}"  # HashClient's own spelling
    return f"{server}"


def parse_servers(servers: str | Sequence[str], who: str) -> list[Any]:
    """pymemcache's server specs for ``servers``, checked: one at least, none repeated.

    Raises:
        ConfigurationError: no address, a repeated one, or one that cannot be parsed.
        MissingDependency: pymemcache is not installed (through ``normalize``).
    """
    normalize = importlib.import_module("pymemcache.client.base").normalize_server_spec
    addresses = [servers] if isinstance(servers, str) else list(servers)
    if not addresses:
        raise ConfigurationError(f"{who}.from_servers needs at least one address")
    specs: list[Any] = []
    for address in addresses:
        try:
            specs.append(normalize(address))
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(f"cannot parse memcached address {address!r}: {exc}") from exc
    named = [describe_server(spec) for spec in specs]
    if len(set(named)) != len(named):
        raise ConfigurationError(f"memcached addresses repeat a server: {addresses!r}")
    return specs


def check_max_value_size(max_value_size: object) -> None:
    """ConfigurationError unless ``max_value_size`` is a positive int or None."""
    if max_value_size is not None and (
        isinstance(max_value_size, bool)
        or not isinstance(max_value_size, int)
        or max_value_size < 1
    ):
        raise ConfigurationError(
            f"max_value_size must be a positive int or None, not {max_value_size!r}"
        )


def check_seconds(name: str, value: object) -> float:
    """``value`` as a float; ConfigurationError unless it is a positive finite number."""
    try:
        _check_ttl(value)  # type: ignore[arg-type]  # checked here
    except InvalidTTL:
        ok = False
    else:
        ok = value is not None
    if not ok:
        raise ConfigurationError(f"{name} must be a positive number of seconds, not {value!r}")
    return float(value)  # type: ignore[arg-type]  # a positive finite int or float


def parse_counter(value: bytes) -> int | None:
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


def cas_number(token: object) -> bytes | None:
    """The digits of a CAS token memcached could have given, or None for any other token."""
    if type(token) is bytes:
        if not (token.isdigit() and token.isascii() and len(token) <= 20):
            return None
        number = int(token)
    elif type(token) is int:
        number = token
    else:
        return None
    if not 0 <= number < U64:
        return None
    return b"%d" % number


def reason(exc: BaseException) -> str:
    """What went wrong, for a message."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    detail = exc.args[0] if len(exc.args) == 1 else None
    if isinstance(detail, bytes):
        return detail.decode("utf-8", "replace") or type(exc).__name__
    return str(exc) or type(exc).__name__


# -- keys ------------------------------------------------------------------------------


class KeyMap:
    """How cacheorm keys become memcached keys under a ``key_prefix``.

    A key is sent as its UTF-8 bytes when those are legal; any other key as
    up to 64 of its legal bytes, :data:`MARKER`, then the 40 hex digits of its
    BLAKE2b-160 hash. Depends on nothing but the key and the prefix length.

    Raises:
        ConfigurationError: the prefix leaves no room for keys or is not legal.
    """

    __slots__ = ("plain_max", "prefix", "readable")

    def __init__(self, prefix: bytes) -> None:
        room = KEY_MAX - len(prefix) - len(MARKER) - 40
        if room < 0 or prefix.translate(None, UNSAFE) != prefix:
            raise ConfigurationError(
                f"the client's key_prefix {prefix!r} leaves no room for keys or is not a "
                f"legal memcached key part (at most {KEY_MAX - 41} bytes, no spaces or "
                "control characters)"
            )
        self.prefix = prefix
        self.plain_max = KEY_MAX - len(prefix)
        self.readable = min(READABLE, room)

    def bkey(self, key: str) -> bytes:
        """The memcached key (before the prefix) for ``key``; TypeError if not a str."""
        if not isinstance(key, str):
            _check_key(key)
        if key.isprintable() and " " not in key:
            raw = key.encode()
            if 0 < len(raw) <= self.plain_max:
                return raw
        return self.mapped(key)

    def bkeys(self, keys: Sequence[str]) -> list[bytes]:
        """:meth:`bkey` for each key, inlined for ordinary keys (batches are hot)."""
        plain_max = self.plain_max
        bkey = self.bkey
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

    def mapped(self, key: str) -> bytes:
        """The mapped key: readable part, marker, hash of the UTF-8 (surrogatepass) bytes."""
        raw = key.encode("utf-8", "surrogatepass")
        readable = raw.translate(None, UNSAFE)[: self.readable]
        digest = hashlib.blake2b(raw, digest_size=20).hexdigest().encode("ascii")
        return readable + MARKER + digest


def ring_key(bkey: bytes) -> str:
    """The text a pool's hasher places ``bkey`` by, as ``HashClient`` hashes a str key.

    A mapped key (not UTF-8) is hashed with its 0xFF escaped.
    """
    return bkey.decode("utf-8", "surrogateescape")


# -- requests ---------------------------------------------------------------------------


def store_command(command: bytes, key: bytes, expire: bytes, data: bytes) -> bytes:
    """A ``set``/``add``/``replace`` request for the full key ``key``; flags are always 0."""
    return b"%s %s 0 %s %d\r\n%s\r\n" % (command, key, expire, len(data), data)


def cas_command(key: bytes, expire: int, token: bytes, data: bytes) -> bytes:
    """A ``cas`` request for the full key ``key``; flags are always 0."""
    return b"cas %s 0 %d %d %s\r\n%s\r\n" % (key, expire, len(data), token, data)


def meta_command(full: bytes) -> bytes:
    """The meta get of ``full``'s CAS value and remaining TTL, its key echoed to be checked."""
    return b"mg " + full + b" t c k\r\n"


def touch_command(full: bytes, expire: bytes) -> bytes:
    """A ``touch`` of ``full`` to the expiry ``expire``."""
    return b"touch " + full + b" " + expire + b"\r\n"


def count_command(full: bytes, delta: int) -> bytes:
    """``incr`` by ``delta`` (or ``decr`` by ``-delta`` when negative) of ``full``."""
    verb = b"incr " if delta >= 0 else b"decr "
    return verb + full + b" %d\r\n" % abs(delta)


# -- replies ----------------------------------------------------------------------------


class Closed(ConnectionError):
    """The server closed the connection while a reply was expected."""

    def __init__(self) -> None:
        super().__init__("memcached closed the connection")


class NeedMore(Exception):
    """The reply is not complete yet: feed more bytes and read it again from its start."""


class WrongKey(Exception):
    """A reply named a key the request did not ask for: the connection is out of step."""

    def __init__(self, named: bytes) -> None:
        super().__init__(
            f"a reply named key {named.decode('utf-8', 'replace')!r}, which this request did "
            "not ask for (a reply meant for another request, or a corrupt stream); the "
            "connection was closed"
        )


def bad_reply(line: bytes) -> Exception:
    """The pymemcache exception for an error or unexpected reply line."""
    errors = importlib.import_module("pymemcache.exceptions")
    if line.startswith(b"SERVER_ERROR"):
        return errors.MemcacheServerError(line[13:])  # type: ignore[no-any-return]
    if line.startswith(b"CLIENT_ERROR"):
        return errors.MemcacheClientError(line[13:])  # type: ignore[no-any-return]
    if line.startswith(b"ERROR"):
        return errors.MemcacheUnknownCommandError(line)  # type: ignore[no-any-return]
    return errors.MemcacheUnknownError(line[:32])  # type: ignore[no-any-return]


def read_line(reader: Any) -> bytes:
    """One reply line."""
    line: bytes = reader.line()
    return line


def read_value(reader: Any) -> bytes | None:
    """The reply to ``get`` of one key (``reader.expect``): its value, or None."""
    line = reader.line()
    if line == b"END":
        return None
    if line[:6] != b"VALUE ":
        raise bad_reply(line)
    parts = line.split(b" ", 4)
    if parts[1] != reader.expect:
        raise WrongKey(parts[1])
    value: bytes = reader.block(int(parts[3]))
    end = reader.line()
    if end != b"END":
        raise bad_reply(end)
    return value


def read_cas_value(reader: Any) -> tuple[bytes, bytes] | None:
    """The reply to ``gets`` of one key (``reader.expect``): its value and CAS token, or None."""
    line = reader.line()
    if line == b"END":
        return None
    if line[:6] != b"VALUE ":
        raise bad_reply(line)
    parts = line.split(b" ")
    if parts[1] != reader.expect:
        raise WrongKey(parts[1])
    value: bytes = reader.block(int(parts[3]))
    end = reader.line()
    if end != b"END" or len(parts) != 5:
        raise bad_reply(end if end != b"END" else line)
    return value, parts[4]


def read_values(reader: Any) -> dict[bytes, bytes]:
    """The reply to ``get`` of several keys: full key -> value for the keys present.

    memcached answers in the order asked, once per mention of a key, skipping
    misses: the keys named must be a subsequence of ``reader.expect``.
    """
    found: dict[bytes, bytes] = {}
    line = reader.line
    block = reader.block
    asked: list[bytes] = reader.expect
    count = len(asked)
    at = 0
    while True:
        head = line()
        if head == b"END":
            return found
        if head[:6] != b"VALUE ":
            raise bad_reply(head)
        parts = head.split(b" ", 4)
        key = parts[1]
        while at < count and asked[at] != key:
            at += 1
        if at == count:
            raise WrongKey(key)
        at += 1
        found[key] = block(int(parts[3]))


def meta_flags(flags: list[bytes], expect: bytes) -> tuple[bytes, int] | None:
    """The CAS value and seconds left in the flags of a meta reply for ``expect``."""
    if flags[:1] == [b"EN"]:
        return None
    if flags[:1] != [b"HD"]:
        raise bad_reply(b" ".join(flags))
    token = b""
    remaining = -1
    named = None
    for flag in flags[1:]:
        kind = flag[:1]
        if kind == b"t":
            remaining = int(flag[1:])
        elif kind == b"c":
            token = flag[1:]
        elif kind == b"k":
            named = flag[1:]
    if named != expect:
        raise WrongKey(named or b"")
    if not token.isdigit():
        raise bad_reply(b" ".join(flags))
    return token, remaining


def read_meta(reader: Any) -> tuple[bytes, int] | None:
    """The reply to ``mg <key> t c k``: the CAS value and seconds left (-1: none), or None."""
    return meta_flags(reader.line().split(), reader.expect)


def read_metas(reader: Any) -> list[tuple[bytes, int] | None]:
    """The replies to one ``mg <key> t c k`` per key of ``reader.expect``, in order."""
    return [meta_flags(reader.line().split(), full) for full in reader.expect]


def read_stats(reader: Any) -> dict[bytes, bytes]:
    """The reply to ``stats ...``: name -> value."""
    stats: dict[bytes, bytes] = {}
    while True:
        line = reader.line()
        if line == b"END":
            return stats
        parts = line.split(b" ", 2)
        if parts[0] != b"STAT" or len(parts) != 3:
            raise bad_reply(line)
        stats[parts[1]] = parts[2]


def read_write_replies(reader: Any) -> list[bytes]:
    """The ``reader.expect`` reply lines of a batch of writes, each added to ``reader.progress``.

    memcached skips the data of a refused write, so its SERVER_ERROR keeps the
    replies in step; any other unexpected line may not, so reading stops there.
    """
    lines: list[bytes] = []
    reader.progress = lines  # a reply read again from its start starts a new list
    line = reader.line
    count: int = reader.expect
    while len(lines) < count:
        reply = line()
        if reply not in WRITE_REPLIES and not reply.startswith(b"SERVER_ERROR"):
            raise bad_reply(reply)
        lines.append(reply)
    return lines


def read_touches(reader: Any) -> list[bool]:
    """The ``reader.expect`` replies to a batch of ``touch``: True where touched."""
    touched: list[bool] = []
    for _ in range(reader.expect):
        line = reader.line()
        if line not in (b"TOUCHED", b"NOT_FOUND"):
            raise bad_reply(line)
        touched.append(line == b"TOUCHED")
    return touched


class ReplyParser:
    """An incremental reply reader: :meth:`feed` it bytes, ask :meth:`next_reply` for replies.

    The readers above run on it unchanged: ``line`` and ``block`` raise
    :class:`NeedMore` when the bytes fed so far end inside the reply, and
    :meth:`next_reply` then rewinds to the reply's start, so it is read again
    whole once more bytes came.
    """

    __slots__ = ("buf", "expect", "pos", "progress")

    def __init__(self) -> None:
        self.buf = b""
        self.pos = 0
        self.expect: Any = None
        self.progress: list[Any] = []

    def feed(self, data: bytes) -> None:
        """Add bytes received."""
        if self.pos >= len(self.buf):
            self.buf = data
        else:
            self.buf = self.buf[self.pos :] + data
        self.pos = 0

    @property
    def pending(self) -> int:
        """How many bytes were fed and not read yet."""
        return len(self.buf) - self.pos

    def next_reply(self, read: Callable[[Any], _T], expect: Any) -> _T | NeedMore:
        """The next reply, read by ``read`` for a request that asked for ``expect``.

        Returns:
            The reply, or the :class:`NeedMore` class's instance ``NEED_MORE``
            when it is not complete yet (nothing is consumed then).

        Raises:
            Exception: what ``read`` raises for a bad reply (the stream is then
                out of step: close the connection).
        """
        start = self.pos
        self.expect = expect
        try:
            return read(self)
        except NeedMore:
            self.pos = start
            return NEED_MORE

    def partial(self, read: Callable[[Any], object], expect: Any) -> list[Any]:
        """What a batch reader got of an incomplete reply (its ``progress``), consuming nothing."""
        start = self.pos
        self.expect = expect
        self.progress = []
        with contextlib.suppress(Exception):  # incomplete or bad: keep what came
            read(self)
        self.pos = start
        return self.progress

    def line(self) -> bytes:
        """The next line, without its CRLF."""
        buf, pos = self.buf, self.pos
        end = buf.find(b"\r\n", pos)
        if end < 0:
            buf, pos, end = self._more_for_line(buf, pos)
        self.pos = end + 2
        return buf[pos:end]

    def block(self, size: int) -> bytes:
        """The next ``size`` bytes, which must be followed by CRLF."""
        buf, pos = self.buf, self.pos
        end = pos + size
        if end + 2 > len(buf):
            buf, pos, end = self._more_for_block(buf, pos, size)
        if buf[end : end + 2] != b"\r\n":
            raise bad_reply(buf[end : end + 32])
        self.pos = end + 2
        return buf[pos:end]

    def _more_for_line(self, buf: bytes, pos: int) -> tuple[bytes, int, int]:
        """The buffer, start and CRLF position once a whole line is there (NeedMore here)."""
        raise NeedMore  # a new one each time: a raised instance keeps its traceback

    def _more_for_block(self, buf: bytes, pos: int, size: int) -> tuple[bytes, int, int]:
        """The buffer, start and end once ``size`` bytes and CRLF are there (NeedMore here)."""
        raise NeedMore  # a new one each time: a raised instance keeps its traceback


#: What :meth:`ReplyParser.next_reply` returns for an incomplete reply (never raised).
NEED_MORE = NeedMore()


# -- failures and the errors they become --------------------------------------------------


class Failure(Exception):
    """A request that did not complete (internal; translated by the backend).

    Attributes:
        node: the server (anything with ``address`` and ``retry_timeout``).
        cause: the socket error or bad reply.
        sent: how many request bytes were handed to the network (0: none,
            so the server never saw the request).
        skipped: True if no connection was tried, the server having failed
            less than ``retry_timeout`` seconds ago.
        partial: the replies of a batch that arrived before the failure.
    """

    def __init__(
        self,
        node: Any,
        cause: BaseException,
        sent: int,
        *,
        skipped: bool = False,
        partial: list[Any] | None = None,
    ) -> None:
        super().__init__(node.address, cause)
        self.node = node
        self.cause = cause
        self.sent = sent
        self.skipped = skipped
        self.partial = partial or []

    @property
    def unavailable(self) -> bool:
        """True for a connection failure, False for a reply that made no sense."""
        return isinstance(self.cause, OSError)


def skipped_failure(node: Any) -> Failure | None:
    """The failure to raise at once for a ``node`` that failed under ``retry_timeout`` ago.

    ``node`` has ``down_until`` (a ``time.monotonic()`` time, 0 when up) and
    ``down_error``; a time that passed is cleared (the next request tries).
    """
    if node.down_until:
        if time.monotonic() < node.down_until and node.down_error is not None:
            return Failure(node, node.down_error, 0, skipped=True)
        node.down_until = 0.0
    return None


def mark_down(node: Any, exc: BaseException) -> None:
    """Note that connecting to ``node`` failed (not tried again for its ``retry_timeout``)."""
    if node.retry_timeout > 0:
        node.down_error = exc
        node.down_until = time.monotonic() + node.retry_timeout
        _log.warning(
            "memcached at %s is down (%s); not tried again for %gs",
            node.address,
            reason(exc),
            node.retry_timeout,
        )
    else:
        _log.warning("memcached at %s: cannot connect: %s", node.address, reason(exc))


def failure_error(
    failure: Failure, key: str | None, *, op: str, write: bool, about: str = ""
) -> BackendError:
    """The cacheorm error for a failed request: unavailable, outcome unknown or failed.

    ``about`` says what the request was for when it was not one ``key``.
    """
    server = failure.node.address
    if key is not None:
        about = f" for key {key!r}"
    why = reason(failure.cause)
    if not failure.unavailable:
        return BackendError(f"memcached at {server} failed{about}: {why}", key=key, server=server)
    if failure.sent == 0 or not write:
        if failure.skipped:
            why = (
                f"{why}, less than retry_timeout={failure.node.retry_timeout:g}s "
                "ago, so it was not tried again"
            )
        return BackendUnavailable(
            f"memcached at {server} is unavailable{about}: {why}", key=key, server=server
        )
    return OutcomeUnknown(
        f"memcached at {server} lost the reply to {op}{about} ({why}): the write was "
        "sent and may or may not have been applied; cacheorm does not send it again, "
        "read the key to find out",
        key=key,
        server=server,
    )


def refused_error(
    server: str, line: bytes, key: str, size: int | None, command: bytes, limit: int | None
) -> BackendError:
    """The error (caused by pymemcache's) for an error reply to a request about ``key``.

    ``size`` (the value's) turns the server's "object too large" refusal into
    :class:`~cacheorm.ValueTooLarge` with the given ``limit``. For a store
    ``command`` that the server could not store (too large, out of memory),
    the message says what became of the key's previous value.
    """
    cause = bad_reply(line)
    text = reason(cause)
    error: BackendError
    if size is not None and "too large" in text:
        error = ValueTooLarge(
            f"memcached at {server} refused a {size}-byte value for key {key!r} as too "
            f"large ({text}){previous_value(command)}",
            size=size,
            limit=size - 1 if limit is None else limit,
            key=key,
            server=server,
        )
    else:
        fate = previous_value(command) if size is not None else ""
        error = BackendError(
            f"memcached at {server} failed for key {key!r}: {text}{fate}", key=key, server=server
        )
    error.__cause__ = cause
    return error


def too_large(key: str, size: int, limit: int, server: str) -> ValueTooLarge:
    """The error for a value over the limit, found before sending."""
    return ValueTooLarge(
        f"value for key {key!r} is {size} bytes, over the {limit}-byte limit of "
        f"memcached at {server}; nothing was written",
        size=size,
        limit=limit,
        key=key,
        server=server,
    )


def cas_disabled(server: str, key: str) -> BackendError:
    """The error for a server started with ``-C`` (every CAS value 0)."""
    return BackendError(
        f"memcached at {server} has CAS disabled (it was started with -C), so "
        f"compare-and-set on key {key!r} cannot work: gets, cas, update_with, patch, "
        "ttl=KEEP_TTL and negative incr need it; restart memcached without -C",
        key=key,
        server=server,
    )


def batch_error(
    what: str,
    keys: list[str],
    written: list[str],
    not_written: list[str],
    unknown: list[str],
    server: str | None,
) -> BatchWriteError:
    """The BatchWriteError for a batch of ``keys`` that failed part-way (``what`` says how)."""
    counts = f"{len(written)} written, {len(not_written)} not written"
    if unknown:
        counts += f", {len(unknown)} unknown (sent, reply lost: {describe_keys(unknown)})"
    return BatchWriteError(
        f"{what}; of {len(keys)} keys {counts}",
        written=written,
        not_written=not_written,
        unknown=unknown,
        key=keys[0] if len(keys) == 1 else None,
        server=server,
    )


def merged(
    error: BackendError,
    keys: list[str],
    stored: list[bool],
    settled_false: list[int],
    unsent: list[int],
) -> BatchWriteError:
    """A BatchWriteError for a ``replace_many`` keeping TTLs that failed after some rounds.

    ``error`` is the failure of the last round (a BatchWriteError for the
    keys of its cas batch, else any error); ``stored`` and
    ``settled_false`` say what earlier rounds did, and the keys ``unsent``
    were not written in the last round.
    """
    written = [keys[i] for i, done in enumerate(stored) if done]
    not_written = [keys[i] for i in settled_false] + [keys[i] for i in unsent]
    unknown: list[str] = []
    if isinstance(error, BatchWriteError):
        written += error.written
        not_written += error.not_written
        unknown = error.unknown
    what = f"replace_many keeping TTLs failed part-way: {error}"
    return batch_error(what, keys, written, not_written, unknown, error.server)
