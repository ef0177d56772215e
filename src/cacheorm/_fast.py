"""The fast codec path: msgspec under the compiled codecs (the ``fast`` extra).

When msgspec is installed, a :class:`~cacheorm.Repository` using the built-in
``JSONSerializer`` or ``MsgpackSerializer`` reads and writes through msgspec's
native encoders and decoders. The stored bytes and the validation are the
stdlib path's, by construction:

* **Writes** run the model's compiled ``enc_N`` (the same checks, the same
  conversions, the same ``ValidationError``), then msgspec writes the dict.
  Where msgspec would write different bytes than the stdlib serializer (JSON
  floats that need an exponent, NaN and the infinities, which msgspec writes
  as ``null``) or could write something the stdlib serializer refuses (values
  of ``Any`` fields and of user codecs, which nothing checked), the stdlib
  serializer writes the record instead. Any msgspec error also falls back, so
  the stdlib serializer raises its own ``SerializationError``.
* **Reads** try a native decode; on *any* exception the record is read again
  by the stdlib path (``loads`` + ``dec_N``, then ``xdec_N`` to explain), so
  every error is the stdlib path's error. A native decode may therefore only
  ever *succeed* where the stdlib path succeeds with an equal record:

  - *typed* (straight into the dataclass, msgspec's ``Decoder(type=Model)``)
    for models whose every annotation msgspec decodes by exactly our rules
    (:func:`_typed_ok`); a second, tiny decode into a *witness* struct refuses
    keys the model does not know (msgspec skips them unchecked, the stdlib
    reader does not) and re-parses datetimes and times with ``fromisoformat``
    (msgspec also accepts a lower-case ``t``/``z`` and rounds past six
    fractional digits);
  - *untyped* (JSON only): msgspec parses to primitives, which equal
    ``json.loads``'s wherever msgspec succeeds, and ``dec_N`` checks them.

The module imports msgspec lazily, so ``import cacheorm`` never needs it. Set
the environment variable ``CACHEORM_FAST=0`` to turn the fast path off.
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from cacheorm import _codecs as c
from cacheorm._schema import CompiledModel, ModelSpec
from cacheorm._serializers import JSONSerializer, MsgpackSerializer, Serializer

__all__ = ["ENABLED", "FastCodec", "fast_codec", "fast_load"]

#: Whether repositories use the fast path when msgspec is installed
#: (``CACHEORM_FAST=0`` in the environment turns it off).
ENABLED = os.environ.get("CACHEORM_FAST", "1").strip().lower() not in ("0", "false", "no", "off")

#: msgspec's datetime parser accepts exactly a subset of ``fromisoformat``'s
#: from Python 3.11 on; 3.10's ``fromisoformat`` reads only its own output.
_TIMES_TYPED = sys.version_info >= (3, 11)


class FastCodec:
    """The native ``dumps`` and ``decode`` of one model on one built-in serializer.

    Attributes:
        typed: reads decode straight into the dataclass (else into primitives
            checked by the compiled ``dec_N``).
    """

    def __init__(
        self,
        dumps: Callable[[Any], bytes],
        decode: Callable[[bytes], Any],
        *,
        typed: bool,
    ) -> None:
        self.dumps = dumps
        self.decode = decode
        self.typed = typed


def fast_codec(compiled: CompiledModel[Any], serializer: Serializer) -> FastCodec | None:
    """The fast codec for ``compiled`` on ``serializer``, or None to stay on the stdlib path.

    Only the built-in JSON and msgpack serializers (exactly those classes: a
    subclass may change the format) have a fast path, and only when msgspec
    is importable and :data:`ENABLED` is true.
    """
    kind = type(serializer)
    if not ENABLED or kind not in (JSONSerializer, MsgpackSerializer):
        return None
    try:
        import msgspec
    except ImportError:
        return None
    json = kind is JSONSerializer
    spec = compiled.spec
    encode = (msgspec.json.Encoder() if json else msgspec.msgpack.Encoder()).encode
    slow_dumps = serializer.dumps
    dumps: Callable[[Any], bytes]
    if _unchecked(spec, compiled.models):
        dumps = slow_dumps
    else:
        risky = _float_check(spec, compiled.models) if json else None
        dumps = _native_dumps(encode, slow_dumps, risky)
    decode, typed = _decoder(
        compiled, msgspec, json=json, strict=json and not _allows_nan(serializer)
    )
    return FastCodec(dumps, decode, typed=typed)


def fast_load(
    decode: Callable[[bytes], Any], slow_load: Callable[[str, bytes], Any]
) -> Callable[[str, bytes], Any]:
    """``Repository._load`` through ``decode``, falling back to ``slow_load`` on any error.

    The stdlib path then reads the record again and raises its own
    ``DeserializationError`` (or returns the record, where msgspec was only
    stricter), so errors are the stdlib path's by construction.
    """

    def load(key: str, payload: bytes) -> Any:
        try:
            return decode(payload)
        except Exception:
            return slow_load(key, payload)

    return load


def _allows_nan(serializer: Serializer) -> bool:
    return bool(getattr(serializer, "allow_nan", True))


# --- writes ---------------------------------------------------------------------------


def _native_dumps(
    encode: Callable[[Any], bytes],
    slow: Callable[[Any], bytes],
    risky: Callable[[dict[str, Any]], bool] | None,
) -> Callable[[Any], bytes]:
    if risky is None:

        def dumps(data: Any) -> bytes:
            try:
                return encode(data)
            except Exception:
                return slow(data)  # raises the stdlib serializer's own error

        return dumps

    def dumps_checked(data: Any) -> bytes:
        if risky(data):
            return slow(data)
        try:
            return encode(data)
        except Exception:
            return slow(data)

    return dumps_checked


def _unchecked(spec: ModelSpec, models: Mapping[type, ModelSpec]) -> bool:
    """True if an encoded record may hold values nothing checked (``Any``, user codecs)."""
    seen: set[type] = set()

    def walk(node: c.Node) -> bool:
        if isinstance(node, c.AnyNode):
            return True
        if isinstance(node, c.CodecNode):
            return not isinstance(node.codec, c.Timestamp)  # a Timestamp writes an int
        if isinstance(node, c.ModelNode):
            if node.cls in seen:
                return False
            seen.add(node.cls)
            return any(walk(f.node) for f in models[node.cls].fields)
        return any(walk(child) for child in _children(node))

    seen.add(spec.cls)
    return any(walk(f.node) for f in spec.fields)


def _children(node: c.Node) -> list[c.Node]:
    if isinstance(node, c.OptionalNode):
        return [node.inner]
    if isinstance(node, c.SequenceNode):
        return [node.item]
    if isinstance(node, c.TupleNode):
        return list(node.items)
    if isinstance(node, c.DictNode):
        return [node.key, node.value]
    return []


def _float_check(
    spec: ModelSpec, models: Mapping[type, ModelSpec]
) -> Callable[[dict[str, Any]], bool] | None:
    """A function telling whether msgspec would spell a JSON float differently.

    Python writes floats with ``repr``: an exponent (``1e+16``) below 1e-4 and
    from 1e16 on, where msgspec writes ``1e16``; and NaN / Infinity as tokens,
    which msgspec writes as ``null``. Such records go to the stdlib serializer,
    so the bytes are the same either way. None if the model holds no floats.
    """
    lines: list[str] = []
    funcs: dict[type, str] = {}
    ns: dict[str, Any] = {"_bad": _bad_float}
    pending: list[tuple[type, ModelSpec]] = [(spec.cls, spec)]
    funcs[spec.cls] = "chk_0"
    counter = [0]

    def var() -> str:
        counter[0] += 1
        return f"v{counter[0]}"

    def floaty(node: c.Node) -> bool:
        if isinstance(node, c.ScalarNode):
            return node.exact is float
        if isinstance(node, c.EnumNode):
            return float in node.value_types
        if isinstance(node, c.ModelNode):
            return True  # checked by its own function (cheap when it has no floats)
        return any(floaty(child) for child in _children(node))

    def emit(node: c.Node, src: str, indent: str, out: list[str]) -> None:
        if isinstance(node, (c.ScalarNode, c.EnumNode)):
            out.append(f"{indent}if _bad({src}): return True")
        elif isinstance(node, c.OptionalNode):
            out.append(f"{indent}if {src} is not None:")
            emit(node.inner, src, indent + "    ", out)
        elif isinstance(node, c.SequenceNode):
            item = var()
            out.append(f"{indent}for {item} in {src}:")
            emit(node.item, item, indent + "    ", out)
        elif isinstance(node, c.TupleNode):
            for i, child in enumerate(node.items):
                if floaty(child):
                    emit(child, f"{src}[{i}]", indent, out)
        elif isinstance(node, c.DictNode):
            item = var()
            out.append(f"{indent}for {item} in {src}.values():")
            emit(node.value, item, indent + "    ", out)
        elif isinstance(node, c.ModelNode):
            if node.cls not in funcs:
                funcs[node.cls] = f"chk_{len(funcs)}"
                pending.append((node.cls, models[node.cls]))
            out.append(f"{indent}if {funcs[node.cls]}({src}): return True")

    any_float = False
    while pending:
        cls, model_spec = pending.pop()
        body: list[str] = []
        for f in model_spec.fields:
            if floaty(f.node):
                any_float = True
                local = var()
                body.append(f"    {local} = d[{f.stored!r}]")
                emit(f.node, local, "    ", body)
        lines.append(f"def {funcs[cls]}(d):")
        lines.extend(body)
        lines.append("    return False")
    if not any_float:
        return None
    exec(compile("\n".join(lines) + "\n", f"<cacheorm fast {spec.cls.__qualname__}>", "exec"), ns)
    check: Callable[[dict[str, Any]], bool] = ns["chk_0"]
    return check


def _bad_float(v: Any) -> bool:
    """True unless ``v`` is a float Python and msgspec both write without an exponent."""
    if type(v) is not float:
        return False
    return not (v == 0.0 or 1e-4 <= abs(v) < 1e16)  # NaN fails every comparison


# --- reads ----------------------------------------------------------------------------


def _decoder(
    compiled: CompiledModel[Any], msgspec: Any, *, json: bool, strict: bool
) -> tuple[Callable[[bytes], Any], bool]:
    spec = compiled.spec
    typed = None if strict else _typed_decoder(spec, msgspec, json=json)
    if typed is not None:
        return typed, True
    if json:
        # JSON text nested beyond the recursion limit fails in both parsers alike.
        untyped = msgspec.json.Decoder().decode
        dec = compiled.decode

        def decode(payload: bytes) -> Any:
            return dec(untyped(payload))

        return decode, False
    # msgpack without a typed decoder: msgspec's untyped msgpack reader accepts
    # int map keys and extension types that msgpack refuses or reads otherwise.
    slow_loads = MsgpackSerializer().loads
    dec = compiled.decode

    def decode_msgpack(payload: bytes) -> Any:
        return dec(slow_loads(payload))

    return decode_msgpack, False


def _typed_decoder(spec: ModelSpec, msgspec: Any, *, json: bool) -> Callable[[bytes], Any] | None:
    cls = spec.cls
    if not _model_ok(cls, spec, top=True):
        return None
    # msgspec caches what it reads of a class in a ``__msgspec_cache__`` class
    # attribute; cacheorm never changes the user's classes, so those go again
    # (each decoder keeps its own reference to what it read).
    classes = [cls, *_enum_classes(spec)]
    fresh = [k for k in classes if "__msgspec_cache__" not in k.__dict__]
    try:
        return _build_typed(spec, msgspec, json=json)
    finally:
        for k in fresh:
            if "__msgspec_cache__" in k.__dict__:
                delattr(k, "__msgspec_cache__")


def _enum_classes(spec: ModelSpec) -> list[type]:
    found: list[type] = []

    def walk(node: c.Node) -> None:
        if isinstance(node, c.EnumNode):
            found.append(node.cls)
        for child in _children(node):
            walk(child)

    for f in spec.fields:
        walk(f.node)
    return found


def _build_typed(spec: ModelSpec, msgspec: Any, *, json: bool) -> Callable[[bytes], Any] | None:
    cls = spec.cls
    try:
        if json:
            main = msgspec.json.Decoder(type=cls).decode
        else:
            main = msgspec.msgpack.Decoder(type=cls).decode
        # The witness: every stored field, unparsed (Raw) except datetimes and
        # times, which it reads as text; unknown keys are an error.
        times: list[tuple[str, str, Callable[[str], Any]]] = []
        witness_fields: list[tuple[str, Any, Any]] = []
        for f in spec.fields:
            parse = _time_parser(f.node)
            if parse is not None:
                times.append((f.stored, f.attr, parse))
                witness_fields.append((f.stored, str | None, None))
            else:
                witness_fields.append((f.stored, msgspec.Raw, msgspec.Raw()))
        witness_type = msgspec.defstruct(
            "Witness", witness_fields, forbid_unknown_fields=True, kw_only=True
        )
        if json:
            witness = msgspec.json.Decoder(type=witness_type).decode
        else:
            witness = msgspec.msgpack.Decoder(type=witness_type).decode
    except Exception:  # an annotation msgspec cannot decode: stay untyped
        return None
    if not times:

        def decode(payload: bytes) -> Any:
            obj = main(payload)
            witness(payload)
            return obj

        return decode

    def decode_timed(payload: bytes) -> Any:
        obj = main(payload)
        seen = witness(payload)
        for stored, attr, parse in times:
            text = getattr(seen, stored)
            if text is not None:
                value = getattr(obj, attr)
                parsed = parse(text)
                if parsed != value or parsed.utcoffset() != value.utcoffset():
                    raise ValueError("msgspec read this time otherwise")
        return obj

    return decode_timed


def _time_parser(node: c.Node) -> Callable[[str], Any] | None:
    if isinstance(node, c.OptionalNode):
        node = node.inner
    if isinstance(node, c.ConvertNode) and node.cls in (_dt.datetime, _dt.time):
        parse: Callable[[str], Any] = node.cls.fromisoformat
        return parse
    return None


def _model_ok(cls: type, spec: ModelSpec, *, top: bool) -> bool:
    """Whether msgspec decodes this model into an equal object wherever it succeeds."""
    fields = getattr(cls, "__dataclass_fields__", {})
    params = getattr(cls, "__dataclass_params__", None)
    init = cls.__dict__.get("__init__")
    if (
        params is None
        or not params.init
        or init is None
        or getattr(getattr(init, "__code__", None), "co_filename", "") != "<string>"
        or len(fields) != len(spec.fields)  # init=False fields, InitVars, ClassVars
        or any(f.stored != f.attr for f in spec.fields)  # Field(name=...)
    ):
        return False
    return all(_typed_ok(f.node, top=top) for f in spec.fields)


def _typed_ok(node: c.Node, *, top: bool) -> bool:
    """Whether msgspec's typed decode of this annotation follows exactly our rules.

    msgspec refuses bool for int and float, reads an int into a float field as
    float, reads enums by value and Literals by type and value, and checks
    list / tuple / set / dict shapes, as the compiled decoder does. Left out:
    ``Any`` and user codecs (nothing to compare with), ``timedelta`` (msgspec
    reads ISO durations), ``Decimal`` (msgspec also reads numbers), bytes,
    abstract containers, Flag enums and enums of mixed or float values, bool
    Literals, nested dataclasses (their unknown keys would go unchecked), and
    datetimes or times below the top level (the witness re-reads top-level ones).
    """
    if isinstance(node, c.ScalarNode):
        return node.exact in (str, int, float, bool)
    if isinstance(node, c.OptionalNode):
        return _typed_ok(node.inner, top=top)
    if isinstance(node, c.EnumNode):
        return not node.flag and node.value_types in (frozenset({int}), frozenset({str}))
    if isinstance(node, c.LiteralNode):
        return all(t in (str, int, type(None)) for t, _ in node.allowed)
    if isinstance(node, c.ConvertNode):
        if node.cls in (_dt.date, uuid.UUID):
            return True
        return top and _TIMES_TYPED and node.cls in (_dt.datetime, _dt.time)
    if isinstance(node, c.SequenceNode):
        return node.accepts is node.kind and _typed_ok(node.item, top=False)
    if isinstance(node, c.TupleNode):
        return bool(node.items) and all(_typed_ok(i, top=False) for i in node.items)
    if isinstance(node, c.DictNode):
        return (
            isinstance(node.key, c.ScalarNode)
            and node.key.exact is str
            and node.desc.startswith("dict[")
            and _typed_ok(node.value, top=False)
        )
    return False
