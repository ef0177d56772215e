"""TTL and namespace operations of a repository: touch, ttl_of, clear, count, scan.

The repository's methods are thin: they call the functions here, which check
that the backend has the optional capability (:class:`~cacheorm.TTLBackend`,
:class:`~cacheorm.ScanBackend`) and do the work. Which keys belong to a
repository is decided by :class:`Keyspace`, without I/O: a key belongs if it
starts with the scheme's literal head and has the exact shape of the
repository's keys (its literals, and parts made only of the characters a key
part can contain). So ``user`` never claims ``users:1`` or ``user:x:1`` (the
key of namespace ``user:x``), nor the auto-id counter ``user:__seq__`` nor the
``get_or_load`` leases (``<key>\\0lease``: a raw NUL never appears in a part).
"""

# This module is the repository's (and its key scheme's) own: it reads their
# private attributes, as their methods would.
# pyright: reportPrivateUsage=false

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from cacheorm._backend import Backend, ScanBackend, TTLBackend
from cacheorm._checks import check_batch
from cacheorm._errors import ConfigurationError, DeserializationError, NotFound
from cacheorm._generation import SUFFIX
from cacheorm._keys import _ALWAYS, KeyScheme, _raw_formatter, escape_factory

if TYPE_CHECKING:
    from cacheorm._repository import Repository

__all__ = ["SCAN_BATCH", "Keyspace", "clear", "count", "scan", "touch", "touch_many", "ttl_of"]

T = TypeVar("T")

#: Keys per batch of ``scan``, ``count`` and ``clear`` unless told otherwise.
SCAN_BATCH = 500


def _class_of(chars: str) -> str:
    return "".join(re.escape(c) for c in sorted(set(chars)))


class Keyspace:
    """The keys of one key scheme: the prefix to scan for and a test for each key found.

    Raises:
        ConfigurationError: the scheme is a key function (its keys have no
            known shape), or a template without literal text before its first
            placeholder (every key of the store would be a candidate).
    """

    def __init__(self, scheme: KeyScheme, counter_key: str, generations: bool = False) -> None:
        model = scheme.model
        literals: list[str] | None = getattr(scheme, "_literals", None)
        if scheme._callable is not None or literals is None:
            raise ConfigurationError(
                f"{model.__qualname__}: clear(), count() and scan() need a key template or the "
                f"default key scheme; a key function ({scheme.describe}) gives keys of no known "
                "shape",
                model=model,
            )
        if not literals[0]:
            raise ConfigurationError(
                f"{model.__qualname__}: clear(), count() and scan() need literal text before "
                f"the first placeholder of the key template {scheme.describe!r} (or a prefix), "
                "to tell this repository's keys from every other key",
                model=model,
            )
        self.prefix = literals[0]
        self.counter_key = counter_key
        reserved = "".join(literals[1:-1])
        escape = escape_factory(reserved)
        # Escaped text: any character but the reserved ones, or %XX.
        text = f"(?:[^{_class_of(reserved + _ALWAYS)}]|%[0-9A-F]{{2}})*"
        parts: list[str] = []
        for part in scheme.parts:
            _, alphabet = _raw_formatter(model, part, escape)
            if alphabet is None or set(alphabet) & set(reserved):
                parts.append(text)
            else:
                parts.append(f"[{_class_of(alphabet)}]+")
        pattern = re.escape(literals[0])
        for position, index in enumerate(scheme._order):
            pattern += parts[index] + re.escape(literals[position + 1])
        if generations:  # <key>#g<digits>: the generation is the last group
            pattern += re.escape(SUFFIX) + "([0-9]+)"
        self._match = re.compile(pattern, re.DOTALL).fullmatch

    def owns(self, key: str) -> bool:
        """True if ``key`` is a record key of this scheme (not the counter, not a lease)."""
        return key != self.counter_key and self._match(key) is not None

    def generation_of(self, key: str) -> int | None:
        """The generation of a record key of this scheme (with generations); None if not one."""
        found = self._match(key)
        return None if found is None else int(found.group(found.lastindex or 0))

    def of_generation(self, generation: int) -> Callable[[str], bool]:
        """A test for the record keys of exactly ``generation``."""
        return lambda key: self.generation_of(key) == generation

    def older_than(self, generation: int) -> Callable[[str], bool]:
        """A test for the record keys of any generation before ``generation``."""

        def older(key: str) -> bool:
            found = self.generation_of(key)
            return found is not None and found < generation

        return older


def _keyspace(repo: Repository[Any]) -> Keyspace:
    cached: Keyspace | None = repo.__dict__.get("_keyspace")
    if cached is None:
        cached = Keyspace(repo._keys, repo._counter_key, repo._generation is not None)
        repo.__dict__["_keyspace"] = cached
    return cached


def _missing(repo: Repository[Any], capability: str, what: str, instead: str) -> ConfigurationError:
    backend = type(repo.backend)
    return ConfigurationError(
        f"{repo.model.__qualname__}: {what} needs a backend with the {capability} capability; "
        f"{backend.__module__}.{backend.__qualname__} does not have it. {instead}",
        model=repo.model,
    )


def _ttl_backend(repo: Repository[Any], what: str) -> TTLBackend:
    backend: Backend = repo.backend
    if not isinstance(backend, TTLBackend):
        raise _missing(
            repo,
            "TTLBackend (touch, touch_many, ttl_of)",
            what,
            "Save the record again with the new ttl instead.",
        )
    return backend


def _scan_backend(repo: Repository[Any], what: str) -> ScanBackend:
    backend: Backend = repo.backend
    if not isinstance(backend, ScanBackend):
        raise _missing(
            repo,
            "ScanBackend (scan: enumerating keys)",
            what,
            "Memcached cannot enumerate keys: give records a TTL, delete them by primary "
            "key (delete_many), use a separate memcached server per namespace and flush it, "
            "or keep this namespace in Redis, the filesystem or memory.",
        )
    return backend


def touch(repo: Repository[Any], pk: Any, seconds: float | None) -> bool:
    """Give the record under ``pk`` a new TTL; False if there is none."""
    key = repo.key_for(pk)
    return _ttl_backend(repo, "touch()").touch(key, seconds)


def touch_many(repo: Repository[Any], pks: list[Any], seconds: float | None) -> list[bool]:
    """``touch`` each primary key; one backend call."""
    keys = [repo.key_for(pk) for pk in pks]
    backend = _ttl_backend(repo, "touch_many()")
    return backend.touch_many(keys, seconds) if keys else []


def ttl_of(repo: Repository[Any], pk: Any) -> float | None:
    """Seconds left for the record under ``pk``; None if it never expires; NotFound if absent."""
    key = repo.key_for(pk)
    left = _ttl_backend(repo, "ttl_of()").ttl_of(key)
    if left is None:
        raise NotFound(
            f"{repo.model.__qualname__} {pk!r} not found (key {key!r})", model=repo.model, key=key
        )
    return None if math.isinf(left) else left


def _keys(repo: Repository[Any], what: str, batch: int) -> Iterator[list[str]]:
    """Batches of this repository's record keys (deduplicated within a batch).

    The checks (batch, key scheme, capability) run now, not at the first ``next()``.
    """
    check_batch(batch)
    space = _keyspace(repo)
    backend = _scan_backend(repo, what)
    owns: Callable[[str], bool] = space.owns
    if repo._generation is not None:  # only the records of the current generation
        owns = space.of_generation(repo._generation.current())
    return _owned(backend.scan(space.prefix, batch), owns)


def _owned(batches: Iterator[list[str]], owns: Callable[[str], bool]) -> Iterator[list[str]]:
    for keys in batches:
        mine = [key for key in dict.fromkeys(keys) if owns(key)]
        if mine:
            yield mine


def clear(repo: Repository[Any], batch: int) -> int:
    """Delete every record of the repository, a batch at a time; how many were deleted.

    With generations: move to a new generation (one ``incr``), then, where the
    backend can list keys and the key scheme has a known shape, delete the
    records of the older generations; otherwise (memcached) delete nothing and
    return 0, leaving the unreachable records to their TTL or the LRU.
    """
    backend = repo.backend
    generation = repo._generation
    if generation is None:
        return sum(backend.delete_many(keys) for keys in _keys(repo, "clear()", batch))
    check_batch(batch)
    space: Keyspace | None = None
    scanner: ScanBackend | None = backend if isinstance(backend, ScanBackend) else None
    if scanner is not None:
        try:
            space = _keyspace(repo)
        except ConfigurationError:  # a key function: old records are left to expire
            space = None
    new = generation.bump()
    if space is None or scanner is None:
        return 0
    older = space.older_than(new)  # never a newer one another process moved to meanwhile
    deleted = 0
    for keys in _owned(scanner.scan(space.prefix, batch), older):
        deleted += backend.delete_many(keys)
    return deleted


def count(repo: Repository[Any], batch: int) -> int:
    """How many records the repository's namespace holds (see ScanBackend.scan)."""
    return sum(len(keys) for keys in _keys(repo, "count()", batch))


def scan(repo: Repository[T], batch: int, errors: Literal["raise", "skip"]) -> Iterator[T]:
    """Every record of the namespace: a key scan and one ``get_many`` per batch.

    Arguments and capability are checked now; the records come lazily.
    """
    if errors not in ("raise", "skip"):
        raise ConfigurationError(f"errors must be 'raise' or 'skip', not {errors!r}")
    return _records(repo, _keys(repo, "scan()", batch), errors == "skip")


def _records(repo: Repository[T], batches: Iterator[list[str]], skip: bool) -> Iterator[T]:
    backend = repo.backend
    load = repo._load_by_key
    for keys in batches:
        for key, payload in zip(keys, backend.get_many(keys), strict=True):
            if payload is None:  # deleted or expired since the scan listed it
                continue
            try:
                record = load(key, payload)
            except DeserializationError:
                if not skip:
                    raise
                continue
            yield record
