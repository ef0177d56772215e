"""Argument checks every backend shares: keys are str, values bytes, TTLs positive seconds."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

from cacheorm._errors import InvalidTTL, safe_repr

__all__ = [
    "as_bytes",
    "as_items",
    "check_batch",
    "check_delta",
    "check_key",
    "check_ttl",
]


def check_key(key: object) -> str:
    """``key`` if it is a str; TypeError otherwise."""
    if not isinstance(key, str):
        raise TypeError(f"backend keys must be str, not {type(key).__name__}")
    return key


def as_bytes(key: str, value: object) -> bytes:
    """``value`` as bytes (bytearray and memoryview are copied); TypeError naming ``key``."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(cast("bytearray | memoryview[int]", value))
    raise TypeError(
        f"value for key {key!r} must be bytes, bytearray or memoryview, not {type(value).__name__}"
    )


def as_items(items: Sequence[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """Every pair checked before any is used, so a bad one stores nothing."""
    return [(check_key(key), as_bytes(key, value)) for key, value in items]


def check_ttl(ttl: float | None) -> None:
    """Raise InvalidTTL unless ``ttl`` is None or a finite, positive number of seconds."""
    if ttl is None:
        return
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not _finite(ttl) or ttl <= 0:
        raise InvalidTTL(
            f"ttl must be a finite, positive number of seconds or None, not {safe_repr(ttl)}"
        )


def check_delta(delta: object) -> int:
    """``delta`` if it is an int (not a bool); TypeError otherwise."""
    if isinstance(delta, bool) or not isinstance(delta, int):
        raise TypeError(f"counter delta must be an int, not {type(delta).__name__}")
    return delta


def check_batch(batch: object) -> int:
    """``batch`` if it is a positive int; ValueError (TypeError for a non-int) otherwise."""
    if isinstance(batch, bool) or not isinstance(batch, int):
        raise TypeError(f"batch must be a positive int, not {type(batch).__name__}")
    if batch < 1:
        raise ValueError(f"batch must be a positive int, not {batch!r}")
    return batch


def _finite(number: float) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:  # an int beyond float range
        return False
