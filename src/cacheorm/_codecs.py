"""Conversion of one annotated type to and from serializer-native primitives.

Each supported annotation becomes a *node*. A node does no work itself: it
writes Python source for the conversion, which ``_schema`` compiles into one
straight-line function per model, so encoding and decoding a record does no
type dispatch at run time.

Every node writes code in two modes from the same method:

* fast mode, used on every call, raises the bare ``_F`` on a mismatch;
* explain mode, run only after the fast code failed, tracks the path into the
  record (``$.phones[1].number``) and raises :class:`Failure` naming it, the
  expected type and the value found.

Primitives are what JSON carries (None, bool, int, float, str, list, dict with
str keys) plus ``bytes`` when the serializer is *binary* (msgpack, pickle,
protobuf); for JSON, bytes travel as base64 text.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as _dt
import decimal
import enum
import re
import uuid
from collections import abc
from collections.abc import Callable, Generator
from contextlib import contextmanager
from typing import Any, Literal, Protocol, TypeVar, cast, runtime_checkable

from cacheorm._errors import safe_repr

__all__ = ["Codec", "Failure", "Timestamp"]

T = TypeVar("T")


@runtime_checkable
class Codec(Protocol[T]):
    """Converts one field's values to and from serializer primitives.

    ``encode`` returns something the serializer can carry (None, bool, int,
    float, str, bytes, lists and str-keyed dicts of those); ``decode`` gets that
    back. Raise ``TypeError`` or ``ValueError`` for a value you cannot convert:
    cacheorm reports it as a ``ValidationError`` (on write) or a
    ``DeserializationError`` (on read) naming the field.
    """

    def encode(self, value: T, /) -> Any:
        """Convert a field value to a primitive."""
        ...

    def decode(self, data: Any, /) -> T:
        """Convert a primitive back to a field value."""
        ...


_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
_ONE_US = _dt.timedelta(microseconds=1)
_RESOLUTIONS = {"s": 1_000_000, "ms": 1_000, "us": 1}


class Timestamp:
    """Store an aware ``datetime`` as an integer count of units since the Unix epoch.

    Args:
        resolution: ``"s"``, ``"ms"``, ``"us"`` or ``"ns"``. Finer parts of the
            value are truncated on write (toward the past).
        tz: the time zone of decoded values (UTC by default).

    Naive datetimes are rejected: their epoch time depends on the machine's zone.
    """

    __slots__ = ("_tz", "resolution")

    def __init__(
        self,
        resolution: Literal["s", "ms", "us", "ns"] = "ms",
        *,
        tz: _dt.tzinfo = _dt.timezone.utc,
    ) -> None:
        if resolution not in ("s", "ms", "us", "ns"):
            raise ValueError(
                f"Timestamp resolution must be 's', 'ms', 'us' or 'ns', not {resolution!r}"
            )
        self.resolution = resolution
        self._tz = tz

    def __repr__(self) -> str:
        return f"Timestamp({self.resolution!r})"

    def encode(self, value: _dt.datetime, /) -> int:
        """Return the epoch count of ``value`` in this resolution."""
        if not isinstance(value, _dt.datetime):
            raise TypeError(f"expected datetime, got {type(value).__name__}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("Timestamp needs an aware datetime (naive times have no epoch)")
        micros = (value - _EPOCH) // _ONE_US
        if self.resolution == "ns":
            return micros * 1000
        return micros // _RESOLUTIONS[self.resolution]

    def decode(self, data: Any, /) -> _dt.datetime:
        """Return the aware datetime for an epoch count."""
        if type(data) is not int:
            raise TypeError(f"expected an integer timestamp, got {type(data).__name__}")
        micros = data // 1000 if self.resolution == "ns" else data * _RESOLUTIONS[self.resolution]
        return (_EPOCH + _dt.timedelta(microseconds=micros)).astimezone(self._tz)


class Failure(Exception):
    """Raised by explain-mode code: where a value failed, and why."""

    def __init__(
        self, path: str, expected: str, value: Any, cause: BaseException | None = None
    ) -> None:
        super().__init__(path)
        self.path = path
        self.expected = expected
        self.value = value
        self.cause = cause

    @property
    def actual(self) -> str:
        """The type name of the value that failed, or ``missing``."""
        return "missing" if self.value is MISSING else type(self.value).__name__

    def describe(self) -> str:
        """One line: path, expected and actual (and the converter's complaint)."""
        text = f"at `{self.path}`: expected {self.expected}, got {self.actual}"
        if self.value is not MISSING and self.cause is None:
            text += f" {safe_repr(self.value, 60)}"
        if self.cause is not None and str(self.cause):
            text += f" ({self.cause})"
        return text


class _Fast(Exception):
    """The fast code's signal that something did not fit; carries nothing."""


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()


# --- helpers the generated code calls on its slow branches -----------------------


#: Finds a UTF-16 surrogate code point: valid in a Python str, but UTF-8 (and so
#: JSON, msgpack and protobuf text) cannot carry one.
_find_surrogate = re.compile("[\ud800-\udfff]").search


def _surrogate_error(v: str) -> ValueError:
    found = _find_surrogate(v)
    assert found is not None
    return ValueError(
        f"the text holds a lone surrogate {found.group()!a} at index {found.start()}, "
        "which is not valid Unicode and cannot be stored as UTF-8"
    )


def _to_str(v: Any) -> str:
    """``v`` as a plain str without lone surrogates (called when not exact ASCII str)."""
    if type(v) is not str:
        if not isinstance(v, str):
            raise _Fast
        v = str.__str__(v)
    text: str = v
    if not text.isascii() and _find_surrogate(text) is not None:
        raise _surrogate_error(text)
    return text


def _str_in(v: Any) -> str:
    """A stored ``v`` as text: exactly a str, without lone surrogates."""
    if type(v) is not str:
        raise _Fast
    return _to_str(v)


def _to_int(v: Any) -> int:
    # bool is not an int here: True in an int field is almost always a bug.
    if isinstance(v, int) and not isinstance(v, bool):
        return int.__index__(v)
    raise _Fast


def _to_float(v: Any) -> float:
    if isinstance(v, float):
        return float(v)
    if isinstance(v, int) and not isinstance(v, bool):
        f = float(v)
        # Only exact conversions: float(2**53 + 1) would silently store 2**53.
        if f != v:
            raise ValueError(f"the int {v} has no exact float value")
        return f
    raise _Fast


def _to_bytes(v: Any) -> bytes:
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v)  # pyright: ignore[reportUnknownArgumentType]  # hot: no cast()
    raise _Fast


def _to_list(v: Any) -> list[Any]:
    if isinstance(v, list):
        return list(v)  # pyright: ignore[reportUnknownArgumentType]  # hot: no cast()
    raise _Fast


def _to_dict(v: Any) -> dict[Any, Any]:
    if isinstance(v, dict):
        return dict(v)  # pyright: ignore[reportUnknownArgumentType]  # hot: no cast()
    raise _Fast


def _b64e(v: bytes) -> str:
    return base64.b64encode(v).decode("ascii")


def _b64d(v: Any) -> bytes:
    if type(v) is not str:
        raise _Fast
    try:
        return base64.b64decode(v.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError("not base64 text") from exc


def _instance(v: Any, cls: type) -> Any:
    if isinstance(v, cls):
        return v
    raise _Fast


def _date_only(v: Any) -> _dt.date:
    if isinstance(v, _dt.date) and not isinstance(v, _dt.datetime):
        return v
    raise _Fast


def _timedelta_from(v: Any) -> _dt.timedelta:
    if type(v) is not int:
        raise _Fast
    return _dt.timedelta(microseconds=v)


def _parse(cls: Any) -> Callable[[Any], Any]:
    def parse(v: Any) -> Any:
        if type(v) is not str:
            raise _Fast
        return cls(v)

    return parse


def _literal_ok(allowed: frozenset[tuple[type, Any]], v: Any) -> Any:
    try:
        ok = (type(v), v) in allowed
    except TypeError:
        ok = False
    if not ok:
        raise _Fast
    return v


#: How deep an ``Any`` value may nest (a list in a list is 2). Deeper values, and
#: values that contain themselves, are refused both ways: they cost the readers'
#: recursion, and the parsers' own limits (msgpack writes 511, orjson 255) differ.
ANY_MAX_DEPTH = 100

_ANY_LEAVES = frozenset({type(None), bool, int, float})
_ANY_DATA = "None, bool, int, float, str, list or str-keyed dict"


def _any_ok(v: Any, binary: bool, depth: int) -> bool:
    """True if ``v`` reads back equal on every serializer (the fast check)."""
    t = type(v)  # pyright: ignore[reportUnknownVariableType]  # hot: no cast()
    if t in _ANY_LEAVES:
        return True
    if t is str:
        return v.isascii() or _find_surrogate(v) is None
    if t is bytes:
        return binary
    if depth >= ANY_MAX_DEPTH:
        return False
    if t is list:
        for x in v:  # noqa: SIM110 - a loop is faster than all() over a generator
            if not _any_ok(x, binary, depth + 1):
                return False
        return True
    if t is dict:
        for k, x in v.items():
            if type(k) is not str or not (k.isascii() or _find_surrogate(k) is None):
                return False
            if not _any_ok(x, binary, depth + 1):
                return False
        return True
    return False


def _any_check_binary(v: Any) -> None:
    if type(v) not in _ANY_LEAVES and not _any_ok(v, True, 0):
        raise _Fast


def _any_check_text(v: Any) -> None:
    if type(v) not in _ANY_LEAVES and not _any_ok(v, False, 0):
        raise _Fast


def _any_refusal(v: Any, binary: bool) -> str | None:
    """Why a leaf (or a container's own type) cannot be an ``Any`` value; None if it can."""
    t: type[object] = type(cast(object, v))
    if t in _ANY_LEAVES or t is list or t is dict:
        return None
    if t is str:
        return None if v.isascii() or _find_surrogate(v) is None else str(_surrogate_error(v))
    if t is bytes:
        if binary:
            return None
        return (
            "bytes in an Any field need a binary serializer (msgpack, pickle); JSON "
            "would read them back as text: annotate the field `bytes` to store base64"
        )
    if isinstance(v, (tuple, set, frozenset)):
        return (
            f"a {t.__name__} would read back as a list: store a list, or annotate the "
            f"field ({t.__name__}[...]) so it is converted both ways"
        )
    for base in (bool, int, float, str, bytes, list, dict):
        if isinstance(v, base):
            return (
                f"{t.__qualname__} is a subclass of {base.__name__} and would read back "
                f"as a plain {base.__name__}: convert it, or annotate the field with its type"
            )
    return f"an Any field holds {_ANY_DATA} only: annotate the field with its type or use a codec"


def _any_explain(v: Any, binary: bool, path: str, depth: int = 0) -> None:
    """Raise a Failure at the first part of ``v`` that ``_any_ok`` refuses."""
    expected = f"{_ANY_DATA}{', bytes' if binary else ''}"
    reason = _any_refusal(v, binary)
    if reason is not None:
        raise Failure(path, expected, v, ValueError(reason))
    if type(v) not in (list, dict):
        return
    if depth >= ANY_MAX_DEPTH:
        raise Failure(
            path,
            expected,
            v,
            ValueError(
                f"the value is nested deeper than {ANY_MAX_DEPTH} levels (or contains itself)"
            ),
        )
    if type(v) is list:
        for i, x in enumerate(cast("list[object]", v)):
            _any_explain(x, binary, f"{path}[{i}]", depth + 1)
        return
    for k, x in v.items():
        where = f"{path}[{safe_repr(k, 40)}]"
        if type(k) is not str:
            raise Failure(
                where,
                "a str map key",
                k,
                ValueError(
                    "map keys in an Any field must be str: JSON and msgpack maps here carry "
                    f"text keys only, so {type(k).__name__} keys would not read back"
                ),
            )
        if not (k.isascii() or _find_surrogate(k) is None):
            raise Failure(where, "a str map key", k, _surrogate_error(k))
        _any_explain(x, binary, where, depth + 1)


def _model_in(v: Any, cls: type, allow_subclasses: bool) -> Any:
    """``v`` if it may be stored as ``cls`` (called when ``type(v) is not cls``)."""
    if not isinstance(v, cls):
        raise _Fast
    if allow_subclasses:
        return v
    extra = [f.name for f in _dataclass_fields(v) if f.name not in _field_names(cls)]
    lost = f"drop its fields {', '.join(extra)} and " if extra else ""
    raise ValueError(
        f"{type(v).__qualname__} is a subclass of {cls.__qualname__}: storing it would "
        f"{lost}read back a {cls.__qualname__}; pass allow_subclasses=True to the "
        f"Repository to store the {cls.__qualname__} fields only"
    )


def _dataclass_fields(v: Any) -> tuple[Any, ...]:
    return dataclasses.fields(v) if dataclasses.is_dataclass(v) else ()


def _field_names(cls: type) -> set[str]:
    return {f.name for f in _dataclass_fields(cls)}


BASE_NAMESPACE: dict[str, Any] = {
    "_F": _Fast,
    "_Fail": Failure,
    "_M": MISSING,
    "_to_str": _to_str,
    "_str_in": _str_in,
    "_to_int": _to_int,
    "_to_float": _to_float,
    "_to_bytes": _to_bytes,
    "_to_list": _to_list,
    "_to_dict": _to_dict,
    "_b64e": _b64e,
    "_b64d": _b64d,
    "_instance": _instance,
    "_date_only": _date_only,
    "_td_from": _timedelta_from,
    "_literal_ok": _literal_ok,
    "_any_b": _any_check_binary,
    "_any_t": _any_check_text,
    "_any_x": _any_explain,
    "_model_in": _model_in,
    "_US": _ONE_US,
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "bytes": bytes,
    "list": list,
    "dict": dict,
    "tuple": tuple,
    "set": set,
    "frozenset": frozenset,
    "type": type,
    "isinstance": isinstance,
    "enumerate": enumerate,
    "len": len,
    "repr": repr,
    "Exception": Exception,
}


# --- the code writer -------------------------------------------------------------


class Gen:
    """Writes the body of one generated function.

    Args:
        ns: the namespace shared by every function of one model.
        explain: write explain-mode code (path tracking, ``Failure``).
        binary: the serializer carries bytes natively.
    """

    def __init__(self, ns: dict[str, Any], *, explain: bool, binary: bool) -> None:
        self.ns = ns
        self.explain = explain
        self.binary = binary
        self.lines: list[str] = []
        self._indent = 1
        self._count = 0

    def var(self, prefix: str = "v") -> str:
        """A fresh local name."""
        self._count += 1
        return f"{prefix}{self._count}"

    def const(self, value: Any, prefix: str = "_c") -> str:
        """Put ``value`` in the namespace and return its name (reused if present)."""
        for name, existing in self.ns.items():
            if existing is value and name.startswith(prefix):
                return name
        name = f"{prefix}{len(self.ns)}"
        self.ns[name] = value
        return name

    def line(self, text: str) -> None:
        """Append one line at the current indentation."""
        self.lines.append("    " * self._indent + text)

    @contextmanager
    def block(self) -> Generator[None, None, None]:
        """Indent the lines written inside the ``with``."""
        self._indent += 1
        try:
            yield
        finally:
            self._indent -= 1

    def fail(self, path: str | None, expected: str, value: str, cause: str = "None") -> None:
        """Write the raise for a mismatch of ``value`` at ``path``."""
        if self.explain:
            self.line(f"raise _Fail({path}, {self.const(expected, '_s')}, {value}, {cause})")
        else:
            self.line("raise _F")

    def guarded(self, target: str, expr: str, path: str | None, expected: str, value: str) -> None:
        """Write ``target = expr``; in explain mode any exception becomes a Failure."""
        if not self.explain:
            self.line(f"{target} = {expr}")
            return
        self.line("try:")
        with self.block():
            self.line(f"{target} = {expr}")
        self.line("except _Fail:")
        with self.block():
            self.line("raise")
        self.line("except Exception as exc:")
        with self.block():
            self.fail(path, expected, value, "None if isinstance(exc, _F) else exc")

    def materialize(self, expr: str, path: str | None, expected: str, value: str) -> str:
        """Return ``expr`` for inline use in fast mode; in explain mode evaluate it now."""
        if not self.explain:
            return expr
        target = self.var("r")
        self.guarded(target, expr, path, expected, value)
        return target

    def source(self, header: str) -> str:
        """The finished function source."""
        return "\n".join([header, *self.lines]) + "\n"


def sub_path(path: str | None, suffix: str) -> str | None:
    """A path expression one step deeper (a constant suffix)."""
    return None if path is None else f"{path} + {suffix!r}"


# --- nodes -------------------------------------------------------------------------


class Node:
    """One annotation's conversion. ``desc`` names the expected type in errors."""

    desc: str = "value"
    #: the exact Python type of valid values when a single ``type() is`` check
    #: plus a normalizer covers them (str, int, float, bool, bytes); lets
    #: containers of such values skip rebuilding.
    exact: type | None = None
    normalizer: str | None = None
    #: encoded value is the value itself (no conversion) once checked.
    identity_enc: bool = False
    identity_dec: bool = False

    def needs_normalizing(self, src: str) -> str:
        """The fast test that sends ``src`` to the normalizer (``exact`` nodes only)."""
        assert self.exact is not None
        if self.exact is str:
            # Non-ASCII text may hold a lone surrogate; isascii() is O(1).
            return f"type({src}) is not str or not {src}.isascii()"
        return f"type({src}) is not {self.exact.__name__}"

    def enc(self, g: Gen, src: str, path: str | None) -> str:
        """Write checks for local ``src``; return the expression of its primitive."""
        raise NotImplementedError

    def dec(self, g: Gen, src: str, path: str | None) -> str:
        """Write checks for primitive ``src``; return the expression of its value."""
        raise NotImplementedError


class AnyNode(Node):
    """``typing.Any``: JSON-like data, passed through after a check.

    Only values that read back equal on every serializer are accepted (both
    ways): None, bool, int, float, str, lists and str-keyed dicts of them, and
    bytes on binary serializers; exact types, at most ``ANY_MAX_DEPTH`` deep.
    """

    desc = "any value"
    identity_enc = identity_dec = True

    def enc(self, g: Gen, src: str, path: str | None) -> str:
        if g.explain:
            g.line(f"_any_x({src}, {g.binary}, {path})")
        else:
            g.line(f"{'_any_b' if g.binary else '_any_t'}({src})")
        return src

    dec = enc


class ScalarNode(Node):
    """str, int, float, bool and (binary serializers) bytes: checked, not converted."""

    identity_enc = identity_dec = True

    def __init__(self, exact: type, normalizer: str | None) -> None:
        self.exact = exact
        self.normalizer = normalizer
        self.desc = exact.__name__

    def enc(self, g: Gen, src: str, path: str | None) -> str:
        g.line(f"if {self.needs_normalizing(src)}:")
        with g.block():
            if self.normalizer is None:
                g.fail(path, self.desc, src)
            else:
                g.guarded(src, f"{self.normalizer}({src})", path, self.desc, src)
        return src

    def dec(self, g: Gen, src: str, path: str | None) -> str:
        g.line(f"if {self.needs_normalizing(src)}:")
        with g.block():
            if self.exact is float:
                # JSON writes 2.0 as 2.0 but other writers may store an int.
                g.guarded(src, f"_to_float({src})", path, self.desc, src)
            elif self.exact is str:
                # Exact text only; non-ASCII is checked for lone surrogates.
                g.guarded(src, f"_str_in({src})", path, self.desc, src)
            else:
                g.fail(path, self.desc, src)
        return src


class Base64BytesNode(Node):
    """bytes on a text-only serializer: base64 text."""

    desc = "bytes"

    def enc(self, g: Gen, src: str, path: str | None) -> str:
        g.line(f"if type({src}) is not bytes:")
        with g.block():
            g.guarded(src, f"_to_bytes({src})", path, self.desc, src)
        return f"_b64e({src})"

    def dec(self, g: Gen, src: str, path: str | None) -> str:
        return g.materialize(f"_b64d({src})", path, "base64 text", src)


class ConvertNode(Node):
    """A value stored through a pair of conversions (datetime, UUID, Decimal, ...).

    Args:
        cls: the exact class of valid values.
        check: name of a helper that accepts subclasses / rejects look-alikes,
            used when ``type(v) is not cls``.
        to_prim: format string of the encode expression (``{}`` is the value).
        from_prim: format string of the decode expression.
        prim_desc: what the stored primitive should be, for decode errors.
    """

    def __init__(self, cls: type, check: str, to_prim: str, from_prim: str, prim_desc: str) -> None:
        self.cls = cls
        self.check = check
        self.to_prim = to_prim
        self.from_prim = from_prim
        self.prim_desc = prim_desc
        self.desc = cls.__name__

    def enc(self, g: Gen, src: str, path: str | None) -> str:
        cls = g.const(self.cls, "_t")
        g.line(f"if type({src}) is not {cls}:")
        with g.block():
            check = self.check.replace("{cls}", cls)
            g.guarded(src, check.format(src), path, self.desc, src)
        return g.materialize(self.to_prim.format(src), path, self.desc, src)

    def dec(self, g: Gen, src: str, path: str | None) -> str:
        return g.materialize(
            self.from_prim.format(src), path, f"{self.desc} as {self.prim_desc}", src
        )


def datetime_node() -> ConvertNode:
    """Naive and aware stay distinct; an aware value keeps its UTC offset."""
    return ConvertNode(
        _dt.datetime,
        "_instance({}, {cls})",
        "{}.isoformat()",
        "_parse_dt({})",
        "ISO 8601 text",
    )


def date_node() -> ConvertNode:
    """A calendar date (a datetime is not accepted as a date)."""
    return ConvertNode(
        _dt.date, "_date_only({})", "{}.isoformat()", "_parse_date({})", "ISO 8601 text"
    )


def time_node() -> ConvertNode:
    """A time of day, with its offset when it has one."""
    return ConvertNode(
        _dt.time, "_instance({}, {cls})", "{}.isoformat()", "_parse_time({})", "ISO 8601 text"
    )


def timedelta_node() -> ConvertNode:
    """A duration, stored exactly as an integer number of microseconds."""
    return ConvertNode(
        _dt.timedelta, "_instance({}, {cls})", "{} // _US", "_td_from({})", "integer microseconds"
    )


def uuid_node() -> ConvertNode:
    """A UUID, stored as its canonical text."""
    return ConvertNode(uuid.UUID, "_instance({}, {cls})", "str({})", "_parse_uuid({})", "UUID text")


def decimal_node() -> ConvertNode:
    """A Decimal, stored as its exact text."""
    return ConvertNode(
        decimal.Decimal, "_instance({}, {cls})", "str({})", "_parse_decimal({})", "decimal text"
    )


BASE_NAMESPACE.update(
    {
        "_parse_dt": _parse(_dt.datetime.fromisoformat),
        "_parse_date": _parse(_dt.date.fromisoformat),
        "_parse_time": _parse(_dt.time.fromisoformat),
        "_parse_uuid": _parse(uuid.UUID),
        "_parse_decimal": _parse(decimal.Decimal),
    }
)


class EnumNode(Node):
    """An Enum member, stored by value."""

    def __init__(self, cls: type[enum.Enum]) -> None:
        self.cls = cls
        self.desc = cls.__qualname__
        self.by_value = dict(cls._value2member_map_)
        value_types: set[type[object]] = {type(m.value) for m in cls}
        self.value_types = frozenset(value_types)
        self.flag = issubclass(cls, enum.Flag)

    def enc(self, g: Gen, src: str, path: str | None) -> str:
        cls = g.const(self.cls, "_t")
        g.line(f"if type({src}) is not {cls}:")
        with g.block():
            g.fail(path, self.desc, src)
        return f"{src}._value_"

    def dec(self, g: Gen, src: str, path: str | None) -> str:
        types = g.const(self.value_types, "_vt")
        g.line(f"if type({src}) not in {types}:")
        with g.block():
            g.fail(path, f"a value of {self.desc}", src)
        if self.flag:
            # Combined flags are not in the value map; the class builds them.
            return g.materialize(f"{g.const(self.cls, '_t')}({src})", path, self.desc, src)
        return g.materialize(
            f"{g.const(self.by_value, '_m')}[{src}]", path, f"a value of {self.desc}", src
        )


class LiteralNode(Node):
    """``Literal[...]`` of str, int, bool or None: one of the listed values."""

    identity_enc = identity_dec = True

    def __init__(self, values: tuple[Any, ...]) -> None:
        allowed: set[tuple[type[object], object]] = {(type(v), v) for v in values}
        self.allowed = frozenset(allowed)
        self.desc = "one of " + ", ".join(repr(v) for v in values)

    def enc(self, g: Gen, src: str, path: str | None) -> str:
        g.guarded(src, f"_literal_ok({g.const(self.allowed, '_l')}, {src})", path, self.desc, src)
        return src

    dec = enc


class OptionalNode(Node):
    """``X | None``."""

    def __init__(self, inner: Node) -> None:
        self.inner = inner
        self.desc = f"{inner.desc} | None"

    def enc(self, g: Gen, src: str, path: str | None) -> str:
        return self._either(g, src, path, self.inner.enc)

    def dec(self, g: Gen, src: str, path: str | None) -> str:
        return self._either(g, src, path, self.inner.dec)

    def _either(
        self, g: Gen, src: str, path: str | None, convert: Callable[[Gen, str, str | None], str]
    ) -> str:
        g.line(f"if {src} is not None:")
        with g.block():
            # A conversion that checks in place may emit no line (Any does not
            # on write); keep the block valid Python. pass compiles to nothing.
            g.line("pass")
            expr = convert(g, src, path)
        if expr == src:
            return src
        out = g.var("o")
        with g.block():
            g.line(f"{out} = {expr}")
        g.line("else:")
        with g.block():
            g.line(f"{out} = None")
        return out


class CodecNode(Node):
    """A user codec (``Field(codec=...)``): its encode/decode do the checking."""

    def __init__(self, codec: Codec[Any]) -> None:
        self.codec = codec
        self.desc = f"a value {type(codec).__name__} accepts"

    def enc(self, g: Gen, src: str, path: str | None) -> str:
        fn = g.const(self.codec.encode, "_ce")
        out = g.var("c")
        g.guarded(out, f"{fn}({src})", path, self.desc, src)
        # What a codec returns is checked like an Any value: it must read back equal.
        if g.explain:
            g.line(f"_any_x({out}, {g.binary}, {path})")
        else:
            g.line(f"{'_any_b' if g.binary else '_any_t'}({out})")
        return out

    def dec(self, g: Gen, src: str, path: str | None) -> str:
        fn = g.const(self.codec.decode, "_cd")
        return g.materialize(f"{fn}({src})", path, self.desc, src)


class SequenceNode(Node):
    """list[X], set[X], frozenset[X], tuple[X, ...] and the abstract Sequence / Set: a list.

    Args:
        kind: the type values are read back as (list, tuple, set, frozenset).
        item: the items' node.
        desc: the annotation, for messages.
        accepts: what a written value must be an instance of (``kind`` by default;
            ``collections.abc.Sequence`` accepts tuples too, but never text).
    """

    def __init__(self, kind: type, item: Node, desc: str, accepts: type | None = None) -> None:
        self.kind = kind
        self.item = item
        self.desc = desc
        self.accepts = accepts or kind
        self.ordered = kind is list or kind is tuple

    def enc(self, g: Gen, src: str, path: str | None) -> str:
        accepts = g.const(self.accepts, "_t")
        check = f"not isinstance({src}, {accepts})"
        if self.accepts is abc.Sequence:
            check += f" or isinstance({src}, (str, bytes, bytearray))"
        g.line(f"if {check}:")
        with g.block():
            g.fail(path, self.desc, src)
        if self.ordered:
            # A subclass (a namedtuple, say) would be pickled with its class.
            kind = g.const(self.kind, "_t")
            g.line(f"if type({src}) is not {kind}:")
            with g.block():
                g.line(f"{src} = {'list' if self.accepts is not self.kind else kind}({src})")
        out = self._each(g, src, path, self.item.enc, self.item.identity_enc)
        if out == src and not self.ordered:
            return f"list({src})"
        return out

    def dec(self, g: Gen, src: str, path: str | None) -> str:
        g.line(f"if type({src}) is not list:")
        with g.block():
            # msgpack may hand back tuples when configured to.
            g.line(f"if type({src}) is tuple:")
            with g.block():
                g.line(f"{src} = list({src})")
            g.line("else:")
            with g.block():
                g.fail(path, f"{self.desc} as a list", src)
        out = self._each(g, src, path, self.item.dec, self.item.identity_dec)
        if self.kind is list:
            return out
        return f"{g.const(self.kind, '_t')}({out})"

    def _each(
        self,
        g: Gen,
        src: str,
        path: str | None,
        convert: Callable[[Gen, str, str | None], str],
        identity: bool,
    ) -> str:
        item = g.var("x")
        index = g.var("i")
        item_path = None if path is None else f"{path} + '[' + str({index}) + ']'"
        loop = f"for {index}, {item} in enumerate({src}):" if g.explain else f"for {item} in {src}:"
        if identity and self.item.exact is not None and not g.explain:
            # Check in place; rebuild only if some item needs normalizing.
            g.line(loop)
            with g.block():
                g.line(f"if {self.item.needs_normalizing(item)}:")
                with g.block():
                    if self.item.normalizer is None:
                        g.line("raise _F")
                    else:
                        g.line(f"{src} = [{self.item.normalizer}(y) for y in {src}]")
                        g.line("break")
            return src
        out = g.var("s")
        g.line(f"{out} = []")
        g.line(loop)
        with g.block():
            expr = convert(g, item, item_path)
            g.line(f"{out}.append({expr})")
        return out


class TupleNode(Node):
    """tuple[A, B, C]: a fixed-length tuple stored as a list."""

    def __init__(self, items: list[Node], desc: str) -> None:
        self.items = items
        self.desc = desc

    def enc(self, g: Gen, src: str, path: str | None) -> str:
        g.line(f"if not isinstance({src}, tuple) or len({src}) != {len(self.items)}:")
        with g.block():
            g.fail(path, self.desc, src)
        return self._each(g, src, path, "enc")

    def dec(self, g: Gen, src: str, path: str | None) -> str:
        g.line(f"if type({src}) not in (list, tuple) or len({src}) != {len(self.items)}:")
        with g.block():
            g.fail(path, f"{self.desc} as a list of {len(self.items)}", src)
        if not self.items:
            return "()"
        return "(" + self._each(g, src, path, "dec")[1:-1] + ",)"

    def _each(self, g: Gen, src: str, path: str | None, mode: str) -> str:
        exprs: list[str] = []
        for position, node in enumerate(self.items):
            item = g.var("x")
            g.line(f"{item} = {src}[{position}]")
            convert = node.enc if mode == "enc" else node.dec
            exprs.append(convert(g, item, sub_path(path, f"[{position}]")))
        return "[" + ", ".join(exprs) + "]"


class DictNode(Node):
    """dict[K, V] with str-like keys: stored as a str-keyed dict."""

    def __init__(self, key: Node, value: Node, desc: str) -> None:
        self.key = key
        self.value = value
        self.desc = desc

    def enc(self, g: Gen, src: str, path: str | None) -> str:
        g.line(f"if not isinstance({src}, {g.const(abc.Mapping, '_t')}):")
        with g.block():
            g.fail(path, self.desc, src)
        return self._each(g, src, path, self.key.enc, self.value.enc)

    def dec(self, g: Gen, src: str, path: str | None) -> str:
        g.line(f"if type({src}) is not dict:")
        with g.block():
            g.fail(path, f"{self.desc} as a map", src)
        return self._each(g, src, path, self.key.dec, self.value.dec)

    def _each(
        self,
        g: Gen,
        src: str,
        path: str | None,
        key_convert: Callable[[Gen, str, str | None], str],
        value_convert: Callable[[Gen, str, str | None], str],
    ) -> str:
        k = g.var("k")
        v = g.var("x")
        out = g.var("m")
        item_path = None if path is None else f"{path} + '[' + repr({k}) + ']'"
        g.line(f"{out} = {{}}")
        g.line(f"for {k}, {v} in {src}.items():")
        with g.block():
            key_expr = key_convert(g, k, item_path)
            value_expr = value_convert(g, v, item_path)
            g.line(f"{out}[{key_expr}] = {value_expr}")
        return out


class ModelNode(Node):
    """A nested dataclass: a call to that class's own generated function."""

    def __init__(self, cls: type, names: dict[str, str]) -> None:
        self.cls = cls
        self.desc = cls.__qualname__
        # filled by the schema compiler: {"enc": ..., "dec": ..., "xenc": ..., "xdec": ...}
        self.names = names

    def enc(self, g: Gen, src: str, path: str | None) -> str:
        # The class check (exact type unless subclasses are allowed) opens enc_N itself.
        if g.explain:
            out = g.var("n")
            g.line(f"{out} = {self.names['xenc']}({src}, {path})")
            return out
        return f"{self.names['enc']}({src})"

    def dec(self, g: Gen, src: str, path: str | None) -> str:
        if g.explain:
            out = g.var("n")
            g.line(f"{out} = {self.names['xdec']}({src}, {path})")
            return out
        return f"{self.names['dec']}({src})"
