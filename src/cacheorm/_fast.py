"""The fast codec path: native readers and writers under the compiled codecs (``fast`` extra).

When msgspec is installed, a :class:`~cacheorm.Repository` using the built-in
``JSONSerializer`` or ``MsgpackSerializer`` reads through msgspec and writes
through orjson / ormsgpack (plain models) or msgspec (the rest). The stored
bytes, the records and every error are the stdlib path's:

* **Direct writes** (:func:`_direct_encoder`): code the codec nodes write runs
  the checks ``enc_N`` runs, then orjson / ormsgpack write the dataclass
  whole. Anything they would spell otherwise goes through ``enc_N``.
* **Dict writes** (:func:`_native_dumps`): ``enc_N`` (the same checks and
  conversions), then msgspec writes the dict; JSON floats msgspec spells
  otherwise, and models with unchecked values (``Any``, user codecs), go to
  the stdlib serializer.
* **Reads**: a native decode; on *any* exception the stdlib path reads the
  record again from the start, so every error is its error, and a native
  decode only ever succeeds where the stdlib path succeeds with an equal
  record. *Typed* (:func:`_typed_decoder`): msgspec decodes a struct of the
  stored primitives (refusing unknown keys), and generated code applies the
  stdlib parsers and builds the object as ``__init__`` does. *Untyped* (JSON
  only): msgspec parses to primitives and ``dec_N`` checks them.

docs/design.md ("The fast codec path") explains each choice. The libraries
are imported lazily, so ``import cacheorm`` never needs them. Set the
environment variable ``CACHEORM_FAST=0`` to turn the fast path off.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import os
import sys
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Literal

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
        typed: reads decode into a struct of the stored primitives (else into
            primitives checked by the compiled ``dec_N``).
    """

    def __init__(
        self,
        dumps: Callable[[Any], bytes],
        decode: Callable[[bytes], Any],
        *,
        typed: bool,
        encode: Callable[[Any], Any] | None = None,
    ) -> None:
        self.dumps = dumps
        self.decode = decode
        self.typed = typed
        #: replaces the compiled ``enc_N`` for models written directly by
        #: orjson / ormsgpack: checks the record and hands it on unchanged
        #: (``dumps`` takes the record or, where it needed converting, a dict).
        self.encode = encode


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
        checks = _float_check(spec, compiled.models) if json else None
        dumps = _native_dumps(encode, slow_dumps, checks)
    decode, typed = _decoder(compiled, msgspec, json=json)
    direct = _direct_encoder(compiled, dumps, json=json)
    if direct is not None:
        encode_obj, dumps = direct
        return FastCodec(dumps, decode, typed=typed, encode=encode_obj)
    return FastCodec(dumps, decode, typed=typed)


def fast_load(
    decode: Callable[[bytes], Any], slow_load: Callable[[str, bytes], Any]
) -> Callable[[str, bytes], Any]:
    """``Repository._decode_payload`` through ``decode``; ``slow_load`` on any error.

    The stdlib path then reads the record again and raises its own
    ``DeserializationError`` (or returns the record, where msgspec was only
    stricter), so errors are the stdlib path's by construction.
    """

    make_load = getattr(decode, "make_load", None)
    if make_load is not None:
        made: Callable[[str, bytes], Any] = make_load(slow_load)
        return made

    def load(key: str, payload: bytes) -> Any:
        try:
            return decode(payload)
        except Exception:
            return slow_load(key, payload)

    return load


# --- writes ---------------------------------------------------------------------------


def _native_dumps(
    encode: Callable[[Any], bytes],
    slow: Callable[[Any], bytes],
    checks: tuple[list[str], dict[str, Any]] | None,
) -> Callable[[Any], bytes]:
    """``dumps`` through msgspec: the stdlib serializer's where ``checks`` say so or msgspec fails.

    On a failure the stdlib serializer runs and raises its own error (or
    writes what msgspec could not, such as an int past 64 bits in JSON).
    """
    lines, ns = checks if checks is not None else ([], {})
    ns = {**ns, "_enc": encode, "_slow": slow}
    source = "\n".join(
        [
            "def dumps(d):",
            *lines,
            "    try:",
            "        return _enc(d)",
            "    except Exception:",
            "        return _slow(d)",
        ]
    )
    exec(compile(source + "\n", "<cacheorm fast dumps>", "exec"), ns)
    dumps: Callable[[Any], bytes] = ns["dumps"]
    return dumps


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
) -> tuple[list[str], dict[str, Any]] | None:
    """Lines for ``dumps``: the stdlib serializer for floats msgspec spells otherwise.

    Python writes floats with ``repr``: an exponent (``1e+16``) below 1e-4 and
    from 1e16 on, where msgspec writes ``1e16``; and NaN / Infinity as tokens,
    which msgspec writes as ``null``. Such records go to the stdlib serializer,
    so the bytes are the same either way. None if the model holds no floats.
    """
    helpers: list[str] = []
    funcs: dict[type, str] = {}
    ns: dict[str, Any] = {"_bad": _bad_float}
    counter = [0]

    def var() -> str:
        counter[0] += 1
        return f"v{counter[0]}"

    def floaty(node: c.Node, seen: frozenset[type]) -> bool:
        if isinstance(node, c.ScalarNode):
            return node.exact is float
        if isinstance(node, c.EnumNode):
            return float in node.value_types
        if isinstance(node, c.ModelNode):
            if node.cls in seen:
                return True  # recursive: its own function decides
            inner = models[node.cls].fields
            return any(floaty(f.node, seen | {node.cls}) for f in inner)
        return any(floaty(child, seen) for child in _children(node))

    def emit(node: c.Node, src: str, indent: str, out: list[str], bad: str) -> None:
        if isinstance(node, c.ScalarNode):
            # enc_N hands over a float here (an int was converted).
            out.append(f"{indent}if not ({src} == 0.0 or 1e-4 <= abs({src}) < 1e16): {bad}")
        elif isinstance(node, c.EnumNode):
            out.append(f"{indent}if _bad({src}): {bad}")
        elif isinstance(node, c.OptionalNode):
            out.append(f"{indent}if {src} is not None:")
            emit(node.inner, src, indent + "    ", out, bad)
        elif isinstance(node, c.SequenceNode):
            item = var()
            out.append(f"{indent}for {item} in {src}:")
            emit(node.item, item, indent + "    ", out, bad)
        elif isinstance(node, c.TupleNode):
            for i, child in enumerate(node.items):
                if floaty(child, frozenset()):
                    emit(child, f"{src}[{i}]", indent, out, bad)
        elif isinstance(node, c.DictNode):
            item = var()
            out.append(f"{indent}for {item} in {src}.values():")
            emit(node.value, item, indent + "    ", out, bad)
        elif isinstance(node, c.ModelNode):
            if node.cls not in funcs:
                funcs[node.cls] = f"_chk{len(funcs)}"
                body = fields_of(models[node.cls], "return True")
                helpers.extend([f"def {funcs[node.cls]}(d):", *body, "    return False"])
            out.append(f"{indent}if {funcs[node.cls]}({src}): {bad}")

    def fields_of(model: ModelSpec, bad: str) -> list[str]:
        body: list[str] = []
        for f in model.fields:
            if floaty(f.node, frozenset({model.cls})):
                local = var()
                body.append(f"    {local} = d[{f.stored!r}]")
                emit(f.node, local, "    ", body, bad)
        return body

    lines = fields_of(spec, "return _slow(d)")
    if not lines:
        return None
    if helpers:
        exec(compile("\n".join(helpers) + "\n", "<cacheorm fast float checks>", "exec"), ns)
    return lines, ns


def _bad_float(v: Any) -> bool:
    """True unless ``v`` is a float Python and msgspec both write without an exponent."""
    if type(v) is not float:
        return False
    return not (v == 0.0 or 1e-4 <= abs(v) < 1e16)  # NaN fails every comparison


# --- reads ----------------------------------------------------------------------------


def _decoder(
    compiled: CompiledModel[Any], msgspec: Any, *, json: bool
) -> tuple[Callable[[bytes], Any], bool]:
    typed = _typed_decoder(compiled.spec, msgspec, json=json)
    if typed is not None:
        return typed, True
    dec = compiled.decode
    if json:
        # msgspec's untyped JSON reader returns what json.loads returns wherever
        # it succeeds (it refuses NaN tokens, out-of-range numbers and lone
        # surrogate escapes, which then go to the stdlib path).
        untyped = msgspec.json.Decoder().decode

        def decode(payload: bytes) -> Any:
            return dec(untyped(payload))

        return decode, False
    # msgpack: msgspec's untyped reader accepts int map keys and reads
    # extension types that the msgpack package refuses or reads otherwise.
    slow_loads = MsgpackSerializer().loads

    def decode_msgpack(payload: bytes) -> Any:
        return dec(slow_loads(payload))

    return decode_msgpack, False


class _Plan:
    """The shadow struct's fields and the converter's expressions for one model."""

    def __init__(self) -> None:
        self.fields: list[tuple[Any, ...]] = []
        self.rename: dict[str, str] = {}
        self.lines: list[str] = []
        self.ns: dict[str, Any] = {}

    def const(self, value: Any) -> str:
        name = f"_k{len(self.ns)}"
        self.ns[name] = value
        return name


def _typed_decoder(spec: ModelSpec, msgspec: Any, *, json: bool) -> Callable[[bytes], Any] | None:
    """Decode into a struct of the stored primitives, then build the dataclass.

    The struct (``msgspec.defstruct``) has one field per stored field, typed
    with what the stored format holds there (a datetime is ``str``, a
    timedelta ``int``), renamed to the stored name, and refuses unknown keys
    (msgspec skips unknown keys unchecked, the stdlib reader does not). The
    converter applies the stdlib path's own parsers (``fromisoformat``,
    ``Decimal``, ...) and builds the object as the dataclass's ``__init__``
    would: fields set in order, then ``__post_init__``.
    """
    cls = spec.cls
    if not _model_ok(cls, spec):
        return None
    plan = _Plan()
    for f in spec.fields:
        if not _field(plan, f, msgspec):
            return None
    # msgspec caches what it reads of a class in a ``__msgspec_cache__`` class
    # attribute; cacheorm never changes the user's classes, so those go again
    # (each decoder keeps its own reference to what it read).
    classes = _enum_classes(spec)
    fresh = [k for k in classes if "__msgspec_cache__" not in k.__dict__]
    try:
        shadow = msgspec.defstruct(
            f"{cls.__name__}Stored",
            plan.fields,
            rename=plan.rename or None,
            forbid_unknown_fields=True,
            kw_only=True,
            gc=False,
        )
        module = msgspec.json if json else msgspec.msgpack
        read = module.Decoder(type=shadow).decode
    except Exception:  # an annotation msgspec cannot decode: stay untyped
        return None
    finally:
        for k in fresh:
            if "__msgspec_cache__" in k.__dict__:
                delattr(k, "__msgspec_cache__")
    ns = plan.ns
    ns.update(
        {
            "_new": object.__new__,
            "_set": object.__setattr__,
            "_cls": cls,
            "_read": read,
            "_asdict": msgspec.structs.asdict,
        }
    )
    steps = ["d = _asdict(_read(payload))", *(line[4:] for line in plan.lines)]
    steps.append("o = _new(_cls)")
    params = getattr(cls, "__dataclass_params__", None)
    if not _has_dict(cls):
        steps += ["for k, v in d.items():", "    _set(o, k, v)"]
    elif params is not None and params.frozen:
        steps.append("_set(o, '__dict__', d)")
    else:
        steps.append("o.__dict__ = d")  # no custom __setattr__ (_model_ok)
    if hasattr(cls, "__post_init__"):
        steps.append("o.__post_init__()")
    steps.append("return o")
    # decode() for direct use; make_load(slow) for Repository._decode_payload, with the
    # fallback inside the same frame (one Python call per record, not two).
    lines = ["def decode(payload):", *("    " + x for x in steps)]
    lines += ["", "def make_load(_slow):", "    def load(key, payload):", "        try:"]
    lines += ["            " + x for x in steps]
    lines += [
        "        except Exception:",
        "            return _slow(key, payload)",
        "    return load",
    ]
    source = "\n".join(lines) + "\n"
    exec(compile(source, f"<cacheorm fast {cls.__qualname__}>", "exec"), ns)
    decode: Callable[[bytes], Any] = ns["decode"]
    decode.make_load = ns["make_load"]  # type: ignore[attr-defined]
    return decode


def _has_dict(cls: type[object]) -> bool:
    try:
        probe: Any = object.__new__(cls)
    except Exception:  # pragma: no cover - excluded by _model_ok
        return False
    return hasattr(probe, "__dict__")


def _field(plan: _Plan, f: Any, msgspec: Any) -> bool:
    """Add stored field ``f`` to the plan; False if the typed path cannot take it."""
    node = f.node
    optional = isinstance(node, c.OptionalNode)
    inner = node.inner if optional else node
    convert: str | None = None
    tp: Any = _native(node)
    if tp is None:
        stored, convert = _converted(plan, inner)
        if stored is None:
            return False
        tp = stored | None if optional else stored
    has_default = f.default is not c.MISSING or f.default_factory is not None
    if has_default:
        plan.fields.append((f.attr, tp | msgspec.UnsetType, msgspec.UNSET))
    else:
        plan.fields.append((f.attr, tp))
    if f.stored != f.attr:
        plan.rename[f.attr] = f.stored
    if convert is None and not has_default:
        return True
    # The struct's fields are the attributes, so asdict() gives the object's
    # __dict__; converted and defaulted entries are replaced in place.
    slot = f"d[{f.attr!r}]"
    local = f"v{len(plan.fields)}"
    lines = plan.lines
    lines.append(f"    {local} = {slot}")
    indent = "    "
    if has_default:
        lines.append(f"    if {local} is {plan.const(msgspec.UNSET)}:")
        if f.default_factory is not None:
            lines.append(f"        {slot} = {plan.const(f.default_factory)}()")
        else:
            lines.append(f"        {slot} = {plan.const(f.default)}")
        if convert is None:
            return True
        lines.append("    else:")
        indent = "        "
    if convert is not None:
        if optional:
            lines.append(f"{indent}if {local} is not None:")
            indent += "    "
        lines.append(f"{indent}{slot} = {convert.format(local)}")
    return True


def _converted(plan: _Plan, node: c.Node) -> tuple[Any, str | None]:
    """The stored primitive type and the converter expression of a converted field."""
    if not isinstance(node, c.ConvertNode):
        return None, None
    if node.cls in (_dt.datetime, _dt.time):
        if not _TIMES_TYPED:  # pragma: no cover - Python 3.10 only
            return None, None
        return str, plan.const(node.cls.fromisoformat) + "({})"
    if node.cls is _dt.timedelta:
        return int, plan.const(_dt.timedelta) + "(microseconds={})"
    if node.cls is decimal.Decimal:
        return str, plan.const(decimal.Decimal) + "({})"
    return None, None  # pragma: no cover - dates and UUIDs are native (_native)


def _native(node: c.Node) -> Any:
    """The type msgspec decodes exactly as the compiled decoder does, or None.

    msgspec refuses bool for int and float, reads an int into a float field as
    float, reads enums by value and Literals by type and value, and checks
    list / tuple / set / dict shapes, as the compiled decoder does; its date
    and UUID parsers accept a subset of ``date.fromisoformat`` and ``UUID``'s
    inputs and read them alike. Left out: ``Any`` and user codecs (their
    values are unchecked), bytes, abstract containers, Flag enums and enums of
    mixed or float values, bool Literals and nested dataclasses.
    """
    if isinstance(node, c.ScalarNode):
        return node.exact if node.exact in (str, int, float, bool) else None
    if isinstance(node, c.OptionalNode):
        inner = _native(node.inner)
        return None if inner is None else inner | None
    if isinstance(node, c.EnumNode):
        ok = not node.flag and node.value_types in (frozenset({int}), frozenset({str}))
        return node.cls if ok else None
    if isinstance(node, c.LiteralNode):
        values = tuple(v for _, v in node.allowed)
        if all(t in (str, int, type(None)) for t, _ in node.allowed):
            return Literal[values]
        return None
    if isinstance(node, c.ConvertNode):
        return node.cls if node.cls in (_dt.date, uuid.UUID) else None
    if isinstance(node, c.SequenceNode):
        item = _native(node.item)
        if node.accepts is not node.kind or item is None:
            return None
        if node.kind is tuple:
            return tuple[item, ...]  # type: ignore[valid-type]
        return node.kind[item]  # type: ignore[index]
    if isinstance(node, c.TupleNode):
        items = [_native(i) for i in node.items]
        if not items or any(i is None for i in items):
            return None
        return tuple[tuple(items)]  # type: ignore[misc]
    if isinstance(node, c.DictNode):
        value = _native(node.value)
        ok = isinstance(node.key, c.ScalarNode) and node.key.exact is str
        if not ok or value is None or not node.desc.startswith("dict["):
            return None
        return dict[str, value]  # type: ignore[valid-type]
    return None


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


def _model_ok(cls: type, spec: ModelSpec) -> bool:
    """Whether setting the fields and calling ``__post_init__`` is what ``__init__`` does."""
    fields = getattr(cls, "__dataclass_fields__", {})
    params = getattr(cls, "__dataclass_params__", None)
    init = cls.__dict__.get("__init__")
    return not (
        params is None
        or not params.init
        or init is None
        or getattr(getattr(init, "__code__", None), "co_filename", "") != "<string>"
        or getattr(cls, "__new__", None) is not object.__new__
        # __init__ assigns through a custom __setattr__ (frozen ones are bypassed)
        or (not params.frozen and getattr(cls, "__setattr__", None) is not object.__setattr__)
        or len(fields) != len(spec.fields)  # init=False fields, InitVars, ClassVars
    )


# --- direct writes (orjson / ormsgpack) ------------------------------------------------


def _direct_encoder(
    compiled: CompiledModel[Any], dict_dumps: Callable[[Any], bytes], *, json: bool
) -> tuple[Callable[[Any], Any], Callable[[Any], bytes]] | None:
    """Check the record with the compiled checks and let orjson / ormsgpack write it whole.

    orjson (json) and ormsgpack (msgpack) serialize a dataclass in C, with
    datetimes as ISO 8601 text (``+00:00``, not msgspec's ``Z``): for the
    annotations :func:`_direct_ok` takes, their bytes are the stdlib
    serializers'. The record is checked by code the codec nodes write (the
    same checks ``enc_N`` runs; their conversions are not run), with every
    normalizing helper (a ``str`` subclass to ``str``, an int to float, ...)
    replaced by a refusal: such a record, one whose datetime offset has
    seconds, whose float needs an exponent, or whose ``__dict__`` holds more
    than its fields, goes through ``enc_N`` and ``dict_dumps`` instead, and so
    does any value the library refuses (a subclass, an int past 64 bits).
    """
    spec = compiled.spec
    cls = spec.cls
    if spec.auto_field is not None or not _model_ok(cls, spec):
        return None  # an auto id is filled into the encoded dict (Repository._with_id)
    if any(f.stored != f.attr or not _direct_ok(f.node, top=True) for f in spec.fields):
        return None
    try:
        if json:
            import orjson

            write: Callable[..., bytes] = orjson.dumps
            option = orjson.OPT_PASSTHROUGH_SUBCLASS
        else:
            import ormsgpack

            write = ormsgpack.packb
            option = ormsgpack.OPT_PASSTHROUGH_SUBCLASS
    except ImportError:
        return None
    ns: dict[str, Any] = dict(c.BASE_NAMESPACE)
    for helper in ("_to_str", "_to_int", "_to_float", "_to_bytes", "_to_list", "_to_dict"):
        ns[helper] = _refuse
    ns["_instance"] = _refuse
    ns["_date_only"] = _refuse
    ns.update(
        {
            "_enc": compiled.encode,
            "_write": write,
            "_option": option,
            "_default": _refuse,
            "_dict_dumps": dict_dumps,
            "_MIN": _dt.timedelta(minutes=1),
            "_UTC": _dt.timezone.utc,
        }
    )
    ns["_cls"] = cls
    g = c.Gen(ns, explain=False, binary=not json)
    with g.block():
        g.line("if type(o) is not _cls:")  # a subclass would be written with its own fields
        with g.block():
            g.line("raise _F")
        if _has_dict(cls):
            g.line(f"if len(o.__dict__) != {len(spec.fields)}:")
            with g.block():
                g.line("raise _F")
        for f in spec.fields:
            local = g.var("a")
            g.line(f"{local} = o.{f.attr}")
            f.node.enc(g, local, None)  # the checks; the conversion expression is dropped
            _direct_extra(g, f.node, local, json=json)
    lines = ["def encode(o):", "    try:", *g.lines]
    lines += [
        "    except Exception:",
        "        return _enc(o)",
        "    return o",
        "",
        "def dumps(d):",
        "    if type(d) is dict:",
        "        return _dict_dumps(d)",
        "    try:",
        "        return _write(d, option=_option, default=_default)",
        "    except Exception:",
        "        return _dict_dumps(_enc(d))",
    ]
    source = "\n".join(lines) + "\n"
    exec(compile(source, f"<cacheorm direct {cls.__qualname__}>", "exec"), ns)
    return ns["encode"], ns["dumps"]


def _direct_extra(g: c.Gen, node: c.Node, src: str, *, json: bool) -> None:
    """Checks for values the direct writers spell otherwise (floats, offsets in seconds)."""
    if isinstance(node, c.OptionalNode):
        g.line(f"if {src} is not None:")
        with g.block():
            g.line("pass")
            _direct_extra(g, node.inner, src, json=json)
    elif isinstance(node, c.ScalarNode) and node.exact is float and json:
        g.line(f"if not ({src} == 0.0 or 1e-4 <= abs({src}) < 1e16):")
        with g.block():
            g.line("raise _F")
    elif isinstance(node, c.ConvertNode) and node.cls is _dt.datetime:
        # orjson and ormsgpack write the offset in whole minutes.
        tz = g.var("z")
        g.line(f"{tz} = {src}.tzinfo")
        g.line(f"if {tz} is not None and {tz} is not _UTC and {src}.utcoffset() % _MIN:")
        with g.block():
            g.line("raise _F")


def _direct_ok(node: c.Node, *, top: bool) -> bool:
    """Whether orjson / ormsgpack write this annotation's values as the stdlib path does.

    Scalars, enums of int or str values, Literals, dates, times and UUIDs,
    ``X | None``, lists and tuples and ``dict[str, ...]`` of them; floats and
    datetimes only at the top level (their spelling is checked there). Not
    sets (neither library writes them), bytes, timedelta, Decimal, ``Any``,
    user codecs, nested dataclasses or abstract containers.
    """
    if isinstance(node, c.ScalarNode):
        return node.exact in (str, int, bool) or (node.exact is float and top)
    if isinstance(node, c.OptionalNode):
        return _direct_ok(node.inner, top=top)
    if isinstance(node, c.EnumNode):
        return not node.flag and node.value_types in (frozenset({int}), frozenset({str}))
    if isinstance(node, c.LiteralNode):
        return True
    if isinstance(node, c.ConvertNode):
        if node.cls is _dt.datetime:
            return top
        return node.cls in (_dt.date, _dt.time, uuid.UUID)
    if isinstance(node, c.SequenceNode):
        return (
            node.accepts is node.kind
            and node.kind in (list, tuple)
            and _direct_ok(node.item, top=False)
        )
    if isinstance(node, c.TupleNode):
        return all(_direct_ok(i, top=False) for i in node.items)
    if isinstance(node, c.DictNode):
        return (
            isinstance(node.key, c.ScalarNode)
            and node.key.exact is str
            and node.desc.startswith("dict[")
            and _direct_ok(node.value, top=False)
        )
    return False


def _refuse(*_: Any) -> Any:
    """A value the direct writers would not write as ``enc_N`` does: go through ``enc_N``."""
    raise c._Fast  # pyright: ignore[reportPrivateUsage]  # _codecs' own signal
