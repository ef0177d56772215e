"""References between models, and loading the records a batch refers to.

A field marked ``Annotated[int, Ref(User)]`` holds the primary key of a
``User``. :func:`load_related` reads the records a batch of records refers to
with one ``get_many`` on the referenced repository, however many records,
reference fields and duplicate keys the batch has.

The markers are read here, not by the schema compiler (which ignores metadata
it does not own): once per model, with ``typing.get_type_hints(...,
include_extras=True)``, and cached. A target named by a string is resolved at
first use, so two models can refer to each other and a model to itself.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import threading
import types
import typing
import weakref
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from typing import (
    TYPE_CHECKING,
    Annotated,
    Any,
    Generic,
    Literal,
    Protocol,
    TypeVar,
    cast,
    get_args,
    get_origin,
)

from cacheorm._errors import (
    ConfigurationError,
    ModelDefinitionError,
    NotFound,
    ValidationError,
    describe_keys,
)
from cacheorm._schema import Field, type_name

if TYPE_CHECKING:
    from cacheorm._repository import Repository

__all__ = [
    "KeyedRepository",
    "Missing",
    "Ref",
    "RelatedPlan",
    "load_related",
    "plan_related",
]

T = TypeVar("T")
U = TypeVar("U")
T_co = TypeVar("T_co", covariant=True)

#: What :func:`load_related` does with a reference to a record that is not stored.
Missing = Literal["raise", "none"]

_MISSING_POLICIES = ("raise", "none")


@dataclasses.dataclass(frozen=True, slots=True, init=False)
class Ref:
    """Marks a field as holding the primary key of another model: ``Annotated[int, Ref(User)]``.

    The field's type says how many references it holds: ``int`` (one),
    ``int | None`` (one or none), ``list[int]`` / ``tuple[int, ...]`` /
    ``set[int]`` / ``frozenset[int]`` (several). For a model with a
    composite primary key, one reference is a tuple of its parts
    (``tuple[str, int]``) and several are ``list[tuple[str, int]]``.

    Args:
        target: the referenced dataclass, or its name (``"User"``, or a dotted
            ``"module.User"``), resolved at first use: for models defined later,
            for two models that refer to each other and for a model that refers
            to itself.

    Raises:
        ModelDefinitionError: ``target`` is neither a dataclass nor a non-empty str.
    """

    target: type | str

    def __init__(self, target: type | str, /) -> None:
        if isinstance(target, str):
            if not target.strip():
                raise ModelDefinitionError("Ref(...) needs a model or its name, not ''")
        elif not (isinstance(target, type) and dataclasses.is_dataclass(target)):
            raise ModelDefinitionError(
                f"Ref(...) needs a dataclass model or its name, not {target!r}"
            )
        object.__setattr__(self, "target", target)

    def __repr__(self) -> str:
        if isinstance(self.target, str):
            return f"Ref({self.target!r})"
        return f"Ref({self.target.__qualname__})"


@dataclasses.dataclass(frozen=True, slots=True)
class RefField:
    """One reference field of a model, as read from its annotation."""

    model: type
    attr: str
    ref: Ref
    many: bool
    #: The annotation of one reference (the element type for ``many``).
    element: Any

    @property
    def label(self) -> str:
        """``Model.attr``, for messages."""
        return f"{self.model.__qualname__}.{self.attr}"


@dataclasses.dataclass(frozen=True, slots=True)
class _ModelRefs:
    """What a model's annotations say about references and primary keys."""

    fields: dict[str, RefField]
    #: Attribute names of every dataclass field (reference or not).
    attrs: frozenset[str]
    #: How many Field(primary_key=True) attributes; 0 if the key comes from a template.
    key_arity: int
    #: Attributes whose annotation could not be evaluated: the reason, by name.
    unresolved: dict[str, str]


_cache: weakref.WeakKeyDictionary[type, _ModelRefs] = weakref.WeakKeyDictionary()
_cache_lock = threading.Lock()

_MANY_ORIGINS = {list, set, frozenset, Sequence, AbstractSet, typing.MutableSequence}


def model_refs(model: type) -> _ModelRefs:
    """The reference fields of ``model``, read once and cached (per class)."""
    found = _cache.get(model)
    if found is not None:
        return found
    found = _read(model)
    if not found.unresolved:  # a later call may see names this one could not
        with _cache_lock:
            _cache[model] = found
    return found


def _read(model: type) -> _ModelRefs:
    hints, unresolved = _hints(model)
    attrs = frozenset(f.name for f in dataclasses.fields(model))
    fields: dict[str, RefField] = {}
    arity = 0
    for attr in attrs:
        hint = hints.get(attr)
        if hint is None:
            continue
        if any(isinstance(m, Field) and m.primary_key for m in _metadata(hint)):
            arity += 1
        refs = [m for m in _metadata(hint) + _element_metadata(hint) if isinstance(m, Ref)]
        if len(refs) > 1:
            raise ModelDefinitionError(
                f"{model.__qualname__}.{attr}: has {len(refs)} Ref(...) annotations; "
                "a field refers to one model",
                model=model,
                field=attr,
            )
        if refs:
            fields[attr] = _ref_field(model, attr, refs[0], hint)
    return _ModelRefs(fields, attrs, arity, unresolved)


def _metadata(hint: Any) -> tuple[Any, ...]:
    """The Annotated metadata of ``hint``, or of ``Annotated[...] | None``."""
    if get_origin(hint) is Annotated:
        return tuple(hint.__metadata__)
    if _is_union(hint):
        return tuple(m for arg in get_args(hint) for m in _metadata(arg))
    return ()


def _element_metadata(hint: Any) -> tuple[Any, ...]:
    """The Annotated metadata of a collection's element: ``list[Annotated[int, Ref(Tag)]]``."""
    base = _without_none(_strip(hint))
    if _is_many(base):
        return _metadata(get_args(base)[0])
    return ()


def _is_many(base: Any) -> bool:
    """``list[X]``, ``set[X]``, ``frozenset[X]``, ``Sequence[X]`` or ``tuple[X, ...]``."""
    origin = get_origin(base)
    args = get_args(base)
    if origin is tuple:
        return len(args) == 2 and args[1] is Ellipsis
    return origin in _MANY_ORIGINS and len(args) == 1


def _strip(hint: Any) -> Any:
    """``hint`` without Annotated metadata at its top (and inside ``X | None``)."""
    if get_origin(hint) is Annotated:
        return _strip(hint.__origin__)
    if _is_union(hint):
        args = tuple(_strip(a) for a in get_args(hint))
        return typing.Union[args]  # noqa: UP007 - rebuilding a union of runtime values
    return hint


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (typing.Union, types.UnionType)


def _without_none(tp: Any) -> Any:
    if _is_union(tp):
        others = [a for a in get_args(tp) if a is not type(None)]
        if len(others) == 1:
            return others[0]
    return tp


def _ref_field(model: type, attr: str, ref: Ref, hint: Any) -> RefField:
    base = _without_none(_strip(hint))
    if _is_many(base):
        return RefField(model, attr, ref, True, _without_none(_strip(get_args(base)[0])))
    if get_origin(base) is dict or base in (list, set, frozenset, tuple, dict):
        raise ModelDefinitionError(
            f"{model.__qualname__}.{attr}: a Ref field holds a key, `X | None`, or a "
            f"list / tuple[X, ...] / set / frozenset of keys, not {type_name(base)}",
            model=model,
            field=attr,
        )
    return RefField(model, attr, ref, False, base)


def _hints(model: type) -> tuple[dict[str, Any], dict[str, str]]:
    """The type hints of ``model``'s attributes, and those that cannot be evaluated.

    Like the schema compiler, names missing from the model's module are looked
    up in the first caller frame outside cacheorm (models defined in a
    function under ``from __future__ import annotations``). An attribute that
    still cannot be evaluated is reported only if a caller asks for it.
    """
    localns: dict[str, Any] = {model.__name__: model}
    try:
        return typing.get_type_hints(model, include_extras=True, localns=localns), {}
    except Exception:  # fall back to one attribute at a time
        pass
    localns = {**_caller_locals(), model.__name__: model}
    hints: dict[str, Any] = {}
    unresolved: dict[str, str] = {}
    for base in reversed(model.__mro__):
        globalns = vars(sys.modules[base.__module__]) if base.__module__ in sys.modules else {}
        for attr, annotation in vars(base).get("__annotations__", {}).items():
            try:
                if isinstance(annotation, str):
                    annotation = eval(annotation, dict(globalns), localns)
                hints[attr] = annotation
                unresolved.pop(attr, None)
            except Exception as exc:  # reported when the field is used
                unresolved[attr] = f"{type(exc).__name__}: {exc}"
    return hints, unresolved


def _caller_locals() -> dict[str, Any]:
    frame = inspect.currentframe()
    try:
        while frame is not None and _is_cacheorm(frame.f_globals.get("__name__")):
            frame = frame.f_back
        return {} if frame is None else dict(frame.f_locals)
    finally:
        del frame


def _is_cacheorm(module: object) -> bool:
    return module == "cacheorm" or (isinstance(module, str) and module.startswith("cacheorm._"))


def resolve_field(model: type, attr: str, target: type) -> RefField:
    """The reference field ``model.attr``, checked to refer to ``target``.

    Raises:
        ConfigurationError: ``model`` has no field ``attr``, it is not a
            ``Ref``, or it refers to another model than ``target``.
        ModelDefinitionError: the annotation cannot be evaluated, the ``Ref``
            target cannot be found, or its shape does not fit the target's key.
    """
    name = model.__qualname__
    if not isinstance(attr, str):
        raise ConfigurationError(f"{name}: a reference field name must be a str, not {attr!r}")
    refs = model_refs(model)
    if attr in refs.unresolved:
        raise ModelDefinitionError(
            f"{name}.{attr}: cannot evaluate the annotation ({refs.unresolved[attr]})",
            model=model,
            field=attr,
        )
    field = refs.fields.get(attr)
    if field is None:
        if attr not in refs.attrs:
            raise ConfigurationError(
                f"{name} has no field {attr!r} (fields: {', '.join(sorted(refs.attrs))})",
                model=model,
                field=attr,
            )
        marked = ", ".join(sorted(refs.fields)) or "none"
        raise ConfigurationError(
            f"{name}.{attr} is not a reference: annotate it `Annotated[..., co.Ref(Model)]` "
            f"(reference fields of {name}: {marked})",
            model=model,
            field=attr,
        )
    referenced = _resolve_target(field, target)
    if referenced is not target:
        wanted, given = referenced.__qualname__, target.__qualname__
        if referenced.__name__ == target.__name__:  # namesakes: say which is which
            wanted, given = _full_name(referenced), _full_name(target)
        raise ConfigurationError(
            f"{field.label} refers to {wanted}, but the repository given stores {given}",
            model=model,
            field=attr,
        )
    _check_shape(field, target)
    return field


def _resolve_target(field: RefField, target: type) -> type:
    """The class ``field.ref`` names; a name is looked up in the model's module first."""
    wanted = field.ref.target
    if not isinstance(wanted, str):
        return wanted
    model = field.model
    if wanted in (model.__name__, model.__qualname__):
        return model
    module = sys.modules.get(model.__module__)
    head, *rest = wanted.split(".")
    found: Any = getattr(module, head, None) if module is not None else None
    if found is None and head in sys.modules:
        found = sys.modules[head]
    for part in rest:
        found = getattr(found, part, None)
    if isinstance(found, type):
        return found
    # Not a module-level name (a model defined in a function): the target
    # repository's model is the one meant when its name matches.
    if wanted in (target.__name__, target.__qualname__, _full_name(target)):
        return target
    raise ModelDefinitionError(
        f"{field.label}: Ref({wanted!r}) names no class in module {model.__module__}, "
        f"and the repository given stores {target.__qualname__}",
        model=model,
        field=field.attr,
    )


def _full_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _check_shape(field: RefField, target: type) -> None:
    """A composite-key target needs tuples; a single-key target must not get them."""
    arity = model_refs(target).key_arity
    element = field.element
    fixed_tuple = get_origin(element) is tuple and Ellipsis not in get_args(element)
    if arity > 1 and element is not Any and not fixed_tuple:
        raise ModelDefinitionError(
            f"{field.label}: {target.__qualname__} has a composite primary key of {arity} "
            f"parts, so a reference is a tuple of them (`tuple[...]`), not "
            f"{type_name(element)}",
            model=field.model,
            field=field.attr,
        )
    if arity > 1 and fixed_tuple and len(get_args(element)) != arity:
        raise ModelDefinitionError(
            f"{field.label}: a reference to {target.__qualname__} is a tuple of {arity} "
            f"key parts, not {type_name(element)}",
            model=field.model,
            field=field.attr,
        )
    if arity == 1 and fixed_tuple:
        raise ModelDefinitionError(
            f"{field.label}: {target.__qualname__} has a single-field primary key, so "
            f"{type_name(element)} is not one reference; for several, use "
            "`list[...]` or `tuple[X, ...]`",
            model=field.model,
            field=field.attr,
        )


class KeyedRepository(Protocol[T_co]):
    """What references need of a repository (sync or async): its model and its keys."""

    @property
    def model(self) -> type[T_co]:
        """The dataclass the repository stores."""
        ...

    def key_for(self, pk: Any) -> str:
        """The backend key of primary key ``pk``."""
        ...

    def key_of(self, obj: Any) -> str:
        """The backend key of a record."""
        ...


class RelatedPlan(Generic[U]):
    """The read :func:`plan_related` decided on, and how to finish it without I/O.

    ``pks`` are the distinct primary keys to read with one ``get_many`` of the
    target repository (sync or async: the I/O is the caller's); ``finish``
    turns that call's result into the mapping ``load_related`` returns.
    """

    __slots__ = ("_keys", "_missing", "_referrers", "_source", "_target", "pks")

    def __init__(
        self,
        source: KeyedRepository[Any],
        target: KeyedRepository[U],
        keys: list[str],
        pks: list[Any],
        referrers: dict[str, tuple[RefField, Any]],
        missing: Missing,
    ) -> None:
        self._source = source
        self._target = target
        self._keys = keys
        self.pks = pks
        self._referrers = referrers
        self._missing = missing

    def finish(self, found: Sequence[U | None]) -> dict[Any, U | None]:
        """``{pk: record}`` from ``get_many(self.pks)``.

        Raises:
            NotFound: a record is absent and the policy is ``missing="raise"``.
        """
        result: dict[Any, U | None] = {}
        absent: list[str] = []
        for key, pk, obj in zip(self._keys, self.pks, found, strict=True):
            if obj is None:
                absent.append(key)
            result[pk] = obj
        if absent and self._missing == "raise":
            raise _dangling(self._source, self._target, absent, self._referrers)
        return result


def plan_related(
    source: KeyedRepository[T],
    records: Iterable[T | None],
    fields: str | Sequence[str],
    target: KeyedRepository[U],
    missing: Missing,
) -> RelatedPlan[U]:
    """Check the arguments and collect the distinct keys ``fields`` of ``records`` refer to.

    ``None`` records and ``None`` references are skipped; a key referred to
    many times is collected once. No I/O: see :class:`RelatedPlan`.

    Raises:
        ConfigurationError: a bad field name or ``missing`` policy, or a field
            that does not refer to ``target``'s model.
        ModelDefinitionError: the ``Ref`` cannot be resolved or does not fit
            the target's key.
        ValidationError: a record is not of ``source``'s model, or holds a
            reference that is not a valid key of ``target``'s model.
    """
    if missing not in _MISSING_POLICIES:
        raise ConfigurationError(f"missing must be 'raise' or 'none', not {missing!r}")
    model = source.model
    names = [fields] if isinstance(fields, str) else list(fields)
    if not names:
        raise ConfigurationError(f"{model.__qualname__}: load_related() needs a field name")
    specs = [resolve_field(model, name, target.model) for name in names]
    wanted: dict[str, Any] = {}  # backend key -> primary key, first seen first
    referrers: dict[str, tuple[RefField, Any]] = {}
    seen: set[Any] = set()  # primary keys already rendered
    for record in records:
        if record is None:
            continue
        if not isinstance(record, model):
            raise ValidationError(
                f"{model.__qualname__} repository got {type(record).__qualname__} to load "
                f"references of: {record!r}",
                model=model,
                path="$",
                expected=model.__qualname__,
                actual=type(record).__qualname__,
            )
        for spec in specs:
            value = getattr(record, spec.attr)
            if value is None:
                continue
            for pk in value if spec.many else (value,):
                if pk is None:
                    continue
                try:
                    if pk in seen:  # most references repeat: skip rendering their key
                        continue
                except TypeError:  # unhashable: a list-shaped composite key, or no key
                    pk = _hashable(pk)
                key = _key(source, target, spec, record, pk)
                seen.add(pk)
                if key not in wanted:
                    wanted[key] = pk
                    referrers[key] = (spec, record)
    return RelatedPlan(source, target, list(wanted), list(wanted.values()), referrers, missing)


def load_related(
    source: Repository[T],
    records: Iterable[T | None],
    fields: str | Sequence[str],
    target: Repository[U],
    missing: Missing,
) -> dict[Any, U | None]:
    """The records of ``target`` that ``fields`` of ``records`` refer to, by primary key.

    :func:`plan_related`, then one ``target.get_many`` for the whole batch
    (none if nothing is referred to), then :meth:`RelatedPlan.finish`.

    Raises:
        NotFound: ``missing="raise"`` and some referenced records are not
            stored; ``keys`` lists them, the message names the referring field.
        ConfigurationError, ModelDefinitionError, ValidationError: as for
            :func:`plan_related`; nothing was read.
    """
    plan = plan_related(source, records, fields, target, missing)
    if not plan.pks:
        return {}
    return plan.finish(target.get_many(plan.pks))


def _hashable(pk: Any) -> Any:
    """A list-shaped composite key (a record built by hand) as a tuple, so it can key a dict."""
    return tuple(cast("Iterable[Any]", pk)) if isinstance(pk, list) else pk


def _key(
    source: KeyedRepository[Any], target: KeyedRepository[Any], spec: RefField, record: Any, pk: Any
) -> str:
    try:
        return target.key_for(pk)
    except ValidationError as exc:
        where = _where(source, record)
        raise ValidationError(
            f"{spec.label}{where} holds {pk!r}, which is not a primary key of "
            f"{target.model.__qualname__}: {exc}",
            model=spec.model,
            path=spec.attr,
            expected=exc.expected,
            actual=exc.actual,
        ) from exc


def _where(source: KeyedRepository[Any], record: Any) -> str:
    try:
        return f" of record {source.key_of(record)!r}"
    except Exception:  # only a better message; the record may lack a key
        return ""


def _dangling(
    source: KeyedRepository[Any],
    target: KeyedRepository[Any],
    absent: list[str],
    referrers: dict[str, tuple[RefField, Any]],
) -> NotFound:
    by_field: dict[str, tuple[str, list[str]]] = {}
    for key in absent:
        spec, record = referrers[key]
        entry = by_field.setdefault(spec.label, (_where(source, record), []))
        entry[1].append(key)
    parts = "; ".join(
        f"{label} -> {describe_keys(keys)} (first{where})"
        for label, (where, keys) in by_field.items()
    )
    first_spec, _ = referrers[absent[0]]
    error = NotFound(
        f"{len(absent)} referenced {target.model.__qualname__} record(s) not stored: {parts}; "
        "pass missing='none' to map them to None",
        model=target.model,
        key=absent[0],
        keys=absent,
    )
    error.field = first_spec.attr
    return error
