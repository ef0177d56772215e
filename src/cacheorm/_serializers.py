"""Serializers (primitives <-> bytes) and the named registry.

A serializer turns the primitives a model's codec produces (None, bool, int,
float, str, list, str-keyed dict, and bytes when ``binary`` is true) into
bytes and back. It knows nothing of models.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import math
import pickle
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol, cast, runtime_checkable

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
                where = _locate(data, lambda v: type(v) is float and not math.isfinite(v))
                raise ValueError(
                    f"{where}NaN and Infinity are not valid strict JSON "
                    "(this serializer was made with allow_nan=False)"
                ) from None
            where = _locate(data, lambda v: type(v) is int and _too_long_for_str(v))
            if where:
                raise ValueError(f"{where}{exc}") from None
            raise

    def loads(self, payload: bytes, /) -> Any:
        """Parse UTF-8 JSON."""
        try:
            return self._decode(payload.decode("utf-8"))
        except RecursionError:
            raise ValueError("the JSON text is nested too deeply to read") from None


def _locate(data: Any, bad: Callable[[Any], bool]) -> str:
    """``"at `$.path`: "`` for the first value in ``data`` that is ``bad`` (or "")."""
    todo: list[tuple[Any, str]] = [(data, "$")]
    seen: set[int] = set()  # a cycle (JSON's "Circular reference") must not loop forever
    while todo:
        value, path = todo.pop()
        if bad(value):
            return f"at `{path}`: "
        if not isinstance(value, (dict, list, tuple)):
            continue
        # The caller's data: keys and items may be anything.
        node = cast("dict[object, object] | list[object] | tuple[object, ...]", value)
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, dict):
            todo.extend(
                (v, f"{path}.{k}" if path == "$" else f"{path}[{k!r}]")
                for k, v in reversed(list(node.items()))
            )
        else:
            todo.extend((v, f"{path}[{i}]") for i, v in reversed(list(enumerate(node))))
    return ""


def _too_long_for_str(value: int) -> bool:
    try:
        str(value)
    except ValueError:
        return True
    return False


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
            where = _locate(data, lambda v: type(v) is int and not -(2**63) <= v < 2**64)
            raise ValueError(
                f"{where}an int is outside the range msgpack carries (-2**63 to 2**64 - 1)"
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

    def find_class(self, module: str, name: str, /) -> Any:  # pragma: no cover - scanned first
        # Defence in depth: _scan_pickle refuses every global before this runs.
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
        pickler = _PrimitivePickler(buffer, protocol=5)
        # No memo: an object met twice is written twice, so every payload is a
        # tree and reads pass the check against shared references.
        pickler.fast = True
        try:
            pickler.dump(data)
        except RecursionError:
            raise ValueError("the record is nested too deeply to pickle") from None
        body = buffer.getvalue()
        if b"\x8f" in body or b"\x91" in body or b"\x96" in body:
            # Maybe a set, frozenset or bytearray (or just such a byte in some text):
            # the reader refuses those, so refuse them now rather than store them.
            try:
                _scan_pickle(body)
            except _Refused as exc:
                raise ValueError(f"pickle cannot store this value for cacheorm: {exc}") from None
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


# What the pre-scan does with each opcode byte (pickletools has the names). Any
# opcode not listed (globals, REDUCE, BUILD, persistent ids, extension codes,
# sets, bytearray, DUP, POP, out-of-band buffers) is refused before the C
# unpickler runs.
_REFUSE = 0
_TEXT_SHORT = 1  # a str with a 1-byte length
_FIXED = 2  # a non-str leaf with a fixed-size argument (_WIDTH)
_MARK = 3
_APPENDS = 4
_SETITEMS = 5
_EMPTY_LIST = 6
_EMPTY_DICT = 7
_APPEND = 8
_SETITEM = 9
_MEMOIZE = 10
_BINPUT = 11
_BINGET = 12
_COUNTED = 13  # a leaf with a length of _WIDTH bytes, then that many bytes
_LINE = 14  # a leaf whose argument is a text line (protocol 0)
_TUPLE_N = 15  # TUPLE1..3 and EMPTY_TUPLE (_WIDTH items)
_FROM_MARK = 16  # LIST, DICT, TUPLE: a new container of the items after a MARK
_SKIP = 17  # PROTO, FRAME: _WIDTH argument bytes, nothing on the stack
_STOP = 18
_LONG_BINPUT = 19
_LONG_BINGET = 20
_PUT = 21
_GET = 22

#: At most this many MARKs open at once (each nesting level of a multi-item
#: container opens one), and this many stack entries above the innermost one.
PICKLE_MAX_DEPTH = 1000
_MAX_RUN = 2000

_ACTIONS = [_REFUSE] * 256
_WIDTH = [0] * 256
#: Stack entries are kinds: what a memo reference may fetch, what a map key may be.
_LEAF, _STR, _LIST, _DICT = 0, 1, 2, 3
_KIND = [_LEAF] * 256


def _op(code: int | str, action: int, width: int = 0, kind: int = _LEAF) -> None:
    byte = code if isinstance(code, int) else ord(code)
    _ACTIONS[byte], _WIDTH[byte], _KIND[byte] = action, width, kind


for _code, _width in (("N", 0), (0x88, 0), (0x89, 0), ("J", 4), ("K", 1), ("M", 2), ("G", 8)):
    _op(_code, _FIXED, _width)  # NONE, NEWTRUE, NEWFALSE, BININT*, BINFLOAT
_op(0x8C, _TEXT_SHORT, 1, _STR)  # SHORT_BINUNICODE
_op("U", _COUNTED, 1, _STR)  # SHORT_BINSTRING (read as str)
for _code, _width, _kind in (
    ("X", 4, _STR),  # BINUNICODE
    (0x8D, 8, _STR),  # BINUNICODE8
    ("T", 4, _STR),  # BINSTRING
    ("C", 1, _LEAF),  # SHORT_BINBYTES
    ("B", 4, _LEAF),  # BINBYTES
    (0x8E, 8, _LEAF),  # BINBYTES8
    (0x8A, 1, _LEAF),  # LONG1
    (0x8B, 4, _LEAF),  # LONG4
):
    _op(_code, _COUNTED, _width, _kind)
for _code, _kind in (("I", _LEAF), ("L", _LEAF), ("F", _LEAF), ("S", _STR), ("V", _STR)):
    _op(_code, _LINE, 0, _kind)  # INT, LONG, FLOAT, STRING, UNICODE
for _code, _width in ((")", 0), (0x85, 1), (0x86, 2), (0x87, 3)):
    _op(_code, _TUPLE_N, _width, _LIST)  # EMPTY_TUPLE, TUPLE1..3
_op("l", _FROM_MARK, 0, _LIST)
_op("t", _FROM_MARK, 0, _LIST)
_op("d", _FROM_MARK, 0, _DICT)
_op("(", _MARK)
_op("e", _APPENDS, 0, _LIST)
_op("u", _SETITEMS, 0, _DICT)
_op("]", _EMPTY_LIST)
_op("}", _EMPTY_DICT)
_op("a", _APPEND, 0, _LIST)
_op("s", _SETITEM, 0, _DICT)
_op(0x94, _MEMOIZE)
_op("q", _BINPUT)
_op("r", _LONG_BINPUT)
_op("p", _PUT)
_op("h", _BINGET)
_op("j", _LONG_BINGET)
_op("g", _GET)
_op(0x80, _SKIP, 1)  # PROTO
_op(0x95, _SKIP, 8)  # FRAME
_op(".", _STOP)

_REFUSED_NAMES = {
    0x93: "refers to a global (STACK_GLOBAL)",
    ord("R"): "refers to a call (REDUCE)",
    ord("b"): "refers to an object state (BUILD)",
    ord("i"): "refers to a class (INST)",
    ord("o"): "refers to a class (OBJ)",
    0x81: "refers to a class (NEWOBJ)",
    0x92: "refers to a class (NEWOBJ_EX)",
    0x82: "uses the extension opcode EXT1",
    0x83: "uses the extension opcode EXT2",
    0x84: "uses the extension opcode EXT4",
    ord("P"): "refers to a persistent id (PERSID)",
    ord("Q"): "refers to a persistent id (BINPERSID)",
    0x8F: "holds a set",
    0x90: "holds a set",
    0x91: "holds a frozenset",
    0x96: "holds a bytearray",
}


class _Refused(pickle.UnpicklingError):
    """The pre-scan found something cacheorm never writes."""


def _line_index(payload: bytes, start: int) -> tuple[int, int]:
    """The decimal memo index on the text line at ``start``, and the offset after it."""
    end = payload.find(b"\n", start)
    text = payload[start:end] if end > 0 else b""
    return (int(text) if text.isdigit() else -1), end + 1


def _scan_pickle(payload: bytes) -> None:
    """Check, without building anything, that ``payload`` holds cacheorm primitives only.

    Accepts None, bool, int, float, str, bytes, lists, tuples and str-keyed dicts,
    each object in one place. A memo reference (GET) may fetch a str, bytes or
    number but never a container: sharing containers is how a few hundred bytes
    expand into millions of decoded objects (or a list holds itself), and how a
    tuple's hash is made to take 2**n steps. Map keys must be str (ints that all
    hash alike would make building a dict quadratic). Memo slots must be numbered
    in order (the C unpickler sizes its memo table by the largest index it sees).
    So the C unpickler that runs next does work and allocates memory in
    proportion to the payload's size. Nesting is bounded (``PICKLE_MAX_DEPTH``
    open MARKs, 2,000 entries above the innermost one); ``Any`` values are
    bounded again, to 100 levels, by the codec.

    Raises:
        pickle.UnpicklingError: the first thing refused, described.
    """
    size = len(payload)
    actions = _ACTIONS
    kinds = _KIND
    stack: list[int] = []
    push = stack.append
    marks: list[int] = []
    memo: list[int] = []  # the kind of each memo slot
    i = 0
    while i < size:
        op = payload[i]
        action = actions[op]
        if action == _TEXT_SHORT:
            i += 2 + payload[i + 1] if i + 1 < size else 2
            push(_STR)
        elif action == _FIXED:
            i += 1 + _WIDTH[op]
            push(_LEAF)
        elif action == _MARK:
            i += 1
            marks.append(len(stack))
            if len(marks) > PICKLE_MAX_DEPTH:
                raise _Refused(f"the pickle nests containers deeper than {PICKLE_MAX_DEPTH}")
        elif action in (_APPENDS, _SETITEMS):
            i += 1
            if not marks:
                raise _Refused("the pickle closes a MARK it never opened")
            start = marks.pop()
            if start == 0 or stack[start - 1] != kinds[op]:
                raise _Refused("the pickle adds items to something that is not a container")
            if action == _SETITEMS:
                keys = stack[start::2]
                if (len(stack) - start) % 2 or keys.count(_STR) != len(keys):
                    raise _Refused("a map key in the pickle is not a str")
            del stack[start:]
        elif action in (_EMPTY_LIST, _EMPTY_DICT):
            i += 1
            push(_LIST if action == _EMPTY_LIST else _DICT)
            # pickle puts at most 1,000 items after a MARK; more open containers
            # above it means nesting by single APPENDs, the way deep bombs are made.
            if len(stack) - (marks[-1] if marks else 0) > _MAX_RUN:
                raise _Refused(f"the pickle nests containers deeper than {PICKLE_MAX_DEPTH}")
        elif action == _COUNTED:
            width = _WIDTH[op]
            i += 1 + width + int.from_bytes(payload[i + 1 : i + 1 + width], "little")
            push(kinds[op])
        elif action in (_MEMOIZE, _BINPUT, _LONG_BINPUT, _PUT):
            if action == _MEMOIZE:
                index = len(memo)
                i += 1
            elif action == _BINPUT:
                index = payload[i + 1] if i + 1 < size else -1
                i += 2
            elif action == _LONG_BINPUT:
                index = int.from_bytes(payload[i + 1 : i + 5], "little")
                i += 5
            else:
                index, i = _line_index(payload, i + 1)
            if not stack or not 0 <= index <= len(memo):
                raise _Refused("the pickle fills memo slots out of order (0, 1, 2, ...)")
            if index == len(memo):
                memo.append(stack[-1])
            else:
                memo[index] = stack[-1]
        elif action in (_BINGET, _LONG_BINGET, _GET):
            if action == _BINGET:
                index = payload[i + 1] if i + 1 < size else -1
                i += 2
            elif action == _LONG_BINGET:
                index = int.from_bytes(payload[i + 1 : i + 5], "little")
                i += 5
            else:
                index, i = _line_index(payload, i + 1)
            if not 0 <= index < len(memo):
                raise _Refused("the pickle refers to a memo slot it never filled")
            kind = memo[index]
            if kind >= _LIST:
                raise _Refused(
                    "the pickle refers to one container from two places; cacheorm never "
                    "writes shared references, which can expand without bound"
                )
            push(kind)
        elif action in (_APPEND, _SETITEM):
            i += 1
            count = 1 if action == _APPEND else 2
            floor = marks[-1] if marks else 0
            if len(stack) - count - 1 < floor or stack[-count - 1] != kinds[op]:
                raise _Refused("the pickle adds items to something that is not a container")
            if count == 2 and stack[-2] != _STR:
                raise _Refused("a map key in the pickle is not a str")
            del stack[-count:]
        elif action in (_TUPLE_N, _FROM_MARK):
            i += 1
            if action == _FROM_MARK:
                if not marks:
                    raise _Refused("the pickle closes a MARK it never opened")
                start = marks.pop()
                if op == ord("d"):
                    keys = stack[start::2]
                    if (len(stack) - start) % 2 or keys.count(_STR) != len(keys):
                        raise _Refused("a map key in the pickle is not a str")
            else:
                start = len(stack) - _WIDTH[op]
                if start < (marks[-1] if marks else 0):
                    raise _Refused("the pickle's stack is too short for a tuple")
            del stack[start:]
            push(kinds[op])
        elif action == _LINE:
            end = payload.find(b"\n", i + 1)
            if end < 0:
                raise _Refused("the pickle ends inside a text argument")
            i = end + 1
            push(kinds[op])
        elif action == _SKIP:
            i += 1 + _WIDTH[op]
        elif action == _STOP:
            if i + 1 != size:
                raise _Refused(f"{size - i - 1} bytes follow the end of the pickle")
            if len(stack) != 1 or marks:
                raise _Refused("the pickle does not hold exactly one value")
            return
        else:
            if op == 0x63:  # GLOBAL: module and name on two text lines
                names = payload[i + 1 :].split(b"\n", 2)[:2]
                what = "refers to " + ".".join(n.decode("ascii", "replace") for n in names)
            else:
                what = _REFUSED_NAMES.get(op, f"holds the opcode {bytes([op])!r}")
            raise _Refused(
                f"the pickle {what}; cacheorm payloads hold None, bool, int, float, str, "
                "bytes, lists, tuples and str-keyed dicts only, so it was refused "
                "(nothing was run)"
            )
    raise _Refused("the pickle ends without a STOP opcode")


def _unpickle(payload: bytes) -> Any:
    """Unpickle primitives after checking their shape; refuse globals and trailing bytes."""
    _scan_pickle(payload)
    stream = io.BytesIO(payload)
    data = _PrimitiveUnpickler(stream).load()
    if stream.tell() != len(payload):  # pragma: no cover - the scan found STOP at the end
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
        self, serializers: Mapping[str, Serializer | SerializerFactory] | None = None
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
