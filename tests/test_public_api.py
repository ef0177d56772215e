"""The public surface: exactly the documented names, each documented."""

from __future__ import annotations

import cacheorm

DOCUMENTED = {
    "DEFAULT",
    "KEEP_TTL",
    "KeepTTLType",
    "TTL",
    "AlreadyExists",
    "AsyncBackend",
    "AsyncCounterBackend",
    "AsyncMemcachedBackend",
    "AsyncFileSystemBackend",
    "AsyncMemoryBackend",
    "AsyncRedisBackend",
    "AsyncRepository",
    "AsyncScanBackend",
    "AsyncTTLBackend",
    "Backend",
    "BackendError",
    "BackendUnavailable",
    "BatchWriteError",
    "CacheORMError",
    "ConflictError",
    "OutcomeUnknown",
    "CasToken",
    "Codec",
    "ConfigurationError",
    "Counter",
    "CounterBackend",
    "ScanBackend",
    "TTLBackend",
    "DataError",
    "DecimalCodec",
    "DefaultType",
    "DeserializationError",
    "Field",
    "FileSystemBackend",
    "Hook",
    "OperationEvent",
    "InvalidTTL",
    "JSONSerializer",
    "MemcachedBackend",
    "MemoryBackend",
    "MigrationReport",
    "MissingDependency",
    "ModelDefinitionError",
    "MsgpackSerializer",
    "NotFound",
    "PickleSerializer",
    "ProtobufSerializer",
    "RedisBackend",
    "Ref",
    "Repository",
    "SerializationError",
    "Serializer",
    "SerializerNotFound",
    "SerializerRegistry",
    "ShortUUIDCodec",
    "Timestamp",
    "UTCDateTimeCodec",
    "ValidationError",
    "ValueTooLarge",
    "__version__",
    "registry",
    "ModelSignal",
    "ModelSignals",
    "PostSignalError",
    "RepositorySignals",
    "Signal",
    "WriteEvent",
    "signals",
}


def test_all_is_exactly_the_documented_api() -> None:
    """__all__ lists the documented names, sorted, and each one exists."""
    assert set(cacheorm.__all__) == DOCUMENTED
    assert len(cacheorm.__all__) == len(DOCUMENTED)
    for name in cacheorm.__all__:
        assert hasattr(cacheorm, name), name


def test_public_names_are_documented_and_come_from_private_modules() -> None:
    """Every public class and function has a docstring; implementations live in _modules."""
    aliases = {"CasToken", "Hook", "TTL"}  # type aliases of builtins
    for name in sorted(set(cacheorm.__all__) - aliases):
        obj = getattr(cacheorm, name)
        if isinstance(obj, type) or callable(obj):
            assert obj.__doc__, f"{name} has no docstring"
            module = getattr(obj, "__module__", "")
            assert module.startswith("cacheorm._"), (name, module)


def test_every_error_derives_from_the_root() -> None:
    """All exported exceptions share the CacheORMError root."""
    errors = [
        getattr(cacheorm, n)
        for n in cacheorm.__all__
        if isinstance(getattr(cacheorm, n), type) and issubclass(getattr(cacheorm, n), Exception)
    ]
    assert len(errors) == 19
    assert all(issubclass(e, cacheorm.CacheORMError) for e in errors)


def test_every_public_repository_method_is_documented() -> None:
    """Repository's public methods (close and the context manager included) have docstrings."""
    names = [n for n in dir(cacheorm.Repository) if not n.startswith("_")]
    names += ["__enter__", "__exit__"]
    assert "close" in names
    for name in names:
        assert getattr(cacheorm.Repository, name).__doc__, name
