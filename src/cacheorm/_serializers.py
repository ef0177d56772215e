"""Serializers (primitives <-> bytes) and the named registry.

A serializer turns the primitives a model's codec produces (None, bool, int,
float, str, list, str-keyed dict, and bytes when ``binary`` is true) into
bytes and back. It knows nothing of models.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable, Iterator
from typing import Any, Protocol, runtime_checkable

from cacheorm._errors import ConfigurationError, MissingDependency, SerializerNotFound

__all__ = [
    "JSONSerializer",
    "MsgpackSerializer",
    "PickleSerializer",
    "Serializer",
    "SerializerRegistry",
    "default_registry",
]


@runtime_checkable
class Serializer(Protocol):
    """Turns primitives into bytes and back.

    Attributes:
        name: a short name used in error messages (and usually in the registry).
        binary: True if ``bytes`` values travel natively; False makes cacheorm
            send them as base64 text.
    """

    name: str
    binary: bool

    def dumps(self, data: Any, /) -> bytes:
        """Serialize primitives; raise any exception for data it cannot carry."""
        ...

    def loads(self, payload: bytes, /) -> Any:
        """Deserialize bytes; raise any exception for a payload it cannot read."""
        ...


class JSONSerializer:
    """Compact UTF-8 JSON (the default). ``bytes`` travel as base64 text.

    NaN and the infinities are written as the ``NaN`` / ``Infinity`` tokens that
    Python's json module reads back, so floats round-trip exactly.
    """

    name = "json"
    binary = False

    def __init__(self) -> None:
        self._encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
        self._decode = json.JSONDecoder().decode

    def dumps(self, data: Any, /) -> bytes:
        """Serialize to UTF-8 JSON."""
        return self._encode(data).encode("utf-8")

    def loads(self, payload: bytes, /) -> Any:
        """Parse UTF-8 JSON."""
        return self._decode(payload.decode("utf-8"))


class MsgpackSerializer:
    """MessagePack, with native bytes (needs the ``msgpack`` extra)."""

    name = "msgpack"
    binary = True

    def __init__(self) -> None:
        try:
            import msgpack
        except ImportError:
            raise MissingDependency("the msgpack serializer", "msgpack") from None
        self._packb = msgpack.packb
        self._unpackb = msgpack.unpackb

    def dumps(self, data: Any, /) -> bytes:
        """Serialize to MessagePack."""
        result: bytes = self._packb(data, use_bin_type=True)
        return result

    def loads(self, payload: bytes, /) -> Any:
        """Parse MessagePack; maps must have str keys."""
        return self._unpackb(payload, raw=False, strict_map_key=True)


class PickleSerializer:
    """pickle, protocol 5. Never a default: unpickling untrusted bytes runs code.

    cacheorm only ever pickles primitives (the codec has already converted the
    record), so payloads hold no class references of yours.
    """

    name = "pickle"
    binary = True

    def dumps(self, data: Any, /) -> bytes:
        """Serialize with pickle protocol 5."""
        return pickle.dumps(data, protocol=5)

    def loads(self, payload: bytes, /) -> Any:
        """Unpickle."""
        return pickle.loads(payload)


SerializerFactory = Callable[[], Serializer]


class SerializerRegistry:
    """Serializers by name. Built-ins are created on first use.

    Args:
        serializers: initial entries, a serializer or a zero-argument factory each.
    """

    def __init__(
        self, serializers: dict[str, Serializer | SerializerFactory] | None = None
    ) -> None:
        self._entries: dict[str, Serializer | SerializerFactory] = {}
        for name, entry in (serializers or {}).items():
            self.register(name, entry)

    def register(self, name: str, serializer: Serializer | SerializerFactory) -> None:
        """Add ``serializer`` (or a factory of one) under ``name``.

        Raises:
            ConfigurationError: the name is taken, empty, or the object is no serializer.
        """
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"a serializer name must be a non-empty str, not {name!r}")
        if name in self._entries:
            raise ConfigurationError(
                f"a serializer is already registered as {name!r}; unregister it first"
            )
        if not (isinstance(serializer, Serializer) or callable(serializer)):
            raise ConfigurationError(
                f"{serializer!r} is not a serializer: it needs name, binary, dumps() and loads()"
            )
        self._entries[name] = serializer

    def unregister(self, name: str) -> None:
        """Remove the serializer registered as ``name``.

        Raises:
            SerializerNotFound: nothing is registered as ``name``.
        """
        if name not in self._entries:
            raise self._not_found(name)
        del self._entries[name]

    def get(self, name: str) -> Serializer:
        """The serializer registered as ``name``, created now if it was a factory.

        Raises:
            SerializerNotFound: unknown name; the message lists the known ones.
            MissingDependency: the serializer's optional dependency is missing.
        """
        try:
            entry = self._entries[name]
        except KeyError:
            raise self._not_found(name) from None
        if isinstance(entry, Serializer) and not isinstance(entry, type):
            return entry
        created = entry()
        if not isinstance(created, Serializer):
            raise ConfigurationError(f"the factory registered as {name!r} returned {created!r}")
        self._entries[name] = created
        return created

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"SerializerRegistry({self.names()})"

    def _not_found(self, name: str) -> SerializerNotFound:
        known = ", ".join(self.names()) or "none"
        hint = ""
        if name == "protobuf":
            hint = (
                "; protobuf needs your message class: pass "
                "cacheorm.ProtobufSerializer(MyMessage) to the Repository, or register it"
            )
        return SerializerNotFound(f"no serializer named {name!r} (known: {known}){hint}")


def default_registry() -> SerializerRegistry:
    """A new registry holding the built-ins: json, msgpack and pickle."""
    return SerializerRegistry(
        {"json": JSONSerializer, "msgpack": MsgpackSerializer, "pickle": PickleSerializer}
    )
