"""Reading a dataclass once, and compiling its encode/decode functions.

:func:`compile_model` walks a model's fields (and nested dataclasses) with the
public ``dataclasses.fields`` and ``typing.get_type_hints(include_extras=True)``,
turns each annotation into a codec node, and generates four functions per
class: fast encode/decode, used on every call, and explain encode/decode, run
only after a fast one failed, to say where and why.
"""

from __future__ import annotations

import builtins
import dataclasses
import datetime as _dt
import decimal
import enum
import inspect
import sys
import types
import typing
import uuid
from collections.abc import Callable, Mapping, MutableSequence, Sequence
from collections.abc import Set as AbstractSet
from typing import Annotated, Any, Generic, TypeVar, cast, get_args, get_origin

from cacheorm import _codecs as c
from cacheorm._errors import ModelDefinitionError

__all__ = ["CompiledModel", "Field", "FieldSpec", "ModelSpec", "compile_model"]

T = TypeVar("T")


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Field:
    """Per-attribute options, placed in ``Annotated[T, Field(...)]``.

    Args:
        primary_key: this attribute is (part of) the record's key. Several
            primary-key fields make a composite key, in declaration order.
        name: the name stored in the payload, when it differs from the attribute.
        codec: a :class:`~cacheorm.Codec` that stores this field instead of the
            built-in conversion (for ``X | None`` it handles the ``X``).
        auto: fill this integer primary key from an atomic backend counter when
            it is ``None`` on ``create``.
        hash_tag: in the default key scheme, write this primary-key part inside
            ``{...}``, so Redis Cluster places every record with the same value
            in one slot (``"settings:{42}:theme"``). At most one per model.
        aliases: earlier stored names of this field (a rename): a record that
            lacks the stored name is read from the first alias it has. Writes
            use the stored name only.
    """

    primary_key: bool = False
    name: str | None = None
    codec: c.Codec[Any] | None = None
    auto: bool = False
    hash_tag: bool = False
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.auto and not self.primary_key:
            raise ValueError("Field(auto=True) needs primary_key=True")
        if self.hash_tag and not self.primary_key:
            raise ValueError("Field(hash_tag=True) needs primary_key=True")
        if self.name is not None and (not isinstance(self.name, str) or not self.name):
            raise ValueError(f"Field(name=...) must be a non-empty str, not {self.name!r}")
        if self.codec is not None and not isinstance(self.codec, c.Codec):
            raise TypeError(f"Field(codec=...) needs encode() and decode() methods: {self.codec!r}")
        if isinstance(self.aliases, str) or not isinstance(self.aliases, tuple):
            raise ValueError(
                f"Field(aliases=...) must be a tuple of str, not {self.aliases!r} "
                '(write aliases=("old_name",))'
            )
        for alias in self.aliases:
            if not isinstance(alias, str) or not alias:
                raise ValueError(f"Field(aliases=...) must hold non-empty str, not {alias!r}")


@dataclasses.dataclass(frozen=True, slots=True)
class FieldSpec:
    """One stored attribute of a model."""

    attr: str
    stored: str
    annotation: Any
    node: c.Node
    primary_key: bool
    auto: bool
    default: Any
    default_factory: Callable[[], Any] | None
    hash_tag: bool = False
    #: ``Field(codec=...)``: also formats the field when it is a key part.
    codec: c.Codec[Any] | None = None
    aliases: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class ModelSpec:
    """A model as read once: its stored fields and its primary-key fields."""

    cls: type
    fields: tuple[FieldSpec, ...]
    key_fields: tuple[FieldSpec, ...]
    auto_field: FieldSpec | None

    def field(self, attr: str) -> FieldSpec:
        """The spec of attribute ``attr`` (KeyError if it is not stored)."""
        for spec in self.fields:
            if spec.attr == attr:
                return spec
        raise KeyError(attr)


@dataclasses.dataclass(frozen=True, slots=True)
class CompiledModel(Generic[T]):
    """The generated functions of one model, for one serializer profile.

    ``encode`` and ``decode`` raise whatever the data provokes; callers catch
    ``Exception`` and ask ``explain_encode`` / ``explain_decode`` where it went
    wrong, which returns a :class:`~cacheorm._codecs.Failure`.
    """

    spec: ModelSpec
    encode: Callable[[T], dict[str, Any]]
    decode: Callable[[Any], T]
    _xenc: Callable[[T, str], Any]
    _xdec: Callable[[Any, str], Any]
    source: str
    #: every model reachable from this one (itself included), as read
    models: Mapping[type, ModelSpec] = dataclasses.field(default_factory=dict[type, "ModelSpec"])

    def explain_encode(self, obj: T) -> c.Failure | None:
        """Re-run encoding slowly; return where it fails, or None."""
        return _explain(self._xenc, obj)

    def explain_decode(self, data: Any) -> c.Failure | None:
        """Re-run decoding slowly; return where it fails, or None."""
        return _explain(self._xdec, data)


def _explain(fn: Callable[[Any, str], Any], value: Any) -> c.Failure | None:
    try:
        fn(value, "$")
    except c.Failure as failure:
        return failure
    except Exception as exc:
        return c.Failure("$", "a valid value", value, exc)
    return None


def type_name(tp: Any) -> str:
    """A short, readable name of an annotation for messages."""
    if isinstance(tp, type) and not get_args(tp):
        return tp.__qualname__
    return repr(tp).replace("typing.", "").replace("typing_extensions.", "")


class _Unsupported(Exception):
    pass


_SCALARS: dict[Any, tuple[type, str | None]] = {
    str: (str, "_to_str"),
    int: (int, "_to_int"),
    float: (float, "_to_float"),
    bool: (bool, None),
}

_CONVERTED: dict[Any, Callable[[], c.Node]] = {
    _dt.datetime: c.datetime_node,
    _dt.date: c.date_node,
    _dt.time: c.time_node,
    _dt.timedelta: c.timedelta_node,
    uuid.UUID: c.uuid_node,
    decimal.Decimal: c.decimal_node,
}

# Keyed by annotation origins (Any: an `in` test must not narrow the annotation).
_LIST_ORIGINS: set[Any] = {list, Sequence, MutableSequence}
_SET_ORIGINS: dict[Any, type] = {set: set, frozenset: frozenset, AbstractSet: frozenset}
_DICT_ORIGINS = {dict, Mapping}


class _Compiler:
    """Builds nodes for one root model and every dataclass reachable from it."""

    def __init__(self, *, binary: bool, allow_subclasses: bool = False) -> None:
        self.binary = binary
        self.allow_subclasses = allow_subclasses
        self.ns: dict[str, Any] = dict(c.BASE_NAMESPACE)
        self.models: dict[type, tuple[c.ModelNode, ModelSpec | None]] = {}
        self.order: list[type] = []
        self._reading: list[type] = []  # the classes being read, innermost last
        self._caller_locals: dict[str, Any] | None = None  # read once, on the first miss

    # -- annotations ----------------------------------------------------------

    def node(self, tp: Any) -> c.Node:
        if isinstance(tp, (str, typing.ForwardRef)):
            tp = self._resolve(tp)
        if tp is Any:
            return c.AnyNode()
        origin = get_origin(tp)
        args = get_args(tp)
        if origin is Annotated:
            return self._annotated(tp)
        supertype = getattr(tp, "__supertype__", None)
        if supertype is not None:  # NewType
            return self.node(supertype)
        if origin is typing.Union or origin is types.UnionType:
            return self._union(args)
        if origin is typing.Literal:
            return self._literal(args)
        if tp in _SCALARS:
            exact, normalizer = _SCALARS[tp]
            return c.ScalarNode(exact, normalizer)
        if tp is bytes:
            return c.ScalarNode(bytes, "_to_bytes") if self.binary else c.Base64BytesNode()
        if tp in _CONVERTED:
            return _CONVERTED[tp]()
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            return self._enum(tp)
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            return self.model(tp)
        # Any: an annotation object (the checks above narrowed ``tp`` to partly Unknown).
        container = cast(Any, origin if origin is not None else tp)
        if container in _LIST_ORIGINS or container in _SET_ORIGINS:
            (item,) = args or (Any,)
            kind = list if container in _LIST_ORIGINS else _SET_ORIGINS[container]
            return c.SequenceNode(kind, self.node(item), type_name(tp), accepts=container)
        if container is tuple:
            return self._tuple(tp, args)
        if container in _DICT_ORIGINS:
            key_type, value_type = args or (str, Any)
            key = self.node(key_type)
            if not self._str_like(key):
                raise _Unsupported(
                    f"dict keys must be str (or a str Literal / str-valued Enum), "
                    f"not {type_name(key_type)}"
                )
            return c.DictNode(key, self.node(value_type), type_name(tp))
        raise _Unsupported(f"unsupported annotation {type_name(tp)}")

    def _resolve(self, ref: str | typing.ForwardRef) -> Any:
        """Evaluate a forward reference left inside a generic (``list["Node"]`` on 3.10)."""
        text = ref if isinstance(ref, str) else ref.__forward_arg__
        cls = self._reading[-1]
        namespace = {**self._local_names(cls), **vars(sys.modules[cls.__module__])}
        namespace[cls.__name__] = cls
        try:
            return eval(text, namespace)
        except Exception as exc:
            raise _Unsupported(f"cannot resolve the forward reference {text!r}: {exc}") from None

    @staticmethod
    def _str_like(node: c.Node) -> bool:
        if isinstance(node, c.ScalarNode):
            return node.exact is str
        if isinstance(node, c.LiteralNode):
            return all(t is str for t, _ in node.allowed)
        if isinstance(node, c.EnumNode):
            return node.value_types == frozenset({str})
        return False

    def _annotated(self, tp: Any) -> c.Node:
        base = tp.__origin__
        fields = [m for m in tp.__metadata__ if isinstance(m, Field)]
        if not fields:
            return self.node(base)
        (field,) = fields  # two Fields are rejected before we get here
        if field.primary_key or field.auto or field.name is not None or field.aliases:
            raise _Unsupported(
                "Field(primary_key/auto/name/aliases) belongs on the attribute's own "
                "annotation, not inside another type"
            )
        return self.with_codec(base, field.codec)

    def with_codec(self, base: Any, codec: c.Codec[Any] | None) -> c.Node:
        if codec is None:
            return self.node(base)
        args = get_args(base)
        if (get_origin(base) in (typing.Union, types.UnionType)) and type(None) in args:
            return c.OptionalNode(c.CodecNode(codec))
        return c.CodecNode(codec)

    def _union(self, args: tuple[Any, ...]) -> c.Node:
        others = [a for a in args if a is not type(None)]
        if len(others) == 1 and len(args) == 2:
            return c.OptionalNode(self.node(others[0]))
        raise _Unsupported(
            "unions other than `X | None` are not supported "
            f"(got {' | '.join(type_name(a) for a in args)}); use Field(codec=...)"
        )

    @staticmethod
    def _literal(values: tuple[Any, ...]) -> c.Node:
        for value in values:
            if value is not None and type(value) not in (str, int, bool):
                raise _Unsupported(f"Literal values must be str, int, bool or None, not {value!r}")
        return c.LiteralNode(values)

    @staticmethod
    def _enum(tp: type[enum.Enum]) -> c.Node:
        for member in tp:
            if type(member.value) not in (str, int, float, bool):
                raise _Unsupported(
                    f"enum {tp.__qualname__} has a member whose value is not a str, int, "
                    f"float or bool: {member!r}"
                )
        if not list(tp):
            raise _Unsupported(f"enum {tp.__qualname__} has no members")
        return c.EnumNode(tp)

    def _tuple(self, tp: Any, args: tuple[Any, ...]) -> c.Node:
        if not args:
            return c.SequenceNode(tuple, c.AnyNode(), type_name(tp))
        if len(args) == 2 and args[1] is Ellipsis:
            return c.SequenceNode(tuple, self.node(args[0]), type_name(tp))
        if args == ((),):  # tuple[()]
            return c.TupleNode([], type_name(tp))
        return c.TupleNode([self.node(a) for a in args], type_name(tp))

    # -- models ---------------------------------------------------------------

    def model(self, cls: type) -> c.ModelNode:
        if cls in self.models:
            return self.models[cls][0]
        index = len(self.order)
        names = {
            "enc": f"enc_{index}",
            "dec": f"dec_{index}",
            "xenc": f"xenc_{index}",
            "xdec": f"xdec_{index}",
        }
        node = c.ModelNode(cls, names)
        self.models[cls] = (node, None)
        self.order.append(cls)
        self._reading.append(cls)
        try:
            self.models[cls] = (node, self._read(cls))
        finally:
            self._reading.pop()
        return node

    def _read(self, cls: type) -> ModelSpec:
        try:
            hints = typing.get_type_hints(cls, include_extras=True, localns={cls.__name__: cls})
        except NameError:
            hints = self._hints_with_caller_locals(cls)
        except Exception as exc:
            raise ModelDefinitionError(
                f"cannot resolve the annotations of {cls.__qualname__}: {exc}", model=cls
            ) from exc
        for attr, hint in hints.items():
            if isinstance(hint, dataclasses.InitVar):
                dc_field = cast("dataclasses.Field[Any]", cls.__dataclass_fields__[attr])  # type: ignore[attr-defined]
                if dc_field.default is dataclasses.MISSING:
                    raise ModelDefinitionError(
                        f"{cls.__qualname__}.{attr}: an InitVar without a default cannot be "
                        "rebuilt when the record is read",
                        model=cls,
                        field=attr,
                    )
        specs: list[FieldSpec] = []
        stored_names: dict[str, str] = {}
        for dc_field in dataclasses.fields(cls):
            if not dc_field.init:
                continue  # derived in __post_init__; not stored
            spec = self._field(cls, dc_field, hints[dc_field.name])
            if spec.stored in stored_names:
                raise ModelDefinitionError(
                    f"{cls.__qualname__}.{spec.attr}: stored name {spec.stored!r} is also used "
                    f"by {stored_names[spec.stored]}",
                    model=cls,
                    field=spec.attr,
                )
            stored_names[spec.stored] = spec.attr
            specs.append(spec)
        _check_aliases(cls, specs, stored_names)
        key_fields = tuple(s for s in specs if s.primary_key)
        autos = [s for s in specs if s.auto]
        if autos and len(key_fields) != 1:
            raise ModelDefinitionError(
                f"{cls.__qualname__}.{autos[0].attr}: Field(auto=True) needs a single-field "
                "primary key",
                model=cls,
                field=autos[0].attr,
            )
        tags = [s.attr for s in specs if s.hash_tag]
        if len(tags) > 1:
            raise ModelDefinitionError(
                f"{cls.__qualname__}: only one field can be Field(hash_tag=True), not "
                f"{', '.join(tags)} (Redis Cluster hashes only the first {{...}} of a key)",
                model=cls,
                field=tags[1],
            )
        return ModelSpec(cls, tuple(specs), key_fields, autos[0] if autos else None)

    def _local_names(self, cls: type) -> dict[str, Any]:
        """Local variables of the code building the repository that ``cls``'s module lacks.

        A model defined inside a function under ``from __future__ import
        annotations`` names the function's local classes in string
        annotations; like pydantic, we look them up in the first frame outside
        cacheorm. Names of the model's module and builtins win, so a local
        variable never changes what an annotation that resolved before means.
        """
        if self._caller_locals is None:
            frame = inspect.currentframe()  # None on Pythons without frames: no caller locals
            try:
                while frame is not None and _is_cacheorm(frame.f_globals.get("__name__")):
                    frame = frame.f_back
                self._caller_locals = {} if frame is None else dict(frame.f_locals)
            finally:
                del frame  # no reference cycle through the frame
        module = vars(sys.modules[cls.__module__])
        return {
            name: value
            for name, value in self._caller_locals.items()
            if name not in module and name not in vars(builtins)
        }

    def _hints_with_caller_locals(self, cls: type) -> dict[str, Any]:
        """``get_type_hints`` of ``cls`` that also sees :meth:`_local_names`, or a clear error."""
        localns = {**self._local_names(cls), cls.__name__: cls}
        try:
            return typing.get_type_hints(cls, include_extras=True, localns=localns)
        except NameError as exc:
            raise _unresolvable(cls, localns, exc) from exc
        except Exception as exc:
            raise ModelDefinitionError(
                f"cannot resolve the annotations of {cls.__qualname__}: {exc}", model=cls
            ) from exc

    def _field(self, cls: type, dc_field: dataclasses.Field[Any], hint: Any) -> FieldSpec:
        attr = dc_field.name
        base = hint
        field = Field()
        if get_origin(hint) is Annotated:
            found = [m for m in hint.__metadata__ if isinstance(m, Field)]
            if len(found) > 1:
                raise ModelDefinitionError(
                    f"{cls.__qualname__}.{attr}: has {len(found)} Field(...) annotations; "
                    "merge them into one",
                    model=cls,
                    field=attr,
                )
            if found:
                field = found[0]
                base = hint.__origin__  # other metadata is not ours: ignored
        try:
            node = self.with_codec(base, field.codec)
        except _Unsupported as exc:
            raise ModelDefinitionError(
                f"{cls.__qualname__}.{attr}: {exc}", model=cls, field=attr
            ) from None
        if field.auto and not _is_int_or_optional_int(base):
            raise ModelDefinitionError(
                f"{cls.__qualname__}.{attr}: Field(auto=True) needs an `int` or `int | None` "
                f"annotation, not {type_name(base)}",
                model=cls,
                field=attr,
            )
        if field.auto and not isinstance(node, c.OptionalNode):
            node = c.OptionalNode(node)  # None until create() assigns the id
        factory = dc_field.default_factory
        return FieldSpec(
            attr=attr,
            stored=field.name or attr,
            annotation=base,
            node=node,
            primary_key=field.primary_key,
            auto=field.auto,
            default=dc_field.default if dc_field.default is not dataclasses.MISSING else c.MISSING,
            default_factory=None if factory is dataclasses.MISSING else factory,
            hash_tag=field.hash_tag,
            codec=field.codec,
            aliases=field.aliases,
        )

    # -- code -----------------------------------------------------------------

    def generate(self) -> str:
        chunks: list[str] = []
        for cls in self.order:
            node, spec = self.models[cls]
            assert spec is not None
            for explain in (False, True):
                chunks.append(self._encoder(node, spec, explain))
                chunks.append(self._decoder(node, spec, explain))
        return "\n".join(chunks)

    def _encoder(self, node: c.ModelNode, spec: ModelSpec, explain: bool) -> str:
        g = c.Gen(self.ns, explain=explain, binary=self.binary)
        cls = g.const(spec.cls, "_t")
        # Exactly this class: a subclass would lose its own fields (unless allowed).
        g.line(f"if type(o) is not {cls}:")
        with g.block():
            check = f"_model_in(o, {cls}, {self.allow_subclasses})"
            g.guarded("o", check, "p" if explain else None, spec.cls.__qualname__, "o")
        items: list[str] = []
        for f in spec.fields:
            local = g.var("a")
            path = f"p + {'.' + f.attr!r}" if explain else None
            g.line(f"{local} = o.{f.attr}")
            items.append(f"{f.stored!r}: {f.node.enc(g, local, path)}")
        g.line("return {" + ", ".join(items) + "}")
        header = f"def {node.names['xenc']}(o, p):" if explain else f"def {node.names['enc']}(o):"
        return g.source(header)

    def _decoder(self, node: c.ModelNode, spec: ModelSpec, explain: bool) -> str:
        g = c.Gen(self.ns, explain=explain, binary=self.binary)
        cls = g.const(spec.cls, "_t")
        if explain:
            g.line("if type(d) is not dict:")
            with g.block():
                g.fail("p", f"{spec.cls.__qualname__} as a map", "d")
        kwargs: list[str] = []
        for f in spec.fields:
            local = g.var("a")
            path = f"p + {'.' + f.stored!r}" if explain else None
            has_default = f.default is not c.MISSING or f.default_factory is not None
            if not has_default and not explain and not f.aliases:
                g.line(f"{local} = d[{f.stored!r}]")
                kwargs.append(f"{f.attr}={f.node.dec(g, local, path)}")
                continue
            out = g.var("f")
            g.line(f"{local} = d.get({f.stored!r}, _M)")
            for alias in f.aliases:  # a record written before the rename
                g.line(f"if {local} is _M:")
                with g.block():
                    g.line(f"{local} = d.get({alias!r}, _M)")
            g.line(f"if {local} is _M:")
            with g.block():
                if f.default_factory is not None:
                    g.line(f"{out} = {g.const(f.default_factory, '_df')}()")
                elif f.default is not c.MISSING:
                    g.line(f"{out} = {g.const(f.default, '_dv')}")
                else:
                    g.fail(path, f.node.desc, "_M")
            g.line("else:")
            with g.block():
                g.line(f"{out} = {f.node.dec(g, local, path)}")
            kwargs.append(f"{f.attr}={out}")
        call = f"{cls}({', '.join(kwargs)})"
        if explain:
            g.guarded("r", call, "p", spec.cls.__qualname__, "d")
            g.line("return r")
        else:
            g.line(f"return {call}")
        header = f"def {node.names['xdec']}(d, p):" if explain else f"def {node.names['dec']}(d):"
        return g.source(header)


def _check_aliases(cls: type, specs: list[FieldSpec], stored_names: dict[str, str]) -> None:
    """Refuse an alias that is another field's stored name, or another field's alias."""
    seen: dict[str, str] = {}
    for spec in specs:
        for alias in spec.aliases:
            owner = stored_names.get(alias)
            if owner is not None:
                what = (
                    "its own stored name" if owner == spec.attr else f"the stored name of {owner}"
                )
                raise ModelDefinitionError(
                    f"{cls.__qualname__}.{spec.attr}: alias {alias!r} is {what}; a record "
                    "holding it could not say which field it belongs to",
                    model=cls,
                    field=spec.attr,
                )
            if alias in seen and seen[alias] != spec.attr:
                raise ModelDefinitionError(
                    f"{cls.__qualname__}.{spec.attr}: alias {alias!r} is also an alias of "
                    f"{seen[alias]}",
                    model=cls,
                    field=spec.attr,
                )
            seen[alias] = spec.attr


def _is_cacheorm(module: object) -> bool:
    """True for cacheorm's own implementation modules (skipped when looking for the caller)."""
    return module == "cacheorm" or (isinstance(module, str) and module.startswith("cacheorm._"))


def _unresolvable(cls: type, localns: dict[str, Any], exc: NameError) -> ModelDefinitionError:
    """The error for an annotation of ``cls`` that names something defined nowhere we can see."""
    missing = exc.name
    owner: type = cls
    field: str | None = None
    for base in cls.__mro__:  # which attribute's annotation names it
        globalns = vars(sys.modules[base.__module__])
        for attr, annotation in vars(base).get("__annotations__", {}).items():
            if not isinstance(annotation, str):
                continue
            try:
                eval(annotation, globalns, localns)
            except NameError as failure:
                owner, field, missing = base, attr, failure.name
                break
            except Exception:  # another problem; get_type_hints said which name is missing
                continue
        if field is not None:
            break
    where = f"{owner.__qualname__}.{field}" if field is not None else owner.__qualname__
    return ModelDefinitionError(
        f"{where}: the annotation names {missing!r}, which is neither in module "
        f"{owner.__module__} nor a local variable where the Repository is built. Define "
        f"{missing} at module level, or build the Repository in the function where {missing} "
        "is defined (string annotations, as under `from __future__ import annotations`, are "
        "resolved when the Repository is built)",
        model=owner,
        field=field,
    )


def _is_int_or_optional_int(tp: Any) -> bool:
    if tp is int:
        return True
    args = get_args(tp)
    return get_origin(tp) in (typing.Union, types.UnionType) and set(args) == {int, type(None)}


def compile_model(
    cls: type[T], *, binary: bool, allow_subclasses: bool = False
) -> CompiledModel[T]:
    """Read ``cls`` and generate its functions for a text or binary serializer.

    With ``allow_subclasses``, an instance of a subclass of ``cls`` (or of a
    nested model) is stored as that class, its own fields left out; otherwise
    it is refused, since reading it back would lose them.

    Raises:
        ModelDefinitionError: ``cls`` is not a dataclass, or a field cannot be stored.
    """
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise ModelDefinitionError(
            f"{cls!r} is not a dataclass; decorate it with @dataclasses.dataclass",
            model=cls if isinstance(cls, type) else None,
        )
    compiler = _Compiler(binary=binary, allow_subclasses=allow_subclasses)
    root = compiler.model(cls)
    source = compiler.generate()
    exec(compile(source, f"<cacheorm {cls.__qualname__}>", "exec"), compiler.ns)
    spec = compiler.models[cls][1]
    assert spec is not None
    return CompiledModel(
        spec=spec,
        encode=compiler.ns[root.names["enc"]],
        decode=compiler.ns[root.names["dec"]],
        _xenc=compiler.ns[root.names["xenc"]],
        _xdec=compiler.ns[root.names["xdec"]],
        source=source,
        models={k: m for k, (_, m) in compiler.models.items() if m is not None},
    )
