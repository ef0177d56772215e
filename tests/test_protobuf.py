"""Tests for ProtobufSerializer against message classes built at test time (no protoc)."""

from __future__ import annotations

import dataclasses
import datetime
import enum
from typing import Annotated, Any

import pytest

pytest.importorskip("google.protobuf")

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

import cacheorm as co
from cacheorm._errors import MissingDependency
from cacheorm._protobuf import ProtobufSerializer
from cacheorm._serializers import Serializer

_F = descriptor_pb2.FieldDescriptorProto


def _build_classes() -> dict[str, type[Any]]:
    """Build proto3 Phone, User and Directory in a fresh pool; return their classes by name."""
    fdp = descriptor_pb2.FileDescriptorProto(
        name="cacheorm_test_user.proto", package="test", syntax="proto3"
    )

    phone = fdp.message_type.add(name="Phone")
    phone.field.add(name="number", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    phone.field.add(name="kind", number=2, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)

    user = fdp.message_type.add(name="User")

    def scalar(name: str, number: int, type_: int) -> None:
        user.field.add(name=name, number=number, type=type_, label=_F.LABEL_OPTIONAL)

    scalar("id", 1, _F.TYPE_INT64)
    scalar("name", 2, _F.TYPE_STRING)
    scalar("height", 3, _F.TYPE_DOUBLE)
    scalar("married", 4, _F.TYPE_BOOL)
    scalar("gender", 5, _F.TYPE_INT32)
    # proto3 `optional`: a synthetic oneof named `_email` holding only this field.
    user.oneof_decl.add(name="_email")
    user.field.add(
        name="email",
        number=6,
        type=_F.TYPE_STRING,
        label=_F.LABEL_OPTIONAL,
        proto3_optional=True,
        oneof_index=0,
    )
    user.field.add(name="tags", number=7, type=_F.TYPE_STRING, label=_F.LABEL_REPEATED)
    scalar("created_at", 8, _F.TYPE_STRING)
    scalar("avatar", 9, _F.TYPE_BYTES)
    user.field.add(
        name="phones",
        number=10,
        type=_F.TYPE_MESSAGE,
        label=_F.LABEL_REPEATED,
        type_name=".test.Phone",
    )
    user.field.add(
        name="best_phone",
        number=11,
        type=_F.TYPE_MESSAGE,
        label=_F.LABEL_OPTIONAL,
        type_name=".test.Phone",
    )
    # map<string, int64> scores = 12;
    entry = user.nested_type.add(name="ScoresEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=_F.TYPE_INT64, label=_F.LABEL_OPTIONAL)
    user.field.add(
        name="scores",
        number=12,
        type=_F.TYPE_MESSAGE,
        label=_F.LABEL_REPEATED,
        type_name=".test.User.ScoresEntry",
    )

    # Directory: map<string, Phone> contacts, a recursive `parent`, and a real oneof.
    directory = fdp.message_type.add(name="Directory")
    contacts = directory.nested_type.add(name="ContactsEntry")
    contacts.options.map_entry = True
    contacts.field.add(name="key", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    contacts.field.add(
        name="value",
        number=2,
        type=_F.TYPE_MESSAGE,
        label=_F.LABEL_OPTIONAL,
        type_name=".test.Phone",
    )
    directory.field.add(
        name="contacts",
        number=1,
        type=_F.TYPE_MESSAGE,
        label=_F.LABEL_REPEATED,
        type_name=".test.Directory.ContactsEntry",
    )
    directory.field.add(
        name="parent",
        number=2,
        type=_F.TYPE_MESSAGE,
        label=_F.LABEL_OPTIONAL,
        type_name=".test.Directory",
    )
    directory.oneof_decl.add(name="owner")
    directory.field.add(
        name="person", number=3, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL, oneof_index=0
    )
    directory.field.add(
        name="team_id", number=4, type=_F.TYPE_INT64, label=_F.LABEL_OPTIONAL, oneof_index=0
    )

    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"test.{name}"))
        for name in ("Phone", "User", "Directory")
    }


@pytest.fixture(scope="module")
def classes() -> tuple[type[Any], type[Any]]:
    """The Phone and User message classes."""
    built = _build_classes()
    return built["Phone"], built["User"]


@pytest.fixture(scope="module")
def directory() -> ProtobufSerializer:
    """A serializer storing records as test.Directory."""
    return ProtobufSerializer(_build_classes()["Directory"])


@pytest.fixture
def serializer(classes: tuple[type[Any], type[Any]]) -> ProtobufSerializer:
    """A serializer storing records as test.User."""
    return ProtobufSerializer(classes[1])


def _user(**overrides: Any) -> dict[str, Any]:
    """A complete User primitives dict, every field present."""
    data: dict[str, Any] = {
        "id": 42,
        "name": "Ada",
        "height": 1.72,
        "married": True,
        "gender": 2,
        "email": None,
        "tags": ["a", "b"],
        "created_at": "2024-01-02T03:04:05+00:00",
        "avatar": b"\x89PNG",
        "phones": [{"number": "555-1234", "kind": "home"}, {"number": "555-9", "kind": ""}],
        "best_phone": None,
        "scores": {"math": 90, "art": -3},
    }
    data.update(overrides)
    return data


def test_satisfies_serializer_protocol(serializer: ProtobufSerializer) -> None:
    """The serializer is a runtime-checkable cacheorm Serializer named 'protobuf'."""
    assert isinstance(serializer, Serializer)
    assert serializer.name == "protobuf"


def test_binary_is_true(serializer: ProtobufSerializer) -> None:
    """bytes travel natively, so binary is True."""
    assert serializer.binary is True


def test_repr_shows_full_name(serializer: ProtobufSerializer) -> None:
    """repr names the message's full name."""
    assert "test.User" in repr(serializer)


def test_full_round_trip(serializer: ProtobufSerializer) -> None:
    """dumps then loads gives back the input dict, with unset optionals as None."""
    data = _user()
    payload = serializer.dumps(data)
    assert isinstance(payload, bytes)
    assert serializer.loads(payload) == data


def test_round_trip_with_optionals_set(serializer: ProtobufSerializer) -> None:
    """Set optional scalar and message fields round-trip to their values."""
    data = _user(email="ada@example.com", best_phone={"number": "1", "kind": "work"})
    assert serializer.loads(serializer.dumps(data)) == data


def test_loads_fills_every_field(classes: tuple[type[Any], type[Any]]) -> None:
    """loads of an empty message lists every field with its zero value or None."""
    serializer = ProtobufSerializer(classes[1])
    assert serializer.loads(serializer.dumps({})) == ProtobufSerializer(
        classes[1], trailer=False
    ).loads(b"")
    assert serializer.loads(serializer.dumps({})) == {
        "id": 0,
        "name": "",
        "height": 0.0,
        "married": False,
        "gender": 0,
        "email": None,
        "tags": [],
        "created_at": "",
        "avatar": b"",
        "phones": [],
        "best_phone": None,
        "scores": {},
    }


def test_none_leaves_optional_scalar_and_message_unset(
    serializer: ProtobufSerializer, classes: tuple[type[Any], type[Any]]
) -> None:
    """None for a proto3 optional scalar or a message field leaves the field unset."""
    payload = serializer.dumps({"id": 1, "email": None, "best_phone": None})
    message = classes[1].FromString(payload)
    assert not message.HasField("email")
    assert not message.HasField("best_phone")
    loaded = serializer.loads(payload)
    assert loaded["email"] is None
    assert loaded["best_phone"] is None


def test_empty_string_optional_is_not_none(serializer: ProtobufSerializer) -> None:
    """An optional scalar set to its zero value reads back as that value, not None."""
    loaded = serializer.loads(serializer.dumps({"email": ""}))
    assert loaded["email"] == ""


def test_none_for_plain_scalar_raises(serializer: ProtobufSerializer) -> None:
    """None for a scalar without presence raises ValueError telling to declare it optional."""
    with pytest.raises(ValueError, match="optional") as info:
        serializer.dumps(_user(name=None))
    assert "name" in str(info.value)


@pytest.mark.parametrize("key", ["tags", "phones", "scores"])
def test_none_for_repeated_or_map_raises(serializer: ProtobufSerializer, key: str) -> None:
    """None for a repeated or map field raises ValueError naming the field."""
    with pytest.raises(ValueError, match=key):
        serializer.dumps(_user(**{key: None}))


def test_unknown_key_raises(serializer: ProtobufSerializer) -> None:
    """A key with no matching field raises ValueError naming the key and the message."""
    with pytest.raises(ValueError, match="nickname") as info:
        serializer.dumps(_user(nickname="x"))
    assert "test.User" in str(info.value)


def test_unknown_key_in_nested_message_raises(serializer: ProtobufSerializer) -> None:
    """An unknown key inside a nested message names the key and the nested message."""
    with pytest.raises(ValueError, match="extension") as info:
        serializer.dumps(_user(phones=[{"number": "1", "extension": "2"}]))
    assert "test.Phone" in str(info.value)


@pytest.mark.parametrize(
    "overrides",
    [
        {"id": "not an int"},
        {"id": 1.5},
        {"name": 5},
        {"height": "tall"},
        {"avatar": "text, not bytes"},
        {"gender": 2**40},
        {"tags": [1, 2]},
        {"tags": "ab"},
        {"scores": {"math": "ninety"}},
        {"phones": ["555"]},
        {"phones": [None]},
        {"best_phone": "555"},
        {"phones": {"number": "1"}},
        {"scores": [("math", 1)]},
        {"scores": {1: 2}},
    ],
)
def test_wrong_value_type_raises(serializer: ProtobufSerializer, overrides: dict[str, Any]) -> None:
    """A value of the wrong type for its field raises TypeError or ValueError."""
    with pytest.raises((TypeError, ValueError)):
        serializer.dumps(_user(**overrides))


def test_wrong_value_type_error_names_field(serializer: ProtobufSerializer) -> None:
    """Protobuf's own type errors are restated with the field's path."""
    with pytest.raises(TypeError, match=r"\$\.id"):
        serializer.dumps(_user(id="x"))


def test_dumps_rejects_non_dict(serializer: ProtobufSerializer) -> None:
    """dumps of something other than a dict raises TypeError."""
    with pytest.raises(TypeError, match="dict"):
        serializer.dumps([1, 2])


def test_garbage_bytes_raise(serializer: ProtobufSerializer) -> None:
    """loads of bytes that are not a valid message raises (no trailer, or DecodeError)."""
    with pytest.raises(ValueError, match="trailer"):
        serializer.loads(b"\xff\xff\xff garbage")
    bare = ProtobufSerializer(serializer.message_class, trailer=False)
    with pytest.raises((DecodeError, ValueError)):
        bare.loads(b"\xff\xff\xff garbage")
    with pytest.raises((DecodeError, ValueError)):
        bare.loads(b"\x12\x05ab")  # a string field cut short


def test_empty_nested_dict_sets_presence(
    serializer: ProtobufSerializer, classes: tuple[type[Any], type[Any]]
) -> None:
    """An empty dict for a message field marks it present, reading back as a default message."""
    payload = serializer.dumps({"best_phone": {}})
    assert classes[1].FromString(payload).HasField("best_phone")
    assert serializer.loads(payload)["best_phone"] == {"number": "", "kind": ""}


def test_bytes_with_nul_round_trip(serializer: ProtobufSerializer) -> None:
    """bytes holding NUL and non-UTF-8 bytes round-trip unchanged, as bytes."""
    blob = b"\x00\x01\x00\xff\xfe\x00"
    loaded = serializer.loads(serializer.dumps(_user(avatar=blob)))
    assert loaded["avatar"] == blob
    assert isinstance(loaded["avatar"], bytes)


@pytest.mark.parametrize("value", [2**62, -(2**62), 2**63 - 1, -(2**63)])
def test_large_ints_round_trip(serializer: ProtobufSerializer, value: int) -> None:
    """int64 values up to the type's limits round-trip exactly."""
    loaded = serializer.loads(serializer.dumps(_user(id=value, scores={"big": value})))
    assert loaded["id"] == value
    assert loaded["scores"] == {"big": value}


def test_float_round_trips_exactly(serializer: ProtobufSerializer) -> None:
    """A double field keeps a Python float bit for bit."""
    value = 0.1 + 0.2
    assert serializer.loads(serializer.dumps(_user(height=value)))["height"] == value


def test_tuple_accepted_for_repeated(serializer: ProtobufSerializer) -> None:
    """A tuple for a repeated field is stored like a list and reads back as a list."""
    loaded = serializer.loads(serializer.dumps(_user(tags=("x", "y"))))
    assert loaded["tags"] == ["x", "y"]


@pytest.mark.parametrize("bad", [object(), 42, "test.User", dict])
def test_not_a_message_class_raises(bad: Any) -> None:
    """A constructor argument that is not a protobuf message class raises TypeError."""
    with pytest.raises(TypeError, match="message class"):
        ProtobufSerializer(bad)


def test_message_instance_is_not_a_class(classes: tuple[type[Any], type[Any]]) -> None:
    """A message instance (rather than its class) raises TypeError."""
    with pytest.raises(TypeError, match="message class"):
        ProtobufSerializer(classes[1]())


def test_missing_protobuf_raises_missing_dependency(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without protobuf installed the constructor raises MissingDependency naming the extra."""
    import builtins

    real_import = builtins.__import__

    def fake_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("google.protobuf"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(MissingDependency, match="protobuf"):
        ProtobufSerializer(object)


def test_map_of_messages_and_recursion_round_trip(directory: ProtobufSerializer) -> None:
    """map<string, Message> and a self-referencing message field round-trip."""
    data = {
        "contacts": {"ada": {"number": "1", "kind": "home"}, "bob": {"number": "", "kind": ""}},
        "parent": {"contacts": {}, "parent": None, "person": None, "team_id": 7},
        "person": "ada",
        "team_id": None,
    }
    assert directory.loads(directory.dumps(data)) == data


def test_none_in_map_of_messages_raises(directory: ProtobufSerializer) -> None:
    """None as a value in a map of messages raises TypeError naming the entry."""
    with pytest.raises(TypeError, match="ada"):
        directory.dumps({"contacts": {"ada": None}})


def test_two_members_of_one_oneof_raise(directory: ProtobufSerializer) -> None:
    """Setting two members of the same oneof raises ValueError instead of dropping one."""
    with pytest.raises(ValueError, match="owner"):
        directory.dumps({"person": "ada", "team_id": 7})


@pytest.mark.parametrize(
    "data",
    [{"contacts": [{"number": "1"}]}, {"contacts": {1: {"number": "1"}}}, {"parent": []}],
)
def test_wrong_shape_in_directory_raises(
    directory: ProtobufSerializer, data: dict[str, Any]
) -> None:
    """A list for a map, a non-str map key or a list for a message raise TypeError."""
    with pytest.raises(TypeError, match=r"\$\.(contacts|parent)"):
        directory.dumps(data)


# --- through a Repository -------------------------------------------------------------


class Gender(enum.IntEnum):
    UNKNOWN = 0
    FEMALE = 1


@dataclasses.dataclass(frozen=True)
class PhoneRecord:
    number: str
    kind: str = "home"


@dataclasses.dataclass(frozen=True)
class UserRecord:
    id: Annotated[int, co.Field(primary_key=True)]
    name: str
    height: float
    married: bool
    gender: Gender
    email: str | None
    tags: list[str]
    created_at: datetime.datetime
    avatar: bytes
    phones: list[PhoneRecord]
    best_phone: PhoneRecord | None
    scores: dict[str, int]


def test_repository_round_trips_a_record_through_a_real_message_class(
    classes: tuple[type[Any], type[Any]],
) -> None:
    """A Repository with ProtobufSerializer stores real protobuf bytes and reads the record back."""
    user_class = classes[1]
    repo = co.Repository(UserRecord, serializer=co.ProtobufSerializer(user_class))
    record = UserRecord(
        id=7,
        name="Zoë",
        height=1.5,
        married=True,
        gender=Gender.FEMALE,
        email=None,
        tags=["a", "b"],
        created_at=datetime.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=datetime.timezone.utc),
        avatar=b"\x00\x01\xff",
        phones=[PhoneRecord("123"), PhoneRecord("456", "work")],
        best_phone=PhoneRecord("789", "mobile"),
        scores={"x": 2**40, "y": -1},
    )
    repo.create(record)
    assert repo.get(7) == record
    raw = repo.backend.get(repo.key_for(7))
    assert raw is not None
    message = user_class.FromString(raw)
    assert message.name == "Zoë"
    assert not message.HasField("email")
    assert message.phones[1].kind == "work"
    assert message.avatar == b"\x00\x01\xff"


def test_repository_reports_a_record_the_message_cannot_hold(
    classes: tuple[type[Any], type[Any]],
) -> None:
    """A model field with no message field is a SerializationError naming it; nothing is written."""

    @dataclasses.dataclass
    class Extra:
        id: Annotated[int, co.Field(primary_key=True)]
        nickname: str

    repo = co.Repository(Extra, serializer=co.ProtobufSerializer(classes[1]))
    with pytest.raises(co.SerializationError, match="nickname") as info:
        repo.save(Extra(1, "x"))
    assert info.value.serializer == "protobuf"
    assert repo.get_or_none(1) is None
