"""Model shapes: dataclass options, inheritance, defaults, renamed fields, string annotations.

Also what cacheorm refuses to store (ModelDefinitionError when the Repository is
built) and that a model is read once: the class is never modified and the
generated functions are reused on every call.
"""

import dataclasses
import datetime as dt
import enum
import functools
import json
import typing
from typing import Annotated, Any, ClassVar, Literal, Optional, Union

import pytest

import cacheorm as co
from tests.codec_models import future_models, plain_models

SERIALIZERS = ["json", "msgpack", "pickle"]

PK = Annotated[int, co.Field(primary_key=True)]


def make_repo(model: type, serializer: str) -> co.Repository[Any]:
    """A repository on a fresh in-memory backend."""
    return co.Repository(model, backend=co.MemoryBackend(), serializer=serializer)


def stored(repo: co.Repository[Any], pk: Any) -> Any:
    """The primitives stored under ``pk``, as the repository's serializer reads them."""
    raw = repo.backend.get(repo.key_for(pk))
    assert raw is not None
    return repo.serializer.loads(raw)


# -- 2. dataclass options ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FrozenUser:
    id: PK
    name: str
    tags: tuple[str, ...] = ()


@dataclasses.dataclass(slots=True)
class SlotUser:
    id: PK
    name: str
    email: str | None = None


@dataclasses.dataclass(kw_only=True)
class KwUser:
    id: PK
    name: str
    age: int = 0


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Sealed:
    id: PK
    label: str
    when: dt.date = dt.date(2000, 1, 1)


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_frozen_dataclass_round_trips(serializer: str) -> None:
    """A frozen dataclass is stored and rebuilt (through its constructor) unchanged."""
    repo = make_repo(FrozenUser, serializer)
    rec = FrozenUser(1, "ann", ("x", "y"))
    repo.save(rec)
    got = repo.get(1)
    assert got == rec
    assert got is not rec
    assert hash(got) == hash(rec)
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_slots_dataclass_round_trips(serializer: str) -> None:
    """A slots=True dataclass round trips and its instances still have no __dict__."""
    repo = make_repo(SlotUser, serializer)
    rec = SlotUser(1, "ann", "a@example.com")
    repo.save(rec)
    got = repo.get(1)
    assert got == rec
    assert not hasattr(got, "__dict__")
    assert stored(repo, 1) == {"id": 1, "name": "ann", "email": "a@example.com"}


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_kw_only_dataclass_round_trips(serializer: str) -> None:
    """A kw_only=True dataclass (no positional constructor) round trips."""
    with pytest.raises(TypeError):
        KwUser(1, "ann")  # type: ignore[misc]
    repo = make_repo(KwUser, serializer)
    rec = KwUser(id=1, name="ann", age=30)
    repo.save(rec)
    assert repo.get(1) == rec


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_frozen_slots_kw_only_dataclass_round_trips(serializer: str) -> None:
    """All three options at once round trip, including the default of an omitted field."""
    repo = make_repo(Sealed, serializer)
    rec = Sealed(id=3, label="z")
    repo.create(rec)
    got = repo.get(3)
    assert got == rec
    assert got.when == dt.date(2000, 1, 1)
    assert stored(repo, 3)["when"] == "2000-01-01"


# -- inheritance ---------------------------------------------------------------------------


@dataclasses.dataclass
class BaseRecord:
    id: PK
    created: dt.datetime
    note: str = ""


@dataclasses.dataclass
class Article(BaseRecord):
    title: str = "untitled"
    words: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(kw_only=True)
class Post(BaseRecord):
    slug: str
    note: str = "overridden default"


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_subclass_stores_base_and_own_fields(serializer: str) -> None:
    """A subclass stores the base class's fields, then its own, and reads them all back."""
    repo = make_repo(Article, serializer)
    rec = Article(7, dt.datetime(2020, 1, 1, 12), "n", "Hello", ["a", "b"])
    repo.save(rec)
    data = stored(repo, 7)
    assert list(data) == ["id", "created", "note", "title", "words"]
    got = repo.get(7)
    assert got == rec
    assert type(got) is Article
    assert repo.key_for(7) == "article:7"


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_kw_only_subclass_with_overridden_default(serializer: str) -> None:
    """A kw_only subclass adding a required field and overriding a base default round trips."""
    repo = make_repo(Post, serializer)
    rec = Post(id=1, created=dt.datetime(2020, 1, 1), slug="s")
    assert rec.note == "overridden default"
    repo.save(rec)
    assert repo.get(1) == rec
    data = stored(repo, 1)
    del data["note"]
    repo.backend.set(repo.key_for(1), repo.serializer.dumps(data))
    assert repo.get(1).note == "overridden default"


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_base_repository_ignores_subclass_repository(serializer: str) -> None:
    """A base class and its subclass get separate repositories, namespaces and keys."""
    backend = co.MemoryBackend()
    base = co.Repository(BaseRecord, backend=backend, serializer=serializer)
    sub = co.Repository(Article, backend=backend, serializer=serializer)
    base.save(BaseRecord(1, dt.datetime(2020, 1, 1)))
    sub.save(Article(1, dt.datetime(2021, 1, 1), title="t"))
    assert base.get(1) == BaseRecord(1, dt.datetime(2020, 1, 1))
    assert sub.get(1).title == "t"
    assert base.key_for(1) != sub.key_for(1)


# -- defaults, default_factory, init=False, InitVar, ClassVar -------------------------------

_factory_calls: list[int] = []


def counted_list() -> list[str]:
    _factory_calls.append(1)
    return ["made"]


@dataclasses.dataclass
class WithDefaults:
    id: PK
    name: str = "anon"
    level: int = 1
    tags: list[str] = dataclasses.field(default_factory=counted_list)
    extra: dict[str, int] = dataclasses.field(default_factory=dict)
    kind: ClassVar[str] = "not stored"


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_defaults_are_stored_explicitly(serializer: str) -> None:
    """Fields left at their default are still stored; ClassVars are not."""
    repo = make_repo(WithDefaults, serializer)
    repo.save(WithDefaults(1))
    assert stored(repo, 1) == {
        "id": 1,
        "name": "anon",
        "level": 1,
        "tags": ["made"],
        "extra": {},
    }
    assert repo.get(1) == WithDefaults(1)


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_default_factory_runs_only_for_missing_fields(serializer: str) -> None:
    """On read, default_factory runs once per record that lacks the field, never otherwise."""
    repo = make_repo(WithDefaults, serializer)
    repo.save(WithDefaults(1, tags=["kept"]))
    _factory_calls.clear()
    assert repo.get(1).tags == ["kept"]
    assert _factory_calls == []
    repo.backend.set(repo.key_for(2), repo.serializer.dumps({"id": 2}))
    first, second = repo.get(2), repo.get(2)
    assert _factory_calls == [1, 1]
    assert first == WithDefaults(2, tags=["made"])
    assert first.tags is not second.tags
    assert first.extra is not second.extra


@dataclasses.dataclass
class Rect:
    id: PK
    width: int
    height: int
    area: int = dataclasses.field(init=False)
    label: str = dataclasses.field(init=False, default="rect")

    def __post_init__(self) -> None:
        self.area = self.width * self.height


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_init_false_fields_are_not_stored_but_recomputed(serializer: str) -> None:
    """init=False fields are left out of the payload and rebuilt by __post_init__ on read."""
    repo = make_repo(Rect, serializer)
    rec = Rect(1, 3, 4)
    rec.label = "changed after init"
    repo.save(rec)
    assert stored(repo, 1) == {"id": 1, "width": 3, "height": 4}
    got = repo.get(1)
    assert got.area == 12
    assert got.label == "rect"
    # a stale derived value in the payload is ignored
    repo.backend.set(
        repo.key_for(1),
        repo.serializer.dumps({"id": 1, "width": 5, "height": 6, "area": 999, "label": "x"}),
    )
    got = repo.get(1)
    assert got.area == 30
    assert got.label == "rect"


@dataclasses.dataclass
class Scaled:
    id: PK
    value: float
    factor: dataclasses.InitVar[float] = 2.0
    scaled: float = dataclasses.field(init=False)

    def __post_init__(self, factor: float) -> None:
        self.scaled = self.value * factor


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_initvar_with_default_is_not_stored(serializer: str) -> None:
    """An InitVar is not stored; on read __post_init__ gets its default."""
    repo = make_repo(Scaled, serializer)
    repo.save(Scaled(1, 1.5, factor=10.0))
    assert stored(repo, 1) == {"id": 1, "value": 1.5}
    got = repo.get(1)
    assert got.value == 1.5
    assert got.scaled == 3.0


@dataclasses.dataclass
class Positive:
    id: PK
    n: int

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError("n must not be negative")


@dataclasses.dataclass
class HasPositive:
    id: PK
    inner: Positive


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_post_init_rejecting_stored_data_is_a_deserialization_error(serializer: str) -> None:
    """A __post_init__ that refuses the stored values yields DeserializationError with the path."""
    repo = make_repo(HasPositive, serializer)
    payload = {"id": 1, "inner": {"id": 2, "n": -1}}
    repo.backend.set(repo.key_for(1), repo.serializer.dumps(payload))
    with pytest.raises(co.DeserializationError) as info:
        repo.get(1)
    assert type(info.value) is co.DeserializationError
    assert info.value.path == "$.inner"
    assert "n must not be negative" in str(info.value)
    assert isinstance(info.value.__cause__, ValueError)


# -- Field(name=...) -------------------------------------------------------------------------


@dataclasses.dataclass
class Badge:
    code: Annotated[str, co.Field(name="c")]
    level: int = 0


@dataclasses.dataclass
class Renamed:
    id: Annotated[int, co.Field(primary_key=True, name="_id")]
    display: Annotated[str, co.Field(name="displayName")]
    badge: Annotated[Badge, co.Field(name="b")]
    badges: list[Badge] = dataclasses.field(default_factory=list)
    plain: str = ""


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_field_name_is_used_in_the_payload(serializer: str) -> None:
    """Field(name=...) stores under that name, at any depth, and reads it back."""
    repo = make_repo(Renamed, serializer)
    rec = Renamed(5, "Ann", Badge("gold", 2), [Badge("x")], "p")
    repo.save(rec)
    assert stored(repo, 5) == {
        "_id": 5,
        "displayName": "Ann",
        "b": {"c": "gold", "level": 2},
        "badges": [{"c": "x", "level": 0}],
        "plain": "p",
    }
    assert repo.get(5) == rec
    if serializer == "json":
        raw = repo.backend.get(repo.key_for(5))
        assert raw is not None
        assert b'"displayName":"Ann"' in raw
        assert b'"display"' not in raw
        assert json.loads(raw)["_id"] == 5


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_field_name_payload_with_attribute_names_does_not_decode(serializer: str) -> None:
    """A payload written with attribute names instead of stored names is missing fields."""
    repo = make_repo(Renamed, serializer)
    payload = {"id": 5, "display": "Ann", "badge": {"code": "g"}}
    repo.backend.set(repo.key_for(5), repo.serializer.dumps(payload))
    with pytest.raises(co.DeserializationError) as info:
        repo.get(5)
    assert type(info.value) is co.DeserializationError
    assert info.value.path == "$._id"


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_field_name_paths_in_errors(serializer: str) -> None:
    """Write errors name attributes; read errors name the stored keys."""
    repo = make_repo(Renamed, serializer)
    with pytest.raises(co.ValidationError) as write:
        repo.save(Renamed(5, "Ann", Badge(3)))  # type: ignore[arg-type]
    assert write.value.path == "$.badge.code"
    payload = {"_id": 5, "displayName": "Ann", "b": {"c": 3}}
    repo.backend.set(repo.key_for(5), repo.serializer.dumps(payload))
    with pytest.raises(co.DeserializationError) as read:
        repo.get(5)
    assert read.value.path == "$.b.c"


# -- the class is not modified ------------------------------------------------------------


def _snapshot(cls: type) -> tuple[dict[str, Any], tuple[Any, ...], dict[str, Any]]:
    return dict(vars(cls)), dataclasses.fields(cls), dict(cls.__annotations__)


def _local_models() -> list[type]:
    """Fresh classes (never seen by cacheorm) of every shape."""

    @dataclasses.dataclass
    class Inner:
        code: Annotated[str, co.Field(name="c")]

    @dataclasses.dataclass
    class Plain:
        id: PK
        inner: Inner
        inners: list[Inner]
        maybe: Inner | None = None

    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class Options:
        id: PK
        name: str = "x"

    @dataclasses.dataclass
    class Derived:
        id: PK
        n: int
        double: int = dataclasses.field(init=False)
        kind: ClassVar[str] = "k"

        def __post_init__(self) -> None:
            self.double = 2 * self.n

    @dataclasses.dataclass
    class Child(Derived):
        extra: str = ""

    return [Inner, Plain, Options, Derived, Child]


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_building_a_repository_does_not_modify_the_class(serializer: str) -> None:
    """Building and using repositories leaves class dict, fields and annotations untouched."""
    Inner, Plain, Options, Derived, Child = _local_models()
    classes = [Inner, Plain, Options, Derived, Child]
    before = {cls: _snapshot(cls) for cls in classes}
    repos = [make_repo(cls, serializer) for cls in (Plain, Options, Derived, Child)]
    repos[0].save(Plain(1, Inner("a"), [Inner("b")]))
    repos[0].get(1)
    repos[1].save(Options(id=1))
    repos[1].get(1)
    repos[3].save(Child(1, 2, "e"))
    assert repos[3].get(1).double == 4
    for cls in classes:
        old_vars, old_fields, old_annotations = before[cls]
        new_vars, new_fields, new_annotations = _snapshot(cls)
        assert new_vars.keys() == old_vars.keys(), cls
        for name, value in old_vars.items():
            assert new_vars[name] is value, (cls, name)
        assert len(new_fields) == len(old_fields)
        assert all(new is old for new, old in zip(new_fields, old_fields, strict=True))
        assert new_annotations == old_annotations


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_saving_does_not_modify_the_record(serializer: str) -> None:
    """save() converts a copy: ints in a list[float] stay ints in the caller's record."""

    @dataclasses.dataclass
    class Series:
        id: PK
        points: list[float]
        weights: dict[str, float]

    rec = Series(1, [1, 2, 3], {"a": 1})
    points = rec.points
    repo = make_repo(Series, serializer)
    repo.save(rec)
    assert rec.points is points
    assert [type(p) for p in rec.points] == [int, int, int]
    assert type(rec.weights["a"]) is int
    assert [type(p) for p in repo.get(1).points] == [float, float, float]


# -- 3. from __future__ import annotations -------------------------------------------------

MODULES = [pytest.param(future_models, id="future"), pytest.param(plain_models, id="plain")]


def _contact(module: Any) -> Any:
    """The same Contact, built from either module's classes."""
    address = module.Address("Paris", "75001")
    boss = module.Contact(2, "Boss", module.Address("Lyon"))
    return module.Contact(
        id=1,
        name="Ann",
        address=address,
        previous=module.Address("Nice"),
        homes=[module.Address("A"), module.Address("B", "1")],
        level=module.Level.HIGH,
        tags={"x": [1, 2]},
        seen=dt.datetime(2024, 1, 2, 3, 4, 5, 678_000, tzinfo=dt.timezone.utc),
        manager=boss,
    )


def test_future_annotations_are_strings() -> None:
    """The future module's annotations really are unresolved strings (the case under test)."""
    assert isinstance(future_models.Contact.__annotations__["address"], str)
    assert not isinstance(plain_models.Contact.__annotations__["address"], str)


@pytest.mark.parametrize("serializer", SERIALIZERS)
@pytest.mark.parametrize("module", MODULES)
def test_string_annotation_models_round_trip(module: Any, serializer: str) -> None:
    """Models with string annotations (nested, Optional, self-referencing, Field) round trip."""
    repo = make_repo(module.Contact, serializer)
    rec = _contact(module)
    repo.save(rec)
    got = repo.get(1)
    assert got == rec
    assert type(got.address) is module.Address
    assert type(got.manager) is module.Contact
    assert got.level is module.Level.HIGH
    data = stored(repo, 1)
    assert data["full_name"] == "Ann"
    assert "name" not in data
    assert "kind" not in data
    assert data["seen"] == 1_704_164_645_678


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_future_and_plain_models_store_identical_bytes(serializer: str) -> None:
    """One record declared with or without string annotations is stored byte for byte alike."""
    repos = {m: make_repo(m.Contact, serializer) for m in (future_models, plain_models)}
    raws = {}
    for module, repo in repos.items():
        repo.save(_contact(module))
        raws[module] = repo.backend.get(repo.key_for(1))
    assert raws[future_models] is not None
    assert raws[future_models] == raws[plain_models]
    assert repos[future_models].key_for(1) == repos[plain_models].key_for(1)


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_future_and_plain_models_fail_identically(serializer: str) -> None:
    """Validation and decoding errors have the same paths with and without string annotations."""
    paths = {}
    for module in (future_models, plain_models):
        repo = make_repo(module.Contact, serializer)
        bad = _contact(module)
        bad.homes[1].zip_code = 75001
        with pytest.raises(co.ValidationError) as write:
            repo.save(bad)
        payload = {"id": 1, "full_name": "Ann", "address": {"city": "P"}, "manager": {"id": "x"}}
        repo.backend.set(repo.key_for(1), repo.serializer.dumps(payload))
        with pytest.raises(co.DeserializationError) as read:
            repo.get(1)
        paths[module] = (write.value.path, write.value.expected, read.value.path)
    assert paths[future_models] == ("$.homes[1].zip_code", "str", "$.manager.id")
    assert paths[plain_models] == paths[future_models]


@pytest.mark.parametrize("serializer", SERIALIZERS)
@pytest.mark.parametrize("module", MODULES)
def test_string_annotation_frozen_slots_kw_only_model(module: Any, serializer: str) -> None:
    """A frozen, slots, kw_only model with a str primary key and a nested Optional round trips."""
    repo = make_repo(module.Badge, serializer)
    rec = module.Badge(code="b-1", issued=dt.date(2024, 5, 6), holder=_contact(module))
    repo.save(rec)
    assert repo.get("b-1") == rec
    assert repo.key_for("b-1") == "badge:b-1"
    assert repo.get_or_none("b-2") is None


# -- 4. ModelDefinitionError ---------------------------------------------------------------


class Tupled(enum.Enum):
    A = (1, 2)


class NoMembers(enum.Enum):
    pass


class Counter(enum.IntEnum):
    ONE = 1


@dataclasses.dataclass
class BadComplex:
    id: PK
    z: complex


@dataclasses.dataclass
class BadUnion:
    id: PK
    v: int | str


@dataclasses.dataclass
class BadOptionalUnion:
    id: PK
    v: Union[int, str, None]  # noqa: UP007


@dataclasses.dataclass
class BadDictKey:
    id: PK
    m: dict[int, str]


@dataclasses.dataclass
class BadBytesKey:
    id: PK
    m: dict[bytes, str]


@dataclasses.dataclass
class BadIntEnumKey:
    id: PK
    m: dict[Counter, str]


@dataclasses.dataclass
class BadInList:
    id: PK
    items: list[complex]


@dataclasses.dataclass
class NoKey:
    name: str


@dataclasses.dataclass
class TwoFields:
    id: Annotated[int, co.Field(primary_key=True), co.Field(name="ident")]


@dataclasses.dataclass
class AutoStr:
    id: Annotated[str, co.Field(primary_key=True, auto=True)]


@dataclasses.dataclass
class AutoComposite:
    a: Annotated[int, co.Field(primary_key=True, auto=True)]
    b: Annotated[int, co.Field(primary_key=True)]


class NotADataclass:
    id: PK


@dataclasses.dataclass
class BadEnumValue:
    id: PK
    e: Tupled


@dataclasses.dataclass
class EmptyEnum:
    id: PK
    e: NoMembers


@dataclasses.dataclass
class BadLiteral:
    id: PK
    v: Literal[1.5]


@dataclasses.dataclass
class NestedFieldOptions:
    id: PK
    ids: list[Annotated[int, co.Field(primary_key=True)]]


@dataclasses.dataclass
class NameClash:
    id: PK
    a: Annotated[int, co.Field(name="b")]
    b: int


@dataclasses.dataclass
class InitVarNoDefault:
    id: PK
    seed: dataclasses.InitVar[int]

    def __post_init__(self, seed: int) -> None:
        pass


@dataclasses.dataclass
class OptionalKey:
    id: Annotated[Optional[int], co.Field(primary_key=True)]  # noqa: UP045


@dataclasses.dataclass
class UnsupportedInner:
    z: complex


@dataclasses.dataclass
class Outer:
    id: PK
    inner: UnsupportedInner


@dataclasses.dataclass
class Unresolvable:
    id: PK
    v: "NoSuchName"  # type: ignore[name-defined]  # noqa: F821


DEFINITION_ERRORS = [
    pytest.param(BadComplex, BadComplex, "z", "complex", id="complex"),
    pytest.param(BadUnion, BadUnion, "v", "int | str", id="int|str"),
    pytest.param(BadOptionalUnion, BadOptionalUnion, "v", "unions", id="int|str|None"),
    pytest.param(BadDictKey, BadDictKey, "m", "dict keys must be str", id="dict[int,str]"),
    pytest.param(BadBytesKey, BadBytesKey, "m", "dict keys", id="dict[bytes,str]"),
    pytest.param(BadIntEnumKey, BadIntEnumKey, "m", "dict keys", id="dict[IntEnum,str]"),
    pytest.param(BadInList, BadInList, "items", "complex", id="list[complex]"),
    pytest.param(TwoFields, TwoFields, "id", "Field", id="two-Fields"),
    pytest.param(AutoStr, AutoStr, "id", "auto", id="auto-str"),
    pytest.param(
        AutoComposite, AutoComposite, "a", "single-field primary key", id="auto-composite"
    ),
    pytest.param(BadEnumValue, BadEnumValue, "e", "Tupled", id="enum-tuple-value"),
    pytest.param(EmptyEnum, EmptyEnum, "e", "no members", id="enum-no-members"),
    pytest.param(BadLiteral, BadLiteral, "v", "Literal", id="Literal-float"),
    pytest.param(NestedFieldOptions, NestedFieldOptions, "ids", "primary_key", id="nested-pk"),
    pytest.param(NameClash, NameClash, "b", "'b'", id="stored-name-clash"),
    pytest.param(InitVarNoDefault, InitVarNoDefault, "seed", "InitVar", id="InitVar"),
    pytest.param(OptionalKey, OptionalKey, "id", "Optional", id="optional-key"),
    pytest.param(Outer, UnsupportedInner, "z", "complex", id="in-nested-class"),
]


@pytest.mark.parametrize("serializer", SERIALIZERS)
@pytest.mark.parametrize(("model", "culprit", "attr", "fragment"), DEFINITION_ERRORS)
def test_unstorable_field_is_a_model_definition_error(
    model: type, culprit: type, attr: str, fragment: str, serializer: str
) -> None:
    """Building a Repository for an unstorable field raises ModelDefinitionError naming it."""
    with pytest.raises(co.ModelDefinitionError) as info:
        co.Repository(model, serializer=serializer)
    exc = info.value
    assert type(exc) is co.ModelDefinitionError
    assert isinstance(exc, TypeError)
    assert exc.model is culprit
    assert exc.field == attr
    assert f"{culprit.__qualname__}.{attr}" in str(exc)
    assert fragment in str(exc)


@pytest.mark.parametrize("serializer", SERIALIZERS)
@pytest.mark.parametrize(
    ("model", "fragment"),
    [
        pytest.param(NoKey, "no primary key", id="no-primary-key"),
        pytest.param(NotADataclass, "not a dataclass", id="not-a-dataclass"),
        pytest.param(Unresolvable, "NoSuchName", id="unresolvable"),
    ],
)
def test_unstorable_class_is_a_model_definition_error(
    model: type, fragment: str, serializer: str
) -> None:
    """A class without a key, not a dataclass, or with unresolvable hints is refused by name."""
    with pytest.raises(co.ModelDefinitionError) as info:
        co.Repository(model, serializer=serializer)
    exc = info.value
    assert type(exc) is co.ModelDefinitionError
    assert exc.model is model
    assert model.__qualname__ in str(exc)
    assert fragment in str(exc)


@pytest.mark.parametrize("model", [SlotUser(1, "x"), 5, "User", None], ids=repr)
def test_non_class_model_is_a_model_definition_error(model: Any) -> None:
    """A dataclass instance or any non-class as model is refused with ModelDefinitionError."""
    with pytest.raises(co.ModelDefinitionError) as info:
        co.Repository(model)
    assert type(info.value) is co.ModelDefinitionError
    assert info.value.model is None
    assert repr(model) in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"auto": True}, ValueError),
        ({"name": ""}, ValueError),
        ({"name": 5}, ValueError),
        ({"codec": object()}, TypeError),
    ],
    ids=["auto-without-primary-key", "empty-name", "int-name", "codec-without-methods"],
)
def test_invalid_field_options_fail_when_declared(kwargs: dict[str, Any], error: type) -> None:
    """Field(...) itself rejects contradictory or malformed options."""
    with pytest.raises(error):
        co.Field(**kwargs)


# -- 8. read once, compiled once ---------------------------------------------------------


@dataclasses.dataclass
class Order:
    id: PK
    lines: list[Badge]
    placed: dt.datetime
    note: str | None = None


def _order(pk: int = 1) -> Order:
    return Order(pk, [Badge("a", 1), Badge("b")], dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc))


def _refuse(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the model was read again")


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_repository_never_rereads_the_class(
    monkeypatch: pytest.MonkeyPatch, serializer: str
) -> None:
    """After construction, reads, writes and error reports work without re-reading the class."""
    repo = make_repo(Order, serializer)
    monkeypatch.setattr(typing, "get_type_hints", _refuse)
    monkeypatch.setattr(dataclasses, "fields", _refuse)
    rec = _order()
    repo.save(rec)
    assert repo.get(1) == rec
    assert repo.get(1) == rec
    assert repo.get_many([1, 2]) == [rec, None]
    repo.update(rec)
    repo.create(_order(2))
    repo.save_many([_order(3), _order(4)])
    assert repo.exists(4)
    bad = _order(5)
    bad.lines[1].level = "high"  # type: ignore[assignment]
    with pytest.raises(co.ValidationError) as write:
        repo.save(bad)
    assert write.value.path == "$.lines[1].level"
    repo.backend.set(repo.key_for(6), repo.serializer.dumps({"id": 6, "lines": [{}]}))
    with pytest.raises(co.DeserializationError) as read:
        repo.get(6)
    assert read.value.path == "$.lines[0].c"
    # the patch is live: reading a model now fails
    with pytest.raises(co.ModelDefinitionError, match="read again"):
        make_repo(Rect, serializer)


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_type_hints_are_read_at_construction_only(
    monkeypatch: pytest.MonkeyPatch, serializer: str
) -> None:
    """get_type_hints runs while the Repository is built, once per class, and never after."""
    calls: list[type] = []
    real = typing.get_type_hints

    @functools.wraps(real)
    def counting(obj: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(obj)
        return real(obj, *args, **kwargs)

    monkeypatch.setattr(typing, "get_type_hints", counting)
    repo = make_repo(Order, serializer)
    assert sorted(c.__name__ for c in calls) == ["Badge", "Order"]
    built = len(calls)
    for pk in range(20):
        repo.save(_order(pk))
        assert repo.get(pk) == _order(pk)
    assert len(calls) == built
