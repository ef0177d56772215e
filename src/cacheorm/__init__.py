"""cacheorm: typed, cache-backed persistence for plain Python dataclasses.

Models stay plain ``@dataclass`` classes; a :class:`Repository` binds one to a
backend (memory, filesystem, Redis, Memcached), a serializer, a key scheme and
a TTL::

    import dataclasses
    from typing import Annotated
    import cacheorm as co

    @dataclasses.dataclass
    class User:
        id: Annotated[int, co.Field(primary_key=True)]
        name: str

    users = co.Repository(User)          # in-memory backend, json
    users.create(User(id=1, name="Sam"))
    users.get(1)                         # -> User(id=1, name='Sam')
"""

from cacheorm._aio_local import AsyncFileSystemBackend, AsyncMemoryBackend
from cacheorm._aio_memcached import AsyncMemcachedBackend
from cacheorm._aio_redis import AsyncRedisBackend
from cacheorm._async_repository import AsyncRepository
from cacheorm._backend import (
    AsyncBackend,
    AsyncCounterBackend,
    AsyncScanBackend,
    AsyncTTLBackend,
    Backend,
    CasToken,
    CounterBackend,
    ScanBackend,
    TTLBackend,
)
from cacheorm._codecs import Codec, Timestamp
from cacheorm._counter import Counter
from cacheorm._errors import (
    AlreadyExists,
    BackendError,
    BackendUnavailable,
    BatchWriteError,
    CacheORMError,
    ConfigurationError,
    ConflictError,
    DataError,
    DeserializationError,
    InvalidTTL,
    MissingDependency,
    ModelDefinitionError,
    NotFound,
    OutcomeUnknown,
    SerializationError,
    SerializerNotFound,
    ValidationError,
    ValueTooLarge,
)
from cacheorm._fieldcodecs import DecimalCodec, ShortUUIDCodec, UTCDateTimeCodec
from cacheorm._filesystem import FileSystemBackend
from cacheorm._memcached import MemcachedBackend
from cacheorm._memory import MemoryBackend
from cacheorm._observe import Hook, OperationEvent
from cacheorm._protobuf import ProtobufSerializer
from cacheorm._redis import RedisBackend
from cacheorm._refs import Ref
from cacheorm._repository import Repository, registry
from cacheorm._schema import Field
from cacheorm._serializers import (
    JSONSerializer,
    MsgpackSerializer,
    PickleSerializer,
    Serializer,
    SerializerRegistry,
)
from cacheorm._signals import (
    ModelSignal,
    ModelSignals,
    PostSignalError,
    RepositorySignals,
    Signal,
    WriteEvent,
    signals,
)
from cacheorm._ttl import DEFAULT, KEEP_TTL, TTL, DefaultType, KeepTTLType
from cacheorm._versions import MigrationReport

__version__ = "0.1.0"

__all__ = [
    "DEFAULT",
    "KEEP_TTL",
    "TTL",
    "AlreadyExists",
    "AsyncBackend",
    "AsyncCounterBackend",
    "AsyncFileSystemBackend",
    "AsyncMemcachedBackend",
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
    "CasToken",
    "Codec",
    "ConfigurationError",
    "ConflictError",
    "Counter",
    "CounterBackend",
    "DataError",
    "DecimalCodec",
    "DefaultType",
    "DeserializationError",
    "Field",
    "FileSystemBackend",
    "Hook",
    "InvalidTTL",
    "KeepTTLType",
    "JSONSerializer",
    "MemcachedBackend",
    "MemoryBackend",
    "MigrationReport",
    "MissingDependency",
    "ModelDefinitionError",
    "ModelSignal",
    "ModelSignals",
    "MsgpackSerializer",
    "NotFound",
    "OperationEvent",
    "OutcomeUnknown",
    "PickleSerializer",
    "PostSignalError",
    "ProtobufSerializer",
    "RedisBackend",
    "Ref",
    "Repository",
    "RepositorySignals",
    "ScanBackend",
    "SerializationError",
    "Serializer",
    "SerializerNotFound",
    "SerializerRegistry",
    "ShortUUIDCodec",
    "Signal",
    "TTLBackend",
    "Timestamp",
    "UTCDateTimeCodec",
    "ValidationError",
    "ValueTooLarge",
    "WriteEvent",
    "__version__",
    "registry",
    "signals",
]
