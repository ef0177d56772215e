"""Turning primary-key values into backend keys.

A key is ``prefix + namespace + ":" + part[":" + part ...]`` by default, or
``prefix`` + a template rendered with the key parts. Each part is written by a
formatter chosen once from its field's annotation; text parts are
percent-escaped so that the separator, template text, braces, ``%``,
whitespace and control characters never appear raw in them. Because the
template's own characters can never come from a value, and ``%`` always starts
an escape, two different primary keys never map to one key.
"""

from __future__ import annotations

import datetime as _dt
import enum
import operator
import re
import string
import types
import typing
import uuid
from collections.abc import Callable, Sequence
from typing import Annotated, Any, cast, get_args, get_origin

from cacheorm._errors import ModelDefinitionError, ValidationError, safe_repr

__all__ = ["KeyPart", "KeyScheme", "escape_factory"]

#: characters escaped in every text key part: %, braces (Redis Cluster hash
#: tags), space and the ASCII control characters (Memcached), ':' (the default
#: separator).
_ALWAYS = "%{}:" + "".join(chr(i) for i in range(0x21)) + "\x7f"

KeyFunction = Callable[[Any], str]


#: Lone surrogates are not valid UTF-8, and not every serializer can store them
#: (msgpack and protobuf refuse them): a str key part holding one is refused
#: with a ValidationError. The escape table still maps them (to the bytes
#: "surrogatepass" gives them), so that a refused one is found with one cheap
#: substring test on the escaped text, "%ED%", and no key ever holds one raw.
_SURROGATES = {
    code: "".join(f"%{b:02X}" for b in chr(code).encode("utf-8", "surrogatepass"))
    for code in range(0xD800, 0xE000)
}


def escape_factory(reserved: str) -> Callable[[str], str]:
    """A function that percent-escapes ``reserved`` (and ``_ALWAYS``) in text."""
    table: dict[int, str] = dict(_SURROGATES)
    for ch in set(reserved) | set(_ALWAYS):
        table[ord(ch)] = "".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
    return lambda text: text.translate(table)


class KeyPart(typing.NamedTuple):
    """One key field: its attribute name, annotation, whether it is the hash tag, its codec."""

    attr: str
    annotation: Any
    hash_tag: bool = False
    #: ``Field(codec=...)``: the key shows what the codec stores (``ShortUUIDCodec``'s
    #: 22 characters, ``UTCDateTimeCodec``'s UTC text), so equal stored values share a key.
    codec: Any = None


def _unwrap(tp: Any) -> Any:
    while True:
        if get_origin(tp) is Annotated:
            tp = tp.__origin__
        elif getattr(tp, "__supertype__", None) is not None:
            tp = tp.__supertype__
        else:
            return tp


def _part_formatter(
    model: type, part: KeyPart, escape: Callable[[str], str], reserved: str
) -> Callable[[Any], str]:
    """Choose the formatter for one key field, once, from its annotation.

    Parts whose characters could also appear in ``reserved`` (the template's
    inner literals) are escaped too, so ``"{a}1{b}"`` stays injective for ints.
    """
    fmt, alphabet = _raw_formatter(model, part, escape)
    if alphabet is None or not set(alphabet) & set(reserved):
        return fmt
    return lambda value: escape(fmt(value))


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _lone_surrogate(text: str) -> bool:
    return _LONE_SURROGATE.search(text) is not None


_DIGITS = "0123456789"
_HEX = _DIGITS + "abcdef"


def _codec_formatter(
    codec: Any,
    label: str,
    wrong: Callable[[Any, str], ValidationError],
    escape: Callable[[str], str],
    attr: str,
    model: type,
) -> Callable[[Any], str]:
    """Format a key part by what ``codec`` stores: its text escaped, or its int."""
    name = type(codec).__name__

    def fmt_codec(value: Any) -> str:
        try:
            stored = codec.encode(value)
        except (TypeError, ValueError) as exc:
            raise ValidationError(
                f"{label}: key part {safe_repr(value)} is not a value {name} accepts: {exc}",
                model=model,
                path=attr,
                expected=f"a value {name} accepts",
                actual=type(value).__name__,
            ) from exc
        if type(stored) is str:
            if _lone_surrogate(stored):
                raise wrong(value, f"a value whose {name} text has no lone surrogate")
            return escape(stored)
        if type(stored) is int:
            return escape(str(stored))
        raise wrong(value, f"a value {name} stores as str or int (it gave {type(stored).__name__})")

    return fmt_codec


def _raw_formatter(
    model: type, part: KeyPart, escape: Callable[[str], str]
) -> tuple[Callable[[Any], str], str | None]:
    """The formatter and the characters it can emit (None: it escapes already)."""
    tp = _unwrap(part.annotation)
    label = f"{model.__qualname__}.{part.attr}"

    def wrong(value: Any, expected: str) -> ValidationError:
        return ValidationError(
            f"{label}: key part expected {expected}, got {type(value).__name__} {safe_repr(value)}",
            model=model,
            path=part.attr,
            expected=expected,
            actual=type(value).__name__,
        )

    if part.codec is not None:
        return _codec_formatter(part.codec, label, wrong, escape, part.attr, model), None

    if tp is int:

        def fmt_int(value: Any) -> str:
            if type(value) is int or (isinstance(value, int) and not isinstance(value, bool)):
                try:
                    return str(int(value))
                except ValueError:  # more digits than int -> str allows
                    raise wrong(value, "int of at most 4300 digits") from None
            raise wrong(value, "int")

        return fmt_int, _DIGITS + "-"
    if tp is str:

        def fmt_str(value: Any) -> str:
            if isinstance(value, str):
                text = escape(value)
                if "%ED%" in text and _lone_surrogate(value):
                    raise ValidationError(
                        f"{label}: key part {safe_repr(value)} contains a lone surrogate "
                        "(U+D800..U+DFFF), which is not valid Unicode text and cannot be "
                        "stored by every serializer; decode your input with errors='strict' "
                        "or 'replace', or use a bytes key",
                        model=model,
                        path=part.attr,
                        expected="str without lone surrogates",
                        actual="str",
                    )
                return text
            raise wrong(value, "str")

        return fmt_str, None
    if tp is bool:

        def fmt_bool(value: Any) -> str:
            if type(value) is bool:
                return "true" if value else "false"
            raise wrong(value, "bool")

        return fmt_bool, "truefals"
    if tp is bytes:

        def fmt_bytes(value: Any) -> str:
            if isinstance(value, (bytes, bytearray)):
                return bytes(value).hex()
            raise wrong(value, "bytes")

        return fmt_bytes, _HEX
    if tp is uuid.UUID:

        def fmt_uuid(value: Any) -> str:
            if isinstance(value, uuid.UUID):
                return str(value)
            raise wrong(value, "UUID")

        return fmt_uuid, _HEX + "-"
    if tp in (_dt.datetime, _dt.date):

        def fmt_date(value: Any) -> str:
            ok = isinstance(value, tp) and (
                tp is _dt.datetime or not isinstance(value, _dt.datetime)
            )
            if ok:
                return escape(value.isoformat())
            raise wrong(value, tp.__name__)

        return fmt_date, None
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        members = {m: escape(str(m.value)) for m in tp}
        if (
            len(set(members.values())) != len(members)
            or any(type(m.value) not in (int, str) for m in tp)
            or any(_lone_surrogate(str(m.value)) for m in tp)
        ):
            raise ModelDefinitionError(
                f"{label}: an Enum key needs distinct int or str member values "
                "(without lone surrogates)",
                model=model,
                field=part.attr,
            )

        def fmt_enum(value: Any) -> str:
            try:
                return members[value] if type(value) is tp else members[_never(value)]
            except (KeyError, TypeError):
                raise wrong(value, tp.__qualname__) from None

        return fmt_enum, None
    if get_origin(tp) is typing.Literal:
        values = get_args(tp)
        kinds: set[type[object]] = {type(v) for v in values}
        if kinds - {int, str} or any(_lone_surrogate(str(v)) for v in values):
            raise ModelDefinitionError(
                f"{label}: a Literal key needs int or str values (without lone surrogates)",
                model=model,
                field=part.attr,
            )
        allowed: dict[tuple[type[object], object], str] = {
            (type(v), v): escape(str(v)) for v in values
        }
        if len(set(allowed.values())) != len(allowed):
            raise ModelDefinitionError(
                f"{label}: Literal key values {values!r} would share keys (like 1 and '1')",
                model=model,
                field=part.attr,
            )

        def fmt_literal(value: Any) -> str:
            try:
                return allowed[(type(value), value)]
            except (KeyError, TypeError):
                raise wrong(value, f"one of {values!r}") from None

        return fmt_literal, None
    raise ModelDefinitionError(
        f"{label}: a primary key must be int, str, bool, bytes, UUID, date, datetime, "
        f"an int/str Enum or Literal (or a NewType of one), not {_name(tp)}",
        model=model,
        field=part.attr,
    )


def _never(value: Any) -> Any:
    raise KeyError(value)


def _name(tp: Any) -> str:
    return tp.__qualname__ if isinstance(tp, type) else repr(tp).replace("typing.", "")


def _is_optional(tp: Any) -> bool:
    return get_origin(tp) in (typing.Union, types.UnionType) and type(None) in get_args(tp)


_PERCENT_STYLE = re.compile(r"%(.)")


def parse_template(model: type, template: str) -> tuple[list[str], list[str | None]]:
    """Split a key template into literal chunks and placeholder names.

    Brace style (``"collection.{collector}.{article}"``) names fields; ``%``
    style (``"collection.%s.%d"``) gives positions, returned as ``None`` names.
    Returns ``(literals, names)`` with ``len(literals) == len(names) + 1``.
    """

    def bad(why: str) -> ModelDefinitionError:
        return ModelDefinitionError(
            f"{model.__qualname__}: key template {template!r} {why}", model=model
        )

    literals: list[str] = []
    names: list[str | None] = []
    if "{" not in template and "%" in template:
        position = 0
        for match in _PERCENT_STYLE.finditer(template):
            if match.group(1) not in "sd":
                raise bad(f"uses %{match.group(1)}; only %s and %d are supported")
            literals.append(template[position : match.start()])
            names.append(None if match.group(1) == "s" else "%d")
            position = match.end()
        literals.append(template[position:])
    else:
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as exc:
            raise bad(f"is not a valid template: {exc}") from None
        pending = ""
        for literal, name, spec, conversion in parsed:
            pending += literal
            if name is None:
                continue
            if spec or conversion:
                raise bad(f"formats {{{name}}}; format specs and conversions are not supported")
            if not name.isidentifier():
                raise bad(f"has placeholder {{{name}}}, which is not a field name")
            literals.append(pending)
            names.append(name)
            pending = ""
        literals.append(pending)
    if not names:
        raise bad("has no placeholders")
    for inner in literals[1:-1]:
        if not inner:
            raise bad("has two placeholders with nothing between them; keys could collide")
    if any("%" in chunk for chunk in literals):
        raise bad("contains a literal '%', which cacheorm reserves for escaping")
    return literals, names


class KeyScheme:
    """Maps primary-key values (a scalar, or a tuple for composite keys) to keys.

    Args:
        model: the model, for messages.
        parts: the key fields in the order users pass them.
        namespace: the default scheme's namespace.
        prefix: prepended to every key.
        template: a brace or ``%`` template string, a callable ``pk -> str``,
            or None for ``prefix + namespace + ":" + parts``.
    """

    def __init__(
        self,
        model: type,
        parts: Sequence[KeyPart],
        *,
        namespace: str,
        prefix: str = "",
        template: str | KeyFunction | None = None,
    ) -> None:
        self.model = model
        self.parts = tuple(parts)
        self.attrs = tuple(p.attr for p in self.parts)
        self.namespace = namespace
        self.prefix = prefix
        if not self.parts:
            raise ModelDefinitionError(
                f"{model.__qualname__} has no primary key: mark a field with "
                "Annotated[..., cacheorm.Field(primary_key=True)] or pass key='...{field}...'",
                model=model,
            )
        for part in self.parts:
            if _is_optional(part.annotation):
                raise ModelDefinitionError(
                    f"{model.__qualname__}.{part.attr}: a primary key cannot be Optional",
                    model=model,
                    field=part.attr,
                )
        self._callable: KeyFunction | None = None
        #: ``key_for`` specialised for this scheme (no per-call shape checks for one part).
        self.render: Callable[[Any], str] = self.key_for
        #: ``key_of`` specialised likewise.
        self.render_of: Callable[[Any], str] = self.key_of
        if callable(template):
            self._callable = template
            self.describe = f"{getattr(template, '__qualname__', repr(template))}(pk)"
            return
        tagged = [i for i, p in enumerate(self.parts) if p.hash_tag]
        if tagged and template is not None:
            raise ModelDefinitionError(
                f"{model.__qualname__}.{self.parts[tagged[0]].attr}: Field(hash_tag=True) "
                f"applies to the default key scheme; with key={template!r} write the braces "
                "in the template instead ('user:{{{user_id}}}:settings')",
                model=model,
                field=self.parts[tagged[0]].attr,
            )
        if template is None:
            literals = [f"{prefix}{namespace}:", *([":"] * (len(self.parts) - 1)), ""]
            for i in tagged:  # a hash tag: "{" + part + "}" (the part's braces are escaped)
                literals[i] += "{"
                literals[i + 1] = "}" + literals[i + 1]
            order = list(range(len(self.parts)))
        else:
            literals, order = self._bind(template)
            literals[0] = prefix + literals[0]
        self.describe = template if isinstance(template, str) else literals[0] + "..."
        # Only the text between placeholders must never come from a value.
        reserved = "".join(literals[1:-1])
        escape = escape_factory(reserved)
        formatters = [_part_formatter(model, p, escape, reserved) for p in self.parts]
        self._literals = literals
        self._order = order
        self._formatters = formatters
        if len(formatters) == 1:
            head, tail, fmt = literals[0], literals[1], formatters[0]
            get = operator.attrgetter(self.parts[0].attr)
            if tail:
                self.render = lambda pk: head + fmt(pk) + tail
                self.render_of = lambda obj: head + fmt(get(obj)) + tail
            else:
                self.render = lambda pk: head + fmt(pk)
                self.render_of = lambda obj: head + fmt(get(obj))

    def _bind(self, template: str) -> tuple[list[str], list[int]]:
        literals, names = parse_template(self.model, template)
        if all(n is None or n == "%d" for n in names):  # % style: positional
            if len(names) != len(self.parts):
                raise ModelDefinitionError(
                    f"{self.model.__qualname__}: key template {template!r} has {len(names)} "
                    f"placeholders for {len(self.parts)} primary-key fields",
                    model=self.model,
                )
            for name, part in zip(names, self.parts, strict=True):
                if name == "%d" and _unwrap(part.annotation) is not int:
                    raise ModelDefinitionError(
                        f"{self.model.__qualname__}.{part.attr}: %d in key template "
                        f"{template!r} needs an int field",
                        model=self.model,
                        field=part.attr,
                    )
            return literals, list(range(len(names)))
        if sorted(map(str, names)) != sorted(self.attrs) or len(set(names)) != len(names):
            raise ModelDefinitionError(
                f"{self.model.__qualname__}: key template {template!r} must name each "
                f"primary-key field exactly once: {', '.join(self.attrs)}",
                model=self.model,
            )
        return literals, [self.attrs.index(str(n)) for n in names]

    def key_for(self, pk: Any) -> str:
        """The key of primary key ``pk`` (a tuple for composite keys).

        Raises:
            ValidationError: ``pk`` has the wrong shape or type.
        """
        if self._callable is not None:
            return self._call(pk)
        values = self._split(pk)
        literals = self._literals
        out = [literals[0]]
        for position, index in enumerate(self._order):
            out.append(self._formatters[index](values[index]))
            out.append(literals[position + 1])
        return "".join(out)

    def key_of(self, obj: Any) -> str:
        """The key of a record."""
        return self.render(self.pk_of(obj))

    def pk_of(self, obj: Any) -> Any:
        """The primary-key value of a record (a tuple for composite keys)."""
        if len(self.attrs) == 1:
            return getattr(obj, self.attrs[0])
        return tuple(getattr(obj, a) for a in self.attrs)

    def _split(self, pk: object) -> Sequence[Any]:
        if len(self.parts) == 1:
            return (pk,)
        if isinstance(pk, tuple):
            pk = cast("Sequence[Any]", pk)  # a user's tuple: its items may be anything
            if len(pk) == len(self.parts):
                return pk
        raise ValidationError(
            f"{self.model.__qualname__}: a composite key is a tuple of "
            f"({', '.join(self.attrs)}), got {pk!r}",
            model=self.model,
            expected=f"tuple of {len(self.parts)}",
            actual=type(pk).__name__,
        )

    def _call(self, pk: Any) -> str:
        assert self._callable is not None
        self._split(pk)
        key = self._callable(pk)
        if not isinstance(key, str) or not key:
            raise ValidationError(
                f"{self.model.__qualname__}: key function {self.describe} returned {key!r}, "
                "not a non-empty str",
                model=self.model,
            )
        return self.prefix + key
