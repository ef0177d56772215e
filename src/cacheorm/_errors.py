"""The exceptions cacheorm raises, all rooted at :class:`CacheORMError`.

::

    CacheORMError
    ├── ModelDefinitionError        a model cacheorm cannot store (programmer error)
    ├── ConfigurationError          bad repository/registry arguments (programmer error)
    │   ├── InvalidTTL              negative, NaN, bool or non-numeric TTL (also a ValueError)
    │   ├── SerializerNotFound      unknown serializer name (also a LookupError)
    │   └── MissingDependency       an optional extra is not installed (also an ImportError)
    ├── DataError                   a record or payload that is not what the model says
    │   ├── ValidationError         a value does not match its annotation; nothing was written
    │   ├── SerializationError      the serializer could not turn primitives into bytes
    │   └── DeserializationError    stored bytes could not be turned back into a record
    ├── NotFound                    no record under that key (also a LookupError)
    ├── AlreadyExists               a record exists under that key already
    ├── ConflictError               compare-and-set kept losing to other writers; nothing written
    ├── PostSignalError             a post_* signal receiver raised; the write happened
    └── BackendError                the store failed or refused an operation
        ├── BackendUnavailable      the store could not be reached
        │   ├── OutcomeUnknown      a write was sent but its reply was lost: it may have happened
        │   └── BatchWriteError     a batch write failed part-way: written / not written / unknown
        └── ValueTooLarge           a value over the store's item size limit (also a ValueError)

Every exception carries the model, key and field it concerns as attributes
(``None`` where they do not apply) and names them in its message.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "AlreadyExists",
    "BackendError",
    "BackendUnavailable",
    "BatchWriteError",
    "CacheORMError",
    "ConfigurationError",
    "ConflictError",
    "DataError",
    "DeserializationError",
    "InvalidTTL",
    "MissingDependency",
    "ModelDefinitionError",
    "NotFound",
    "OutcomeUnknown",
    "SerializationError",
    "SerializerNotFound",
    "ValidationError",
    "ValueTooLarge",
]


def _model_name(model: type | None) -> str | None:
    return None if model is None else model.__qualname__


class CacheORMError(Exception):
    """Base class of every exception cacheorm raises.

    Attributes:
        model: the dataclass concerned, if any.
        key: the backend key concerned, if any.
        field: the attribute (or path into nested data, like ``$.tags[2]``), if any.
    """

    def __init__(
        self,
        message: str,
        *,
        model: type | None = None,
        key: str | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.model = model
        self.key = key
        self.field = field

    def __str__(self) -> str:
        return self.message


class ModelDefinitionError(CacheORMError, TypeError):
    """The model cannot be stored as defined: no primary key, unsupported annotation, ..."""


class ConfigurationError(CacheORMError):
    """A repository, registry or backend was given arguments that cannot work."""


class InvalidTTL(ConfigurationError, ValueError):
    """A TTL that is negative, NaN, a bool or not a number of seconds / ``timedelta``."""


class SerializerNotFound(ConfigurationError, LookupError):
    """No serializer is registered under the requested name."""


class MissingDependency(ConfigurationError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""

    def __init__(self, feature: str, extra: str) -> None:
        super().__init__(
            f"{feature} needs the optional dependency '{extra}': pip install 'cacheorm[{extra}]'"
        )
        self.extra = extra


class DataError(CacheORMError):
    """A record or a stored payload does not fit its model."""


class ValidationError(DataError, ValueError):
    """A value does not match its annotation. Nothing was written.

    Attributes:
        path: where in the record, e.g. ``$.phones[1].number`` (also ``field``).
        expected: a description of the expected type.
        actual: the type name of the value found.
    """

    def __init__(
        self,
        message: str,
        *,
        model: type | None = None,
        key: str | None = None,
        path: str | None = None,
        expected: str | None = None,
        actual: str | None = None,
    ) -> None:
        super().__init__(message, model=model, key=key, field=path)
        self.path = path
        self.expected = expected
        self.actual = actual


class SerializationError(DataError):
    """The serializer could not turn the record's primitives into bytes.

    Attributes:
        serializer: the serializer's registry name.
    """

    def __init__(
        self,
        message: str,
        *,
        model: type | None = None,
        key: str | None = None,
        serializer: str | None = None,
    ) -> None:
        super().__init__(message, model=model, key=key)
        self.serializer = serializer


class DeserializationError(DataError):
    """Stored bytes could not be decoded into the model.

    Attributes:
        serializer: the serializer's registry name.
        path: where in the payload decoding failed, when known (also ``field``).
    """

    def __init__(
        self,
        message: str,
        *,
        model: type | None = None,
        key: str | None = None,
        serializer: str | None = None,
        path: str | None = None,
    ) -> None:
        super().__init__(message, model=model, key=key, field=path)
        self.serializer = serializer
        self.path = path


class _KeyedError(CacheORMError):
    """An error about one key, or about several keys of a batch (``keys``)."""

    def __init__(
        self,
        message: str,
        *,
        model: type | None = None,
        key: str | None = None,
        keys: Sequence[str] = (),
    ) -> None:
        super().__init__(message, model=model, key=key)
        self.keys: list[str] = list(keys) if keys else ([key] if key is not None else [])

    def __str__(self) -> str:
        # LookupError would otherwise repr() the message like KeyError does.
        return self.message


class NotFound(_KeyedError, LookupError):
    """No record is stored under the key (or, for batches, under ``keys``).

    Attributes:
        keys: every missing key, for batch operations (``[key]`` for single ones).
    """


class AlreadyExists(_KeyedError):
    """A record is already stored under the key (or, for batches, under ``keys``).

    Attributes:
        keys: every key that already existed, for batch operations.
    """


class ConflictError(_KeyedError):
    """A read-modify-write lost its compare-and-set to other writers too many times.

    Nothing was written by the call that raised it.

    Attributes:
        attempts: how many times the update was tried.
    """

    def __init__(
        self,
        message: str,
        *,
        attempts: int,
        model: type | None = None,
        key: str | None = None,
    ) -> None:
        super().__init__(message, model=model, key=key)
        self.attempts = attempts


class BackendError(CacheORMError):
    """The backend failed or refused an operation.

    Attributes:
        server: the address of the server concerned, when there is one (never a password).
    """

    def __init__(
        self,
        message: str,
        *,
        model: type | None = None,
        key: str | None = None,
        server: str | None = None,
    ) -> None:
        super().__init__(message, model=model, key=key)
        self.server = server


class BackendUnavailable(BackendError):
    """The backend could not be reached (connection refused, timeout, ...)."""


class OutcomeUnknown(BackendUnavailable):
    """A write that must not be repeated was sent, and then the connection failed.

    The server may or may not have applied it. cacheorm never resends such a
    write (an insert-if-absent, an increment, a compare-and-set) on its own:
    resending could apply it twice or report your own write as a conflict.
    Read the key to find out, then decide.
    """


class BatchWriteError(BackendUnavailable):
    """A batch write failed part-way; says what happened to each key.

    Attributes:
        written: keys the server confirmed it stored.
        not_written: keys that were certainly not stored (never sent, or refused
            because the condition did not hold).
        unknown: keys whose request was sent but whose reply was lost; they may
            or may not have been stored.
    """

    def __init__(
        self,
        message: str,
        *,
        written: Sequence[str] = (),
        not_written: Sequence[str] = (),
        unknown: Sequence[str] = (),
        model: type | None = None,
        key: str | None = None,
        server: str | None = None,
    ) -> None:
        super().__init__(message, model=model, key=key, server=server)
        self.written: list[str] = list(written)
        self.not_written: list[str] = list(not_written)
        self.unknown: list[str] = list(unknown)


class ValueTooLarge(BackendError, ValueError):
    """A value is larger than the store accepts; it was refused before sending.

    Nothing was written and the value stored before, if any, is unchanged.

    Attributes:
        size: the value's size in bytes.
        limit: the largest value the store accepts under that key, in bytes.
    """

    def __init__(
        self,
        message: str,
        *,
        size: int,
        limit: int,
        model: type | None = None,
        key: str | None = None,
        server: str | None = None,
    ) -> None:
        super().__init__(message, model=model, key=key, server=server)
        self.size = size
        self.limit = limit


def safe_repr(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, never raising (huge ints cannot print)."""
    try:
        text = repr(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_keys(keys: Sequence[str], limit: int = 10) -> str:
    """Quote up to ``limit`` keys for a message, saying how many more there are."""
    shown = ", ".join(repr(k) for k in keys[:limit])
    if len(keys) > limit:
        shown += f" and {len(keys) - limit} more"
    return shown


def model_label(model: type | None) -> str:
    """The model's qualified name for messages."""
    return _model_name(model) or "<no model>"
