"""Serializers (primitives <-> bytes) and the named registry.

A serializer turns the primitives a model's codec produces (None, bool, int,
float, str, list, str-keyed dict, and bytes when ``binary`` is true) into
bytes and back. It knows nothing of models.
"""

from __future__ import annotations

import copyreg
import hashlib
import hmac
import io
import json
import math
import pickle
import pickletools
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

    Nothing is silently changed: every value cacheorm writes reads back equal,
    and a value JSON cannot carry is refused (a ``SerializationError`` on
    write, a ``DeserializationError`` on read), never rounded or truncated.

    * Ints of any size round-trip exactly, up to Python's int/str conversion
      limit (4300 digits unless changed with ``sys.set_int_max_str_digits``);
      a longer int is refused on write, and a longer literal on read. Readers
      other than Python may round ints beyond 2**53.
    * NaN and the infinities are written as the ``NaN`` / ``Infinity`` tokens
      that Python's json module reads back, so floats round-trip exactly. Pass
      ``allow_nan=False`` for strict JSON (RFC 8259) that any reader accepts:
      such floats are then refused on write, and the tokens (and number
      literals beyond the float range, which would read as infinity) on read.
    * Text nested deeper than the interpreter's recursion limit is refused.

    Args:
        allow_nan: write NaN / Infinity as tokens (True, the default), or
            refuse them in both directions (False).

    Raises:
        ConfigurationError: ``allow_nan`` is not a bool.
    """

    name = "json"
    binary = False

    def __init__(self, *, allow_nan: bool = True) -> None:
        if not isinstance(allow_nan, bool):
            raise ConfigurationError(f"allow_nan must be a bool, not {allow_nan!r}")
        self.allow_nan = allow_nan
        self._encode = json.JSONEncoder(
            ensure_ascii=False, separators=(",", ":"), allow_nan=allow_nan
        ).encode
        if allow_nan:
            self._decode = json.JSONDecoder().decode
        else:
            self._decode = json.JSONDecoder(
                parse_constant=_refuse_constant, parse_float=_finite_float
            ).decode

    def __repr__(self) -> str:
        return "JSONSerializer()" if self.allow_nan else "JSONSerializer(allow_nan=False)"

    def dumps(self, data: Any, /) -> bytes:
        """Serialize to UTF-8 JSON."""
        try:
            return self._encode(data).encode("utf-8")
        except RecursionError:
            raise ValueError("the record is nested too deeply for JSON") from None
        except ValueError as exc:
            if not self.allow_nan and "JSON compliant" in str(exc):
                raise ValueError(
                    "NaN and Infinity are not valid strict JSON "
                    "(this serializer was made with allow_nan=False)"
                ) from None
            raise

    def loads(self, payload: bytes, /) -> Any:
        """Parse UTF-8 JSON."""
        try:
            return self._decode(payload.decode("utf-8"))
        except RecursionError:
            raise ValueError("the JSON text is nested too deeply to read") from None


def _refuse_constant(token: str) -> Any:
    raise ValueError(f"{token} is not valid strict JSON (allow_nan=False)")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:40]} is beyond the float range")
    return value


class MsgpackSerializer:
    """MessagePack, with native bytes (needs the ``msgpack`` extra).

    MessagePack carries ints from ``-2**63`` to ``2**64 - 1``; any other int is
    refused on write (``SerializationError``), never wrapped. Payloads nested
    deeper than msgpack's limit (1024) are refused on read.
    """

    name = "msgpack"
    binary = True

    def __init__(self) -> None:
        try:
            import msgpack
        except ImportError:
            raise MissingDependency("the msgpack serializer", "msgpack") from None
        self._packb = msgpack.packb
        self._unpackb = msgpack.unpackb
        self._stack_error: type[Exception] = msgpack.exceptions.StackError
        self._format_error: type[Exception] = msgpack.exceptions.FormatError

    def __repr__(self) -> str:
        return "MsgpackSerializer()"

    def dumps(self, data: Any, /) -> bytes:
        """Serialize to MessagePack."""
        try:
            result: bytes = self._packb(data, use_bin_type=True)
        except OverflowError:
            raise ValueError(
                "an int is outside the range msgpack carries (-2**63 to 2**64 - 1)"
            ) from None
        return result

    def loads(self, payload: bytes, /) -> Any:
        """Parse MessagePack; maps must have str keys."""
        try:
            return self._unpackb(payload, raw=False, strict_map_key=True)
        except self._stack_error:
            raise ValueError("the payload is nested deeper than msgpack allows") from None
        except self._format_error:
            raise ValueError("the payload is not MessagePack (a reserved type byte)") from None


#: Starts a signed pickle payload: a NUL (which starts no pickle and no JSON
#: text), then the format's name and version. A 32-byte HMAC-SHA256 of the
#: header and the pickle follows, then the pickle.
_SIGNED_HEADER = b"\x00COPS1"
_MAC_SIZE = hashlib.sha256().digest_size
_MIN_KEY_SIZE = 16


class _PrimitivePickler(pickle.Pickler):
    """A pickler that refuses anything needing a global: it writes primitives only."""

    def reducer_override(self, obj: Any) -> Any:
        # Never called for None, bool and the exact built-in types str, bytes,
        # bytearray, int, float, list, tuple, dict, set and frozenset.
        raise pickle.PicklingError(
            f"cacheorm pickles only primitives (None, bool, int, float, str, bytes, list, "
            f"dict), not {type(obj).__qualname__}; convert it with a codec"
        )


class _PrimitiveUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global, so no payload can run code."""

    def find_class(self, module: str, name: str, /) -> Any:
        raise pickle.UnpicklingError(
            f"the pickle refers to {module}.{name}; cacheorm payloads hold primitives only, "
            "so it was refused (nothing was run)"
        )


class PickleSerializer:
    """pickle, protocol 5, restricted to primitives. Opt-in only, never a default.

    cacheorm only ever pickles primitives (the codec has already converted the
    record), so payloads hold no class references. Reading enforces that: the
    unpickler refuses every global, so a hostile pickle cannot import or call
    anything; writing refuses any value that would need one.

    With ``signing_key``, every payload carries an HMAC-SHA256 of the pickle,
    checked (in constant time) before anything is unpickled: a payload signed
    with another key, altered, truncated or unsigned is refused. The MAC proves
    the bytes were written by a holder of the key, not under which key of the
    store: a writer to the store can still swap or replay signed values.

    Args:
        signing_key: the secret HMAC key, bytes, at least 16 of them (32 random
            bytes from ``os.urandom`` or ``secrets.token_bytes`` are best).

    Raises:
        ConfigurationError: ``signing_key`` is not bytes or is shorter than 16 bytes.
    """

    #: "pickle", or "pickle-signed" with a signing key.
    name = "pickle"
    binary = True

    def __init__(self, *, signing_key: bytes | None = None) -> None:
        self._mac: hmac.HMAC | None = None
        if signing_key is not None:
            if not isinstance(signing_key, bytes):
                raise ConfigurationError(
                    f"signing_key must be bytes, not {type(signing_key).__name__} "
                    "(for example secrets.token_bytes(32))"
                )
            if len(signing_key) < _MIN_KEY_SIZE:
                raise ConfigurationError(
                    f"signing_key must be at least {_MIN_KEY_SIZE} bytes long, "
                    f"not {len(signing_key)}"
                )
            self._mac = hmac.new(signing_key, _SIGNED_HEADER, hashlib.sha256)
        #: Whether payloads are signed (and only signed ones are read).
        self.signed = self._mac is not None
        if self.signed:
            self.name = "pickle-signed"

    def __repr__(self) -> str:
        # Never show the key.
        return "PickleSerializer(signing_key=...)" if self.signed else "PickleSerializer()"

    def dumps(self, data: Any, /) -> bytes:
        """Serialize with pickle protocol 5 (signed when there is a key)."""
        buffer = io.BytesIO()
        try:
            _PrimitivePickler(buffer, protocol=5).dump(data)
        except RecursionError:
            raise ValueError("the record is nested too deeply to pickle") from None
        body = buffer.getvalue()
        if self._mac is None:
            return body
        mac = self._mac.copy()
        mac.update(body)
        return _SIGNED_HEADER + mac.digest() + body

    def loads(self, payload: bytes, /) -> Any:
        """Check the signature if there is a key, then unpickle primitives only."""
        if self._mac is None:
            if payload.startswith(_SIGNED_HEADER):
                raise ValueError(
                    "the payload is a signed pickle; read it with PickleSerializer(signing_key=...)"
                )
            return _unpickle(payload)
        if not payload.startswith(_SIGNED_HEADER):
            raise ValueError("the payload is not a signed pickle (no signature header)")
        start = len(_SIGNED_HEADER)
        body = payload[start + _MAC_SIZE :]
        mac = self._mac.copy()
        mac.update(body)
        # A payload cut inside the MAC gives a shorter slice, which never matches.
        if not hmac.compare_digest(payload[start : start + _MAC_SIZE], mac.digest()):
            raise ValueError(
                "the pickle's signature does not match: signed with another key, "
                "altered or truncated; it was not unpickled"
            )
        return _unpickle(body)


#: copyreg's extension registry and cache (private, but what pickle itself reads).
#: The unpickler serves a cached extension code without calling ``find_class``.
_EXTENSIONS: tuple[dict[Any, Any], ...] | None = (
    (copyreg._extension_registry, copyreg._extension_cache)  # type: ignore[attr-defined]
    if hasattr(copyreg, "_extension_registry") and hasattr(copyreg, "_extension_cache")
    else None
)
_EXT_OPCODES = frozenset(("EXT1", "EXT2", "EXT4"))


def _unpickle(payload: bytes) -> Any:
    """Unpickle primitives; refuse globals, extension codes and trailing bytes."""
    if _EXTENSIONS is None or any(_EXTENSIONS):
        # Extension codes are registered: they would bypass find_class, so look
        # for them first (slow, but only for programs that use copyreg extensions).
        for opcode, _, _ in pickletools.genops(payload):
            if opcode.name in _EXT_OPCODES:
                raise pickle.UnpicklingError(
                    f"the pickle uses the extension opcode {opcode.name}; cacheorm payloads "
                    "hold primitives only, so it was refused (nothing was run)"
                )
    stream = io.BytesIO(payload)
    data = _PrimitiveUnpickler(stream).load()
    if stream.tell() != len(payload):
        raise pickle.UnpicklingError(
            f"{len(payload) - stream.tell()} bytes follow the end of the pickle"
        )
    return data


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
    """A new registry holding the built-ins: json, msgpack and pickle.

    "pickle" is the unsigned :class:`PickleSerializer`: used only when asked for
    by name. Register a signed one yourself (``PickleSerializer(signing_key=...)``).
    """
    return SerializerRegistry(
        {"json": JSONSerializer, "msgpack": MsgpackSerializer, "pickle": PickleSerializer}
    )
