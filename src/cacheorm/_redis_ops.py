"""What the sync and async Redis backends share, without I/O.

The commands each operation sends (and the Lua scripts they run), how their
replies are read, and the cacheorm exceptions built from a failure: the sync
:class:`~cacheorm.RedisBackend` (on redis-py) and the async
:class:`~cacheorm.AsyncRedisBackend` (on its own protocol) both call these, so
an operation's Redis semantics and its error messages are written once. A
backend classifies a failure (unavailable, an error reply, ...) in its own
terms and hands the text and the address here.
"""

from __future__ import annotations

import enum
import hashlib
import math
import re
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any, cast

from cacheorm._checks import check_key
from cacheorm._checks import check_ttl as _check_ttl
from cacheorm._errors import (
    BackendError,
    BackendUnavailable,
    BatchWriteError,
    InvalidTTL,
    OutcomeUnknown,
    describe_keys,
    safe_repr,
)
from cacheorm._observe import get_logger
from cacheorm._ttl import KEEP_TTL, BackendTTL

_log = get_logger("redis")

#: The longest TTL sent, in milliseconds. Redis refuses an expiry whose
#: ``now_ms + ttl_ms`` overflows a signed 64-bit int; 2**62 ms (about 146
#: million years) leaves room for any clock.
MAX_TTL_MS = 2**62

#: What ``gets`` hands out: the SHA-1 hex digest of the value.
TOKEN = re.compile(r"[0-9a-f]{40}")

#: The key types the batch fast path accepts without checking each key.
_STR = frozenset({str})

#: Compare-and-set on one key: store ARGV[2] only if the key holds a value whose
#: SHA-1 hex digest is ARGV[1]; 1 if stored. ARGV[3:] are SET's expiry options
#: (``PX ms``, ``KEEPTTL`` or nothing). GET on a key of another type raises
#: WRONGTYPE, so the script never replaces one.
CAS_SCRIPT = """
local current = redis.call('GET', KEYS[1])
if not current or redis.sha1hex(current) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], unpack(ARGV, 3))
return 1
"""
CAS_SHA = hashlib.sha1(CAS_SCRIPT.encode(), usedforsecurity=False).hexdigest()

#: touch: a new TTL (ARGV[1] ms, or '' for none: PERSIST) for a string key; 1 if it
#: exists. A key of another Redis type is refused, as by every conditional write.
TOUCH_SCRIPT = """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' then return 0 end
if kind ~= 'string' then
  return redis.error_reply('WRONGTYPE Operation against a key holding the wrong kind of value')
end
if ARGV[1] == '' then
  redis.call('PERSIST', KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return 1
"""
TOUCH_SHA = hashlib.sha1(TOUCH_SCRIPT.encode(), usedforsecurity=False).hexdigest()

#: ttl_of: PTTL of a string key (-2 if absent); another Redis type is refused, as by get.
TTL_SCRIPT = """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'string' and kind ~= 'none' then
  return redis.error_reply('WRONGTYPE Operation against a key holding the wrong kind of value')
end
return redis.call('PTTL', KEYS[1])
"""
TTL_SHA = hashlib.sha1(TTL_SCRIPT.encode(), usedforsecurity=False).hexdigest()

#: A counter that never goes below 0 and gets its TTL (ARGV[2] ms, '' for none)
#: when this call creates it; the new value. INCRBY on another type raises WRONGTYPE.
COUNTER_SCRIPT = """
local created = redis.call('EXISTS', KEYS[1]) == 0
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if value < 0 then
  redis.call('SET', KEYS[1], '0', 'KEEPTTL')
  value = 0
end
if created and ARGV[2] ~= '' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return value
"""
COUNTER_SHA = hashlib.sha1(COUNTER_SCRIPT.encode(), usedforsecurity=False).hexdigest()

#: Characters with a meaning in a SCAN MATCH pattern, escaped with a backslash.
_GLOB = re.compile(r"([*?\[\]\\])")

#: SET's option that keeps the key's remaining TTL (Redis 6.0+).
_KEEP: tuple[Any, ...] = ("KEEPTTL",)

#: What a "key holds another type" error tells the user.
FOREIGN_HINT = (
    "another program uses this key. cacheorm neither reads it nor replaces it, "
    "except by an explicit set (save) or delete; use another namespace or prefix"
)


class Outcome(enum.Enum):
    """What happened to a batch command that got no reply."""

    NOT_SENT = "not sent"  # never reached the server (or refused unapplied)
    UNKNOWN = "unknown"  # sent, and the reply was lost


NOT_SENT = Outcome.NOT_SENT
UNKNOWN = Outcome.UNKNOWN


# -- arguments ------------------------------------------------------------------------


def px(ttl: float | None) -> int | None:
    """``ttl`` in whole milliseconds, rounded up; None for no expiry.

    Raises:
        InvalidTTL: ``ttl`` is not a finite positive number, or is too long for Redis.
    """
    if ttl is None:
        return None
    _check_ttl(ttl)
    ms = ttl * 1000  # a float too large becomes inf, which the bound refuses
    if ms > MAX_TTL_MS:
        raise InvalidTTL(
            f"ttl {safe_repr(ttl)} is too long for Redis: at most {MAX_TTL_MS // 1000} seconds"
        )
    return math.ceil(ms)


def expiry(ttl: BackendTTL) -> tuple[Any, ...]:
    """SET's expiry options for ``ttl``: ``PX ms``, ``KEEPTTL`` for KEEP_TTL, or none.

    Raises:
        InvalidTTL: as :func:`px`.
    """
    if ttl is KEEP_TTL:
        return _KEEP
    ms = px(ttl)
    return () if ms is None else ("PX", ms)


def key_list(keys: Sequence[str]) -> list[str]:
    """``keys`` as a list, each checked to be a str (all at once when every one is exactly str)."""
    keys = list(keys)
    if not set(map(type, keys)) <= _STR:
        for key in keys:
            check_key(key)
    return keys


# -- commands and their replies -------------------------------------------------------


def set_command(key: str, data: bytes, ttl: float | None) -> tuple[Any, ...]:
    """``SET key data [PX ms]``.

    Raises:
        InvalidTTL: as :func:`px`.
    """
    if ttl is None:
        return ("SET", key, data)
    return ("SET", key, data, "PX", px(ttl))


def set_many_commands(
    pairs: Sequence[tuple[str, bytes]], ms: int | None
) -> tuple[str, list[tuple[Any, ...]], list[list[str]]]:
    """``set_many`` on one server: the op name, its commands and each command's keys.

    One MSET without a TTL, else a ``SET PX`` per pair.
    """
    if ms is None:
        command = ("MSET", *[part for pair in pairs for part in pair])
        return "MSET", [command], [[key for key, _ in pairs]]
    commands = [("SET", key, data, "PX", ms) for key, data in pairs]
    return "SET", commands, [[key] for key, _ in pairs]


def add_command(key: str, data: bytes, ttl: float | None) -> tuple[Any, ...]:
    """``SET key data NX [PX ms]``.

    Raises:
        InvalidTTL: as :func:`px`.
    """
    ms = px(ttl)
    if ms is None:
        return ("SET", key, data, "NX")
    return ("SET", key, data, "NX", "PX", ms)


def write_many_commands(
    condition: str, pairs: Sequence[tuple[str, bytes]], options: tuple[Any, ...]
) -> list[tuple[Any, ...]]:
    """A ``SET key value NX|XX [options]`` per pair."""
    return [("SET", key, data, condition, *options) for key, data in pairs]


def stored_of(
    op: str,
    keys: Sequence[str],
    replies: Sequence[Any],
    fail: Callable[[str, BaseException], Exception],
) -> list[bool]:
    """Which ``SET NX|XX`` commands stored their pair; raise for the first error reply.

    A nil reply is a refusal (NX / XX did not hold); with ``GET`` among the
    options, a replace answers the old value, also not nil. An error reply
    (WRONGTYPE, a refused expiry) wrote nothing: ``fail(key, error)`` makes its
    exception, raised as is, or as :func:`partly_written` if other pairs were stored.
    """
    stored = [reply is not None for reply in replies]
    errors = [i for i, reply in enumerate(replies) if isinstance(reply, BaseException)]
    if errors:
        for i in errors:
            stored[i] = False
        error = replies[errors[0]]
        raise partly_written(op, keys, stored, fail(keys[errors[0]], error)) from error
    return stored


def refused_keys(keys: Sequence[str], stored: Sequence[bool]) -> list[str]:
    """The keys whose pair was not stored."""
    return [key for key, ok in zip(keys, stored, strict=True) if not ok]


def incr_command(key: str, delta: int) -> tuple[Any, ...]:
    """``INCRBY key delta``.

    Raises:
        TypeError: ``delta`` is not an int.
    """
    if isinstance(delta, bool) or not isinstance(delta, int):
        raise TypeError(f"incr delta must be an int, not {type(delta).__name__}")
    return ("INCRBY", key, delta)


def exists_of(kind: str) -> bool | None:
    """A TYPE reply read by ``exists``: True for a string, False for none, None for another type."""
    if kind == "string":
        return True
    if kind == "none":
        return False
    return None


def token_of(value: bytes) -> str:
    """The ``cas`` token of a value: its SHA-1 hex digest."""
    return hashlib.sha1(value, usedforsecurity=False).hexdigest()


def cas_commands(
    key: str, data: bytes, token: object, ttl: BackendTTL
) -> tuple[tuple[Any, ...], tuple[Any, ...]] | None:
    """The CAS script's EVALSHA and its EVAL fallback; None if ``token`` is not one ``gets`` made.

    Raises:
        InvalidTTL: as :func:`px`.
    """
    options = expiry(ttl)
    if type(token) is not str or TOKEN.fullmatch(token) is None:
        return None
    args: tuple[Any, ...] = (key, token, data, *options)
    return ("EVALSHA", CAS_SHA, 1, *args), ("EVAL", CAS_SCRIPT, 1, *args)


def touch_commands(
    keys: Sequence[str], ttl: float | None
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The touch script per key (EVALSHA) and the EVAL fallbacks.

    Raises:
        InvalidTTL: as :func:`px`.
    """
    ms = px(ttl)
    arg = "" if ms is None else ms
    commands = [("EVALSHA", TOUCH_SHA, 1, key, arg) for key in keys]
    fallbacks = [("EVAL", TOUCH_SCRIPT, 1, key, arg) for key in keys]
    return commands, fallbacks


def ttl_commands(key: str) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """The ttl_of script (EVALSHA) and its EVAL fallback."""
    return ("EVALSHA", TTL_SHA, 1, key), ("EVAL", TTL_SCRIPT, 1, key)


def ttl_seconds(left: int) -> float | None:
    """The ttl_of script's PTTL reply as seconds: None if absent, ``math.inf`` if none."""
    if left == -2:
        return None
    return math.inf if left < 0 else int(left) / 1000


def counter_commands(
    key: str, delta: int, ttl: float | None
) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """The counter script (EVALSHA) and its EVAL fallback.

    Raises:
        InvalidTTL: as :func:`px`.
    """
    ms = px(ttl)
    args: tuple[Any, ...] = (key, delta, "" if ms is None else ms)
    return ("EVALSHA", COUNTER_SHA, 1, *args), ("EVAL", COUNTER_SCRIPT, 1, *args)


def scan_pattern(prefix: str) -> str:
    """A SCAN MATCH pattern for the keys starting with ``prefix``, literally."""
    return _GLOB.sub(r"\\\1", prefix) + "*"


def scan_command(cursor: Any, pattern: str, batch: int) -> tuple[Any, ...]:
    """One ``SCAN cursor MATCH pattern COUNT batch TYPE string``."""
    return ("SCAN", cursor, "MATCH", pattern, "COUNT", batch, "TYPE", "string")


def scan_keys(found: Sequence[bytes], encoding: str = "utf-8") -> list[str]:
    """The keys of a SCAN reply that decode in ``encoding`` (the others are not cacheorm's)."""
    keys: list[str] = []
    for raw in found:
        try:
            keys.append(raw.decode(encoding))
        except UnicodeDecodeError:
            continue
    return keys


def type_name(reply: bytes) -> str:
    """A TYPE reply (``b"string"``, ``b"hash"``, ``b"none"``...) as str."""
    return reply.decode("ascii", "replace")


def outcome_after(replies: Sequence[Any], sent: int, count: int) -> list[Any]:
    """Each of ``count`` commands' reply, or UNKNOWN / NOT_SENT, after a failed exchange.

    ``replies`` arrived; the first ``sent`` commands may have reached the server.
    """
    sent = max(sent, len(replies))
    return [*replies, *[UNKNOWN] * (sent - len(replies)), *[NOT_SENT] * (count - sent)]


# -- addresses and URLs ---------------------------------------------------------------


def address(kwargs: object) -> str:
    """``host:port`` or the unix socket path of connection keyword arguments; never a password."""
    if not isinstance(kwargs, dict):
        return "<unknown redis server>"
    options = cast("dict[str, object]", kwargs)
    path = options.get("path")
    if path:
        return str(path)
    host = str(options.get("host", "localhost"))
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    return f"{host}:{options.get('port', 6379)}"


def url_password(url: str) -> str | None:
    """The password in ``url`` (percent-decoded), or None if none or unparsable."""
    try:
        password = urllib.parse.urlsplit(url).password
    except ValueError:  # e.g. a broken IPv6 address: there is no password to find
        return None
    return urllib.parse.unquote(password) if password else None


def masked_url(url: str) -> str:
    """``url`` with its password, if any, as ``***``."""
    if url_password(url) is None:
        return url
    parts = urllib.parse.urlsplit(url)
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


#: Error codes whose word the messages leave out (as redis-py does: "ERR value is not
#: an integer" reads "value is not an integer"); WRONGTYPE and others stay.
_DROPPED_CODES = frozenset(
    {
        "ERR", "OOM", "WRONGPASS", "EXECABORT", "LOADING", "NOSCRIPT", "READONLY", "NOAUTH",
        "NOPERM", "ASK", "TRYAGAIN", "MOVED", "CLUSTERDOWN", "CROSSSLOT", "MASTERDOWN",
    }
)  # fmt: skip


def reply_text(message: str) -> str:
    """The text of an error reply as the messages show it: ``ERR`` and the like left out."""
    code, _, rest = message.partition(" ")
    return rest if code in _DROPPED_CODES else message


def mask(detail: str, password: str | None) -> str:
    """``detail`` with ``password`` (if any) as ``***``."""
    return detail.replace(password, "***") if password else detail


# -- errors ------------------------------------------------------------------------


def describe(keys: str | Sequence[str]) -> tuple[str, str | None]:
    """What an operation concerned, for a message, and the key to report."""
    if isinstance(keys, str):
        return f"key {safe_repr(keys)}", keys
    if not keys:
        return "no key", None
    if len(keys) == 1:
        return f"1 key {safe_repr(keys[0])}", keys[0]
    return f"{len(keys)} keys, the first {safe_repr(keys[0])}", keys[0]


def unavailable(
    op: str, keys: str | Sequence[str], detail: str, server: str, kind: str
) -> BackendUnavailable:
    """BackendUnavailable: ``op`` on ``keys`` failed because ``server`` could not be used.

    ``kind`` (the failure's class name) is logged at WARNING; ``detail`` only at
    DEBUG, since it can quote a reply, and so a key.
    """
    what, key = describe(keys)
    _log.warning("redis %s: server %s is unavailable (%s)", op, server, kind)
    _log.debug("redis %s on %s failed: %s", op, server, detail)
    return BackendUnavailable(
        f"redis {op} of {what} failed: server {server} is unavailable: {detail}",
        key=key,
        server=server,
    )


def refused(op: str, keys: str | Sequence[str], detail: str, server: str) -> Exception:
    """The cacheorm error for the server's error reply ``detail`` to ``op`` on ``keys``.

    A refused expiry is :class:`~cacheorm.InvalidTTL`; WRONGTYPE says another
    program uses the key; anything else is :class:`~cacheorm.BackendError`.
    """
    what, key = describe(keys)
    if "invalid expire time" in detail:
        return InvalidTTL(f"redis {op} of {what} refused the ttl on {server}: {detail}", key=key)
    if detail.startswith("WRONGTYPE"):
        return BackendError(
            f"redis {op} of {what} failed on {server}: the key holds another Redis type, "
            f"not a string value; {FOREIGN_HINT} ({detail})",
            key=key,
            server=server,
        )
    return failed(op, keys, detail, server)


def failed(op: str, keys: str | Sequence[str], detail: str, server: str) -> BackendError:
    """BackendError: ``op`` on ``keys`` failed on ``server`` for the reason ``detail``."""
    what, key = describe(keys)
    return BackendError(
        f"redis {op} of {what} failed on {server}: {detail}", key=key, server=server
    )


def foreign(op: str, key: str, kind: str, server: str) -> BackendError:
    """BackendError: ``key`` holds a Redis ``kind`` (a hash, a list...), not a string."""
    return BackendError(
        f"redis {op} of key {safe_repr(key)}: the key holds a Redis {kind}, not a string "
        f"value, on {server}; {FOREIGN_HINT}",
        key=key,
        server=server,
    )


def first_foreign(
    op: str, keys: Sequence[str], kinds: Sequence[str], server_of: Callable[[str], str]
) -> None:
    """Raise :func:`foreign` for the first of ``keys`` whose TYPE is not string or none.

    ``server_of(key)`` names the server (or cluster node) that holds ``key``.
    """
    for key, kind in zip(keys, kinds, strict=True):
        if kind not in ("string", "none"):
            raise foreign(op, key, kind, server_of(key))


def unknown(op: str, key: str, detail: str, server: str, kind: str) -> OutcomeUnknown:
    """OutcomeUnknown: ``op`` on ``key`` was sent to ``server`` and its reply lost."""
    _log.warning(
        "redis %s: the connection to %s failed after the command was sent (%s); "
        "its outcome is unknown and it is not resent",
        op,
        server,
        kind,
    )
    return OutcomeUnknown(
        f"redis {op} of key {safe_repr(key)} was sent to {server}, then the connection "
        f"failed before the reply ({detail}): the write may or may not have "
        "been applied; cacheorm does not resend it. Read the key to find out.",
        key=key,
        server=server,
    )


def batch_error(
    op: str,
    command_keys: Sequence[Sequence[str]],
    outcome: Sequence[Any],
    failures: Sequence[tuple[str, str]],
    server: str,
    conditional: bool = False,
) -> BatchWriteError:
    """BatchWriteError for a write batch whose commands ended as ``outcome``.

    A command whose reply arrived wrote its keys, unless ``conditional``
    and the reply is nil (the NX / XX condition refused it); those, an
    error reply and a command never sent did not; one sent without a reply
    is unknown. Every key is in exactly one of the three lists.

    Args:
        op: the operation, for the message.
        command_keys: each command's keys.
        outcome: each command's reply, or UNKNOWN / NOT_SENT.
        failures: ``(server, detail)`` of each failure (password already masked).
        server: the server to report when ``failures`` is empty.
        conditional: nil replies are refusals (SET NX / XX).
    """
    written: list[str] = []
    not_written: list[str] = []
    unknown_keys: list[str] = []
    for keys, reply in zip(command_keys, outcome, strict=True):
        if reply is UNKNOWN:
            unknown_keys.extend(keys)
        elif (
            reply is NOT_SENT
            or isinstance(reply, BaseException)
            or (conditional and reply is None)  # NX / XX did not hold: refused
        ):
            not_written.extend(keys)
        else:
            written.extend(keys)
    every = [key for keys in command_keys for key in keys]
    what, key = describe(every)
    servers = ", ".join(dict.fromkeys(f"{name} ({detail})" for name, detail in failures))
    parts = [f"{len(written)} written", f"{len(not_written)} not written"]
    parts.append(f"{len(unknown_keys)} unknown (sent, reply lost)")
    if unknown_keys:
        parts[-1] += f": {describe_keys(unknown_keys)}"
    return BatchWriteError(
        f"redis {op} batch of {what} failed part-way: {', '.join(parts)}; unavailable: {servers}",
        written=written,
        not_written=not_written,
        unknown=unknown_keys,
        key=key,
        server=failures[0][0] if failures else server,
    )


def partly_written(
    op: str, keys: Sequence[str], stored: Sequence[bool], exc: Exception
) -> Exception:
    """``exc`` (about one pair of a conditional batch), or BatchWriteError if others
    were stored: ``written`` / ``not_written`` then say which."""
    written = [key for key, ok in zip(keys, stored, strict=True) if ok]
    if not written:
        return exc
    not_written = [key for key, ok in zip(keys, stored, strict=True) if not ok]
    return BatchWriteError(
        f"{exc}; the other pairs of the {op} batch were applied: {len(written)} written, "
        f"{len(not_written)} not written",
        written=written,
        not_written=not_written,
        unknown=[],
        key=getattr(exc, "key", None),
        server=getattr(exc, "server", None),
    )
