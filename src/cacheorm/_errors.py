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
    └── BackendError                the store failed or refused an operation
        ├── BackendUnavailable      the store could not be reached
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
    "CacheORMError",
    "ConfigurationError",
    "DataError",
    "DeserializationError",
    "InvalidTTL",
    "MissingDependency",
    "ModelDefinitionError",
    "NotFound",
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
