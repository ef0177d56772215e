"""A serializer that stores records as instances of a protobuf message class you provide.

cacheorm hands the serializer a record's primitives: a dict keyed by field name
whose values are None, bool, int, float, str, bytes, lists and nested str-keyed
dicts. :class:`ProtobufSerializer` copies that dict onto a message of your class,
field by field (matched by name), and reads it back the same way. Write the
``.proto`` to mirror the dataclass:

* every dataclass field needs a message field of the same name; a key with no
  field is an error, never silently dropped;
* an ``Optional`` (``X | None``) field must be declared proto3 ``optional`` (or
  be a message field) so that None can be told apart from the zero value; None
  for a plain scalar, repeated or map field is an error;
* ``float`` -> ``double`` (``float`` is 32-bit and would lose precision),
  ``int`` -> ``int64`` (``timedelta`` too: it travels as microseconds),
  ``bool`` -> ``bool``, ``str`` -> ``string``, ``bytes`` -> ``bytes``;
* ``datetime``, ``date``, ``UUID`` and ``Decimal`` travel as text -> ``string``;
* enums travel as their value -> ``int64``/``int32`` (or a proto ``enum``) for
  int values, ``string`` for str values;
* ``list[X]`` / ``tuple[X, ...]`` -> ``repeated X``;
* a nested dataclass -> a nested message type;
* ``dict[str, X]`` -> ``map<string, X>``.

Reading back, every field of the message appears in the dict: unset ``optional``
scalars and message fields as None, repeated fields as lists, maps as dicts,
bytes as bytes and proto enums as ints.

A protobuf message has no start, no end and no checksum: empty bytes are a valid
message (every field at its default), a message cut at a field boundary is a
valid message with fewer fields, and two messages one after the other parse as
one, the second's fields overwriting the first's. So by default every payload
ends with a *trailer*: one extra length-delimited field, number 536870911 (the
largest), holding the byte length and the CRC-32 of the message before it.
Other protobuf readers skip it as an unknown field, so the payload is still a
plain ``message_class`` message for them; cacheorm refuses a payload without a
trailer that matches (empty, cut anywhere, extended, or altered by accident).
``trailer=False`` stores bare messages (for stores that other programs write
too); then only a repeated singular field or a field number going backwards
(a second message appended) can be detected.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any, TypeGuard

from cacheorm._errors import ConfigurationError, MissingDependency

__all__ = ["ProtobufSerializer"]

# How a field is copied; decided once per field from its descriptor.
_SCALAR = 0  # plain proto3 scalar: always has a value, None is refused
_OPTIONAL_SCALAR = 1  # scalar with presence (proto3 optional, oneof member, proto2)
_MESSAGE = 2  # singular message field
_REPEATED_SCALAR = 3
_REPEATED_MESSAGE = 4
_MAP_SCALAR = 5  # map<K, scalar>
_MAP_MESSAGE = 6  # map<K, Message>

_LIST_TYPES = (list, tuple)


def _is_dict(value: object) -> TypeGuard[Mapping[Any, Any]]:
    """Whether ``value`` (the caller's data: any keys, any values) is a Mapping."""
    return isinstance(value, Mapping)


def _is_list(value: object) -> TypeGuard[list[Any] | tuple[Any, ...]]:
    """Whether ``value`` (the caller's data: any items) is a list or a tuple."""
    return isinstance(value, _LIST_TYPES)


class _Field:
    """How one field of a message is written and read."""

    __slots__ = ("kind", "name", "oneof", "plan")

    def __init__(self, name: str, kind: int, plan: _Plan | None, oneof: str | None) -> None:
        self.name = name
        self.kind = kind
        self.plan = plan  # the nested message's plan (map value's for map fields)
        self.oneof = oneof  # the containing oneof's name, if any


class _Plan:
    """The fields of one message type, by name."""

    __slots__ = ("fields", "full_name")

    def __init__(self, full_name: str) -> None:
        self.full_name = full_name
        self.fields: dict[str, _Field] = {}


def _is_repeated(field: Any) -> bool:
    is_repeated = getattr(field, "is_repeated", None)
    if is_repeated is not None:
        return bool(is_repeated)
    # protobuf < 5.29 has no is_repeated; label is deprecated where it exists.
    return bool(field.label == field.LABEL_REPEATED)


def _has_presence(field: Any) -> bool:
    has_presence = getattr(field, "has_presence", None)
    if has_presence is not None:
        return bool(has_presence)
    return field.message_type is not None or field.containing_oneof is not None


def _is_map(field: Any) -> bool:
    message_type = field.message_type
    return message_type is not None and bool(message_type.GetOptions().map_entry)


def _build_plan(descriptor: Any, plans: dict[str, _Plan]) -> _Plan:
    """The plan for ``descriptor``, building (and memoizing) nested ones; cycles are fine."""
    full_name: str = descriptor.full_name
    plan = plans.get(full_name)
    if plan is not None:
        return plan
    plan = plans[full_name] = _Plan(full_name)
    for field in descriptor.fields:
        sub: _Plan | None = None
        if _is_map(field):
            value_field = field.message_type.fields_by_name["value"]
            if value_field.message_type is not None:
                kind = _MAP_MESSAGE
                sub = _build_plan(value_field.message_type, plans)
            else:
                kind = _MAP_SCALAR
        elif field.message_type is not None:
            sub = _build_plan(field.message_type, plans)
            kind = _REPEATED_MESSAGE if _is_repeated(field) else _MESSAGE
        elif _is_repeated(field):
            kind = _REPEATED_SCALAR
        else:
            kind = _OPTIONAL_SCALAR if _has_presence(field) else _SCALAR
        oneof = field.containing_oneof
        plan.fields[field.name] = _Field(
            field.name, kind, sub, None if oneof is None else oneof.name
        )
    return plan


#: The trailer's field number: the largest protobuf allows, so it cannot clash with
#: a field a schema would plausibly use (checked when the serializer is built).
TRAILER_FIELD = 536_870_911
_TRAILER_BODY = 8  # the message's length and its CRC-32, 4 bytes each, little-endian


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


#: The trailer's tag (field number, wire type 2) and its length byte.
_TRAILER_HEAD = _varint(TRAILER_FIELD << 3 | 2) + bytes([_TRAILER_BODY])
_TRAILER_SIZE = len(_TRAILER_HEAD) + _TRAILER_BODY


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    """The varint at ``data[i]`` and the offset after it (ValueError if cut or too long)."""
    value = shift = 0
    while True:
        if i >= len(data) or shift > 63:
            raise ValueError("the message ends inside a varint")
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


def _check_top_level(data: bytes, singular: frozenset[int]) -> None:
    """Refuse a message whose top-level fields repeat a singular field or go backwards.

    The protobuf writer puts each field once, in field-number order (repeated and
    map entries next to each other), so either is the sign of a second message
    appended to the first, which protobuf itself would silently merge.
    """
    i = 0
    last = 0
    seen: set[int] = set()
    size = len(data)
    while i < size:
        tag, i = _read_varint(data, i)
        number, wire = tag >> 3, tag & 7
        if number < last or (number in seen and number in singular):
            raise ValueError(
                f"field {number} appears again after field {last}: a second message "
                "was appended to this one (protobuf would merge them)"
            )
        if number in singular:
            seen.add(number)
        last = number
        if wire == 0:
            _, i = _read_varint(data, i)
        elif wire == 1:
            i += 8
        elif wire == 2:
            length, i = _read_varint(data, i)
            i += length
        elif wire == 5:
            i += 4
        else:
            raise ValueError(f"field {number} has wire type {wire}, which cacheorm never writes")
        if i > size:
            raise ValueError(f"the message ends inside field {number}")


def _wrap(exc: Exception, where: str) -> Exception:
    """Restate protobuf's error (which rarely names the field) with the field's path."""
    cls = TypeError if isinstance(exc, TypeError) else ValueError
    return cls(f"{where}: {exc}")


class ProtobufSerializer:
    """Protocol Buffers, with records stored as ``message_class`` (needs the ``protobuf`` extra).

    Args:
        message_class: the generated message class records are stored as; its
            fields must mirror the model's (see the module docstring).
        trailer: end every payload with the length-and-CRC-32 trailer field
            and refuse payloads without a matching one (the default). False
            stores and reads bare messages, which cannot be told apart from an
            empty or cut payload.

    Raises:
        MissingDependency: protobuf is not installed.
        TypeError: ``message_class`` is not a protobuf message class.
        ConfigurationError: ``trailer`` is not a bool, or the message uses the
            trailer's field number.
    """

    name = "protobuf"
    binary = True

    def __init__(self, message_class: type[Any], *, trailer: bool = True) -> None:
        try:
            from google.protobuf.message import Message
        except ImportError:
            raise MissingDependency("the protobuf serializer", "protobuf") from None
        descriptor = getattr(message_class, "DESCRIPTOR", None)
        if (
            not isinstance(message_class, type)
            or not issubclass(message_class, Message)
            or descriptor is None
        ):
            raise TypeError(
                f"ProtobufSerializer needs a protobuf message class (one with a DESCRIPTOR), "
                f"not {message_class!r}"
            )
        if not isinstance(trailer, bool):
            raise ConfigurationError(f"trailer must be a bool, not {trailer!r}")
        if trailer and TRAILER_FIELD in descriptor.fields_by_number:
            raise ConfigurationError(
                f"{descriptor.full_name} uses field number {TRAILER_FIELD}, which the "
                "ProtobufSerializer trailer needs; pass trailer=False or renumber the field"
            )
        self.message_class = message_class
        self.full_name: str = descriptor.full_name
        #: Whether payloads end with the length-and-checksum trailer field.
        self.trailer = trailer
        self._plan = _build_plan(descriptor, {})
        self._singular = frozenset(
            field.number for field in descriptor.fields if not _is_repeated(field)
        )

    def __repr__(self) -> str:
        if self.trailer:
            return f"ProtobufSerializer({self.full_name})"
        return f"ProtobufSerializer({self.full_name}, trailer=False)"

    def dumps(self, data: Any, /) -> bytes:
        """Copy the primitives dict onto a new message and serialize it.

        Raises:
            ValueError: a key names no field, or None is given to a field without presence.
            TypeError: a value of the wrong type (protobuf's own checks).
        """
        if not _is_dict(data):
            raise TypeError(
                f"ProtobufSerializer({self.full_name}) needs a dict, not {type(data).__name__}"
            )
        message = self.message_class()
        _fill(message, data, self._plan, "$")
        body: bytes = message.SerializeToString()
        if not self.trailer:
            return body
        check = len(body).to_bytes(4, "little") + zlib.crc32(body).to_bytes(4, "little")
        return body + _TRAILER_HEAD + check

    def loads(self, payload: bytes, /) -> Any:
        """Check the trailer (or the field order), parse, and return every field as primitives.

        Raises:
            ValueError: no matching trailer (empty, cut, extended or altered), or,
                without a trailer, a second message appended.
            google.protobuf.message.DecodeError: the payload is not a valid message.
        """
        if self.trailer:
            body = payload[:-_TRAILER_SIZE]
            tail = payload[-_TRAILER_SIZE:]
            if len(payload) < _TRAILER_SIZE or not tail.startswith(_TRAILER_HEAD):
                raise ValueError(
                    "the payload does not end with the cacheorm trailer: it is empty, cut "
                    "short, extended, or was written without one (trailer=False)"
                )
            length = int.from_bytes(tail[-8:-4], "little")
            if length != len(body):
                raise ValueError(
                    f"the trailer counts {length} bytes of message, but {len(body)} come "
                    "before it: bytes were cut or added"
                )
            if zlib.crc32(body) != int.from_bytes(tail[-4:], "little"):
                raise ValueError("the message does not match its CRC-32: it was altered")
        else:
            body = payload
            _check_top_level(body, self._singular)
        return _to_dict(self.message_class.FromString(body), self._plan)


def _fill(message: Any, data: Mapping[Any, Any], plan: _Plan, path: str) -> None:
    """Copy ``data`` onto ``message`` (a fresh or empty one) following ``plan``."""
    fields = plan.fields
    oneofs_set: dict[str, str] | None = None
    for key, value in data.items():
        field = fields.get(key)
        if field is None:
            raise ValueError(
                f"{path}: {key!r} is not a field of the protobuf message {plan.full_name}"
            )
        kind = field.kind
        if value is None:
            if kind in (_OPTIONAL_SCALAR, _MESSAGE):
                continue
            if kind == _SCALAR:
                reason = "the field must be declared `optional` in the .proto to store None"
            else:
                reason = (
                    "repeated and map fields cannot store None; only `optional` scalar "
                    "fields and message fields can"
                )
            raise ValueError(
                f"{path}.{key}: None cannot be stored in {plan.full_name}.{key}; {reason}"
            )
        if field.oneof is not None:
            if oneofs_set is None:
                oneofs_set = {}
            other = oneofs_set.setdefault(field.oneof, key)
            if other != key:
                raise ValueError(
                    f"{path}.{key}: {key!r} and {other!r} are both set but belong to the same "
                    f"oneof {field.oneof!r} of {plan.full_name}; only one may hold a value"
                )
        if kind in (_SCALAR, _OPTIONAL_SCALAR):
            try:
                setattr(message, key, value)
            except (TypeError, ValueError) as exc:
                raise _wrap(exc, f"{path}.{key}") from exc
            continue
        where = f"{path}.{key}"
        if kind == _MESSAGE:
            if not _is_dict(value):
                raise TypeError(f"{where}: expected a dict, not {type(value).__name__}")
            sub = getattr(message, key)
            sub.SetInParent()
            assert field.plan is not None
            _fill(sub, value, field.plan, where)
        elif kind == _REPEATED_SCALAR:
            if not _is_list(value):
                raise TypeError(f"{where}: expected a list, not {type(value).__name__}")
            try:
                getattr(message, key).extend(value)
            except (TypeError, ValueError) as exc:
                raise _wrap(exc, where) from exc
        elif kind == _REPEATED_MESSAGE:
            if not _is_list(value):
                raise TypeError(f"{where}: expected a list, not {type(value).__name__}")
            container = getattr(message, key)
            assert field.plan is not None
            for index, item in enumerate(value):
                item_where = f"{where}[{index}]"
                if not _is_dict(item):
                    raise TypeError(f"{item_where}: expected a dict, not {type(item).__name__}")
                _fill(container.add(), item, field.plan, item_where)
        elif kind == _MAP_SCALAR:
            if not _is_dict(value):
                raise TypeError(f"{where}: expected a dict, not {type(value).__name__}")
            try:
                getattr(message, key).update(value)
            except (TypeError, ValueError) as exc:
                raise _wrap(exc, where) from exc
        else:  # _MAP_MESSAGE
            if not _is_dict(value):
                raise TypeError(f"{where}: expected a dict, not {type(value).__name__}")
            container = getattr(message, key)
            assert field.plan is not None
            for map_key, item in value.items():
                item_where = f"{where}[{map_key!r}]"
                if not _is_dict(item):
                    raise TypeError(f"{item_where}: expected a dict, not {type(item).__name__}")
                try:
                    entry = container[map_key]
                except (TypeError, ValueError) as exc:
                    raise _wrap(exc, item_where) from exc
                _fill(entry, item, field.plan, item_where)


def _to_dict(message: Any, plan: _Plan) -> dict[str, Any]:
    """Every field of ``message`` as primitives, following ``plan``."""
    result: dict[str, Any] = {}
    for name, field in plan.fields.items():
        kind = field.kind
        if kind == _SCALAR:
            result[name] = getattr(message, name)
        elif kind == _OPTIONAL_SCALAR:
            result[name] = getattr(message, name) if message.HasField(name) else None
        elif kind == _MESSAGE:
            assert field.plan is not None
            result[name] = (
                _to_dict(getattr(message, name), field.plan) if message.HasField(name) else None
            )
        elif kind == _REPEATED_SCALAR:
            result[name] = list(getattr(message, name))
        elif kind == _REPEATED_MESSAGE:
            sub_plan = field.plan
            assert sub_plan is not None
            result[name] = [_to_dict(item, sub_plan) for item in getattr(message, name)]
        elif kind == _MAP_SCALAR:
            result[name] = dict(getattr(message, name))
        else:  # _MAP_MESSAGE
            sub_plan = field.plan
            assert sub_plan is not None
            result[name] = {
                key: _to_dict(item, sub_plan) for key, item in getattr(message, name).items()
            }
    return result
