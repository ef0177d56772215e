"""The fast codec path (msgspec) against the stdlib path: same bytes, same records, same errors.

Hypothesis builds models from every supported annotation (the README's table,
with ``Field(name=...)``, ``Field(codec=Timestamp(...))`` and defaults) and
values for them, and checks, for json and msgpack:

* both paths write the same bytes (or raise the same error);
* a record written by either path reads back through the other as the same
  record (equal, same types, same reprs);
* a stored payload with one field replaced by a foreign value, or with extra
  keys, reads back the same through both paths, or fails on both with the
  same ``DeserializationError`` (message and path);
* an attribute set to a wrong value fails ``save`` on both paths with the
  same ``ValidationError``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import json
import math
import sys
import uuid
from collections.abc import Callable
from typing import Annotated, Any, Literal, NewType, Optional

import msgpack
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import cacheorm as co
from cacheorm import _fast

PK = Annotated[int, co.Field(primary_key=True)]
UTC = dt.timezone.utc
Meters = NewType("Meters", int)


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Ratio(enum.Enum):
    HALF = 0.5
    ONE = 1.0


class Perm(enum.IntFlag):
    R = 4
    W = 2


# --- repositories on both paths -----------------------------------------------------


def repo_pair(model: type, serializer: str | co.Serializer) -> tuple[co.Repository[Any], ...]:
    """(fast, stdlib) repositories of ``model`` sharing one memory backend."""
    backend = co.MemoryBackend()
    fast = co.Repository(model, backend=backend, serializer=serializer)
    saved = _fast.ENABLED
    _fast.ENABLED = False
    try:
        slow = co.Repository(model, backend=backend, serializer=serializer)
    finally:
        _fast.ENABLED = saved
    assert on_fast_path(fast)
    assert not on_fast_path(slow)
    return fast, slow


def on_fast_path(repo: co.Repository[Any]) -> bool:
    """True if ``repo`` reads through the fast path (its ``_decode_payload`` is the wrapper)."""
    return "_decode_payload" in vars(repo)


def outcome(fn: Callable[[], Any]) -> tuple[str, Any]:
    """``("ok", result)`` or the error's type, message and attributes."""
    try:
        return "ok", fn()
    except co.CacheORMError as exc:
        attrs = {k: getattr(exc, k, None) for k in ("path", "expected", "actual", "key")}
        return type(exc).__name__, (str(exc), attrs)


def same(a: Any, b: Any) -> bool:
    """Equal, of the same types all the way down, with the same reprs (offsets, -0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or repr(a) == repr(b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (set, frozenset)):
        # Pair each element with one of the other set's (NaN != NaN, so no `==`).
        rest = list(b)
        for x in a:
            match = next((i for i, y in enumerate(rest) if same(x, y)), None)
            if match is None:
                return False
            del rest[match]
        return not rest
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return all(same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, (dt.datetime, dt.time)):
        return a == b and repr(a) == repr(b)
    return bool(a == b)


def same_outcome(x: tuple[str, Any], y: tuple[str, Any]) -> bool:
    if x[0] != y[0]:
        return False
    if x[0] == "ok":
        return same(x[1], y[1])
    return bool(x[1] == y[1])


# --- annotations and values ---------------------------------------------------------

ints = st.integers(-(2**70), 2**70) | st.sampled_from([0, 2**63 - 1, -(2**63), 2**64 - 1, 2**64])
floats = st.floats() | st.sampled_from([1e16, 9999999999999998.0, 1e-4, 9.9e-5, -0.0, 1e300])
texts = st.text(max_size=8) | st.sampled_from(["", "é", "\u2028", "\x00\x1f\x7f", '"\\/'])
offsets = (
    st.none()
    | st.just(UTC)
    | st.integers(-23 * 60, 23 * 60).map(lambda m: dt.timezone(dt.timedelta(minutes=m)))
)
# fold is not stored (by either path): values are drawn with fold=0.
datetimes = st.datetimes(timezones=offsets).map(lambda d: d.replace(fold=0))
times = st.times(timezones=offsets).map(lambda t: t.replace(fold=0))


@dataclasses.dataclass(frozen=True)
class Kind:
    """An annotation, a strategy of valid values, and whether values are hashable."""

    annotation: Any
    values: st.SearchStrategy[Any]
    hashable: bool = True


def json_like(binary: bool) -> st.SearchStrategy[Any]:
    leaves = st.none() | st.booleans() | ints | floats | texts
    if binary:
        leaves = leaves | st.binary(max_size=4)
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
        max_leaves=6,
    )


def leaf_kinds(binary: bool) -> list[Kind]:
    return [
        Kind(int, ints),
        Kind(float, floats),
        Kind(bool, st.booleans()),
        Kind(str, texts),
        Kind(bytes, st.binary(max_size=8)),
        Kind(decimal.Decimal, st.decimals(allow_nan=False, places=None)),
        Kind(uuid.UUID, st.uuids()),
        Kind(dt.datetime, datetimes),
        Kind(dt.date, st.dates()),
        Kind(dt.time, times),
        Kind(dt.timedelta, st.timedeltas()),
        Kind(Color, st.sampled_from(Color)),
        Kind(Level, st.sampled_from(Level)),
        Kind(Ratio, st.sampled_from(Ratio)),
        Kind(Perm, st.sampled_from([Perm.R, Perm.W, Perm.R | Perm.W])),
        Kind(Literal["a", "b", 1, None, True], st.sampled_from(["a", "b", 1, None, True])),
        Kind(Meters, ints.map(Meters)),
        Kind(Any, json_like(binary), hashable=False),
    ]


def kinds(binary: bool, depth: int = 2) -> st.SearchStrategy[Kind]:
    leaves = st.sampled_from(leaf_kinds(binary))
    if depth == 0:
        return leaves
    inner = kinds(binary, depth - 1)

    def wrap(k: Kind) -> st.SearchStrategy[Kind]:
        options = [
            # Optional[Any] is left out: the compiler writes an empty block for it
            # (an IndentationError on either path, reported separately).
            st.just(Kind(Optional[k.annotation], st.none() | k.values, k.hashable))  # noqa: UP045
            if k.annotation is not Any
            else st.just(k),
            st.just(Kind(list[k.annotation], st.lists(k.values, max_size=3), False)),
            st.just(
                Kind(
                    tuple[k.annotation, ...],
                    st.lists(k.values, max_size=3).map(tuple),
                    k.hashable,
                )
            ),
            st.just(
                Kind(dict[str, k.annotation], st.dictionaries(texts, k.values, max_size=3), False)
            ),
        ]
        if k.hashable:
            options.append(st.just(Kind(set[k.annotation], st.sets(k.values, max_size=3), False)))
            options.append(
                st.just(Kind(frozenset[k.annotation], st.frozensets(k.values, max_size=3)))
            )
        return st.one_of(options)

    pair = st.tuples(inner, inner).map(
        lambda ab: Kind(
            tuple[ab[0].annotation, ab[1].annotation],
            st.tuples(ab[0].values, ab[1].values),
            ab[0].hashable and ab[1].hashable,
        )
    )
    return leaves | inner.flatmap(wrap) | pair | nested_models(binary)


_counter = iter(range(10**9))


def nested_models(binary: bool) -> st.SearchStrategy[Kind]:
    """A nested dataclass of up to two leaf fields."""
    return st.lists(st.sampled_from(leaf_kinds(binary)), min_size=1, max_size=2).map(
        lambda ks: _nested(ks)
    )


def _nested(ks: list[Kind]) -> Kind:
    cls = dataclasses.make_dataclass(
        f"Inner{next(_counter)}", [(f"n{i}", k.annotation) for i, k in enumerate(ks)]
    )
    values = st.builds(cls, **{f"n{i}": k.values for i, k in enumerate(ks)})
    return Kind(cls, values, hashable=False)


@dataclasses.dataclass
class Case:
    model: type
    obj: Any
    lossy: bool


@st.composite
def cases(draw: st.DrawFn, binary: bool) -> Case:
    """A model of 1-4 generated fields (some renamed, some with defaults, some Timestamps)."""
    n = draw(st.integers(1, 4))
    fields: list[tuple[str, Any, Any]] = [("id", PK, dataclasses.field())]
    values: dict[str, Any] = {"id": draw(st.integers(0, 2**31))}
    lossy = False
    for i in range(n):
        name = f"f{i}"
        if draw(st.integers(0, 9)) == 0:
            resolution = draw(st.sampled_from(["s", "ms", "us", "ns"]))
            tp: Any = Annotated[dt.datetime, co.Field(codec=co.Timestamp(resolution))]
            value = draw(st.datetimes(timezones=st.just(UTC)))
            lossy = True
        else:
            kind = draw(kinds(binary))
            tp = kind.annotation
            value = draw(kind.values)
            if draw(st.integers(0, 4)) == 0:
                tp = Annotated[tp, co.Field(name=f"stored {i}")]
        fields.append((name, tp, dataclasses.field()))
        values[name] = value
    if draw(st.booleans()):  # a trailing field with a default
        fields.append(("extra", int | None, dataclasses.field(default=None)))
    model = dataclasses.make_dataclass(f"Gen{next(_counter)}", fields)
    return Case(model, model(**values), lossy)


SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def check_case(case: Case, serializer: str | co.Serializer) -> tuple[co.Repository[Any], ...]:
    fast, slow = repo_pair(case.model, serializer)
    key = fast.key_of(case.obj)
    wrote_fast = outcome(lambda: (fast.save(case.obj), fast.backend.get(key))[1])
    wrote_slow = outcome(lambda: (slow.save(case.obj), slow.backend.get(key))[1])
    assert same_outcome(wrote_fast, wrote_slow), (wrote_fast, wrote_slow)
    if wrote_fast[0] != "ok":
        return fast, slow
    payload = wrote_fast[1]
    for writer, reader in ((fast, slow), (slow, fast), (fast, fast), (slow, slow)):
        writer.save(case.obj)
        got = reader.get(fast.pk_of(case.obj))
        assert same(got, reader.get(fast.pk_of(case.obj)))
        if not case.lossy:
            assert same(got, case.obj), (got, case.obj)
    assert fast.backend.get(key) == payload
    return fast, slow


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
@SETTINGS
@given(data=st.data())
def test_both_paths_write_the_same_bytes_and_read_each_other(
    serializer: str, data: st.DataObject
) -> None:
    """Generated models and values: same bytes from both paths, each reads the other's."""
    check_case(data.draw(cases(serializer == "msgpack")), serializer)


@SETTINGS
@given(data=st.data())
def test_strict_json_paths_agree(data: st.DataObject) -> None:
    """The same with JSONSerializer(allow_nan=False): NaN refused alike on both paths."""
    check_case(data.draw(cases(False)), co.JSONSerializer(allow_nan=False))


# --- foreign payloads: same record or same error -----------------------------------

foreign_values = json_like(False) | st.sampled_from(
    [
        "2026-11-26t21:30:05",
        "2026-11-26T21:30:05z",
        "2026-11-26T21:30:05.1234567",
        "2026-11-26T21:30:05.9999999+01:00",
        "21:30:05.1234567",
        "2026-11-26 21:30",
        "20261126",
        "{12345678-1234-5678-1234-567812345678}",
        "12345678123456781234567812345678",
        " 1.5 ",
        "1_000",
        "NaN",
        "P1D",
        "AAE=",
        "AAE",
        "red",
        1.0,
        2,
        True,
        10**30,
        2**64,
        -(2**63) - 1,
        {1: 2},  # an int map key (msgpack refuses it on read; json writes "1")
        msgpack.ExtType(5, b"x"),  # msgpack only
        [msgpack.Timestamp(1, 0)],  # msgspec would read it as a datetime
    ]
)


def foreign_payloads(serializer: str, good: dict[str, Any]) -> st.SearchStrategy[bytes]:
    """The stored map with one key changed, dropped or added (written by the stdlib packer)."""

    def changed(change: tuple[str, Any, bool]) -> bytes | None:
        key, value, drop = change
        data = dict(good)
        if drop and key in data:
            del data[key]
        else:
            data[key] = value
        try:
            if serializer == "json":
                return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
            packed: bytes = msgpack.packb(data, use_bin_type=True)
            return packed
        except (ValueError, TypeError, OverflowError, UnicodeEncodeError):
            return None  # not expressible in this format

    keys = st.sampled_from([*good, "unknown"]) if good else st.just("unknown")
    return (
        st.tuples(keys, foreign_values, st.booleans()).map(changed).filter(lambda p: p is not None)
    )  # type: ignore[return-value]


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
@SETTINGS
@given(data=st.data())
def test_foreign_payloads_read_alike_on_both_paths(serializer: str, data: st.DataObject) -> None:
    """A changed stored field, a missing one or an unknown key: same record or same error."""
    case = data.draw(cases(serializer == "msgpack"))
    fast, slow = repo_pair(case.model, serializer)
    try:
        slow.save(case.obj)
    except co.DataError:
        assume(False)
    key = slow.key_of(case.obj)
    stored = slow.backend.get(key)
    assert stored is not None
    good = slow.serializer.loads(stored)
    payload = data.draw(foreign_payloads(serializer, good))
    fast.backend.set(key, payload)
    pk = slow.pk_of(case.obj)
    got_fast, got_slow = outcome(lambda: fast.get(pk)), outcome(lambda: slow.get(pk))
    assert same_outcome(got_fast, got_slow), (payload, got_fast, got_slow)


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
@SETTINGS
@given(data=st.data())
def test_invalid_attributes_fail_alike_on_both_paths(serializer: str, data: st.DataObject) -> None:
    """An attribute set to any other value: same bytes or the same ValidationError."""
    case = data.draw(cases(serializer == "msgpack"))
    names = [f.name for f in dataclasses.fields(case.model) if f.name != "id"]
    name = data.draw(st.sampled_from(names))
    value = data.draw(foreign_values | st.sampled_from([Color.RED, Level.LOW, b"x", (1,), {1}]))
    object.__setattr__(case.obj, name, value)
    fast, slow = repo_pair(case.model, serializer)
    key = outcome(lambda: fast.key_of(case.obj))
    assume(key[0] == "ok")
    wrote_fast = outcome(lambda: (fast.save(case.obj), fast.backend.get(key[1]))[1])
    fast.backend.clear()
    wrote_slow = outcome(lambda: (slow.save(case.obj), slow.backend.get(key[1]))[1])
    assert same_outcome(wrote_fast, wrote_slow), (wrote_fast, wrote_slow)


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=40) | json_like(False).map(lambda v: json.dumps(v).encode()))
def test_arbitrary_bytes_read_alike_on_both_paths(serializer: str, payload: bytes) -> None:
    """Any bytes under a key: the same record or the same DeserializationError."""
    fast, slow = repo_pair(Flat, serializer)
    fast.backend.set(fast.key_for(1), payload)
    assert same_outcome(outcome(lambda: fast.get(1)), outcome(lambda: slow.get(1)))


# --- specific differences between msgspec and the stored format ---------------------


@dataclasses.dataclass
class Flat:
    id: PK
    name: str = ""
    when: dt.datetime | None = None
    at: dt.time | None = None
    level: Level = Level.LOW
    height: float = 0.0
    kind: Literal["x", 2, None] = None
    tags: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Renamed:
    id: PK
    when: Annotated[dt.timedelta, co.Field(name="w")]
    price: decimal.Decimal = decimal.Decimal(0)


@pytest.fixture(params=["json", "msgpack"])
def flat(request: pytest.FixtureRequest) -> tuple[co.Repository[Any], ...]:
    return repo_pair(Flat, request.param)


def _plant_and_read(repos: tuple[co.Repository[Any], ...], data: dict[str, Any]) -> list[Any]:
    fast, slow = repos
    if fast.serializer.name == "json":
        payload = json.dumps(data).encode()
    else:
        payload = msgpack.packb(data, use_bin_type=True)
    fast.backend.set(fast.key_for(1), payload)
    return [outcome(lambda: fast.get(1)), outcome(lambda: slow.get(1))]


@pytest.mark.parametrize(
    ("field", "text"),
    [
        ("when", "2026-11-26t21:30:05"),  # msgspec reads a lower-case t; fromisoformat does not
        ("when", "2026-11-26T21:30:05z"),
        ("when", "2026-11-26T21:30:05.9999999"),  # msgspec rounds; fromisoformat truncates
        ("at", "21:30:05.1234567"),
        ("when", "2026-11-26T21:30"),  # msgspec refuses; fromisoformat reads it
        ("name", 5),
    ],
)
def test_times_msgspec_reads_otherwise_come_out_as_the_stdlib_path_reads_them(
    flat: tuple[co.Repository[Any], ...], field: str, text: Any
) -> None:
    """Where msgspec's time parser differs from fromisoformat, the stdlib reading wins."""
    got_fast, got_slow = _plant_and_read(flat, {"id": 1, field: text})
    assert same_outcome(got_fast, got_slow), (got_fast, got_slow)


def test_unknown_keys_msgspec_would_skip_unchecked_fail_alike() -> None:
    """msgspec skips unknown keys without the stdlib reader's checks; the fast path refuses them."""
    for serializer, data in [
        ("json", b'{"id":1,"other":' + b"9" * 5000 + b"}"),  # past the int digit limit
        ("msgpack", msgpack.packb({"id": 1, "other": {1: 2}})),  # an int map key
        ("msgpack", msgpack.packb({"id": 1, "other": msgpack.ExtType(5, b"x")})),
    ]:
        fast, slow = repo_pair(Flat, serializer)
        fast.backend.set(fast.key_for(1), data)
        got_fast, got_slow = outcome(lambda: fast.get(1)), outcome(lambda: slow.get(1))  # noqa: B023
        assert same_outcome(got_fast, got_slow), (serializer, got_fast, got_slow)


def test_strict_json_refuses_out_of_range_numbers_in_unknown_keys_on_both_paths() -> None:
    """allow_nan=False refuses 1e400 anywhere in the text, on the fast path too."""
    fast, slow = repo_pair(Flat, co.JSONSerializer(allow_nan=False))
    fast.backend.set(fast.key_for(1), b'{"id":1,"other":[1e400]}')
    got_fast, got_slow = outcome(lambda: fast.get(1)), outcome(lambda: slow.get(1))
    assert got_fast[0] == "DeserializationError"
    assert same_outcome(got_fast, got_slow)


@pytest.mark.parametrize(
    "value", [1e16, 1e-5, float("nan"), float("inf"), -float("inf"), 1.5, 0.0001, 123.0]
)
def test_floats_are_spelled_as_python_spells_them(value: float) -> None:
    """msgspec writes 1e16 and null for NaN; the fast path writes 1e+16 and NaN, as json does."""
    fast, slow = repo_pair(Flat, "json")
    obj = Flat(1, height=value)
    fast.save(obj)
    payload = fast.backend.get(fast.key_for(1))
    slow.save(obj)
    assert payload == slow.backend.get(fast.key_for(1))
    assert payload is not None
    assert math.isnan(value) or json.loads(payload)["height"] == value
    assert same(fast.get(1), obj)
    assert same(slow.get(1), obj)


def test_strict_json_refuses_nan_on_both_paths() -> None:
    """JSONSerializer(allow_nan=False): the same SerializationError from both paths."""
    fast, slow = repo_pair(Flat, co.JSONSerializer(allow_nan=False))
    got = [outcome(lambda r=r: r.save(Flat(1, height=math.nan))) for r in (fast, slow)]
    assert got[0][0] == "SerializationError"
    assert same_outcome(*got)


def test_ints_beyond_64_bits_fail_alike_on_msgpack_and_pass_on_json() -> None:
    """An int past msgpack's range: SerializationError on both paths; JSON writes it."""
    fast, slow = repo_pair(Renamed, "msgpack")
    big = Renamed(1, dt.timedelta(days=999_999_999))  # 8.6e22 µs: past 64 bits
    got = [outcome(lambda r=r: r.save(big)) for r in (fast, slow)]
    assert got[0][0] == "SerializationError"
    assert same_outcome(*got)
    fast, slow = repo_pair(Renamed, "json")
    fast.save(big)
    assert same(slow.get(1), big)


def test_renamed_fields_timedelta_and_decimal_decode_on_the_typed_path() -> None:
    """Field(name=...), timedelta (int µs) and Decimal (text) go through the typed decoder."""
    for serializer in ("json", "msgpack"):
        fast, slow = repo_pair(Renamed, serializer)
        assert codec_of(fast).typed
        obj = Renamed(1, dt.timedelta(microseconds=-1), decimal.Decimal("1.50"))
        fast.save(obj)
        assert same(slow.get(1), obj)
        assert same(fast.get(1), obj)
        # A missing default comes back as the default, an ISO duration is refused.
        for data in ({"id": 1, "w": 5}, {"id": 1, "w": "P1D"}, {"id": 1, "w": 5, "price": 1}):
            assert same_outcome(*_plant_and_read((fast, slow), data))


def codec_of(repo: co.Repository[Any]) -> _fast.FastCodec:
    codec = _fast.fast_codec(repo._compiled, repo.serializer)
    assert codec is not None
    return codec


# --- which models take which path ----------------------------------------------------


@dataclasses.dataclass
class WithAny:
    id: PK
    anything: Any = None


@dataclasses.dataclass
class Inner:
    x: int


@dataclasses.dataclass
class WithNested:
    id: PK
    inner: Inner


@dataclasses.dataclass
class WithDerived:
    id: PK
    a: int
    b: int = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.b = self.a * 2


@dataclasses.dataclass(frozen=True, slots=True)
class Frozen:
    id: PK
    tags: frozenset[str]
    pair: tuple[int, str]
    ratio: dict[str, float] | None = None


@dataclasses.dataclass
class Upper:
    id: PK
    name: str

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value.upper() if isinstance(value, str) else value)


#: msgspec reads datetime and time fields typed from Python 3.11 on (see cacheorm._fast).
TIMES_TYPED = sys.version_info >= (3, 11)


@pytest.mark.parametrize(
    ("model", "typed"),
    [
        (Flat, TIMES_TYPED),  # datetime/time fields read untyped on Python 3.10
        (Upper, False),
        (Renamed, True),
        (Frozen, True),
        (WithAny, False),
        (WithNested, False),
        (WithDerived, False),
    ],
)
@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_models_the_typed_decoder_cannot_take_fall_back(
    model: type, typed: bool, serializer: str
) -> None:
    """Any, nested dataclasses, init=False fields and a custom __setattr__ read untyped."""
    fast, _ = repo_pair(model, serializer)
    assert codec_of(fast).typed is typed


def test_frozen_slotted_models_read_back_on_the_typed_path() -> None:
    """Frozen, slotted dataclasses are built field by field, as their __init__ would."""
    for serializer in ("json", "msgpack"):
        fast, slow = repo_pair(Frozen, serializer)
        obj = Frozen(1, frozenset({"a", "b"}), (2, "x"), {"r": 1.5})
        slow.save(obj)
        assert same(fast.get(1), obj)


def test_post_init_runs_on_the_typed_path() -> None:
    """__post_init__ runs once per read on the typed path, as through __init__."""
    calls: list[int] = []

    @dataclasses.dataclass
    class Checked:
        id: PK

        def __post_init__(self) -> None:
            calls.append(self.id)

    fast, _ = repo_pair(Checked, "json")
    assert codec_of(fast).typed
    fast.save(Checked(7))
    calls.clear()
    fast.get(7)
    assert calls == [7]


def test_the_typed_decoder_leaves_the_users_classes_alone() -> None:
    """msgspec caches on the classes it reads; the fast path removes what it added."""
    before = (set(vars(Flat)), set(vars(Level)))
    repo_pair(Flat, "json")
    assert (set(vars(Flat)), set(vars(Level))) == before


def test_repositories_take_the_fast_path_by_default_for_json_and_msgpack() -> None:
    """With msgspec installed, json and msgpack repositories use it; pickle does not."""
    assert on_fast_path(co.Repository(Flat, serializer="json"))
    assert on_fast_path(co.Repository(Flat, serializer="msgpack"))
    assert not on_fast_path(co.Repository(Flat, serializer="pickle"))


def test_subclassed_serializers_stay_on_the_stdlib_path() -> None:
    """A JSONSerializer subclass may write another format: it keeps its own dumps and loads."""

    class Tagged(co.JSONSerializer):
        def dumps(self, data: Any, /) -> bytes:
            return b"T" + super().dumps(data)

        def loads(self, payload: bytes, /) -> Any:
            return super().loads(payload[1:])

    repo = co.Repository(Flat, serializer=Tagged())
    assert not on_fast_path(repo)
    repo.save(Flat(1))
    assert repo.backend.get(
        "flat:1",
    ).startswith(b"T")  # type: ignore[union-attr]


def test_models_with_unchecked_values_are_written_by_the_stdlib_serializer() -> None:
    """An Any field may hold what json refuses (a set): the stdlib serializer decides."""
    fast, slow = repo_pair(WithAny, "json")
    got = [outcome(lambda r=r: r.save(WithAny(1, {1, 2}))) for r in (fast, slow)]
    assert got[0][0] in ("ValidationError", "SerializationError")
    assert same_outcome(*got)


def test_the_environment_switch_turns_the_fast_path_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """CACHEORM_FAST=0 (read at import) leaves every repository on the stdlib path."""
    import importlib

    monkeypatch.setenv("CACHEORM_FAST", "0")
    reloaded = importlib.reload(_fast)
    try:
        assert reloaded.ENABLED is False
        assert reloaded.fast_codec(co.Repository(Flat)._compiled, co.JSONSerializer()) is None
    finally:
        monkeypatch.delenv("CACHEORM_FAST")
        importlib.reload(_fast)
    assert _fast.ENABLED is True


class Mixed(enum.Enum):
    ONE = 1
    HALF = 0.5


class Huge(enum.IntEnum):
    BIG = 2**70


@dataclasses.dataclass
class Point:
    x: float
    label: Mixed = Mixed.ONE


@dataclasses.dataclass
class Tree:
    weight: float
    children: list[Tree] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Shapes:
    id: PK
    point: Point
    tree: Tree | None = None
    points: dict[str, tuple[Point, float]] = dataclasses.field(default_factory=dict)


@pytest.mark.parametrize("value", [1.5, 1e16, float("nan"), 1e-300])
@pytest.mark.parametrize("where", ["point", "tree", "points", "label"])
def test_floats_deep_inside_nested_models_are_spelled_as_python_spells_them(
    value: float, where: str
) -> None:
    """Nested, recursive and enum-valued floats: the same bytes from both paths."""
    obj = Shapes(1, Point(0.5))
    if where == "point":
        obj.point.x = value
    elif where == "tree":
        obj.tree = Tree(1.0, [Tree(2.0, [Tree(value)])])
    elif where == "points":
        obj.points = {"a": (Point(1.0), value)}
    else:
        obj.point.label = Mixed.HALF if value == 1.5 else Mixed.ONE
    fast, slow = repo_pair(Shapes, "json")
    fast.save(obj)
    payload = fast.backend.get("shapes:1")
    slow.save(obj)
    assert payload == slow.backend.get("shapes:1")
    assert same(fast.get(1), slow.get(1))


def test_annotations_msgspec_refuses_stay_on_the_compiled_decoder() -> None:
    """An IntEnum past 64 bits: msgspec cannot decode it, the compiled decoder can."""

    @dataclasses.dataclass
    class WithHuge:
        id: PK
        size: Huge

    for serializer in ("json", "msgpack"):
        fast, slow = repo_pair(WithHuge, serializer)
        assert not codec_of(fast).typed
        if serializer == "json":
            fast.save(WithHuge(1, Huge.BIG))
            assert same(slow.get(1), fast.get(1))


def test_without_msgspec_repositories_use_the_stdlib_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """msgspec missing: no fast codec, and import cacheorm still works."""
    import sys

    monkeypatch.setitem(sys.modules, "msgspec", None)  # import msgspec raises ImportError
    repo = co.Repository(Flat, serializer="json")
    assert not on_fast_path(repo)
    repo.save(Flat(1, "a"))
    assert repo.get(1) == Flat(1, "a")


def test_a_custom_setattr_runs_on_read_as_through_init() -> None:
    """__init__ assigns through __setattr__; the fast path's record is the same."""
    for serializer in ("json", "msgpack"):
        fast, slow = repo_pair(Upper, serializer)
        fast.backend.set("upper:1", slow.serializer.dumps({"id": 1, "name": "ab"}))
        assert fast.get(1).name == slow.get(1).name == "AB"


# --- direct writes (orjson / ormsgpack) -------------------------------------------------


@dataclasses.dataclass
class Direct:
    id: PK
    name: str
    score: float
    when: dt.datetime
    level: Level
    tags: list[str]
    pair: tuple[int, str] = (0, "")
    day: dt.date | None = None


@dataclasses.dataclass
class DirectChild(Direct):
    secret: str = "not stored"


class Text(str):
    pass


class Pair(tuple):  # type: ignore[type-arg]
    pass


class Names(list):  # type: ignore[type-arg]
    pass


def direct(**changes: Any) -> Direct:
    obj = Direct(1, "a", 1.5, dt.datetime(2026, 1, 1, tzinfo=UTC), Level.LOW, ["x"])
    for name, value in changes.items():
        object.__setattr__(obj, name, value)
    return obj


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_plain_models_are_written_directly(serializer: str) -> None:
    """A model of scalars, enums, datetimes and lists is checked and written whole."""
    fast, _ = repo_pair(Direct, serializer)
    assert codec_of(fast).encode is not None
    for model in (Renamed, Frozen, WithAny, WithNested):
        assert codec_of(repo_pair(model, serializer)[0]).encode is None


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
@pytest.mark.parametrize(
    "record",
    [
        direct(),
        direct(name=Text("sub")),  # normalized to str by enc_N
        direct(score=2),  # an int in a float field: written as 2.0
        direct(score=1e20),  # an exponent
        direct(score=float("nan")),
        direct(id=Level.HIGH),  # an IntEnum in an int field: written as 2
        direct(id=True),  # refused
        direct(pair=Pair((1, "b"))),
        direct(tags=Names(["n"])),
        direct(tags=("t",)),  # refused: a tuple for a list
        direct(when=dt.datetime(2026, 1, 1, tzinfo=dt.timezone(dt.timedelta(seconds=30)))),
        direct(when=dt.datetime(2026, 1, 1)),
        direct(when=dt.date(2026, 1, 1)),  # refused
        direct(level=2),  # refused: the raw value
        direct(id=2**64),  # past 64 bits: json writes it, msgpack refuses it
        DirectChild(1, "a", 1.5, dt.datetime(2026, 1, 1), Level.LOW, []),
    ],
    ids=repr,
)
def test_direct_writes_match_the_stdlib_path(serializer: str, record: Any) -> None:
    """Every value the direct writer would spell otherwise goes through enc_N: same bytes."""
    fast, slow = repo_pair(Direct, serializer)
    got = []
    for repo in (fast, slow):
        repo.backend.clear()
        got.append(outcome(lambda repo=repo: (repo.save(record), repo.backend.get("direct:1"))[1]))
    assert same_outcome(*got), got


def test_extra_attributes_are_not_written_directly() -> None:
    """orjson writes a dataclass's whole __dict__; an extra attribute goes through enc_N."""
    fast, slow = repo_pair(Direct, "json")
    record = direct()
    record.note = "not a field"  # type: ignore[attr-defined]
    fast.save(record)
    payload = fast.backend.get("direct:1")
    slow.save(record)
    assert payload == slow.backend.get("direct:1")
    assert b"note" not in (payload or b"")


@pytest.mark.parametrize(("serializer", "library"), [("json", "orjson"), ("msgpack", "ormsgpack")])
def test_without_the_direct_writer_msgspec_writes_the_dict(
    serializer: str, library: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """orjson / ormsgpack missing: enc_N and msgspec write, with the same bytes."""
    import sys

    monkeypatch.setitem(sys.modules, library, None)
    fast, slow = repo_pair(Direct, serializer)
    assert codec_of(fast).encode is None
    record = direct()
    fast.save(record)
    payload = fast.backend.get("direct:1")
    slow.save(record)
    assert payload == slow.backend.get("direct:1")
    assert same(fast.get(1), record)
