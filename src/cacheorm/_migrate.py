"""``Repository.migrate``: rewrite a namespace in the current version and serializer.

The walk lists keys with the backend's :class:`~cacheorm.ScanBackend`
capability (memory, filesystem, Redis and Redis Cluster; memcached cannot
enumerate keys), reads each batch with one ``get_many``, and stores every
stale record again by compare-and-set (``gets`` / ``cas`` with ``KEEP_TTL``):
a record written between the read and the rewrite is read again, never
overwritten. Current records are only read, so a second run is a cheap
check and an interrupted run is resumed by running it again.
"""

# pyright: reportPrivateUsage=false
# (the repository's own helper: it decodes and rewrites through its private paths on purpose.)

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from cacheorm._errors import CacheORMError, DeserializationError
from cacheorm._keyspace import _walk
from cacheorm._ops import Call, Op
from cacheorm._ttl import KEEP_TTL
from cacheorm._versions import FAILURES_KEPT, REWRITE_ATTEMPTS, MigrationReport

if TYPE_CHECKING:
    from cacheorm._core import RepositoryCore

__all__ = ["migrate"]

T = TypeVar("T")


def migrate(
    repo: RepositoryCore[T], batch: int, progress: Callable[[MigrationReport], object] | None
) -> Op[MigrationReport]:
    """Walk ``repo``'s namespace and rewrite its stale records (see ``Repository.migrate``)."""
    if progress is not None and not callable(progress):
        from cacheorm._errors import ConfigurationError

        raise ConfigurationError(f"progress must be a callable or None, not {progress!r}")
    report = MigrationReport()
    walk = _walk(repo, "migrate()", batch)
    while (keys := (yield from walk.keys())) is not None:
        report.scanned += len(keys)
        payloads = yield Call("get_many", (keys,))
        for key, payload in zip(keys, payloads, strict=True):
            yield from _one(repo, report, key, payload)
        if progress is not None:
            progress(dataclasses.replace(report, failures=list(report.failures)))
    return report


def _one(
    repo: RepositoryCore[Any], report: MigrationReport, key: str, payload: bytes | None
) -> Op[None]:
    """Bring the record under ``key`` (read as ``payload``) up to date; count what happened."""
    evolution = repo._evolution
    for _ in range(REWRITE_ATTEMPTS):
        if payload is None:
            report.vanished += 1
            return
        try:
            if evolution is None:
                obj, stale = repo._decode_payload(key, payload), False
            else:
                obj, stale = evolution.decode(key, payload)
            pk = repo.pk_of(obj)
            if repo.key_for(pk) != key:
                raise repo._misplaced(key, obj)
        except DeserializationError as exc:
            _failed(report, key, str(exc))
            return
        if not stale:
            report.current += 1
            return
        try:
            _, new = repo._dump(obj)
            held = yield Call("gets", (key,))
            if held is not None and held[0] == payload:
                if (yield Call("cas", (key, new, held[1], KEEP_TTL))):
                    report.rewritten += 1
                    return
                held = yield Call("gets", (key,))  # written meanwhile: look again
        except CacheORMError as exc:
            _failed(report, key, str(exc))
            return
        payload = None if held is None else held[0]
    _failed(report, key, f"changed {REWRITE_ATTEMPTS} times while being rewritten; run again")


def _failed(report: MigrationReport, key: str, message: str) -> None:
    report.failed += 1
    if len(report.failures) < FAILURES_KEPT:
        report.failures.append((key, message))
