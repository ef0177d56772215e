"""Time-to-live arguments: validation and the "repository default" sentinel."""

from __future__ import annotations

import datetime as _dt
import enum
import math
from typing import Final, Literal

from cacheorm._errors import InvalidTTL

__all__ = [
    "DEFAULT",
    "KEEP_TTL",
    "TTL",
    "BackendTTL",
    "DefaultType",
    "KeepTTLType",
    "TTLArg",
    "UpdateTTLArg",
    "normalize_ttl",
]


class DefaultType(enum.Enum):
    """The type of :data:`DEFAULT`."""

    DEFAULT = "DEFAULT"

    def __repr__(self) -> str:
        return "cacheorm.DEFAULT"


#: Per-call TTL meaning "use the repository's TTL". Distinct from ``None``,
#: which means "no expiry".
DEFAULT: Final = DefaultType.DEFAULT


class KeepTTLType(enum.Enum):
    """The type of :data:`KEEP_TTL`."""

    KEEP_TTL = "KEEP_TTL"

    def __repr__(self) -> str:
        return "cacheorm.KEEP_TTL"


#: Per-call TTL meaning "keep the record's remaining TTL": the default of
#: ``update``, ``update_many``, ``update_with`` and ``patch``. A record saved
#: with ``ttl=60`` and patched 10 s later still expires 60 s after the save.
#: Backends receive it in ``replace``, ``replace_many`` and ``cas``.
KEEP_TTL: Final = KeepTTLType.KEEP_TTL

#: A TTL: seconds (int or float), a ``timedelta``, or ``None`` / ``0`` for no expiry.
TTL = int | float | _dt.timedelta | None
#: A per-call TTL argument: a :data:`TTL` or :data:`DEFAULT`.
TTLArg = int | float | _dt.timedelta | None | Literal[DefaultType.DEFAULT]
#: The TTL argument of updates: a :data:`TTLArg` or :data:`KEEP_TTL` (their default).
UpdateTTLArg = (
    int
    | float
    | _dt.timedelta
    | None
    | Literal[DefaultType.DEFAULT]
    | Literal[KeepTTLType.KEEP_TTL]
)
#: What a backend's ``replace`` / ``replace_many`` / ``cas`` receive as ``ttl``:
#: seconds, None for no expiry, or :data:`KEEP_TTL`.
BackendTTL = float | None | Literal[KeepTTLType.KEEP_TTL]


def normalize_ttl(ttl: object) -> float | None:
    """Seconds until expiry for the backend, or None for no expiry.

    ``None`` and ``0`` mean no expiry; ``timedelta`` is accepted.

    Raises:
        InvalidTTL: negative, NaN, infinite, a bool, or not a number/timedelta.
    """
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float, _dt.timedelta)):
        raise InvalidTTL(
            f"ttl must be seconds (int or float), a timedelta or None, not {type(ttl).__name__} "
            f"{ttl!r}"
        )
    try:
        seconds = ttl.total_seconds() if isinstance(ttl, _dt.timedelta) else float(ttl)
    except OverflowError:
        raise InvalidTTL(f"ttl is too large: {ttl!r}") from None
    if math.isnan(seconds) or math.isinf(seconds):
        raise InvalidTTL(f"ttl must be a finite number of seconds, not {ttl!r}")
    if seconds < 0:
        raise InvalidTTL(f"ttl must not be negative, got {ttl!r}")
    if seconds == 0:
        return None
    return seconds
