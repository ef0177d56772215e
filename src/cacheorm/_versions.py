"""Schema versions, upgrades, earlier serializers and rewriting records when read.

A :class:`~cacheorm.Repository` built with ``version=``, ``upgrades=``,
``read_also=`` or ``rewrite_on_read=`` gets an :class:`Evolution`, which
replaces the repository's ``_encode`` (to stamp the version), ``_decode_payload``
and ``_load`` (to read older versions and other serializers). A repository
without them keeps its own methods and pays nothing.

The version travels in the record's map under the reserved key
:data:`VERSION_KEY` (``"~v"``: not a Python identifier, so no attribute is
named so). Version 1 is written without it, so every payload written before
versions existed is version 1.
"""

# pyright: reportPrivateUsage=false
# (the repository's own helper: it reads its private codec and key state on purpose.)

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from cacheorm._errors import (
    BackendError,
    CacheORMError,
    ConfigurationError,
    DeserializationError,
    ModelDefinitionError,
    safe_repr,
)
from cacheorm._ops import Call, Op
from cacheorm._serializers import JSONSerializer, MsgpackSerializer, Serializer
from cacheorm._ttl import KEEP_TTL

if TYPE_CHECKING:
    from cacheorm._core import RepositoryCore

__all__ = ["VERSION_KEY", "Evolution", "MigrationReport", "Upgrade"]

T = TypeVar("T")

#: The key of the record's map that holds its schema version (absent: version 1).
VERSION_KEY = "~v"

#: An upgrade: the stored map of version n in, the map of version n + 1 out.
Upgrade = Callable[[dict[str, Any]], dict[str, Any]]

_log = logging.getLogger("cacheorm")

#: How often a migration retries a record that changed between its read and its rewrite.
REWRITE_ATTEMPTS = 10


class Evolution(Generic[T]):
    """How one repository reads older versions and formats, and rewrites them.

    Built by :func:`install`; see :class:`~cacheorm.Repository` for the arguments.
    """

    def __init__(
        self,
        repo: RepositoryCore[T],
        *,
        version: int | None,
        upgrades: Mapping[int, Upgrade] | None,
        newer: str,
        read_also: Sequence[str | Serializer],
        rewrite_on_read: bool,
        resolve: Callable[[str | Serializer], Serializer],
    ) -> None:
        name = repo.model.__qualname__
        if version is not None and (type(version) is not int or version < 1):
            raise ConfigurationError(f"{name}: version must be an int >= 1, not {version!r}")
        if newer not in ("error", "ignore"):
            raise ConfigurationError(f"{name}: newer must be 'error' or 'ignore', not {newer!r}")
        if version is None and (upgrades is not None or newer != "error"):
            raise ConfigurationError(
                f"{name}: upgrades= and newer= need version= (the version this code writes)"
            )
        if not isinstance(rewrite_on_read, bool):
            raise ConfigurationError(f"{name}: rewrite_on_read must be a bool")
        self.repo = repo
        self.version = version
        self.upgrades = self._check_upgrades(name, version, upgrades)
        self.newer = newer
        self.rewrite_on_read = rewrite_on_read
        if isinstance(read_also, (str, Serializer)) or not isinstance(read_also, Sequence):
            raise ConfigurationError(
                f"{name}: read_also must be a list of serializer names or objects, not "
                f"{read_also!r} (write read_also=[{read_also!r}])"
            )
        primary = repo.serializer
        self.others: list[Serializer] = []
        for item in read_also:
            other = resolve(item)
            if other.name != primary.name and all(other.name != s.name for s in self.others):
                self.others.append(other)
        if version is not None:
            self._check_version_support(name, [primary, *self.others])
            if any(f.stored == VERSION_KEY for f in repo._compiled.spec.fields):
                raise ModelDefinitionError(
                    f"{name}: the stored name {VERSION_KEY!r} is reserved for the schema version",
                    model=repo.model,
                )
        # The repository's own reader (the fast path's, when installed).
        self._plain_decode: Callable[[str, bytes], T] = repo._decode_payload
        # A version-1 payload has no version key: when the bytes cannot hold one,
        # the plain reader takes it. The key's spelling is fixed per format.
        self._marker = _marker(primary) if version is not None else None
        # A current record ends with its version: the fast reader takes the rest.
        self._fast_decode: Callable[[bytes], T] | None = repo._fast_decode
        self._strip = _stripper(primary, version) if version is not None and version > 1 else None

    @staticmethod
    def _check_upgrades(
        name: str, version: int | None, upgrades: Mapping[int, Upgrade] | None
    ) -> dict[int, Upgrade]:
        if upgrades is None:
            return {}
        if not isinstance(upgrades, Mapping):
            raise ConfigurationError(
                f"{name}: upgrades must be a mapping {{version: function}}, not "
                f"{safe_repr(upgrades)}"
            )
        assert version is not None
        checked: dict[int, Upgrade] = {}
        for n, fn in upgrades.items():
            if type(n) is not int or not 1 <= n < version:
                raise ConfigurationError(
                    f"{name}: upgrades keys are the versions upgraded from, 1 to {version - 1} "
                    f"for version={version}; got {n!r}"
                )
            if not callable(fn):
                raise ConfigurationError(f"{name}: upgrades[{n}] is not callable: {fn!r}")
            checked[n] = fn
        if checked:
            missing = [n for n in range(min(checked), version) if n not in checked]
            if missing:
                raise ConfigurationError(
                    f"{name}: upgrades has no function from version {missing[0]} to "
                    f"{missing[0] + 1}, so records older than that could not reach version "
                    f"{version}"
                )
        return checked

    @staticmethod
    def _check_version_support(name: str, serializers: list[Serializer]) -> None:
        for s in serializers:
            if type(s).__module__ == "cacheorm._protobuf":
                raise ConfigurationError(
                    f"{name}: version= does not work with the protobuf serializer {s.name!r}: a "
                    "message has no room for the version key. Evolve protobuf records with the "
                    "message's own field numbers (add fields, never reuse a number)"
                )

    # -- writes -----------------------------------------------------------------

    def stamp(self, encode: Callable[[T], dict[str, Any]]) -> Callable[[T], dict[str, Any]]:
        """``encode`` that also writes the version (only called for versions above 1)."""
        version = self.version

        def stamped(obj: T) -> dict[str, Any]:
            data = encode(obj)
            data[VERSION_KEY] = version
            return data

        return stamped

    # -- reads --------------------------------------------------------------------

    def decode_payload(self, key: str, payload: bytes) -> T:
        """The record ``payload`` holds (see :meth:`reader` for the one repositories use)."""
        return self.decode(key, payload)[0]

    def reader(self) -> Callable[[str, bytes], T]:
        """The repository's ``_decode_payload``: :meth:`decode_payload`, with the common
        case of the current version in the repository's own format first."""
        decode = self.decode
        plain = self._plain_decode
        marker, strip, fast = self._marker, self._strip, self._fast_decode
        if self.version == 1 and marker is not None:

            def read_v1(key: str, payload: bytes) -> T:
                if marker not in payload:
                    try:
                        return plain(key, payload)
                    except DeserializationError:
                        pass  # perhaps an earlier serializer's
                return decode(key, payload)[0]

            return read_v1
        if strip is not None and fast is not None:

            def read_current(key: str, payload: bytes) -> T:
                rest = strip(payload)
                if rest is not None:
                    try:
                        return fast(rest)
                    except Exception:
                        pass  # read it whole, for the stdlib path's record or error
                return decode(key, payload)[0]

            return read_current
        return self.decode_payload

    def load(self, key: str, payload: bytes, pk: Any) -> T:
        """The repository's ``_load``: decode, check the key, rewrite if stale."""
        repo = self.repo
        obj, stale = self.decode(key, payload)
        if repo._pk_get(obj) != pk or (repo._render_check and not repo._same_key(obj, key)):
            raise repo._misplaced(key, obj)
        if stale and self.rewrite_on_read:
            repo._rewrite_stale(self.rewrite(key, payload, obj))
        return obj

    def decode(self, key: str, payload: bytes) -> tuple[T, bool]:
        """The record and whether it is stale (older version or another serializer)."""
        try:
            return self._decode_with(self.repo.serializer, key, payload)
        except DeserializationError as exc:
            if not self.others:
                raise
            first = exc
        for other in self.others:
            try:
                data = other.loads(payload)
            except Exception:
                continue  # not this format: try the next
            if type(data) is not dict:
                continue  # every format stores a record as a map
            record: dict[str, Any] = data  # pyright: ignore[reportUnknownVariableType]
            return self._from_data(other, key, payload, record)  # its error is the right one
        raise first

    def _decode_with(self, serializer: Serializer, key: str, payload: bytes) -> tuple[T, bool]:
        if self.version is None:
            return self._plain_decode(key, payload), False
        marker = self._marker
        if self.version == 1 and marker is not None and marker not in payload:
            return self._plain_decode(key, payload), False  # version 1, as the key is absent
        strip = self._strip
        if strip is not None and self._fast_decode is not None:
            rest = strip(payload)
            if rest is not None:
                try:
                    return self._fast_decode(rest), False
                except Exception:
                    pass  # read it whole below, for the stdlib path's record or error
        try:
            data = serializer.loads(payload)
        except Exception:
            return self._plain_decode(key, payload), False  # raises the plain reader's error
        if type(data) is not dict:
            return self._plain_decode(key, payload), False
        record: dict[str, Any] = data  # pyright: ignore[reportUnknownVariableType]
        return self._from_data(serializer, key, payload, record)

    def _from_data(
        self, serializer: Serializer, key: str, payload: bytes, data: dict[str, Any]
    ) -> tuple[T, bool]:
        repo = self.repo
        stale = serializer is not repo.serializer
        version = self.version
        newer = ""
        if version is not None:
            stored = data.pop(VERSION_KEY, 1)
            if type(stored) is not int or stored < 1:
                raise self._error(
                    serializer, key, f"the schema version {safe_repr(stored)} is not an int >= 1"
                )
            if stored > version:
                if self.newer == "error":
                    raise self._error(
                        serializer,
                        key,
                        f"the record is schema version {stored}, newer than version {version} "
                        "this code reads (written by newer code; pass newer='ignore' to read "
                        "it without the fields this code does not know)",
                    )
                newer = f" (a record of schema version {stored}, read by version {version})"
                stale = False  # never rewritten by older code, whatever its format
            elif stored < version:
                data = self._upgrade(serializer, key, data, stored)
                stale = True
        try:
            return repo._decode(data), stale
        except Exception as exc:
            failure = repo._compiled.explain_decode(data)
            detail = failure.describe() if failure is not None else repr(exc)
            raise DeserializationError(
                f"{self._where(serializer, key)}: stored record does not fit the model "
                f"{detail}{newer}",
                model=repo.model,
                key=key,
                serializer=serializer.name,
                path=None if failure is None else failure.path,
            ) from exc

    def _upgrade(
        self, serializer: Serializer, key: str, data: dict[str, Any], stored: int
    ) -> dict[str, Any]:
        assert self.version is not None
        for n in range(stored, self.version):
            fn = self.upgrades.get(n)
            if fn is None:
                raise self._error(
                    serializer,
                    key,
                    f"the record is schema version {stored} and there is no upgrade from "
                    f"version {n} to {n + 1} (this code reads version {self.version})",
                )
            try:
                data = fn(data)
            except Exception as exc:
                raise self._error(
                    serializer,
                    key,
                    f"upgrades[{n}] (version {n} to {n + 1}) raised {type(exc).__name__}: {exc}",
                ) from exc
            if type(data) is not dict:
                raise self._error(
                    serializer,
                    key,
                    f"upgrades[{n}] (version {n} to {n + 1}) returned "
                    f"{type(data).__name__}, not the record's dict",
                )
        return data

    def _where(self, serializer: Serializer, key: str) -> str:
        return f"{self.repo.model.__qualname__} (key {key!r}, serializer {serializer.name!r})"

    def _error(self, serializer: Serializer, key: str, what: str) -> DeserializationError:
        return DeserializationError(
            f"{self._where(serializer, key)}: {what}",
            model=self.repo.model,
            key=key,
            serializer=serializer.name,
        )

    # -- rewrites -------------------------------------------------------------------

    def rewrite(
        self, key: str, payload: bytes, obj: T
    ) -> Op[Literal["rewritten", "changed", "failed"]]:
        """Store ``obj`` in the current format if ``key`` still holds ``payload``.

        Compare-and-set: a write that landed since ``payload`` was read is kept
        ("changed"). The TTL left is kept. A failure is logged ("failed"), never raised:
        the record was read correctly, only its rewrite is put off. An
        operation of :mod:`cacheorm._ops`: ``Repository`` runs it before the
        read returns, ``AsyncRepository`` as a task of its own.
        """
        try:
            _, new = self.repo._dump(obj)
            held = yield Call("gets", (key,))
            if held is None or held[0] != payload:
                return "changed"
            if (yield Call("cas", (key, new, held[1], KEEP_TTL))):
                return "rewritten"
            return "changed"
        except (BackendError, CacheORMError) as exc:
            _log.warning("cacheorm: could not rewrite %r in the current format: %s", key, exc)
            return "failed"


def _stripper(serializer: Serializer, version: int) -> Callable[[bytes], bytes | None] | None:
    """A function giving a current-version payload without its version, or None if not one.

    Writes put the version last. JSON: a payload ending ``,"~v":3}`` has
    ``"~v"`` as the last key of the top-level object (``"~v":`` is only ever
    a key, and the final ``}`` closes the top level). msgpack: with the map's
    count one less, the first ``n - 1`` pairs must end exactly where the
    4-byte ``"~v": 3`` pair starts, or the decoder (which refuses trailing and
    missing bytes) fails and the payload is read whole.
    """
    if type(serializer) is JSONSerializer:
        tail = b',"~v":%d}' % version
        cut = len(tail)

        def strip_json(payload: bytes) -> bytes | None:
            return payload[:-cut] + b"}" if payload.endswith(tail) else None

        return strip_json
    if type(serializer) is MsgpackSerializer and version < 128:
        ptail = b"\xa2~v" + bytes([version])

        def strip_msgpack(payload: bytes) -> bytes | None:
            if not payload.endswith(ptail):
                return None
            head = payload[0]
            if 0x81 <= head <= 0x8F:
                return bytes([head - 1]) + payload[1:-4]
            if head == 0xDE and len(payload) > 7:
                count = int.from_bytes(payload[1:3], "big") - 1
                return b"\xde" + count.to_bytes(2, "big") + payload[3:-4]
            return None

        return strip_msgpack
    return None


def _marker(serializer: Serializer) -> bytes | None:
    """Bytes every payload holding the version key contains, or None to always look.

    JSON: ``"~v":`` can only be a key (a quote inside a string is escaped, and
    a string value is never followed by a colon). msgpack: cacheorm's writer
    spells a two-letter key as a fixstr. Other formats are always read whole.
    """
    if type(serializer) is JSONSerializer:
        return b'"~v":'
    if type(serializer) is MsgpackSerializer:
        return b"\xa2~v"
    return None


@dataclasses.dataclass
class MigrationReport:
    """What :meth:`~cacheorm.Repository.migrate` did so far.

    Attributes:
        scanned: record keys listed.
        rewritten: records stored again in the current version and serializer.
        current: records already current (only read).
        vanished: records deleted or expired between the scan and the read.
        failed: records that do not decode (left as they are), or whose
            rewrite failed; ``failures`` names their keys and why.
        failures: ``(key, message)`` of the first :data:`FAILURES_KEPT` failures.
    """

    scanned: int = 0
    rewritten: int = 0
    current: int = 0
    vanished: int = 0
    failed: int = 0
    failures: list[tuple[str, str]] = dataclasses.field(default_factory=list)


#: How many failures a MigrationReport names (the count goes on).
FAILURES_KEPT = 100
