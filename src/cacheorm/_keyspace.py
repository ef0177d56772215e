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
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from cacheorm._backend import AsyncScanBackend, AsyncTTLBackend, ScanBackend, TTLBackend
from cacheorm._checks import check_batch
from cacheorm._errors import ConfigurationError, DeserializationError, NotFound
from cacheorm._generation import SUFFIX, Generation
from cacheorm._keys import _ALWAYS, KeyScheme, _raw_formatter, escape_factory
from cacheorm._ops import Call, Iterate, Next, Op

if TYPE_CHECKING:
    from cacheorm._core import RepositoryCore

__all__ = [
    "SCAN_BATCH",
    "Keyspace",
    "clear",
    "count",
    "records",
    "touch",
    "touch_many",
    "ttl_of",
]

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


def _keyspace(repo: RepositoryCore[Any]) -> Keyspace:
    cached: Keyspace | None = repo.__dict__.get("_keyspace")
    if cached is None:
        cached = Keyspace(repo._keys, repo._counter_key, repo._generation is not None)
        repo.__dict__["_keyspace"] = cached
    return cached


def _missing(
    repo: RepositoryCore[Any], capability: str, what: str, instead: str
) -> ConfigurationError:
    store: object = repo._backend
    backend = type(store)
    return ConfigurationError(
        f"{repo.model.__qualname__}: {what} needs a backend with the {capability} capability; "
        f"{backend.__module__}.{backend.__qualname__} does not have it. {instead}",
        model=repo.model,
    )


def _ttl_backend(repo: RepositoryCore[Any], what: str) -> None:
    """Refuse a backend without touch/touch_many/ttl_of (sync or async: the same names)."""
    if not isinstance(repo._backend, (TTLBackend, AsyncTTLBackend)):
        raise _missing(
            repo,
            "TTLBackend (touch, touch_many, ttl_of)",
            what,
            "Save the record again with the new ttl instead.",
        )


def _scan_backend(repo: RepositoryCore[Any], what: str) -> None:
    """Refuse a backend that cannot list keys."""
    if not isinstance(repo._backend, (ScanBackend, AsyncScanBackend)):
        raise _missing(
            repo,
            "ScanBackend (scan: enumerating keys)",
            what,
            "Memcached cannot enumerate keys: give records a TTL, delete them by primary "
            "key (delete_many), use a separate memcached server per namespace and flush it, "
            "or keep this namespace in Redis, the filesystem or memory.",
        )


# Each operation below is an operation of cacheorm._ops (it yields its backend
# calls), so Repository and AsyncRepository run the same code. The checks
# (capability, batch, key scheme) run when the operation starts, before any I/O.


def touch(repo: RepositoryCore[Any], pk: Any, seconds: float | None) -> Op[bool]:
    """Give the record under ``pk`` a new TTL; False if there is none."""
    key = repo.key_for(pk)
    _ttl_backend(repo, "touch()")
    touched: bool = yield Call("touch", (key, seconds))
    return touched


def touch_many(repo: RepositoryCore[Any], pks: list[Any], seconds: float | None) -> Op[list[bool]]:
    """``touch`` each primary key; one backend call."""
    keys = [repo.key_for(pk) for pk in pks]
    _ttl_backend(repo, "touch_many()")
    if not keys:
        return []
    touched: list[bool] = yield Call("touch_many", (keys, seconds))
    return touched


def ttl_of(repo: RepositoryCore[Any], pk: Any) -> Op[float | None]:
    """Seconds left for the record under ``pk``; None if it never expires; NotFound if absent."""
    key = repo.key_for(pk)
    _ttl_backend(repo, "ttl_of()")
    left: float | None = yield Call("ttl_of", (key,))
    if left is None:
        raise NotFound(
            f"{repo.model.__qualname__} {pk!r} not found (key {key!r})", model=repo.model, key=key
        )
    return None if math.isinf(left) else left


class _Walk:
    """A scan of this repository's record keys, a batch at a time (deduplicated in a batch)."""

    def __init__(
        self,
        prefix: str,
        batch: int,
        owns: Callable[[str], bool] | None,
        generation: tuple[Generation, Keyspace] | None = None,
    ) -> None:
        self.prefix = prefix
        self.batch = batch
        self.owns = owns
        #: With generations: only the records of the current one (read at the first step).
        self.generation = generation
        self.iterator: Any = None

    def keys(self) -> Op[list[str] | None]:
        """The next batch of owned keys, or None when the scan is done."""
        if self.iterator is None:
            if self.generation is not None:
                generation, space = self.generation
                current = yield from generation.value()
                self.owns = space.of_generation(current)
            self.iterator = yield Iterate("scan", (self.prefix, self.batch))
        owns = self.owns
        assert owns is not None
        while True:
            keys: list[str] | None = yield Next(self.iterator)
            if keys is None:
                return None
            mine = [key for key in dict.fromkeys(keys) if owns(key)]
            if mine:
                return mine


def _walk(repo: RepositoryCore[Any], what: str, batch: int) -> _Walk:
    """A walk over the repository's record keys; the checks run now."""
    check_batch(batch)
    space = _keyspace(repo)
    _scan_backend(repo, what)
    if repo._generation is not None:  # only the records of the current generation
        return _Walk(space.prefix, batch, None, (repo._generation, space))
    return _Walk(space.prefix, batch, space.owns)


def clear(repo: RepositoryCore[Any], batch: int) -> Op[int]:
    """Delete every record of the repository, a batch at a time; how many were deleted.

    With generations: move to a new generation (one ``incr``), then, where the
    backend can list keys and the key scheme has a known shape, delete the
    records of the older generations; otherwise (memcached) delete nothing and
    return 0, leaving the unreachable records to their TTL or the LRU.
    """
    generation = repo._generation
    if generation is None:
        walk = _walk(repo, "clear()", batch)
    else:
        check_batch(batch)
        space: Keyspace | None = None
        if isinstance(repo._backend, ScanBackend):
            try:
                space = _keyspace(repo)
            except ConfigurationError:  # a key function: old records are left to expire
                space = None
        new = yield from generation.bump_op()
        if space is None:
            return 0
        # never a newer generation another process moved to meanwhile
        walk = _Walk(space.prefix, batch, space.older_than(new))
    deleted = 0
    while (keys := (yield from walk.keys())) is not None:
        deleted += yield Call("delete_many", (keys,))
    return deleted


def count(repo: RepositoryCore[Any], batch: int) -> Op[int]:
    """How many records the repository's namespace holds (see ScanBackend.scan)."""
    walk = _walk(repo, "count()", batch)
    total = 0
    while (keys := (yield from walk.keys())) is not None:
        total += len(keys)
    return total


def records(
    repo: RepositoryCore[T], batch: int, errors: Literal["raise", "skip"]
) -> Callable[[], Op[list[T] | None]]:
    """The records of the namespace, as an operation per batch (None at the end).

    Arguments and capability are checked now; each batch is a key scan step
    and one ``get_many``. Records deleted or expired since the scan listed
    their key are left out; ``errors="skip"`` leaves out those that do not decode.
    """
    if errors not in ("raise", "skip"):
        raise ConfigurationError(f"errors must be 'raise' or 'skip', not {errors!r}")
    walk = _walk(repo, "scan()", batch)
    skip = errors == "skip"
    load = repo._load_by_key

    def next_batch() -> Op[list[T] | None]:
        while (keys := (yield from walk.keys())) is not None:
            found: list[T] = []
            payloads: list[bytes | None] = yield Call("get_many", (keys,))
            for key, payload in zip(keys, payloads, strict=True):
                if payload is None:  # deleted or expired since the scan listed it
                    continue
                try:
                    found.append(load(key, payload))
                except DeserializationError:
                    if not skip:
                        raise
            if found:
                return found
        return None

    return next_batch
