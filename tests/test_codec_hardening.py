"""Codec and serializer hardening (issue 10, items 5-8 and 17).

* a subclass instance is refused unless the repository opts in (it would lose fields);
* an ``Any`` value either reads back equal on every serializer or is refused on write,
  naming the path;
* planted pickles that expand by shared references, hash bombs, huge memo indexes,
  flooded int keys and deep nesting are a DeserializationError in bounded time and memory;
* protobuf payloads that are empty, cut at a field boundary or extended are refused;
* text with a lone surrogate is refused on write (naming the path) and on read.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import time
import tracemalloc
from collections.abc import Callable
from typing import Annotated, Any, Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cacheorm as co

PK = Annotated[int, co.Field(primary_key=True)]
SERIALIZERS = ["json", "msgpack", "pickle"]


# -- item 5: subclasses ------------------------------------------------------------------------


@dataclasses.dataclass
class User:
    id: PK
    name: str


@dataclasses.dataclass
class Admin(User):
    permissions: list[str] = dataclasses.field(default_factory=list)


class Alias(User):
    """A subclass that adds no dataclass field (it would still read back as a User)."""


@dataclasses.dataclass
class Team:
    id: PK
    owner: User
    members: list[User] = dataclasses.field(default_factory=list)


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_subclass_instance_is_refused_naming_the_class(serializer: str) -> None:
    """Saving Admin(User) into Repository(User) is a ValidationError naming Admin; no write."""
    repo = co.Repository(User, serializer=serializer)
    admin = Admin(id=1, name="root", permissions=["all"])
    for write in (repo.save, repo.create, lambda obj: repo.save_many([obj])):
        with pytest.raises(co.ValidationError, match="Admin") as info:
            write(admin)
        assert "permissions" in str(info.value)
        assert "allow_subclasses=True" in str(info.value)
        assert info.value.path == "$"
    with pytest.raises(co.ValidationError, match="Alias"):
        repo.save(Alias(id=2, name="x"))
    assert repo.get_or_none(1) is None
    assert len(repo.backend) == 0  # type: ignore[arg-type]


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_nested_subclass_instance_is_refused_with_its_path(serializer: str) -> None:
    """An Admin inside a User field (or a list of them) is refused, naming the path and class."""
    repo = co.Repository(Team, serializer=serializer)
    with pytest.raises(co.ValidationError, match="Admin") as info:
        repo.save(Team(id=1, owner=Admin(id=2, name="a", permissions=["x"])))
    assert info.value.path == "$.owner"
    with pytest.raises(co.ValidationError, match="Admin") as info:
        repo.save(Team(id=1, owner=User(1, "u"), members=[User(3, "b"), Admin(4, "c")]))
    assert info.value.path == "$.members[1]"
    assert repo.get_or_none(1) is None


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_allow_subclasses_stores_the_base_fields_and_reads_the_base_class(serializer: str) -> None:
    """With allow_subclasses=True a subclass is stored as its base class and read back as one."""
    repo = co.Repository(User, serializer=serializer, allow_subclasses=True)
    repo.save(Admin(id=1, name="root", permissions=["all"]))
    got = repo.get(1)
    assert type(got) is User
    assert got == User(1, "root")
    teams = co.Repository(Team, serializer=serializer, allow_subclasses=True)
    teams.save(Team(id=1, owner=Admin(id=2, name="a", permissions=["x"])))
    assert type(teams.get(1).owner) is User


def test_allow_subclasses_must_be_a_bool() -> None:
    """allow_subclasses takes a bool, nothing else."""
    with pytest.raises(co.ConfigurationError, match="allow_subclasses"):
        co.Repository(User, allow_subclasses="yes")  # type: ignore[arg-type]


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Word(str):
    pass


@dataclasses.dataclass
class Scalars:
    id: PK
    n: int = 0
    x: float = 0.0
    s: str = ""


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_int_and_str_subclasses_in_typed_fields_keep_their_value(serializer: str) -> None:
    """An IntEnum in an int field is stored as its int value and read back as that int."""
    repo = co.Repository(Scalars, serializer=serializer)
    repo.save(Scalars(id=1, n=Level.HIGH, s=Word("w")))
    got = repo.get(1)
    assert got.n == 2
    assert type(got.n) is int
    assert got.s == "w"
    assert type(got.s) is str


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_int_in_float_field_must_convert_exactly(serializer: str) -> None:
    """An int that float() would round (2**53 + 1) is refused in a float field; exact ones pass."""
    repo = co.Repository(Scalars, serializer=serializer)
    with pytest.raises(co.ValidationError, match="exact") as info:
        repo.save(Scalars(id=1, x=2**53 + 1))
    assert info.value.path == "$.x"
    repo.save(Scalars(id=1, x=2**53))
    assert repo.get(1).x == float(2**53)


# -- item 6: Any values -----------------------------------------------------------------------


@dataclasses.dataclass
class Blob:
    id: PK
    value: Any = None


@pytest.mark.parametrize(
    ("serializer", "value", "path", "words"),
    [
        ("msgpack", {1: "one"}, "$.value[1]", "must be str"),
        ("json", {1: "a", "1": "b"}, "$.value[1]", "must be str"),
        ("pickle", {(1, 2): "t"}, "$.value[(1, 2)]", "must be str"),
        ("json", [1, (2, 3)], "$.value[1]", "tuple"),
        ("msgpack", {"a": {1, 2}}, "$.value['a']", "set"),
        ("pickle", frozenset(), "$.value", "frozenset"),
        ("json", {"b": [b"raw"]}, "$.value['b'][0]", "binary serializer"),
        ("msgpack", [Level.LOW], "$.value[0]", "Level"),
        ("json", Word("w"), "$.value", "Word"),
        ("pickle", object(), "$.value", "object"),
    ],
)
def test_any_value_that_would_change_is_refused_naming_the_path(
    serializer: str, value: Any, path: str, words: str
) -> None:
    """A value an Any field could not read back equal is a ValidationError at its path."""
    repo = co.Repository(Blob, serializer=serializer)
    with pytest.raises(co.ValidationError, match=words) as info:
        repo.save(Blob(id=1, value=value))
    assert info.value.path == path
    assert repo.get_or_none(1) is None


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_deep_or_cyclic_any_value_is_a_validation_error(serializer: str) -> None:
    """100,000 nested lists, or a list holding itself, is a ValidationError, not RecursionError."""
    repo = co.Repository(Blob, serializer=serializer)
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    for value in (_nested(100_000), _nested(100), cyclic):
        with pytest.raises(co.ValidationError, match="deeper than 100") as info:
            repo.save(Blob(id=1, value=value))
        assert not isinstance(info.value.__cause__, RecursionError)
    repo.save(Blob(id=1, value=_nested(99)))  # 100 lists, one in the other
    assert repo.get(1).value == _nested(99)


def _same(a: Any, b: Any) -> bool:
    """Equal, with NaN equal to NaN and exact types (True is not 1, 1.0 is not 1)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1, a) == math.copysign(1, b)
        )
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
    | st.binary(max_size=8)
    | st.sampled_from([Level.LOW, Word("w"), "\ud800", "a\udfffb"])
)
_KEYS = st.text(max_size=5) | st.integers(-3, 3) | st.booleans() | st.none() | st.just("\udc80")
ANY_VALUES = st.recursive(
    _LEAVES,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(_KEYS, inner, max_size=4)
        | st.frozensets(st.integers(0, 3), max_size=2)
    ),
    max_leaves=12,
)


@pytest.mark.parametrize("serializer", ["json", "msgpack", "pickle", "json-strict"])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=ANY_VALUES)
def test_any_value_accepted_on_write_reads_back_equal(serializer: str, value: Any) -> None:
    """For every value an Any field accepts on write, the read returns the same value."""
    chosen: co.Serializer | str = (
        co.JSONSerializer(allow_nan=False) if serializer == "json-strict" else serializer
    )
    repo = co.Repository(Blob, serializer=chosen)
    refused: co.DataError | None = None
    try:
        repo.save(Blob(id=1, value=value))
    except (co.ValidationError, co.SerializationError) as exc:
        refused = exc
    if refused is not None:
        assert refused.key == "blob:1"
        assert repo.get_or_none(1) is None
        return
    assert _same(repo.get(1).value, value)


# -- item 17: lone surrogates in text --------------------------------------------------------


@dataclasses.dataclass
class Text:
    id: PK
    name: str = ""
    tags: list[str] = dataclasses.field(default_factory=list)
    labels: dict[str, int] = dataclasses.field(default_factory=dict)
    extra: Any = None


@pytest.mark.parametrize("serializer", SERIALIZERS)
@pytest.mark.parametrize(
    ("record", "path"),
    [
        (Text(1, name="a\ud800"), "$.name"),
        (Text(1, name=Word("\udfff")), "$.name"),
        (Text(1, tags=["ok", "é\udc00"]), "$.tags[1]"),
        (Text(1, labels={"\ud83d": 1}), "$.labels['\\ud83d']"),
        (Text(1, extra={"k": ["\ud800"]}), "$.extra['k'][0]"),
    ],
    ids=["field", "subclass", "list-item", "dict-key", "any"],
)
def test_lone_surrogate_is_a_validation_error_naming_the_path(
    serializer: str, record: Text, path: str
) -> None:
    """Text no serializer can carry as UTF-8 is refused before writing, naming where it is."""
    repo = co.Repository(Text, serializer=serializer)
    with pytest.raises(co.ValidationError, match="surrogate") as info:
        repo.save(record)
    assert info.value.path == path
    assert repo.get_or_none(1) is None
    repo.save(Text(1, name="é😀\U0010ffff", tags=["ü"], labels={"ß": 1}, extra=["日本"]))
    assert repo.get(1).name == "é😀\U0010ffff"


@pytest.mark.parametrize("payload", [b'{"id":1,"name":"\\ud800"}', b'{"id":1,"extra":["\\udc00"]}'])
def test_planted_lone_surrogate_is_a_deserialization_error(payload: bytes) -> None:
    """JSON escapes can spell a lone surrogate; reading one is refused like any invalid record."""
    repo = co.Repository(Text)
    repo.backend.set(repo.key_for(1), payload)
    with pytest.raises(co.DeserializationError, match="surrogate"):
        repo.get(1)


# -- item 7: pickle bombs -------------------------------------------------------------------


@dataclasses.dataclass
class Grid:
    id: PK
    rows: list[list[int]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Tree:
    id: PK
    children: list[Tree] = dataclasses.field(default_factory=list)


def _str(text: str) -> bytes:
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


def _shared_rows(width: int, height: int) -> bytes:
    """A Grid whose ``height`` rows all reference one memoized row of ``width`` ints."""
    row = b"]\x94(" + b"K\x01" * width + b"e"
    rows = b"](" + row + b"h\x00" * (height - 1) + b"e"
    return b"\x80\x05}(" + _str("id") + b"K\x01" + _str("rows") + rows + b"u."


def _dag_tree(levels: int) -> bytes:
    """A Tree whose every node lists the node below twice, by reference: 2**levels nodes."""
    out = b"\x80\x05}\x94(" + _str("id") + b"K\x01" + _str("children") + b"]u"
    for level in range(1, levels + 1):
        prev = level - 1
        ref = b"h" + bytes([prev]) if prev < 256 else b"j" + prev.to_bytes(4, "little")
        out += b"}\x94(" + _str("id") + b"K\x01" + _str("children") + b"](" + ref + ref + b"eu"
    return out + b"."


def _tuple_hash_bomb(levels: int) -> bytes:
    """A dict keyed by a tuple whose hash takes 2**levels steps (each holds the last twice)."""
    out = b"\x80\x05}(" + _str("id") + b"K\x01" + _str("value") + b"}" + b")\x94"
    for level in range(levels):
        out += b"h" + bytes([level]) + b"\x86\x94"  # (t, t) from t on the stack and its ref
    return out + b"Ns" + b"u."


def _int_key_flood(count: int) -> bytes:
    """A dict of ``count`` int keys that all hash alike (multiples of 2**61 - 1)."""
    body = b""
    for i in range(1, count + 1):
        number = (i * (2**61 - 1)).to_bytes(10, "little", signed=True)
        body += b"\x8a\x0a" + number + b"N"
    return b"\x80\x05}(" + _str("id") + b"K\x01" + _str("value") + b"}(" + body + b"uu."


def _huge_memo_index() -> bytes:
    """A memo slot 4 million entries up: the C unpickler grows its memo table to match."""
    return b"\x80\x05}(" + _str("id") + b"K\x01" + _str("value") + b"Nr\x00\x00\x40\x00u."


def _deep_pickle(depth: int) -> bytes:
    """An Any field holding ``depth`` nested lists (the unpickler itself is not recursive)."""
    nest = b"]" * depth + b"a" * (depth - 1)
    return b"\x80\x05}(" + _str("id") + b"K\x01" + _str("value") + nest + b"u."


BOMBS: dict[str, tuple[type, Callable[[], bytes]]] = {
    "shared-rows": (Grid, lambda: _shared_rows(10_000, 10_000)),
    "dag-tree": (Tree, lambda: _dag_tree(25)),
    "tuple-hash": (Blob, lambda: _tuple_hash_bomb(27)),
    "int-key-flood": (Blob, lambda: _int_key_flood(10_000)),
    "huge-memo-index": (Blob, _huge_memo_index),
    "deep": (Blob, lambda: _deep_pickle(100_000)),
}

#: Figures for docs/security.md, filled by the test below: name -> (bytes, seconds, peak bytes).
MEASURED: dict[str, tuple[int, float, int]] = {}


@pytest.mark.parametrize("name", list(BOMBS))
@pytest.mark.parametrize("signed", [False, True], ids=["plain", "signed"])
def test_pickle_bomb_is_refused_in_bounded_time_and_memory(name: str, signed: bool) -> None:
    """Each planted pickle raises DeserializationError within 0.5 s and 8 MB of Python memory."""
    model, build = BOMBS[name]
    key = b"k" * 32
    serializer = co.PickleSerializer(signing_key=key) if signed else co.PickleSerializer()
    repo: co.Repository[Any] = co.Repository(model, serializer=serializer)
    payload = build()
    if signed:
        import hashlib
        import hmac

        header = b"\x00COPS1"
        payload = header + hmac.new(key, header + payload, hashlib.sha256).digest() + payload
    repo.backend.set(repo.key_for(1), payload)
    started = time.perf_counter()
    with pytest.raises(co.DeserializationError) as info:
        repo.get(1)
    elapsed = time.perf_counter() - started
    assert not isinstance(info.value.__cause__, RecursionError)
    tracemalloc.start()
    try:
        with pytest.raises(co.DeserializationError):
            repo.get(1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    MEASURED[f"{name}-{'signed' if signed else 'plain'}"] = (len(payload), elapsed, peak)
    assert elapsed < 0.5, f"{name}: {elapsed:.2f} s"
    assert peak < 8 * 2**20, f"{name}: peak {peak / 2**20:.1f} MB"


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_deep_json_and_msgpack_in_an_any_field_are_refused(serializer: str) -> None:
    """Nesting within the parser's limit but past the Any bound is refused by the codec on read."""
    repo = co.Repository(Blob, serializer=serializer)
    data = {"id": 1, "value": _nested(300)}
    repo.backend.set(repo.key_for(1), repo.serializer.dumps(data))
    with pytest.raises(co.DeserializationError, match="deeper than 100"):
        repo.get(1)
    deep = b"[" * 100_000 + b"]" * 100_000 if serializer == "json" else b"\x91" * 100_000 + b"\xc0"
    repo.backend.set(repo.key_for(1), deep)
    with pytest.raises(co.DeserializationError):
        repo.get(1)


def test_pickle_payloads_written_by_cacheorm_hold_no_shared_references() -> None:
    """A value shared by two fields is written twice, so reads never need a memo reference."""

    @dataclasses.dataclass
    class Pair:
        id: PK
        a: list[list[int]]
        b: list[list[int]]

    row = [1, 2, 3]
    rows = [row, row]
    repo: co.Repository[Pair] = co.Repository(Pair, serializer="pickle")
    repo.save(Pair(1, rows, rows))
    assert repo.get(1) == Pair(1, [row, row], [row, row])


# -- item 8: protobuf payloads -----------------------------------------------------------------


def _account_class(*, extra_field: int | None = None) -> type[Any]:
    """A proto3 message ``Account {int64 id = 1; string name = 2; bool admin = 3;}``."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    field = descriptor_pb2.FieldDescriptorProto
    name = f"hardening_account_{extra_field}.proto"
    fdp = descriptor_pb2.FileDescriptorProto(name=name, package="hardening", syntax="proto3")
    message = fdp.message_type.add(name="Account")
    for number, (attr, kind) in enumerate(
        [("id", field.TYPE_INT64), ("name", field.TYPE_STRING), ("admin", field.TYPE_BOOL)], 1
    ):
        message.field.add(name=attr, number=number, type=kind, label=field.LABEL_OPTIONAL)
    if extra_field is not None:
        message.field.add(
            name="extra", number=extra_field, type=field.TYPE_INT64, label=field.LABEL_OPTIONAL
        )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    built: type[Any] = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("hardening.Account")
    )
    return built


@dataclasses.dataclass
class Account:
    id: PK
    name: str = ""
    admin: bool = False


@pytest.fixture(scope="module")
def account_class() -> type[Any]:
    """The Account message class."""
    pytest.importorskip("google.protobuf")
    return _account_class()


def test_protobuf_refuses_empty_cut_extended_and_altered_payloads(account_class: type[Any]) -> None:
    """Empty bytes, every cut (at field boundaries too), an appended record and a flipped
    byte are each a DeserializationError, never a record with defaults or merged fields."""
    repo = co.Repository(Account, serializer=co.ProtobufSerializer(account_class))
    repo.save(Account(5, "eve", admin=True))
    repo.save(Account(9, "mallory"))
    good = repo.backend.get(repo.key_for(5))
    other = repo.backend.get(repo.key_for(9))
    assert good is not None
    assert other is not None
    planted = {
        "empty": b"",
        "appended": good + other,
        "appended-raw-field": good + b"\x08\x09",
        "flipped": good[:3] + bytes([good[3] ^ 1]) + good[4:],
        **{f"cut-{n}": good[:n] for n in range(1, len(good))},
    }
    for name, payload in planted.items():
        repo.backend.set(repo.key_for(5), payload)
        with pytest.raises(co.DeserializationError) as info:
            repo.get(5)
        assert info.value.serializer == "protobuf", name
    repo.backend.set(repo.key_for(5), good)
    assert repo.get(5) == Account(5, "eve", admin=True)


def test_protobuf_payload_is_still_a_plain_message_for_other_readers(
    account_class: type[Any],
) -> None:
    """Other programs parse the payload as the message (the trailer is an unknown field)."""
    repo = co.Repository(Account, serializer=co.ProtobufSerializer(account_class))
    repo.save(Account(5, "eve", admin=True))
    payload = repo.backend.get(repo.key_for(5))
    assert payload is not None
    message = account_class.FromString(payload)
    assert (message.id, message.name, message.admin) == (5, "eve", True)


def test_protobuf_without_trailer_refuses_a_second_record_appended(
    account_class: type[Any],
) -> None:
    """trailer=False stores plain messages; a repeated singular field is still refused."""
    serializer = co.ProtobufSerializer(account_class, trailer=False)
    repo = co.Repository(Account, serializer=serializer)
    repo.save(Account(5, "eve", admin=True))
    repo.save(Account(9, "mallory"))
    good = repo.backend.get(repo.key_for(5))
    other = repo.backend.get(repo.key_for(9))
    assert good is not None
    assert other is not None
    assert good == account_class(id=5, name="eve", admin=True).SerializeToString()
    for payload in (good + other, good + b"\x08\x09", good + b"\x08"):
        repo.backend.set(repo.key_for(5), payload)
        with pytest.raises(co.DeserializationError):
            repo.get(5)


def test_protobuf_trailer_field_number_must_be_free() -> None:
    """A message that uses the trailer's field number needs trailer=False."""
    pytest.importorskip("google.protobuf")
    taken = _account_class(extra_field=536_870_911)
    with pytest.raises(co.ConfigurationError, match="trailer=False"):
        co.ProtobufSerializer(taken)
    assert co.ProtobufSerializer(taken, trailer=False).name == "protobuf"


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"\x08\x05\x39" + bytes(8) + b"\x3d" + bytes(4), None),  # unknown fixed64, fixed32
        (b"\x08\x05\x1b", "wire type 3"),  # a group: never written
        (b"\x08" + b"\xff" * 11, "inside a varint"),
        (b"\x08\x05\x12\x09ab", "inside field 2"),
        (b"\x12\x01a\x08\x05", "appears again"),  # field numbers going backwards
    ],
)
def test_protobuf_without_trailer_checks_the_top_level_fields(
    account_class: type[Any], payload: bytes, error: str | None
) -> None:
    """The bare-message check walks every wire type and refuses what protobuf would merge."""
    serializer = co.ProtobufSerializer(account_class, trailer=False)
    assert repr(serializer) == "ProtobufSerializer(hardening.Account, trailer=False)"
    if error is None:
        assert serializer.loads(payload)["id"] == 5
        return
    with pytest.raises(ValueError, match=error):
        serializer.loads(payload)


def test_protobuf_trailer_must_be_a_bool(account_class: type[Any]) -> None:
    """trailer= takes a bool."""
    with pytest.raises(co.ConfigurationError, match="trailer must be a bool"):
        co.ProtobufSerializer(account_class, trailer=1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("serializer", "value", "where"),
    [
        ("msgpack", {"a": [1, 2**64]}, "at `$.value['a'][1]`"),
        (co.JSONSerializer(allow_nan=False), [0.5, math.nan], "at `$.value[1]`"),
        ("json", [10**5000], "at `$.value[0]`"),
    ],
    ids=["msgpack-int", "strict-json-nan", "json-long-int"],
)
def test_serializer_refusals_name_the_path(
    serializer: co.Serializer | str, value: Any, where: str
) -> None:
    """A value the serializer itself cannot carry is refused with its path in the message."""
    repo = co.Repository(Blob, serializer=serializer)
    with pytest.raises(co.SerializationError) as info:
        repo.save(Blob(id=1, value=value))
    assert where in str(info.value)
    assert repo.get_or_none(1) is None


@pytest.mark.parametrize("serializer", ["json", "msgpack", "pickle"])
def test_an_optional_any_field_compiles_and_round_trips(serializer: str) -> None:
    """`Any | None` used to generate an empty `if` block (IndentationError at Repository())."""

    @dataclasses.dataclass
    class Loose:
        id: Annotated[int, co.Field(primary_key=True)]
        extra: Optional[Any] = None  # noqa: UP045 - the spelling that failed

    repo = co.Repository(Loose, serializer=serializer)
    repo.save(Loose(1, {"a": [1, 2.5, None]}))
    repo.save(Loose(2))
    assert repo.get_many([1, 2]) == [Loose(1, {"a": [1, 2.5, None]}), Loose(2)]
